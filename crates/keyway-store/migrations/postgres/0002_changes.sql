-- What each replica changed, in order: the others read it (woken by NOTIFY
-- keyway_changes, and on a timer) and bring their memory up to date. Rows are
-- forgotten after a day: a replica that was away longer loads everything at start.
CREATE TABLE changes (
    rev     BIGSERIAL PRIMARY KEY,
    replica TEXT NOT NULL,
    kind    TEXT NOT NULL,
    key     TEXT NOT NULL,
    at      BIGINT NOT NULL
);
CREATE INDEX changes_by_at ON changes (at);
