-- Keyway's store. Token secrets are never here: only HMAC-SHA256(pepper, token).
-- Upstream credentials are here only sealed with the master key.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);

CREATE TABLE tokens (
    id           TEXT PRIMARY KEY NOT NULL,
    kind         TEXT NOT NULL,
    principal    TEXT NOT NULL,
    grant_json   TEXT,
    hash         BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    revoked_at   INTEGER,
    last_used_at INTEGER
);
CREATE INDEX tokens_by_kind ON tokens (kind);

CREATE TABLE secrets (
    name       TEXT PRIMARY KEY NOT NULL,
    key_id     TEXT NOT NULL,
    nonce      BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE audit_events (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    decision  TEXT,
    reason    TEXT,
    principal TEXT,
    service   TEXT,
    token_id  TEXT,
    source    TEXT,
    detail    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_by_at ON audit_events (at);
