-- Token lifecycle: lineage (rotation, exchange) and client credentials' scope.
ALTER TABLE tokens ADD COLUMN parent_id TEXT;
ALTER TABLE tokens ADD COLUMN scope_json TEXT;
CREATE INDEX tokens_by_principal ON tokens (principal);
CREATE INDEX tokens_by_parent ON tokens (parent_id);
