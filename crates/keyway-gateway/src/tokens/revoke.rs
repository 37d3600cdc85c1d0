//! Revocation: in memory first, so the token stops working and its live streams end
//! at once, then durably in the store, retried, and audited. A client credential
//! takes the tokens obtained with it along.

use std::sync::Arc;
use std::time::Duration;

use keyway_core::config::Config;
use keyway_core::{EventKind, TokenKind, UnixMillis};
use keyway_store::{AuditEvent, RevokedToken, StoreError, TokenRecord};

use super::Tokens;
use crate::index::Entry;

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
        // On a shared store another replica may have spent it first: only the call
        // that revoked it in the store used it.
        let found = self
            .persist_revocations(&[id.to_owned()], now, "gateway", &|_| Some("used"))
            .await?;
        Ok(found.iter().any(|t| t.id == id && t.fresh))
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
        let mut ids = vec![id.to_owned()];
        ids.extend(
            self.revoke_in_memory(id, now)
                .into_iter()
                .filter(|c| c.as_str() != id),
        );
        let why = |t: &str| {
            if t == id {
                reason
            } else {
                Some(self.cascade_reason(t))
            }
        };
        let found = self.persist_revocations(&ids, now, by, &why).await?;
        if !found.iter().any(|t| t.id == id) {
            return Ok(None);
        }
        match self.index.get(id) {
            Some(e) => Ok(Some(e.current())),
            // Long expired, and no longer in memory.
            None => self.store.token(id).await,
        }
    }

    /// Revokes every live access token and client credential that matches all the
    /// filters given (at least one): the panic button after an incident. All of them
    /// stop working at once, in memory, whatever their number; then they and their
    /// events are written in one transaction.
    pub async fn revoke_where(
        &self,
        f: &RevokeFilter,
        by: &str,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        if f.principal.is_none() && f.service.is_none() && f.issued_before.is_none() {
            return Ok(Vec::new());
        }
        let pick = |e: &Entry| {
            let t = &e.record;
            matches!(
                t.kind,
                TokenKind::Access | TokenKind::ClientCredential | TokenKind::Session
            ) && f.principal.as_ref().is_none_or(|p| *p == t.principal)
                && f.service.as_ref().is_none_or(|s| {
                    t.grant.as_ref().is_some_and(|g| g.service == *s)
                        || t.scope.as_ref().is_some_and(|c| c.grant(s).is_some())
                })
                && f.issued_before.is_none_or(|b| t.created_at < b)
        };
        self.revoke_picked(pick, by, "bulk").await
    }

    /// Revokes every token obtained through a policy that `config` no longer allows
    /// as it is (the policy is gone, no longer names the subject, no longer grants
    /// all of the token's grant, or the identity's issuer changed): a narrowed policy
    /// ends the access it gave, live sessions included. Returns the tokens revoked.
    /// Holds the tokens the config's policies gave to what those policies now say:
    /// revokes those no longer allowed ([`Tokens::revoke_unallowed`]) and shortens
    /// those given longer than a policy's `max_ttl` now allows
    /// ([`Tokens::shorten_to_policies`]). Returns how many of each.
    pub async fn enforce_policies(
        &self,
        config: &Config,
        by: &str,
    ) -> Result<(usize, usize), StoreError> {
        let revoked = self.revoke_unallowed(config, by).await?.len();
        let shortened = self.shorten_to_policies(config, by).await?;
        Ok((revoked, shortened))
    }

    async fn revoke_unallowed(
        &self,
        config: &Config,
        by: &str,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let pick = |e: &Entry| !super::exchange::allowed_by_policy(config, &e.record);
        self.revoke_picked(pick, by, "policy_changed").await
    }

    /// Brings forward the expiry of every live token whose policy's `max_ttl` is now
    /// shorter than the token was given (to its issue plus the new `max_ttl`): a
    /// policy never promises less than its tokens hold. Live streams end then.
    /// Returns how many.
    async fn shorten_to_policies(&self, config: &Config, by: &str) -> Result<usize, StoreError> {
        // Only a policy's tokens, and none without policies: this runs at every start.
        if config.policies.is_empty() {
            return Ok(0);
        }
        let mut n = 0;
        let mut failed = None;
        for e in self.index.select(|e| e.record.origin.is_some()) {
            match self.shorten_to_policy(&e, config, by).await {
                Ok(true) => n += 1,
                Ok(false) => {}
                // In force in memory already; the others are still shortened.
                Err(err) => failed = Some(err),
            }
        }
        failed.map_or(Ok(n), Err)
    }

    /// Brings `e`'s expiry forward to its issue plus its policy's `max_ttl`, when
    /// that is sooner: in memory first (it holds at once), then in the store with its
    /// event. Whether it did.
    pub(super) async fn shorten_to_policy(
        &self,
        e: &Arc<Entry>,
        config: &Config,
        by: &str,
    ) -> Result<bool, StoreError> {
        let now = self.now();
        let Some(origin) = &e.record.origin else {
            return Ok(false);
        };
        let Some(policy) = config.policies.get(&origin.policy) else {
            return Ok(false);
        };
        let end = e
            .record
            .created_at
            .saturating_add(keyway_core::clock::duration_ms(policy.max_ttl));
        if end >= e.expires_at() || e.check_live(now).is_err() {
            return Ok(false);
        }
        e.shorten(end);
        self.cut_at_expiry(e.clone());
        let mut ev = AuditEvent::new(EventKind::TokenShortened, now);
        ev.token_id = Some(e.id().to_owned());
        ev.principal = Some(e.record.principal.clone());
        ev.service = e.grant().map(|g| g.service.clone());
        ev.detail = serde_json::json!({
            "by": by,
            "policy": origin.policy,
            "expires_at": keyway_core::clock::format_ms(end),
        });
        let events = [ev];
        if let Err(err) = self.store.shorten_expiry(e.id(), end, &events).await {
            tracing::error!(error = %err, token_id = %e.id(), "a token's shortened expiry holds in this process but is not in the store");
            return Err(err);
        }
        self.audit.committed(&events);
        Ok(true)
    }

    /// Revokes every live token `pick` takes, and the tokens obtained with them:
    /// all refused at once in memory, then written with their events in one
    /// transaction. `reason` is recorded for the picked ones.
    pub(super) async fn revoke_picked(
        &self,
        pick: impl Fn(&Entry) -> bool,
        by: &str,
        reason: &str,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let started = std::time::Instant::now();
        let now = self.now();
        let (mut matched, children) = self.index.revoke_matching(now, pick);
        // Every match is refused from here on; what follows makes it durable.
        let in_memory = started.elapsed();
        if matched.is_empty() && children.is_empty() {
            return Ok(Vec::new());
        }
        // In the order they were issued, which is the order of their rows: the store
        // then revokes them page after page, not all over the table.
        matched.sort_unstable_by(|a, b| {
            (a.record.created_at, a.id()).cmp(&(b.record.created_at, b.id()))
        });
        let ids: Vec<String> = matched
            .iter()
            .chain(&children)
            .map(|e| e.id().to_owned())
            .collect();
        let picked: std::collections::HashSet<&str> = matched.iter().map(|e| e.id()).collect();
        let why = |t: &str| {
            if picked.contains(t) {
                Some(reason)
            } else {
                Some(self.cascade_reason(t))
            }
        };
        let found = self.persist_revocations(&ids, now, by, &why).await?;
        // Those this call revoked in the store too, and so wrote an event for.
        let fresh: std::collections::HashSet<&str> = found
            .iter()
            .filter(|t| t.fresh)
            .map(|t| t.id.as_str())
            .collect();
        let records = matched
            .iter()
            .filter(|e| fresh.contains(e.id()))
            .map(|e| e.current())
            .collect();
        tracing::info!(
            tokens = ids.len(),
            reason,
            in_memory_ms = in_memory.as_millis() as u64,
            stored_ms = (started.elapsed() - in_memory).as_millis() as u64,
            "revoked in bulk: refused in memory, then stored with their events"
        );
        Ok(records)
    }

    /// Why a token revoked with its parent was: its credential was revoked, or its
    /// session ended.
    fn cascade_reason(&self, child: &str) -> &'static str {
        let parent = self
            .index
            .get(child)
            .and_then(|c| self.index.get(c.record.parent_id.as_deref()?));
        match parent.map(|p| p.record.kind) {
            Some(TokenKind::Session) => "session_ended",
            _ => "credential_revoked",
        }
    }

    /// Revokes at once, in memory: the token, and with a client credential or a
    /// person's session every token obtained with it. Returns the ids this call
    /// revoked, to persist.
    fn revoke_in_memory(&self, id: &str, now: UnixMillis) -> Vec<String> {
        let mut ids = Vec::new();
        let Some(entry) = self.index.get(id) else {
            return ids;
        };
        if !entry.revoked() {
            ids.push(id.to_owned());
        }
        self.index.revoke(id, now);
        if matches!(
            entry.record.kind,
            TokenKind::ClientCredential | TokenKind::Session
        ) {
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
        let Some((target, found)) = uri
            .path_and_query()
            .and_then(|pq| keyway_core::head::tokens_in_target(pq.as_str()))
        else {
            return false;
        };
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
            let (gw, leaked) = (self.clone(), f.id.clone());
            tokio::spawn(async move {
                let why = |t: &str| {
                    if t == leaked {
                        Some("exposed_in_url")
                    } else {
                        Some(gw.cascade_reason(t))
                    }
                };
                if gw
                    .persist_revocations(&ids, now, "gateway", &why)
                    .await
                    .is_ok()
                {
                    tracing::warn!(token_id = %leaked, "revoked a token sent in a URL");
                }
            });
        }
        true
    }

    /// Writes revocations (already in force in memory) to the store with their
    /// events, in one transaction, retrying. `reason` gives each token's reason, by
    /// id. Returns the tokens found, those revoked by this call first.
    async fn persist_revocations<'a>(
        &self,
        ids: &[String],
        now: UnixMillis,
        by: &str,
        reason: &(dyn Fn(&str) -> Option<&'a str> + Sync),
    ) -> Result<Vec<RevokedToken>, StoreError> {
        let event = |t: &RevokedToken| {
            let mut ev = AuditEvent::new(EventKind::TokenRevoked, now);
            ev.token_id = Some(t.id.clone());
            ev.principal = Some(t.principal.clone());
            ev.service = t.service.clone();
            ev.reason = reason(&t.id).map(str::to_owned);
            ev.detail = serde_json::json!({ "by": by });
            ev
        };
        let mut attempt = 0;
        loop {
            match self.store.revoke_tokens(ids, now, &event).await {
                Ok((found, written)) => {
                    self.audit.committed(&written);
                    return Ok(found);
                }
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(error = %e, tokens = ids.len(), attempt, "could not record a revocation; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        tokens = ids.len(),
                        "a revocation holds in this process but is not in the store"
                    );
                    return Err(e);
                }
            }
        }
    }
}
