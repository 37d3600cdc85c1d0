-- One-use values spent with a write (a workload's JWT, by a hash of its `jti` or its
-- signed part), kept until they expire anyway. Shared by every process on the store,
-- and surviving restarts: a JWT is taken once.
CREATE TABLE spent (
    key   TEXT PRIMARY KEY NOT NULL,
    until INTEGER NOT NULL
);
CREATE INDEX spent_by_until ON spent (until);
