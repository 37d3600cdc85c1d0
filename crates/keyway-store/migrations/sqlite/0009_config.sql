-- The config last applied (`keyway apply`, SIGHUP): its text and hash, one row. The
-- text passed `keyway validate`, which refuses a secret written in it.
CREATE TABLE applied_config (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    sha256     TEXT NOT NULL,
    text       TEXT NOT NULL,
    applied_at INTEGER NOT NULL,
    -- HMAC-SHA256 of the text under a key from the gateway's pepper (not in here).
    mac        BLOB NOT NULL
);
