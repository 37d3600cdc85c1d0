-- Sources a detector blocked (an address, or an IPv6 /64 by its first address) and
-- until when: every replica refuses them, and a restart does not lift them.
CREATE TABLE blocks (
    source TEXT PRIMARY KEY,
    until  BIGINT NOT NULL
);
