-- Sources a detector blocked (an address, or an IPv6 /64 by its first address) and
-- until when: a restart does not lift them.
CREATE TABLE blocks (
    source TEXT PRIMARY KEY NOT NULL,
    until  INTEGER NOT NULL
);
