-- Each replica's heartbeat, every second: when, how far it has followed the changes,
-- the config it runs, its agents, whether it serves (`keyway cluster status`).
CREATE TABLE replicas (
    name TEXT PRIMARY KEY,
    at   BIGINT NOT NULL,
    json TEXT NOT NULL
);
