//! The token lifecycle: the only writers of tokens. Issue, rotation, exchange and
//! enrollment all make their token through [`Tokens::mint`] (or its credential
//! twin), so all are stored, indexed and audited alike; revocation holds in memory
//! first (the token stops working and its live streams end at once) and is then
//! made durable. Nothing else inserts into the token index or revokes in it.

use std::sync::Arc;
use std::time::Duration;

use keyway_core::clock::{duration_ms, format_ms};
use keyway_core::config::Config;
use keyway_core::grant::CredentialScope;
use keyway_core::{Clock, EventKind, Grant, IssuedToken, Pepper, TokenKind, UnixMillis};
use keyway_store::{Store, StoreError, TokenRecord};

mod exchange;
mod issue;
mod revoke;

pub use exchange::{ExchangeError, RotateError};
pub use issue::{CredentialRequest, IssueError, IssueRequest};
pub use revoke::RevokeFilter;

use crate::audit::AuditSink;
use crate::authz::Authorizer;
use crate::index::{Entry, TokenIndex};
use crate::runtime::ConfigInForce;

/// The default lifetime of an access token when none is asked for.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);

/// How long an agent's one-use enrollment token lives.
pub const ENROLLMENT_TTL: Duration = Duration::from_secs(3600);

/// The token lifecycle's handle. Cheap to share behind an `Arc`.
pub struct Tokens {
    config: ConfigInForce,
    clock: Arc<dyn Clock>,
    store: Arc<dyn Store>,
    pepper: Pepper,
    index: Arc<TokenIndex>,
    authz: Authorizer,
    audit: AuditSink,
}

// === impl Tokens ===

impl Tokens {
    pub fn new(
        config: ConfigInForce,
        clock: Arc<dyn Clock>,
        store: Arc<dyn Store>,
        pepper: Pepper,
        index: Arc<TokenIndex>,
        authz: Authorizer,
        audit: AuditSink,
    ) -> Self {
        Self {
            config,
            clock,
            store,
            pepper,
            index,
            authz,
            audit,
        }
    }

    fn now(&self) -> UnixMillis {
        self.clock.now_ms()
    }

    fn config(&self) -> Arc<Config> {
        self.config.current()
    }

    /// Makes an access token: the only place they are made. Stores it, indexes it,
    /// audits it.
    async fn mint(
        &self,
        principal: &str,
        grant: Grant,
        ttl: Duration,
        parent_id: Option<String>,
        cert_thumbprint: Option<String>,
        by: &str,
    ) -> Result<(IssuedToken, TokenRecord), StoreError> {
        let now = self.now();
        let token = IssuedToken::generate(TokenKind::Access);
        let record = TokenRecord {
            id: token.id().to_owned(),
            kind: TokenKind::Access,
            principal: principal.to_owned(),
            grant: Some(grant),
            hash: token.hash(&self.pepper),
            created_at: now,
            expires_at: now.saturating_add(duration_ms(ttl)),
            revoked_at: None,
            last_used_at: None,
            parent_id,
            scope: None,
            cert_thumbprint,
        };
        self.store.insert_token(&record).await?;
        self.index.insert(record.clone());
        let mut ev = self.audit.event(EventKind::TokenIssued);
        ev.token_id = Some(record.id.clone());
        ev.principal = Some(record.principal.clone());
        ev.service = record.grant.as_ref().map(|g| g.service.clone());
        ev.detail = serde_json::json!({
            "by": by,
            "expires_at": format_ms(record.expires_at),
            "grant": record.grant,
            "parent": record.parent_id,
            "cert_thumbprint": record.cert_thumbprint,
        });
        self.audit.record_reliably(ev).await;
        Ok((token, record))
    }

    /// Makes a client credential: the only place they are made. Stores it, indexes
    /// it, audits it.
    async fn mint_credential(
        &self,
        principal: &str,
        scope: CredentialScope,
        max_age: Duration,
        cert_thumbprint: Option<String>,
        by: &str,
    ) -> Result<(IssuedToken, TokenRecord), StoreError> {
        let now = self.now();
        let token = IssuedToken::generate(TokenKind::ClientCredential);
        let record = TokenRecord {
            id: token.id().to_owned(),
            kind: TokenKind::ClientCredential,
            principal: principal.to_owned(),
            grant: None,
            hash: token.hash(&self.pepper),
            created_at: now,
            expires_at: now.saturating_add(duration_ms(max_age)),
            revoked_at: None,
            last_used_at: None,
            parent_id: None,
            scope: Some(scope),
            cert_thumbprint,
        };
        self.store.insert_token(&record).await?;
        self.index.insert(record.clone());
        let mut ev = self.audit.event(EventKind::CredentialIssued);
        ev.token_id = Some(record.id.clone());
        ev.principal = Some(record.principal.clone());
        ev.detail = serde_json::json!({
            "by": by,
            "expires_at": format_ms(record.expires_at),
            "scope": record.scope,
        });
        self.audit.record_reliably(ev).await;
        Ok((token, record))
    }

    /// The client credential a token was obtained with, if it is in the index.
    pub fn parent_credential(&self, entry: &Entry) -> Option<Arc<Entry>> {
        self.authz.parent_credential(entry)
    }

    /// Ends the live streams of a token when its (shortened) expiry comes.
    fn cut_at_expiry(&self, entry: Arc<Entry>) {
        let left = entry.expires_at().saturating_sub(self.now()).max(0);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(left as u64)).await;
            entry.cancel.cancel();
        });
    }

    /// The entry for a token id, if known.
    pub fn token(&self, id: &str) -> Option<Arc<Entry>> {
        self.index.get(id)
    }

    /// Writes last-used times to the store, for tokens used after `since`.
    pub async fn flush_last_used(&self, since: UnixMillis) -> UnixMillis {
        let now = self.now();
        let used = self.index.used_since(since);
        if !used.is_empty() {
            if let Err(e) = self.store.touch_tokens(&used).await {
                tracing::warn!(error = %e, "could not record token last-used times");
                return since;
            }
        }
        now
    }
}
