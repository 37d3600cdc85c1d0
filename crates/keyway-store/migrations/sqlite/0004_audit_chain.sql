-- The audit log as a keyed hash chain: each event carries the hash of the one before
-- it and its own, HMAC-SHA256 under a key derived from the pepper (outside the
-- database). Events written before this migration have neither and come first.
ALTER TABLE audit_events ADD COLUMN prev_hash BLOB;
ALTER TABLE audit_events ADD COLUMN hash BLOB;
