-- Signed checkpoints of the audit chain: the newest event's seq and hash at a time,
-- HMAC-signed under the chain key (outside the database). They catch the newest
-- events being removed, and the oldest one left after retention prunes is the anchor
-- the chain then starts from.
CREATE TABLE audit_checkpoints (
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    hash BLOB NOT NULL,
    mac BLOB NOT NULL
);
