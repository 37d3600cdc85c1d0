-- Tokens obtained through a policy: the policy, and the identity that obtained them
-- (JSON: policy, provider, issuer, subject). A narrowed policy ends the tokens it no
-- longer allows by this.
ALTER TABLE tokens ADD COLUMN origin_json TEXT;
