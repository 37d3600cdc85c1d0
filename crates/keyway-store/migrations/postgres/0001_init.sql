-- Keyway's store on PostgreSQL, shared by every replica. As on SQLite: token secrets
-- are never here (only HMAC-SHA256(pepper, token)), upstream credentials only sealed.
-- Times are Unix milliseconds.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

CREATE TABLE tokens (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    principal       TEXT NOT NULL,
    grant_json      TEXT,
    hash            BYTEA NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    revoked_at      BIGINT,
    last_used_at    BIGINT,
    parent_id       TEXT,
    scope_json      TEXT,
    cert_thumbprint TEXT,
    origin_json     TEXT
);
CREATE INDEX tokens_by_kind ON tokens (kind);
CREATE INDEX tokens_by_principal ON tokens (principal);
CREATE INDEX tokens_by_parent ON tokens (parent_id);

-- One-use values (a workload's JWT, an approved request), spent with what they buy.
CREATE TABLE spent (
    key   TEXT PRIMARY KEY,
    until BIGINT NOT NULL
);
CREATE INDEX spent_by_until ON spent (until);

CREATE TABLE secrets (
    name       TEXT PRIMARY KEY,
    key_id     TEXT NOT NULL,
    nonce      BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE agent_revocations (
    name       TEXT PRIMARY KEY,
    revoked_at BIGINT NOT NULL
);

CREATE TABLE access_requests (
    id         TEXT PRIMARY KEY,
    version    BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    json       TEXT NOT NULL
);
CREATE INDEX access_requests_by_expiry ON access_requests (expires_at);

-- The audit log: one keyed hash chain per replica (`rseq` counts within it), so no
-- replica waits on another to append. `seq` orders the whole log for reading.
CREATE TABLE audit_events (
    seq       BIGSERIAL PRIMARY KEY,
    replica   TEXT NOT NULL,
    rseq      BIGINT NOT NULL,
    at        BIGINT NOT NULL,
    kind      TEXT NOT NULL,
    decision  TEXT,
    reason    TEXT,
    -- Bytes, not text: these can carry what a client sent, and PostgreSQL's text
    -- holds no NUL; the chain hashes them exactly as they are.
    principal BYTEA,
    service   BYTEA,
    token_id  BYTEA,
    source    BYTEA,
    detail    TEXT NOT NULL DEFAULT '{}',
    prev_hash BYTEA,
    hash      BYTEA,
    UNIQUE (replica, rseq)
);
CREATE INDEX audit_by_at ON audit_events (at);

CREATE TABLE audit_checkpoints (
    replica TEXT NOT NULL,
    rseq    BIGINT NOT NULL,
    at      BIGINT NOT NULL,
    hash    BYTEA NOT NULL,
    mac     BYTEA NOT NULL,
    PRIMARY KEY (replica, rseq)
);
