//! Following the shared store: a token another replica issued, revoked or shortened
//! is read back and put in force here too, in memory, as if it had been done here
//! (a revocation cuts the token's live streams at once).

use keyway_store::StoreError;

use super::Tokens;

// === impl Tokens ===

impl Tokens {
    /// Brings the token `id` in memory up to its state in the store. Whether it
    /// changed anything here.
    pub async fn follow_token(&self, id: &str) -> Result<bool, StoreError> {
        let Some(stored) = self.store.token(id).await? else {
            return Ok(false);
        };
        let Some(here) = self.index.get(id) else {
            // New here (issued through another replica): in force from now.
            self.index.insert(stored);
            return Ok(true);
        };
        let mut changed = false;
        if let Some(at) = stored.revoked_at {
            if !here.revoked() {
                self.index.revoke(id, at);
                changed = true;
            }
            // A credential or a session ends what was obtained with it, here too:
            // children issued through this replica may be unknown to the one that
            // revoked it (refused by their lineage anyway; their streams end now).
            if matches!(
                here.record.kind,
                keyway_core::TokenKind::ClientCredential | keyway_core::TokenKind::Session
            ) {
                for child in self.index.children_of(id) {
                    if !child.revoked() {
                        self.index.revoke(child.id(), at);
                        changed = true;
                    }
                }
            }
        }
        if stored.expires_at < here.expires_at() {
            here.shorten(stored.expires_at);
            self.cut_at_expiry(here.clone());
            changed = true;
        }
        Ok(changed)
    }
}
