//! Revocation: in memory first, so the token stops working and its live streams end
//! at once, then durably in the store, retried, and audited. A client credential
//! takes the tokens obtained with it along.

use std::sync::Arc;
use std::time::Duration;

use keyway_core::{EventKind, TokenKind, UnixMillis};
use keyway_store::{AuditEvent, StoreError, TokenRecord};

use super::Tokens;

/// Which tokens `revoke_where` revokes: those matching every filter given.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct RevokeFilter {
    pub principal: Option<String>,
    pub service: Option<String>,
    /// Unix milliseconds: tokens issued strictly before.
    pub issued_before: Option<UnixMillis>,
}

// === impl Tokens ===

impl Tokens {
    /// Spends a one-use token: revoked now, in memory and then the store. `false`
    /// when it was already spent (a replay, or a race lost).
    pub async fn use_once(&self, id: &str) -> Result<bool, StoreError> {
        let now = self.now();
        if !self.index.revoke_first(id, now) {
            return Ok(false);
        }
        self.persist_revocation(id, now, "gateway", Some("used"))
            .await?;
        Ok(true)
    }

    /// Revokes a token, and audits it. Memory first, so the token stops working and
    /// its live streams end at once whatever the store does: with a client
    /// credential, every token obtained with it too. Then the store, retried, so the
    /// revocation survives a restart. `reason` is recorded when the gateway revokes on
    /// its own.
    pub async fn revoke(
        &self,
        id: &str,
        by: &str,
        reason: Option<&str>,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let now = self.now();
        let revoked_now = self.revoke_in_memory(id, now);
        let Some(record) = self.persist_revocation(id, now, by, reason).await? else {
            return Ok(None);
        };
        for child in revoked_now.iter().filter(|c| c.as_str() != id) {
            self.persist_revocation(child, now, by, Some("credential_revoked"))
                .await?;
        }
        Ok(Some(record))
    }

    /// Revokes every live access token and client credential that matches all the
    /// filters given (at least one): the panic button after an incident.
    pub async fn revoke_where(
        &self,
        f: &RevokeFilter,
        by: &str,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        if f.principal.is_none() && f.service.is_none() && f.issued_before.is_none() {
            return Ok(Vec::new());
        }
        let mut revoked = Vec::new();
        for t in self.store.tokens().await? {
            let kind_ok = matches!(t.kind, TokenKind::Access | TokenKind::ClientCredential);
            // Revoked since the listing (a credential's tokens go with it): skip.
            let already = self.index.get(&t.id).is_some_and(|e| e.revoked());
            let matches = t.revoked_at.is_none()
                && !already
                && kind_ok
                && f.principal.as_ref().is_none_or(|p| *p == t.principal)
                && f.service.as_ref().is_none_or(|s| {
                    t.grant.as_ref().is_some_and(|g| g.service == *s)
                        || t.scope.as_ref().is_some_and(|c| c.grant(s).is_some())
                })
                && f.issued_before.is_none_or(|b| t.created_at < b);
            if matches {
                if let Some(r) = self.revoke(&t.id, by, Some("bulk")).await? {
                    revoked.push(r);
                }
            }
        }
        Ok(revoked)
    }

    /// Revokes at once, in memory: the token, and with a client credential every
    /// token obtained with it. Returns the ids this call revoked, to persist.
    fn revoke_in_memory(&self, id: &str, now: UnixMillis) -> Vec<String> {
        let mut ids = Vec::new();
        let Some(entry) = self.index.get(id) else {
            return ids;
        };
        if !entry.revoked() {
            ids.push(id.to_owned());
        }
        self.index.revoke(id, now);
        if entry.record.kind == TokenKind::ClientCredential {
            for child in self.index.children_of(id) {
                if !child.revoked() {
                    self.index.revoke(child.id(), now);
                    ids.push(child.id().to_owned());
                }
            }
        }
        ids
    }

    /// A token in a URL has already leaked into access logs: the request is refused,
    /// and the token revoked at once (unless `revoke_tokens_in_urls = false`; only a
    /// real token, so that nobody can revoke other people's tokens by their public id).
    /// The URL is decoded first, so `kwat%5F…` is caught too. Returns whether one was
    /// found; `ev` gets its public id.
    pub fn refuse_token_in_url(self: &Arc<Self>, uri: &http::Uri, ev: &mut AuditEvent) -> bool {
        let Some(target) = uri.path_and_query().map(|pq| pq.as_str()) else {
            return false;
        };
        if !target.contains("kw") && !target.contains('%') {
            return false;
        }
        let target = keyway_core::path::percent_decode_lossy(target);
        let found: Vec<_> = keyway_core::token::find_tokens(&target)
            .into_iter()
            .filter(|f| f.checksum_ok)
            .collect();
        let Some(first) = found.first() else {
            return false;
        };
        ev.token_id = Some(first.id.clone());
        if !self.config().revoke_tokens_in_urls {
            return true;
        }
        for f in &found {
            let text = &target[f.start..f.start + keyway_core::token::TOKEN_LEN];
            let now = self.now();
            if self
                .index
                .authenticate(text, &self.pepper, f.kind, now)
                .is_err()
            {
                continue;
            }
            let ids = self.revoke_in_memory(&f.id, now);
            let gw = self.clone();
            tokio::spawn(async move {
                for (i, id) in ids.iter().enumerate() {
                    let reason = if i == 0 {
                        "exposed_in_url"
                    } else {
                        "credential_revoked"
                    };
                    if gw
                        .persist_revocation(id, now, "gateway", Some(reason))
                        .await
                        .is_ok()
                        && i == 0
                    {
                        tracing::warn!(token_id = %id, "revoked a token sent in a URL");
                    }
                }
            });
        }
        true
    }

    /// Writes a revocation (already in force in memory) to the store, retrying, and
    /// audits it.
    async fn persist_revocation(
        &self,
        id: &str,
        now: UnixMillis,
        by: &str,
        reason: Option<&str>,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let mut attempt = 0;
        let record = loop {
            match self.store.revoke_token(id, now).await {
                Ok(r) => break r,
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(error = %e, token_id = id, attempt, "could not record a revocation; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        token_id = id,
                        "a revocation holds in this process but is not in the store"
                    );
                    return Err(e);
                }
            }
        };
        let Some(record) = record else {
            return Ok(None);
        };
        let mut ev = self.audit.event(EventKind::TokenRevoked);
        ev.token_id = Some(record.id.clone());
        ev.principal = Some(record.principal.clone());
        ev.service = record.grant.as_ref().map(|g| g.service.clone());
        ev.reason = reason.map(str::to_owned);
        ev.detail = serde_json::json!({ "by": by });
        self.audit.record_reliably(ev).await;
        Ok(Some(record))
    }
}
