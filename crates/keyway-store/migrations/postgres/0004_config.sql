-- The config applied to the cluster (`keyway apply` on any replica): its text and
-- hash, one row. Every replica runs it, with its own per-process settings. The text
-- passed `keyway validate`, which refuses a secret written in it.
CREATE TABLE applied_config (
    id         SMALLINT PRIMARY KEY CHECK (id = 1),
    sha256     TEXT NOT NULL,
    text       TEXT NOT NULL,
    applied_at BIGINT NOT NULL,
    -- HMAC-SHA256 of the text under a key from the gateways' pepper (not in here).
    mac        BYTEA NOT NULL
);
