//! The gateway's shared state and the operations on it: opening the data folder,
//! issuing and revoking tokens, setting secrets. Listeners and the admin API call
//! these; nothing else writes tokens.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::HeaderValue;
use keyway_core::clock::{duration_ms, format_ms};
use keyway_core::config::{valid_secret_name, Config, ServiceKind};
use keyway_core::grant::{CredentialScope, GrantError};
use keyway_core::units::format_duration;
use keyway_core::EventKind;
use keyway_core::{Clock, Grant, IssuedToken, Pepper, TokenKind, UnixMillis};
use keyway_store::keys::{self, KeySource};
use keyway_store::{AuditEvent, Sealer, SqliteStore, Store, StoreError, TokenRecord};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use crate::audit::AuditSink;
use crate::authz::Authorizer;
use crate::index::{Entry, TokenIndex};
use crate::runtime::ConfigInForce;
use crate::sessions::Sessions;

/// The default lifetime of an access token when none is asked for.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);

/// Everything the listeners and the admin API share.
pub struct Gateway {
    /// The config in force; replaced whole by a reload (`keyway apply`, SIGHUP), and
    /// watched by live sessions, which end when they no longer fit it.
    config: ConfigInForce,
    pub clock: Arc<dyn Clock>,
    pub store: Arc<dyn Store>,
    pub pepper: Pepper,
    sealer: Sealer,
    pub index: Arc<TokenIndex>,
    /// The one rule every protocol's attempts are judged by.
    pub authz: Authorizer,
    /// Opened upstream credentials, as header values marked sensitive.
    secrets: RwLock<HashMap<String, HeaderValue>>,
    pub audit: AuditSink,
    audit_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    audit_stop: CancellationToken,
    /// Where the admin credential was written, when this start wrote one.
    pub admin_token_written: Option<PathBuf>,
    /// Agents' live connections and revocations.
    pub agents: crate::agents::Registry,
    pub metrics: Arc<crate::telemetry::Metrics>,
    /// The intrusion detectors and the blocklist.
    pub detect: Arc<crate::detect::Detect>,
    /// Alerts on their way to the webhook.
    pub alerts: crate::alerts::Alerts,
    /// Reloads on their way to the task that runs the services.
    pub(crate) reloads: crate::reloads::Reloads,
    /// The sessions that outlive a request: tunnel streams, PostgreSQL sessions,
    /// WebSockets, agents. They outlive their listener across a reload, not the
    /// gateway: [`Gateway::end_sessions`].
    pub sessions: Sessions,
}

/// What `issue` is asked for.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct IssueRequest {
    pub service: String,
    pub principal: String,
    /// Like `15m`; the default is 15 minutes (or the service's maximum, if lower).
    pub ttl: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    /// Bind the token to this client certificate (RFC 8705 `x5t#S256`).
    #[serde(default)]
    pub cert_thumbprint: Option<String>,
    /// For a database service: the role the token connects as.
    #[serde(default)]
    pub role: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("unknown service `{0}`")]
    UnknownService(String),
    #[error("a principal is 1 to 128 printable characters")]
    BadPrincipal,
    #[error("{0}")]
    Invalid(String),
    #[error("requested TTL of {asked} is above the maximum of {max} for service `{service}`{why}")]
    TtlTooLong {
        asked: String,
        max: String,
        service: String,
        why: String,
    },
    #[error(
        "a certificate thumbprint is the base64url SHA-256 of the certificate (43 characters)"
    )]
    BadThumbprint,
    #[error(transparent)]
    Grant(#[from] GrantError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `credential issue` is asked for.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct CredentialRequest {
    pub principal: String,
    pub services: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub cidrs: Vec<String>,
    /// Like `90d`; the default and the ceiling is the config's `credential_max_age`.
    pub max_age: Option<String>,
    /// Bind the credential (and every token it gets) to this client certificate.
    #[serde(default)]
    pub cert_thumbprint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("not a client credential")]
    NotACredential,
    #[error("the credential may not be used from this address")]
    Source,
    #[error("the credential does not name this service")]
    Service,
    #[error("the credential is bound to a client certificate this connection did not present")]
    Certificate,
    #[error("the credential is older than the policy's credential_max_age")]
    TooOld,
    #[error("the credential was revoked")]
    Revoked,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("no token with that id")]
    Unknown,
    #[error("only access tokens and client credentials are rotated this way")]
    NotAccess,
    #[error("the token is revoked or expired; issue a new one instead")]
    NotLive,
    #[error("the token's service is no longer configured")]
    ServiceGone,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which tokens `revoke_where` revokes: those matching every filter given.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct RevokeFilter {
    pub principal: Option<String>,
    pub service: Option<String>,
    /// Unix milliseconds: tokens issued strictly before.
    pub issued_before: Option<UnixMillis>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot prepare the data folder {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error(
        "{what} does not match the one this store was created with; start with the original key"
    )]
    KeyMismatch { what: &'static str },
    #[error("cannot write the admin credential to {path}: {source}")]
    AdminToken {
        path: String,
        source: std::io::Error,
    },
}

// === impl Gateway ===

impl Gateway {
    /// Opens the data folder (creating it, 0700), the store, and the keys; loads the
    /// token index and the upstream credentials; writes an admin credential when
    /// there is no live one. Must run inside a Tokio runtime (it starts the audit
    /// writer).
    pub async fn open(config: Config, clock: Arc<dyn Clock>) -> Result<Self, OpenError> {
        let dir = &config.data_dir;
        let dir_err = |source| OpenError::DataDir {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("keyway.db")).await?);
        Self::with_store(config, clock, store).await
    }

    /// As [`Gateway::open`], on a store the caller opened.
    pub async fn with_store(
        config: Config,
        clock: Arc<dyn Clock>,
        store: Arc<dyn Store>,
    ) -> Result<Self, OpenError> {
        let pepper_fp = store.meta_get("pepper_fingerprint").await?;
        let is_new = pepper_fp.is_none();

        let (pepper_key, src) = keys::load_or_create(&config.pepper_file, "KEYWAY_PEPPER", is_new)?;
        log_key("pepper", &config.pepper_file, src);
        let pepper = Pepper::new(&pepper_key);
        match pepper_fp {
            None => {
                store
                    .meta_put("pepper_fingerprint", &pepper.fingerprint())
                    .await?
            }
            Some(fp) if fp[..] == pepper.fingerprint()[..] => {}
            Some(_) => return Err(OpenError::KeyMismatch { what: "the pepper" }),
        }

        let master_fp = store.meta_get("master_key_id").await?;
        let (master, src) = keys::load_or_create(
            &config.master_key_file,
            "KEYWAY_MASTER_KEY",
            master_fp.is_none(),
        )?;
        log_key("master key", &config.master_key_file, src);
        let sealer = Sealer::new(&master);
        match master_fp {
            None => {
                store
                    .meta_put("master_key_id", sealer.key_id().as_bytes())
                    .await?
            }
            Some(id) if id == sealer.key_id().as_bytes() => {}
            Some(_) => {
                return Err(OpenError::KeyMismatch {
                    what: "the master key",
                })
            }
        }

        // The audit chain's key: from the pepper, so it lives outside the database.
        store.set_audit_key(audit_chain_key(&pepper)).await?;
        let index = Arc::new(TokenIndex::load(store.tokens().await?));
        let agents = crate::agents::Registry::new(store.agent_revocations().await?);
        let mut secrets = HashMap::new();
        for (name, sealed) in store.secrets().await? {
            match sealer.open(&name, &sealed) {
                Ok(v) => {
                    if let Some(h) = header_value(&v) {
                        secrets.insert(name, h);
                    }
                }
                Err(e) => tracing::error!(error = %e, "an upstream credential could not be opened"),
            }
        }
        let metrics = Arc::new(crate::telemetry::Metrics::new(
            config.services.keys().cloned(),
        ));
        let detect = Arc::new(crate::detect::Detect::new(
            config.detect.clone(),
            metrics.clone(),
        ));
        let alerts = crate::alerts::Alerts::new(config.alerts.webhook.as_ref());
        let audit_stop = CancellationToken::new();
        let (audit, audit_task) = AuditSink::start(
            store.clone(),
            config.audit.queue,
            config.audit.on_full,
            audit_stop.clone(),
            crate::audit::Tap {
                metrics: metrics.clone(),
                detect: detect.clone(),
            },
        );
        let config = ConfigInForce::new(config);
        let authz = Authorizer::new(config.clone(), index.clone(), pepper.clone(), clock.clone());
        let sessions = Sessions::new(config.clone(), clock.clone());
        let mut gw = Self {
            config,
            clock,
            store,
            pepper,
            sealer,
            index,
            authz,
            secrets: RwLock::new(secrets),
            audit,
            audit_task: std::sync::Mutex::new(Some(audit_task)),
            audit_stop,
            admin_token_written: None,
            agents,
            metrics,
            detect,
            alerts,
            reloads: crate::reloads::Reloads::default(),
            sessions,
        };
        gw.ensure_admin_token().await?;
        Ok(gw)
    }

    /// The config in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config.current()
    }

    /// Follows the config in force: a session's way to hear of a reload.
    pub fn watch_config(&self) -> tokio::sync::watch::Receiver<Arc<Config>> {
        self.config.watch()
    }

    /// Puts `config` in force; sessions watching re-judge themselves against it.
    pub(crate) fn replace_config(&self, config: Arc<Config>) {
        self.metrics.add_services(config.services.keys().cloned());
        self.config.replace(config);
    }

    pub fn now(&self) -> UnixMillis {
        self.clock.now_ms()
    }

    /// Issues an access token for one service, and audits it. `by` names who asked
    /// (an admin token's id, `demo`, …).
    pub async fn issue(
        &self,
        req: &IssueRequest,
        by: &str,
    ) -> Result<(IssuedToken, TokenRecord), IssueError> {
        let config = self.config();
        let svc = config
            .service(&req.service)
            .ok_or_else(|| IssueError::UnknownService(req.service.chars().take(64).collect()))?;
        if req.principal.is_empty()
            || req.principal.len() > 128
            || req.principal.chars().any(char::is_control)
        {
            return Err(IssueError::BadPrincipal);
        }
        let ttl = match &req.ttl {
            Some(t) => keyway_core::units::parse_duration(t)
                .map_err(|e| IssueError::Invalid(e.to_string()))?,
            None => DEFAULT_TTL.min(config.max_ttl_of(svc)),
        };
        Self::check_ttl(&config, svc, ttl)?;
        let mut grant = Grant::new(&svc.name, &req.methods, &req.paths)?;
        grant.role = check_role(svc, req.role.as_deref())?;
        let bound = check_thumbprint(req.cert_thumbprint.as_deref())?;
        Ok(self
            .mint(&req.principal, grant, ttl, None, bound, by)
            .await?)
    }

    /// Issues a client credential: it calls no service itself, and is exchanged at the
    /// token endpoint for access tokens to the services it names, with at most the
    /// grant given here. It stops being accepted `max_age` after issue.
    pub async fn issue_credential(
        &self,
        req: &CredentialRequest,
        by: &str,
    ) -> Result<(IssuedToken, TokenRecord), IssueError> {
        if req.principal.is_empty()
            || req.principal.len() > 128
            || req.principal.chars().any(char::is_control)
        {
            return Err(IssueError::BadPrincipal);
        }
        if req.services.is_empty() {
            return Err(IssueError::Invalid("name at least one service".into()));
        }
        let config = self.config();
        let mut grants = Vec::new();
        // Each entry is `service`, or `service:METHODS:PATH,PATH` for a grant of its
        // own; without one, the request's methods and paths apply.
        for entry in &req.services {
            let mut parts = entry.splitn(3, ':');
            let name = parts.next().unwrap_or_default();
            let methods: Vec<String> = match parts.next().filter(|m| !m.is_empty()) {
                Some(m) => vec![m.to_owned()],
                None => req.methods.clone(),
            };
            let paths: Vec<String> = match parts.next().filter(|p| !p.is_empty()) {
                Some(p) => p.split(',').map(str::to_owned).collect(),
                None => req.paths.clone(),
            };
            let svc = config
                .service(name)
                .ok_or_else(|| IssueError::UnknownService(name.chars().take(64).collect()))?;
            if grants.iter().any(|g: &Grant| g.service == svc.name) {
                return Err(IssueError::Invalid(format!(
                    "service `{name}` is named twice"
                )));
            }
            grants.push(Grant::new(&svc.name, &methods, &paths)?);
        }
        let mut cidrs = Vec::new();
        for c in &req.cidrs {
            let net = c
                .parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    IssueError::Invalid(format!(
                        "`{}` is not a CIDR like 10.0.0.0/8",
                        c.chars().take(45).collect::<String>()
                    ))
                })?;
            cidrs.push(net.trunc());
        }
        let max = config.credential_max_age;
        let max_age = match &req.max_age {
            Some(a) => keyway_core::units::parse_duration(a)
                .map_err(|e| IssueError::Invalid(e.to_string()))?,
            None => max,
        };
        if max_age > max {
            return Err(IssueError::Invalid(format!(
                "max age of {} is above the policy's credential_max_age of {}",
                format_duration(max_age),
                format_duration(max)
            )));
        }
        let bound = check_thumbprint(req.cert_thumbprint.as_deref())?;
        let scope = CredentialScope {
            grants,
            cidrs,
            max_age_ms: duration_ms(max_age),
        };
        Ok(self
            .mint_credential(&req.principal, scope, max_age, bound, by)
            .await?)
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
        let mut ev = self.event(EventKind::CredentialIssued);
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

    /// Trades a client credential (already authenticated) for an access token to one
    /// of its services: 15 minutes by default, never above the service's maximum.
    pub async fn exchange(
        &self,
        credential: &Entry,
        service: &str,
        ttl: Option<Duration>,
        source: std::net::IpAddr,
        presented_cert: Option<&str>,
    ) -> Result<(IssuedToken, TokenRecord), ExchangeError> {
        let scope = credential
            .record
            .scope
            .as_ref()
            .ok_or(ExchangeError::NotACredential)?;
        if !scope.allows_source(source) {
            return Err(ExchangeError::Source);
        }
        // A bound credential works only with its certificate; the access token is bound
        // to the certificate of the exchange (RFC 8705), whether or not the credential is.
        if let Some(bound) = &credential.record.cert_thumbprint {
            if !presented_cert.is_some_and(|p| crate::authz::same_thumbprint(p, bound)) {
                return Err(ExchangeError::Certificate);
            }
        }
        let binding = presented_cert.map(str::to_owned);
        let grant = scope
            .grant(service)
            .cloned()
            .ok_or(ExchangeError::Service)?;
        let config = self.config();
        let svc = config.service(service).ok_or(ExchangeError::Service)?;
        // The policy's maximum age holds even for credentials issued under a longer one.
        let now = self.now();
        let policy_end = credential
            .record
            .created_at
            .saturating_add(duration_ms(config.credential_max_age));
        if now >= policy_end {
            return Err(ExchangeError::TooOld);
        }
        // Never longer than the service allows, nor than the credential lives.
        let left = u64::try_from(credential.expires_at().min(policy_end) - now).unwrap_or(0);
        let ttl = ttl
            .unwrap_or(DEFAULT_TTL)
            .min(config.max_ttl_of(svc))
            .min(Duration::from_millis(left));
        let (token, record) = self
            .mint(
                &credential.record.principal,
                grant,
                ttl,
                Some(credential.id().to_owned()),
                binding,
                "token_exchange",
            )
            .await?;
        // Revoked while we minted: the revocation's cascade may have missed this one.
        if credential.revoked() {
            self.revoke(&record.id, "gateway", Some("credential_revoked"))
                .await?;
            return Err(ExchangeError::Revoked);
        }
        Ok((token, record))
    }

    /// The client credential a token was obtained with, if it is in the index.
    pub fn parent_credential(&self, entry: &Entry) -> Option<Arc<Entry>> {
        self.authz.parent_credential(entry)
    }

    /// Rotates an access token: a successor with the same principal and grant, and the
    /// same lifetime (within the service's maximum); the old token keeps working for
    /// `overlap`, then dies (its live streams end then too). Both are audited.
    pub async fn rotate(
        &self,
        id: &str,
        overlap: Duration,
        by: &str,
    ) -> Result<(IssuedToken, TokenRecord, UnixMillis), RotateError> {
        let now = self.now();
        let old = self.index.get(id).ok_or(RotateError::Unknown)?;
        old.check_live(now).map_err(|_| RotateError::NotLive)?;
        let lifetime = u64::try_from(old.record.expires_at - old.record.created_at).unwrap_or(0);
        let (token, record) = match old.record.kind {
            TokenKind::Access => {
                let grant = old.grant().cloned().ok_or(RotateError::NotAccess)?;
                let config = self.config();
                let svc = config
                    .service(&grant.service)
                    .ok_or(RotateError::ServiceGone)?;
                let mut ttl = Duration::from_millis(lifetime).min(config.max_ttl_of(svc));
                // A token obtained with a credential stays in its lineage: the
                // successor is the credential's child too (so revoking the credential
                // takes it), and lives no longer than the credential.
                if let Some(credential) = self.parent_credential(&old) {
                    credential
                        .check_live(now)
                        .map_err(|_| RotateError::NotLive)?;
                    let left = u64::try_from(credential.expires_at() - now).unwrap_or(0);
                    ttl = ttl.min(Duration::from_millis(left));
                }
                let (parent, cert) = (
                    old.record.parent_id.clone(),
                    old.record.cert_thumbprint.clone(),
                );
                self.mint(&old.record.principal, grant, ttl, parent, cert, by)
                    .await?
            }
            TokenKind::ClientCredential => {
                // Same principal, scope and binding; a fresh max age within the policy.
                let scope = old.record.scope.clone().ok_or(RotateError::NotAccess)?;
                let age = Duration::from_millis(lifetime).min(self.config().credential_max_age);
                let cert = old.record.cert_thumbprint.clone();
                self.mint_credential(&old.record.principal, scope, age, cert, by)
                    .await?
            }
            _ => return Err(RotateError::NotAccess),
        };
        let until = now
            .saturating_add(duration_ms(overlap))
            .min(old.expires_at());
        self.store.shorten_expiry(id, until).await?;
        old.shorten(until);
        self.cut_at_expiry(old.clone());
        let mut ev = self.event(EventKind::TokenRotated);
        // The successor's `token.issued` names the credential it descends from; this
        // event links it to the token it replaces.
        ev.token_id = Some(id.to_owned());
        ev.principal = Some(old.record.principal.clone());
        ev.service = old.grant().map(|g| g.service.clone());
        ev.detail = serde_json::json!({
            "by": by,
            "successor": record.id,
            "expires_at": format_ms(until),
        });
        self.audit.record_reliably(ev).await;
        Ok((token, record, until))
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

    fn check_ttl(
        config: &Config,
        svc: &keyway_core::config::Service,
        ttl: Duration,
    ) -> Result<(), IssueError> {
        let max = config.max_ttl_of(svc);
        if ttl <= max {
            return Ok(());
        }
        let why = if svc.max_ttl <= config.max_ttl {
            format!(" (services.{}.max_ttl)", svc.name)
        } else {
            " (the global max_ttl)".to_owned()
        };
        Err(IssueError::TtlTooLong {
            asked: format_duration(ttl),
            max: format_duration(max),
            service: svc.name.clone(),
            why,
        })
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
        let mut ev = self.event(EventKind::TokenIssued);
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

    /// A one-use enrollment token for `agent` (1 h), and the pin of the CA the agent
    /// will find at the tunnel.
    pub async fn issue_enrollment(
        &self,
        agent: &str,
        by: &str,
    ) -> Result<(IssuedToken, TokenRecord), IssueError> {
        if !self.config().agents.contains_key(agent) {
            return Err(IssueError::Invalid(format!(
                "no agent `{}` in the config; declare `[agents.NAME]`",
                agent.chars().take(64).collect::<String>()
            )));
        }
        let now = self.now();
        let token = IssuedToken::generate(TokenKind::AgentEnrollment);
        let record = TokenRecord {
            id: token.id().to_owned(),
            kind: TokenKind::AgentEnrollment,
            principal: agent.to_owned(),
            grant: None,
            hash: token.hash(&self.pepper),
            created_at: now,
            expires_at: now.saturating_add(duration_ms(crate::agents::ENROLLMENT_TTL)),
            revoked_at: None,
            last_used_at: None,
            parent_id: None,
            scope: None,
            cert_thumbprint: None,
        };
        self.store.insert_token(&record).await?;
        self.index.insert(record.clone());
        let mut ev = self.event(EventKind::AgentEnrollmentIssued);
        ev.token_id = Some(record.id.clone());
        ev.principal = Some(record.principal.clone());
        ev.detail = serde_json::json!({ "by": by, "expires_at": format_ms(record.expires_at) });
        self.audit.record_reliably(ev).await;
        Ok((token, record))
    }

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

    /// Revokes an agent: its connections close now, and its certificates issued
    /// before now are refused, also after a restart. Returns how many connections
    /// were closed.
    pub async fn revoke_agent(&self, agent: &str, by: &str) -> Result<usize, StoreError> {
        let now = self.now();
        let closed = self.agents.revoke(agent, now);
        self.store.revoke_agent(agent, now).await?;
        // Unspent enrollment tokens would bring it back: they die too.
        let pending: Vec<String> = self
            .index
            .entries()
            .into_iter()
            .filter(|e| {
                e.record.kind == TokenKind::AgentEnrollment
                    && e.record.principal == agent
                    && !e.revoked()
            })
            .map(|e| e.id().to_owned())
            .collect();
        for id in pending {
            self.revoke(&id, by, Some("agent_revoked")).await?;
        }
        let mut ev = self.event(EventKind::AgentRevoked);
        ev.principal = Some(agent.to_owned());
        ev.detail = serde_json::json!({ "by": by, "connections_closed": closed });
        self.audit.record_reliably(ev).await;
        Ok(closed)
    }

    /// Ends the live streams of a token when its (shortened) expiry comes.
    fn cut_at_expiry(&self, entry: Arc<Entry>) {
        let left = entry.expires_at().saturating_sub(self.now()).max(0);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(left as u64)).await;
            entry.cancel.cancel();
        });
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

    /// Revokes at once, in memory: the token, and with a client credential every
    /// token obtained with it. Returns the ids this call revoked, to persist.
    pub fn revoke_in_memory(&self, id: &str, now: UnixMillis) -> Vec<String> {
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
        let mut ev = self.event(EventKind::TokenRevoked);
        ev.token_id = Some(record.id.clone());
        ev.principal = Some(record.principal.clone());
        ev.service = record.grant.as_ref().map(|g| g.service.clone());
        ev.reason = reason.map(str::to_owned);
        ev.detail = serde_json::json!({ "by": by });
        self.audit.record_reliably(ev).await;
        Ok(Some(record))
    }

    /// Seals and stores an upstream credential, uses it from the next request on, and
    /// audits the change (the name, never the value).
    pub async fn set_secret(
        &self,
        name: &str,
        value: &SecretString,
        by: &str,
    ) -> Result<(), SecretError> {
        if !valid_secret_name(name) {
            return Err(SecretError::BadName);
        }
        let header = header_value(value).ok_or(SecretError::BadValue)?;
        let sealed = self.sealer.seal(name, value);
        self.store.put_secret(name, &sealed, self.now()).await?;
        self.secrets_mut().insert(name.to_owned(), header);
        let mut ev = self.event(EventKind::SecretSet);
        ev.detail = serde_json::json!({ "name": name, "by": by });
        self.audit.record_reliably(ev).await;
        Ok(())
    }

    /// The opened upstream credential called `name`.
    pub fn secret_header(&self, name: &str) -> Option<HeaderValue> {
        self.secrets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Names of the secrets that are set.
    pub fn secret_names(&self) -> Vec<String> {
        let mut v: Vec<_> = self
            .secrets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
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

    /// Ends the live sessions and waits for their goodbyes ([`Sessions::end_all`]).
    /// Call once the listeners have stopped taking new ones.
    pub async fn end_sessions(&self) {
        self.sessions.end_all().await;
    }

    /// Plans `config` against the one in force and, unless `dry_run`, applies it
    /// ([`crate::reloads::Reloads::ask`]).
    pub async fn reload(
        &self,
        config: Config,
        by: &str,
        token_id: Option<&str>,
        dry_run: bool,
    ) -> Result<crate::reloads::Outcome, crate::reloads::ApplyError> {
        self.reloads.ask(config, by, token_id, dry_run).await
    }

    /// Stops the audit writer after it has written everything queued. Call once the
    /// listeners have drained and the sessions ended.
    pub async fn close(&self) {
        self.audit_stop.cancel();
        let task = self
            .audit_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    /// A fresh audit event at the gateway's clock.
    pub fn event(&self, kind: EventKind) -> AuditEvent {
        AuditEvent::new(kind, self.now())
    }

    async fn ensure_admin_token(&mut self) -> Result<(), OpenError> {
        let now = self.now();
        let live = self
            .index
            .entries()
            .iter()
            .any(|e| e.record.kind == TokenKind::Admin && e.check_live(now).is_ok());
        if live {
            return Ok(());
        }
        let path = self.config().data_dir.join("admin.token");
        let token = IssuedToken::generate(TokenKind::Admin);
        let record = TokenRecord {
            id: token.id().to_owned(),
            kind: TokenKind::Admin,
            principal: "admin".into(),
            grant: None,
            hash: token.hash(&self.pepper),
            created_at: now,
            expires_at: now.saturating_add(duration_ms(self.config().admin_token_ttl)),
            revoked_at: None,
            last_used_at: None,
            parent_id: None,
            scope: None,
            cert_thumbprint: None,
        };
        let write_err = |source| OpenError::AdminToken {
            path: path.display().to_string(),
            source,
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(write_err(e)),
        }
        keys::write_secret_file(&path, token.secret().expose_secret().as_bytes())
            .map_err(write_err)?;
        self.store.insert_token(&record).await?;
        self.index.insert(record);
        let mut ev = self.event(EventKind::AdminTokenCreated);
        ev.token_id = Some(token.id().to_owned());
        ev.detail = serde_json::json!({ "expires_at": format_ms(now + duration_ms(self.config().admin_token_ttl)) });
        self.audit.record_reliably(ev).await;
        self.admin_token_written = Some(path);
        Ok(())
    }

    /// Warns about upstream credentials the config names but nobody has set.
    pub fn warn_missing_secrets(&self) {
        for svc in self.config().services.values() {
            let ServiceKind::Http(h) = &svc.kind else {
                continue;
            };
            if let Some(auth) = &h.upstream_auth {
                if self.secret_header(&auth.secret).is_none() {
                    tracing::warn!(
                        service = %svc.name,
                        secret = %auth.secret,
                        "upstream credential is not set; requests will be refused with 503 until \
                         `keyway secret set {}` is run",
                        auth.secret
                    );
                }
            }
        }
    }

    fn secrets_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, HeaderValue>> {
        self.secrets.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("a secret name is 1 to 64 characters of a-z, A-Z, 0-9, `.`, `-` and `_`")]
    BadName,
    #[error("the value must be 1 to 8192 visible characters (it is sent as a header value)")]
    BadValue,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A database service needs one of its roles; other services take none.
fn check_role(
    svc: &keyway_core::config::Service,
    role: Option<&str>,
) -> Result<Option<String>, IssueError> {
    match (&svc.kind, role) {
        (ServiceKind::Postgres(pg), Some(r)) if pg.roles.contains_key(r) => Ok(Some(r.to_owned())),
        (ServiceKind::Postgres(pg), _) => Err(IssueError::Invalid(format!(
            "service `{}` needs --role, one of: {}",
            svc.name,
            pg.roles.keys().cloned().collect::<Vec<_>>().join(", ")
        ))),
        (_, None) => Ok(None),
        (_, Some(_)) => Err(IssueError::Invalid(format!(
            "service `{}` has no roles; leave --role out",
            svc.name
        ))),
    }
}

/// A thumbprint as given at issue: base64url SHA-256, 43 characters.
fn check_thumbprint(t: Option<&str>) -> Result<Option<String>, IssueError> {
    match t {
        None => Ok(None),
        Some(t)
            if t.len() == 43
                && t.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_') =>
        {
            Ok(Some(t.to_owned()))
        }
        Some(_) => Err(IssueError::BadThumbprint),
    }
}

fn header_value(v: &SecretString) -> Option<HeaderValue> {
    let s = v.expose_secret();
    if s.is_empty() || s.len() > 8192 {
        return None;
    }
    let mut h = HeaderValue::from_str(s).ok()?;
    h.set_sensitive(true);
    Some(h)
}

fn log_key(what: &str, path: &std::path::Path, src: KeySource) {
    match src {
        KeySource::Env => tracing::info!("{what} read from the environment"),
        KeySource::File => tracing::debug!(path = %path.display(), "{what} read from file"),
        KeySource::Created => {
            tracing::info!(path = %path.display(), "{what} created (keep it; back it up apart from the database)")
        }
    }
}

/// The key of the audit log's hash chain, derived from the pepper (outside the
/// database): whoever can edit the store cannot re-link an edited chain.
pub fn audit_chain_key(pepper: &Pepper) -> keyway_store::ChainKey {
    pepper.hash(b"keyway audit chain key v1").0
}
