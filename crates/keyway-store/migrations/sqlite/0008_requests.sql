-- People's access requests waiting for approval (a policy's `approval`): the whole
-- request as JSON, and what lists and changes them. `version` makes each change
-- conditional on the one it read: two approvers at once cannot both count once.
CREATE TABLE access_requests (
    id         TEXT PRIMARY KEY NOT NULL,
    version    INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    json       TEXT NOT NULL
);
CREATE INDEX access_requests_by_expiry ON access_requests (expires_at);
