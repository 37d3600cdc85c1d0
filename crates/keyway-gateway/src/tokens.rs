//! The token lifecycle: the only writers of tokens. Issue, rotation, exchange,
//! enrollment and the admin credential all make their token through
//! `Tokens::generate` and `Tokens::keep`, so all are stored, indexed and audited
//! alike; revocation holds in memory first (the token stops working and its live
//! streams end at once) and is then made durable. Nothing else inserts into the
//! token index or revokes in it (`tests/layers.rs` checks).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keyway_core::clock::{duration_ms, format_ms};
use keyway_core::config::Config;
use keyway_core::grant::CredentialScope;
use keyway_core::{Clock, EventKind, Grant, IssuedToken, Pepper, TokenKind, UnixMillis};
use keyway_store::keys;
use keyway_store::{Store, StoreError, TokenRecord};
use secrecy::ExposeSecret;

mod exchange;
mod follow;
mod issue;
mod people;
mod revoke;

pub use exchange::{ExchangeError, IdentityExchangeError, RotateError};
pub use issue::{CredentialRequest, IssueError, IssueRequest};
pub use people::PersonTokenError;
pub use revoke::RevokeFilter;

use crate::audit::AuditSink;
use crate::authz::Authorizer;
use crate::index::{Entry, TokenIndex};
use crate::runtime::ConfigInForce;

/// The default lifetime of an access token when none is asked for.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);

/// How long an agent's one-use enrollment token lives.
pub const ENROLLMENT_TTL: Duration = Duration::from_secs(3600);

/// The admin credential could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("cannot write the admin credential to {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the audit log could not record the reset; nothing new was written")]
    Unaudited,
}

/// What a protocol may do with tokens, and no more: revoke one leaked into a URL,
/// exchange a client credential (the token endpoint), spend an agent's enrollment
/// token, look one up. It cannot issue, rotate or revoke at will.
#[derive(Clone)]
pub struct TokenUse(Arc<Tokens>);

/// Where an access token comes from, besides who asked for it.
#[derive(Debug, Default)]
struct Lineage {
    /// The token it was rotated from, or the credential it was exchanged for.
    parent_id: Option<String>,
    /// The client certificate it is bound to.
    cert_thumbprint: Option<String>,
    /// The policy and identity it was obtained through.
    origin: Option<keyway_store::Origin>,
    /// A one-use value it is bought with (a workload's JWT), spent with it.
    spend: Option<keyway_store::Spend>,
}

/// The token lifecycle's handle. Cheap to share behind an `Arc`.
pub struct Tokens {
    config: ConfigInForce,
    clock: Arc<dyn Clock>,
    store: Arc<dyn Store>,
    pepper: Pepper,
    index: Arc<TokenIndex>,
    authz: Authorizer,
    audit: AuditSink,
    /// Workload JWTs: the issuers' keys, and those already taken.
    workloads: crate::identity::Verifier,
}

// === impl TokenUse ===

impl TokenUse {
    pub fn new(tokens: Arc<Tokens>) -> Self {
        Self(tokens)
    }

    /// [`Tokens::refuse_token_in_url`].
    pub fn refuse_token_in_url(&self, uri: &http::Uri, ev: &mut keyway_store::AuditEvent) -> bool {
        self.0.refuse_token_in_url(uri, ev)
    }

    /// [`Tokens::exchange`].
    pub async fn exchange(
        &self,
        credential: &Entry,
        service: &str,
        ttl: Option<Duration>,
        source: std::net::IpAddr,
        presented_cert: Option<&str>,
    ) -> Result<(IssuedToken, TokenRecord), ExchangeError> {
        self.0
            .exchange(credential, service, ttl, source, presented_cert)
            .await
    }

    /// [`Tokens::exchange_identity`].
    pub async fn exchange_identity(
        &self,
        jwt: &str,
        service: &str,
        ttl: Option<Duration>,
    ) -> Result<(IssuedToken, TokenRecord), IdentityExchangeError> {
        self.0.exchange_identity(jwt, service, ttl).await
    }

    /// [`Tokens::use_once`].
    pub async fn use_once(&self, id: &str) -> Result<bool, StoreError> {
        self.0.use_once(id).await
    }

    /// [`Tokens::token`].
    pub fn token(&self, id: &str) -> Option<Arc<Entry>> {
        self.0.token(id)
    }
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
            workloads: Default::default(),
        }
    }

    fn now(&self) -> UnixMillis {
        self.clock.now_ms()
    }

    fn config(&self) -> Arc<Config> {
        self.config.current()
    }

    /// A new token of `kind` for `principal`, living `ttl` from now: generated, not
    /// yet kept. Every token Keyway makes starts here and is kept by [`Tokens::keep`].
    fn generate(
        &self,
        kind: TokenKind,
        principal: &str,
        ttl: Duration,
    ) -> (IssuedToken, TokenRecord) {
        let now = self.now();
        let token = IssuedToken::generate(kind);
        let record = TokenRecord {
            id: token.id().to_owned(),
            kind,
            principal: principal.to_owned(),
            grant: None,
            hash: token.hash(&self.pepper),
            created_at: now,
            expires_at: now.saturating_add(duration_ms(ttl)),
            revoked_at: None,
            last_used_at: None,
            parent_id: None,
            scope: None,
            cert_thumbprint: None,
            origin: None,
        };
        (token, record)
    }

    /// Stores a generated token with its `kind` event (with `detail`), then indexes
    /// it: from here on it works, and its event is in the log.
    async fn keep(
        &self,
        record: &TokenRecord,
        kind: EventKind,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        self.keep_spending(record, kind, detail, None).await
    }

    /// [`Tokens::keep`], spending a one-use value in the same transaction: the token
    /// exists only if the value was not spent before ([`StoreError::Spent`]).
    async fn keep_spending(
        &self,
        record: &TokenRecord,
        kind: EventKind,
        detail: serde_json::Value,
        spend: Option<&keyway_store::Spend>,
    ) -> Result<(), StoreError> {
        let mut ev = self.audit.event(kind);
        ev.token_id = Some(record.id.clone());
        ev.principal = Some(record.principal.clone());
        ev.service = record.grant.as_ref().map(|g| g.service.clone());
        ev.detail = detail;
        let events = [ev];
        // The row and its event in one transaction: a token that exists is audited.
        match spend {
            None => self.store.insert_token(record, &events).await?,
            Some(s) => self.store.insert_token_spending(record, &events, s).await?,
        }
        self.index.insert(record.clone());
        self.audit.committed(&events);
        Ok(())
    }

    /// Makes an access token: the only place they are made.
    async fn mint(
        &self,
        principal: &str,
        grant: Grant,
        ttl: Duration,
        lineage: Lineage,
        by: &str,
    ) -> Result<(IssuedToken, TokenRecord), StoreError> {
        let (token, mut record) = self.generate(TokenKind::Access, principal, ttl);
        record.grant = Some(grant);
        record.parent_id = lineage.parent_id;
        record.cert_thumbprint = lineage.cert_thumbprint;
        record.origin = lineage.origin.clone().map(Box::new);
        let detail = serde_json::json!({
            "by": by,
            "expires_at": format_ms(record.expires_at),
            "grant": record.grant,
            "parent": record.parent_id,
            "cert_thumbprint": record.cert_thumbprint,
            "origin": record.origin,
        });
        self.keep_spending(
            &record,
            EventKind::TokenIssued,
            detail,
            lineage.spend.as_ref(),
        )
        .await?;
        Ok((token, record))
    }

    /// Makes a client credential: the only place they are made.
    async fn mint_credential(
        &self,
        principal: &str,
        scope: CredentialScope,
        max_age: Duration,
        cert_thumbprint: Option<String>,
        by: &str,
    ) -> Result<(IssuedToken, TokenRecord), StoreError> {
        let (token, mut record) = self.generate(TokenKind::ClientCredential, principal, max_age);
        record.scope = Some(Box::new(scope));
        record.cert_thumbprint = cert_thumbprint;
        let detail = serde_json::json!({
            "by": by,
            "expires_at": format_ms(record.expires_at),
            "scope": record.scope,
        });
        self.keep(&record, EventKind::CredentialIssued, detail)
            .await?;
        Ok((token, record))
    }

    /// Writes a new admin credential to `path` (0600, replacing what is there) unless
    /// a live one exists. Returns whether it wrote one.
    pub async fn ensure_admin(&self, path: &Path) -> Result<bool, AdminTokenError> {
        let now = self.now();
        let live = self
            .index
            .entries()
            .iter()
            .any(|e| e.record.kind == TokenKind::Admin && e.check_live(now).is_ok());
        if live {
            return Ok(false);
        }
        let ttl = self.config().admin_token_ttl;
        let (token, record) = self.generate(TokenKind::Admin, "admin", ttl);
        let write_err = |source| AdminTokenError::Write {
            path: path.display().to_string(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(write_err(e)),
        }
        keys::write_secret_file(path, token.secret().expose_secret().as_bytes())
            .map_err(write_err)?;
        let detail = serde_json::json!({ "expires_at": format_ms(record.expires_at) });
        self.keep(&record, EventKind::AdminTokenCreated, detail)
            .await?;
        Ok(true)
    }

    /// The way back from a lost or revoked admin credential (`keyway admin reset`,
    /// with the gateway stopped): revokes every admin token still live, audits the
    /// reset, and writes a new credential to `path` through [`Tokens::ensure_admin`].
    /// Returns the ids revoked.
    pub async fn reset_admin(&self, path: &Path, by: &str) -> Result<Vec<String>, AdminTokenError> {
        let now = self.now();
        let live: Vec<String> = self
            .index
            .entries()
            .iter()
            .filter(|e| e.record.kind == TokenKind::Admin && e.check_live(now).is_ok())
            .map(|e| e.id().to_owned())
            .collect();
        for id in &live {
            self.revoke(id, by, Some("admin_reset")).await?;
        }
        let mut ev = self.audit.event(EventKind::AdminReset);
        ev.principal = Some(by.to_owned());
        ev.detail = serde_json::json!({ "revoked": live });
        if !self.audit.record_reliably(ev).await.wait().await {
            return Err(AdminTokenError::Unaudited);
        }
        self.ensure_admin(path).await?;
        Ok(live)
    }

    /// Ends the live streams of a token when its (shortened) expiry comes.
    fn cut_at_expiry(&self, entry: Arc<Entry>) {
        let left = entry.expires_at().saturating_sub(self.now()).max(0);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(left as u64)).await;
            entry.cut();
        });
    }

    /// Drops entries that expired before `horizon` from the index (not the store).
    pub fn prune_expired(&self, horizon: UnixMillis) -> usize {
        self.index.prune_expired(horizon)
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
