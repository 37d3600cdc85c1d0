-- MCP tools' pinned definitions (SHA-256, hex): the approved one and the one last
-- seen, which differ while a change waits for approval.
CREATE TABLE tool_pins (
    service    TEXT NOT NULL,
    tool       TEXT NOT NULL,
    pinned     TEXT NOT NULL,
    seen       TEXT NOT NULL,
    definition TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    changed_at BIGINT,
    PRIMARY KEY (service, tool)
);
