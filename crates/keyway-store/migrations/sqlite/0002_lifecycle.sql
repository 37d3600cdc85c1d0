-- Token lifecycle: lineage (rotation, exchange), client credentials' scope, and
-- binding to a client certificate.
ALTER TABLE tokens ADD COLUMN parent_id TEXT;
ALTER TABLE tokens ADD COLUMN scope_json TEXT;
-- Sender-constrained tokens: SHA-256 thumbprint of the client certificate (RFC 8705).
ALTER TABLE tokens ADD COLUMN cert_thumbprint TEXT;
CREATE INDEX tokens_by_principal ON tokens (principal);
CREATE INDEX tokens_by_parent ON tokens (parent_id);
