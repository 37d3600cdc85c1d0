-- Agents revoked with `keyway agent revoke`: certificates issued to the agent before
-- `revoked_at` are refused. Enrolling again issues certificates after it.
CREATE TABLE agent_revocations (
    name       TEXT PRIMARY KEY NOT NULL,
    revoked_at INTEGER NOT NULL
);
