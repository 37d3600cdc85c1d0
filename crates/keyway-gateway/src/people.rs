//! People: signing in with an identity provider (`keyway login`), obtaining access as
//! policies allow (`keyway access`), and the access requests a policy's `approval`
//! makes wait for approvers (`keyway requests`).
//!
//! A sign-in gives a Keyway session (a `kwse_` token, `session_ttl`) naming the
//! person (`user:<user>`) and their groups at sign-in; the provider's tokens are not
//! kept. Through it the person obtains access tokens, each the session's child (the
//! session's end ends them) and no broader, nor longer, than a policy naming the
//! person or one of their groups allows. A policy with `approval` files a request
//! instead; `min` distinct approvers (never the requester) approve it before it
//! expires, and the requester collects the token once.
//!
//! # Layout
//!
//! - `oidc`: the provider's client: authorization code with PKCE, the device flow,
//!   the ID token's verification.
//! - `requests`: access requests, their approvers' decisions, collection and early
//!   end.

use std::sync::Arc;
use std::time::Duration;

use keyway_core::clock::{duration_ms, format_ms};
use keyway_core::config::{person_subjects, Approval, Config, Policy};
use keyway_core::{Clock, EventKind, Grant, IssuedToken, UnixMillis};
use keyway_store::{AccessRequest, Origin, Store, StoreError, TokenRecord};
use rand::Rng;
use secrecy::SecretString;
use serde_json::json;

pub mod oidc;
mod requests;

use crate::audit::AuditSink;
use crate::identity::IdentityError;
use crate::index::Entry;
use crate::runtime::ConfigInForce;
use crate::secrets::Secrets;
use crate::tokens::{PersonTokenError, Tokens, DEFAULT_TTL};

pub use oidc::{Person, Started};
pub use requests::{Listed, RequestError};

/// What a person asks for (`keyway access`): narrower than the policy, or all of it.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    pub service: String,
    pub role: Option<String>,
    pub methods: Vec<String>,
    pub paths: Vec<String>,
    pub ttl: Option<Duration>,
    pub reason: Option<String>,
}

/// What an ask got.
pub enum Given {
    /// The policy gives it at once.
    Token(IssuedToken, TokenRecord),
    /// The policy wants approval: a request is filed.
    Filed(AccessRequest, Approval),
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("no service `{0}`")]
    NoService(String),
    #[error("{0}")]
    BadAsk(String),
    /// No policy names the person for the service; `offered` says which policies
    /// give it, and to whom.
    #[error("no policy gives you `{service}`{offered}")]
    NoPolicy { service: String, offered: String },
    /// A policy names the person for the service, but gives less than asked.
    #[error("you asked for more of `{service}` than your policies give: {gives}")]
    Broader { service: String, gives: String },
    #[error("you have {MAX_OPEN_REQUESTS} access requests open; withdraw one (`keyway requests revoke ID`) or wait for them to expire")]
    TooManyRequests,
    #[error(transparent)]
    Token(#[from] PersonTokenError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Access requests one person may have open at once.
pub const MAX_OPEN_REQUESTS: usize = 10;

/// Sign-ins, people's access, and access requests.
pub struct People {
    config: ConfigInForce,
    clock: Arc<dyn Clock>,
    store: Arc<dyn Store>,
    tokens: Arc<Tokens>,
    secrets: Arc<Secrets>,
    audit: AuditSink,
    /// Tells the alert webhook of a new request.
    notify: Notify,
    oidc: oidc::Client,
}

/// Sends an audit event to the alert webhook (the supervisor wires it).
pub type Notify = Arc<dyn Fn(&keyway_store::AuditEvent) + Send + Sync>;

// === impl People ===

impl People {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: ConfigInForce,
        clock: Arc<dyn Clock>,
        store: Arc<dyn Store>,
        tokens: Arc<Tokens>,
        secrets: Arc<Secrets>,
        audit: AuditSink,
        notify: Notify,
    ) -> Self {
        Self {
            config,
            clock,
            store,
            tokens,
            secrets,
            audit,
            notify,
            oidc: oidc::Client::default(),
        }
    }

    fn now(&self) -> UnixMillis {
        self.clock.now_ms()
    }

    /// The provider a sign-in names, or the only one there is.
    fn provider(
        config: &Config,
        name: Option<&str>,
    ) -> Result<keyway_core::config::OidcProvider, LoginError> {
        let all = &config.identity.oidc;
        match name {
            Some(n) => all
                .get(n)
                .cloned()
                .ok_or_else(|| LoginError::UnknownProvider(n.chars().take(63).collect())),
            None if all.len() == 1 => {
                Ok(all.values().next().cloned().ok_or(LoginError::NoProvider)?)
            }
            None if all.is_empty() => Err(LoginError::NoProvider),
            None => Err(LoginError::WhichProvider(
                all.keys().cloned().collect::<Vec<_>>().join(", "),
            )),
        }
    }

    /// The client secret of `provider`, from the secrets (never the config).
    fn client_secret(
        &self,
        provider: &keyway_core::config::OidcProvider,
    ) -> Result<Option<SecretString>, LoginError> {
        let Some(name) = &provider.client_secret else {
            return Ok(None);
        };
        let value = self
            .secrets
            .header(name)
            .and_then(|h| h.to_str().ok().map(|s| SecretString::from(s.to_owned())))
            .ok_or_else(|| LoginError::NoClientSecret(name.clone()))?;
        Ok(Some(value))
    }

    /// Starts a sign-in ([`oidc::Client::start`]) for the CLI: in a browser back to
    /// a loopback `redirect_uri` the CLI listens on, or with the device flow.
    pub async fn login_start(
        &self,
        provider: Option<&str>,
        redirect_uri: Option<&str>,
        source: std::net::IpAddr,
    ) -> Result<Started, LoginError> {
        if redirect_uri.is_some_and(|u| !oidc::loopback_redirect(u)) {
            return Err(LoginError::RedirectNotLoopback);
        }
        self.start(provider, redirect_uri, source).await
    }

    /// Starts a browser sign-in for the console, back to its own `callback` on the
    /// admin listener (which the provider must have registered).
    pub async fn console_login_start(
        &self,
        callback: &str,
        source: std::net::IpAddr,
    ) -> Result<Started, LoginError> {
        self.start(None, Some(callback), source).await
    }

    async fn start(
        &self,
        provider: Option<&str>,
        redirect_uri: Option<&str>,
        source: std::net::IpAddr,
    ) -> Result<Started, LoginError> {
        let config = self.config.current();
        let p = Self::provider(&config, provider)?;
        let secret = self.client_secret(&p)?;
        self.oidc
            .start(&p, redirect_uri, secret.as_ref(), source)
            .await
    }

    /// Finishes a sign-in and makes the person's session.
    pub async fn login_finish(
        &self,
        login_id: &str,
        code: Option<&str>,
        state: Option<&str>,
    ) -> Result<(Person, IssuedToken, TokenRecord), LoginFinishError> {
        let config = self.config.current();
        let name = self
            .oidc
            .provider_of(login_id)
            .ok_or(LoginError::UnknownLogin)?;
        let p = Self::provider(&config, Some(&name))?;
        let secret = self.client_secret(&p)?;
        let person = self
            .oidc
            .finish(&p, login_id, code, state, secret.as_ref(), self.now())
            .await?;
        let origin = Origin {
            provider: person.provider.clone(),
            issuer: person.issuer.clone(),
            subject: format!("user:{}", person.user),
            groups: person.groups.clone(),
            read_as: Some(p.read_as()),
            ..Origin::default()
        };
        let (token, record) = self
            .tokens
            .mint_session(origin, p.session_ttl)
            .await
            .map_err(LoginFinishError::Store)?;
        Ok((person, token, record))
    }

    /// Ends the session, and every access token obtained through it.
    pub async fn logout(&self, session: &Entry) -> Result<(), StoreError> {
        self.tokens
            .revoke(session.id(), &session.record.principal, Some("logout"))
            .await
            .map(drop)
    }

    /// The policies that name the person of `session`, for `keyway whoami`.
    pub fn allowed(&self, session: &Entry) -> Vec<Policy> {
        let config = self.config.current();
        let subjects = subjects_of(session);
        config
            .policies
            .values()
            .filter(|p| p.names_any(&subjects))
            .cloned()
            .collect()
    }

    /// A person's ask: a token at once, a request filed for approval, or a refusal
    /// that says why.
    pub async fn access(&self, session: &Entry, ask: &Ask) -> Result<Given, AccessError> {
        let config = self.config.current();
        let service = ask.service.chars().take(64).collect::<String>();
        let svc = config
            .service(&ask.service)
            .ok_or_else(|| AccessError::NoService(service.clone()))?;
        let mut wanted = Grant::new(&ask.service, &ask.methods, &ask.paths)
            .map_err(|e| AccessError::BadAsk(e.to_string()))?;
        wanted.role = ask.role.clone();
        let subjects = subjects_of(session);
        let mine: Vec<(&Policy, &Grant)> = config
            .policies
            .values()
            .filter(|p| p.names_any(&subjects))
            .filter_map(|p| p.grant(&ask.service).map(|g| (p, g)))
            .collect();
        if mine.is_empty() {
            let offered: Vec<String> = config
                .policies
                .values()
                .filter(|p| p.grant(&ask.service).is_some())
                .map(|p| {
                    let approval = p.approval.as_ref().map_or(String::new(), |a| {
                        format!(" (approved by {})", a.approvers.join(", "))
                    });
                    format!(
                        "policy `{}` gives it to {}{approval}",
                        p.name,
                        p.subjects.join(", ")
                    )
                })
                .collect();
            let offered = if offered.is_empty() {
                "; no policy gives it to anyone".to_owned()
            } else {
                format!("; {}", offered.join("; "))
            };
            return Err(AccessError::NoPolicy { service, offered });
        }
        // Unnarrowed parts take the policy's; one without approval first.
        let mut fits: Vec<(&Policy, Grant)> = mine
            .iter()
            .map(|(p, g)| {
                let mut w = wanted.clone();
                if w.methods.is_empty() {
                    w.methods = g.methods.clone();
                }
                if w.paths.is_empty() {
                    w.paths = g.paths.clone();
                }
                if w.role.is_none() {
                    w.role = g.role.clone();
                }
                (*p, w)
            })
            .filter(|(p, w)| p.grant(&ask.service).is_some_and(|g| w.within(g)))
            .collect();
        fits.sort_by_key(|(p, _)| p.approval.is_some());
        let Some((policy, grant)) = fits.into_iter().next() else {
            let gives = mine
                .iter()
                .map(|(p, g)| format!("policy `{}` gives {}", p.name, describe(g)))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(AccessError::Broader { service, gives });
        };
        let ttl = ask
            .ttl
            .unwrap_or(DEFAULT_TTL)
            .min(policy.max_ttl)
            .min(config.max_ttl_of(svc));
        if let Some(approval) = &policy.approval {
            // Open requests (not yet expired, nor ended) of this person, at most
            // [`MAX_OPEN_REQUESTS`]: one person cannot flood the approvers.
            let me = &session.record.principal;
            let open = self
                .store
                .requests(self.now(), 500)
                .await?
                .iter()
                .filter(|r| r.origin.subject == *me && r.rejected.is_none())
                .count();
            if open >= MAX_OPEN_REQUESTS {
                return Err(AccessError::TooManyRequests);
            }
            let r = self
                .file(session, policy, approval, grant, ttl, ask.reason.clone())
                .await?;
            return Ok(Given::Filed(r, approval.clone()));
        }
        let (token, record) = self
            .tokens
            .mint_for_person(session, &policy.name, grant, ttl, None)
            .await?;
        Ok(Given::Token(token, record))
    }

    async fn file(
        &self,
        session: &Entry,
        policy: &Policy,
        approval: &Approval,
        grant: Grant,
        ttl: Duration,
        reason: Option<String>,
    ) -> Result<AccessRequest, StoreError> {
        let now = self.now();
        let mut origin = session.record.origin.clone().unwrap_or_default();
        origin.policy = policy.name.clone();
        let id: String = rand::rngs::OsRng
            .sample_iter(rand::distributions::Alphanumeric)
            .take(16)
            .map(char::from)
            .collect();
        let r = AccessRequest {
            id: format!("req_{id}"),
            version: 0,
            origin: *origin,
            grant,
            ttl_ms: duration_ms(ttl).max(0).unsigned_abs(),
            reason: reason.map(|r| r.chars().take(512).collect()),
            created_at: now,
            expires_at: now.saturating_add(duration_ms(approval.request_ttl)),
            approvals: vec![],
            rejected: None,
        };
        let detail = json!({
            "request": r.id,
            "policy": policy.name,
            "grant": r.grant,
            "ttl_s": r.ttl_ms / 1000,
            "reason": r.reason,
            "approvers": approval.approvers,
            "min": approval.min,
            "expires_at": format_ms(r.expires_at),
        });
        let ev = self
            .write_request(session, &r, EventKind::AccessRequested, detail)
            .await?;
        // The webhook hears of it (one signed POST), so approvers can be told.
        (self.notify)(&ev);
        Ok(r)
    }
}

/// Why a sign-in did not end in a person.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("no identity provider `{0}` is configured")]
    UnknownProvider(String),
    #[error("name the provider (--provider): this gateway has {0}")]
    WhichProvider(String),
    #[error("this gateway has no identity provider for people ([identity.oidc.*])")]
    NoProvider,
    #[error(
        "the redirect must go to this machine: http://127.0.0.1:<port>/… or http://[::1]:<port>/…"
    )]
    RedirectNotLoopback,
    #[error("the provider does not offer the device flow")]
    NoDeviceFlow,
    #[error("no sign-in under way with that id (finished, or started over 10 minutes ago)")]
    UnknownLogin,
    #[error("the redirect's state does not match this sign-in")]
    StateMismatch,
    /// Device flow: not yet confirmed; poll again after the interval.
    #[error("waiting for the person to confirm")]
    Pending { interval: Duration },
    /// The provider refused (the person said no, the code expired): its error code.
    #[error("the identity provider refused the sign-in: {0}")]
    Refused(String),
    /// The ID token failed verification.
    #[error("the identity provider's ID token was refused: {0}")]
    IdToken(IdentityError),
    #[error("the ID token lacks the user claim `{0}`, or it is not a plain string")]
    NoUser(String),
    #[error("the ID token does not say the email address is verified (`email_verified`); name a claim the provider vouches for in `user_claim`")]
    EmailNotVerified,
    #[error("the client secret `{0}` is not set; run `keyway secret set {0}`")]
    NoClientSecret(String),
    #[error("the identity provider cannot be reached: {0}")]
    Unreachable(String),
    #[error("too many sign-ins under way (from this address, or in all); retry in a few minutes")]
    Busy,
}

// === impl LoginError ===

impl LoginError {
    /// The audit log's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownProvider(_) | Self::WhichProvider(_) | Self::NoProvider => {
                "unknown_provider"
            }
            Self::RedirectNotLoopback => "bad_redirect",
            Self::NoDeviceFlow => "no_device_flow",
            Self::UnknownLogin => "unknown_login",
            Self::StateMismatch => "state_mismatch",
            Self::Pending { .. } => "pending",
            Self::Refused(_) => "provider_refused",
            Self::IdToken(e) => e.reason(),
            Self::NoUser(_) => "missing_claim",
            Self::EmailNotVerified => "email_not_verified",
            Self::NoClientSecret(_) => "no_client_secret",
            Self::Unreachable(_) => "provider_unreachable",
            Self::Busy => "busy",
        }
    }
}

/// Why a sign-in's last step failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginFinishError {
    #[error(transparent)]
    Login(#[from] LoginError),
    #[error(transparent)]
    Store(StoreError),
}

/// The subjects the person of a session is: their user and their groups at sign-in.
pub fn subjects_of(session: &Entry) -> Vec<String> {
    let origin = session.record.origin.as_ref();
    let user = session
        .record
        .principal
        .strip_prefix("user:")
        .unwrap_or(&session.record.principal);
    person_subjects(user, origin.map_or(&[][..], |o| &o.groups))
}

/// A grant as a person reads it.
pub fn describe(g: &Grant) -> String {
    let mut parts = Vec::new();
    if let Some(r) = &g.role {
        parts.push(format!("role {r}"));
    }
    if !g.methods.is_empty() {
        parts.push(format!("methods {}", g.methods.join(", ")));
    } else if g.role.is_none() {
        parts.push("every method".to_owned());
    }
    if !g.paths.is_empty() {
        parts.push(format!("paths {}", g.paths.join(", ")));
    }
    parts.join(", ")
}
