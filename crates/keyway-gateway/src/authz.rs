//! The one authorizer. Every attempt to reach a service (HTTP, the TCP tunnel,
//! PostgreSQL) and every use of a token at the token endpoint and the admin API is
//! judged here, in one order, so that every protocol refuses what another refuses,
//! with the same [`DenyReason`].
//!
//! The order of the checks for a service ([`Authorizer::admit`]):
//!
//! 1. **The service in force.** The service the attempt reaches must be in the config
//!    in force: none by that name (never configured, or removed by a reload), or one
//!    of another protocol now, is `unknown_service`. A listener's proxy (HTTP,
//!    PostgreSQL) is judged by its own copy of the service, whole: a reload that
//!    changes the service starts a new proxy (an HTTP proxy hands it its
//!    connections), so an attempt meets the old service or the new, never a mix and
//!    never a refusal for the swap; a session admitted by the old copy is then held
//!    to the new by [`crate::sessions::fits`]. A name the client sent (the tunnel's
//!    opening frame) that no service has is refused only after the token (step 3),
//!    so that a client without a token cannot tell which names exist.
//! 2. **The source address** in the service's `allow_cidrs`, before the token is
//!    looked at, so that a stolen token cannot even be tested from elsewhere.
//! 3. **The token** ([`Authorizer::authenticate`]): present, well-formed, known,
//!    matching secret, an access token, not revoked, not expired; then its lineage
//!    (the credential it was obtained with is not revoked and allows the source) and
//!    its binding to a client certificate (RFC 8705).
//! 4. **The grant** names this service, and the service is of the attempt's protocol.
//! 5. **The lifetime** is within the service's `max_ttl` (a reload may have lowered
//!    it) and the global one in force.
//! 6. **What the protocol asks:** for HTTP, the normalised path and the method within
//!    the grant; for a database, a role in the grant.
//!
//! Checks that belong to one protocol (a token in the URL, TRACE, the rate limit, an
//! upstream credential that is not set) stay in that protocol. The authorizer writes
//! nothing: the caller marks the token used once its own checks pass too
//! ([`Admitted::mark_used`]), and audits the decision.

use std::net::IpAddr;
use std::sync::Arc;

use keyway_core::config::{Config, Service, ServiceKind};
use keyway_core::head::Bearer;
use keyway_core::{path, Clock, DenyReason, Pepper, TokenKind, UnixMillis};

use crate::index::{Entry, TokenIndex};
use crate::runtime::ConfigInForce;

/// The read side of tokens and the config, and the rule that joins them. Cheap to
/// clone; each protocol holds one.
#[derive(Clone)]
pub struct Authorizer {
    config: ConfigInForce,
    index: Arc<TokenIndex>,
    pepper: Pepper,
    clock: Arc<dyn Clock>,
    health: Arc<crate::runtime::Health>,
}

/// Which protocol an attempt speaks: a service of another protocol is not reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Tcp,
    Postgres,
}

/// How the attempt names its service.
#[derive(Debug, Clone, Copy)]
pub enum Reached<'a> {
    /// The service a listener serves, as it was when the listener's proxy started.
    Served(&'a Service),
    /// A name the client sent (the tunnel's opening frame).
    Named(&'a str),
}

/// What the protocol asks of the grant.
#[derive(Debug, Clone, Copy)]
pub enum Ask<'a> {
    /// An HTTP request: the path as sent, and the method.
    Request { method: &'a str, path: &'a str },
    /// A TCP stream: the whole service.
    Stream,
    /// A database session: a role of the grant's.
    Session,
}

/// One attempt to reach a service.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub protocol: Protocol,
    pub service: Reached<'a>,
    /// The client's address; `None` when a trusted proxy named no client, which no
    /// network names: refused wherever networks are named.
    pub source: Option<IpAddr>,
    /// The token as presented.
    pub token: Bearer<'a>,
    /// The RFC 8705 thumbprint of the client certificate, if one was presented.
    pub cert: Option<&'a str>,
    pub ask: Ask<'a>,
}

/// An admitted attempt.
#[derive(Debug)]
pub struct Admitted {
    pub entry: Arc<Entry>,
    /// The config in force the attempt was judged against. The service admitted to
    /// is in it, as the name sent reached it or as a listener's proxy holds it (the
    /// one in force but for the moment a reload swaps proxies).
    pub config: Arc<Config>,
    /// For an HTTP request: the normalised path, the one to forward.
    pub path: Option<String>,
    /// For a database session: the grant's role.
    pub role: Option<String>,
}

/// A refused attempt, with what is safe to audit about its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reason: DenyReason,
    /// The token's public id, once it parsed.
    pub token_id: Option<String>,
    /// The token's principal, once its secret matched.
    pub principal: Option<String>,
}

// === impl Authorizer ===

impl Authorizer {
    pub fn new(
        config: ConfigInForce,
        index: Arc<TokenIndex>,
        pepper: Pepper,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            config,
            index,
            pepper,
            clock,
            health: Arc::default(),
        }
    }

    /// Whether this gateway should serve; the authorizer refuses all while it is
    /// behind a shared store.
    pub fn health(&self) -> &Arc<crate::runtime::Health> {
        &self.health
    }

    /// Judges an attempt to reach a service, in the order of the module's doc.
    /// A MAC that binds `value` (an MCP session id handed to a client) to the token
    /// `token_id`: 32 hex characters, keyed from the pepper, so every replica makes
    /// the same and no other token's client can present the value as its own.
    pub fn binding(&self, token_id: &str, value: &str) -> String {
        let mut data = Vec::with_capacity(32 + token_id.len() + value.len());
        data.extend_from_slice(b"keyway session binding v1\0");
        data.extend_from_slice(token_id.as_bytes());
        data.push(0);
        data.extend_from_slice(value.as_bytes());
        hex::encode(&self.pepper.hash(&data).0[..16])
    }

    pub fn admit(&self, attempt: &Attempt<'_>) -> Result<Admitted, Refused> {
        // Behind a shared store, a revoked token may still look live here.
        if self.health.behind() {
            return Err(DenyReason::StoreBehind.into());
        }
        let config = self.config.current();
        let svc = match in_force(&config, attempt.service) {
            // An unknown name the client sent is told only to a client with a token.
            Err(DenyReason::UnknownService) if matches!(attempt.service, Reached::Named(_)) => None,
            found => Some(found.map_err(Refused::from)?),
        };
        // An unknown source is in no network: let in only where none is named.
        let allowed = |svc: &Service| {
            (attempt.source).map_or(svc.allow_cidrs.is_empty(), |s| svc.allows_source(s))
        };
        if svc.is_some_and(|svc| !allowed(svc)) {
            return Err(DenyReason::SourceNotAllowed.into());
        }
        let entry = self.authenticate(
            TokenKind::Access,
            attempt.token,
            attempt.source,
            attempt.cert,
        )?;
        let Some(svc) = svc else {
            return Err(Refused::with_entry(DenyReason::UnknownService, &entry));
        };
        let refuse = |reason| Refused::with_entry(reason, &entry);
        let grant = entry
            .grant()
            .filter(|g| g.service == svc.name && speaks(svc, attempt.protocol))
            .ok_or_else(|| refuse(DenyReason::WrongService))?;
        if entry.lifetime() > config.max_ttl_of(svc) {
            return Err(refuse(DenyReason::TtlAboveMax));
        }
        let (path, role) = match attempt.ask {
            Ask::Request { method, path } => {
                let path = path::normalize(path, !grant.restricts_paths())
                    .map_err(|_| refuse(DenyReason::BadPath))?;
                grant.check(method, &path).map_err(refuse)?;
                (Some(path), None)
            }
            Ask::Stream => (None, None),
            Ask::Session => {
                let role = grant
                    .role
                    .clone()
                    .ok_or_else(|| refuse(DenyReason::WrongService))?;
                (None, Some(role))
            }
        };
        Ok(Admitted {
            entry,
            config,
            path,
            role,
        })
    }

    /// Identifies a presented token of `kind`: present, well-formed, known, matching
    /// secret (in constant time), of that kind, live; then held to the credential it
    /// was obtained with (not revoked, its networks) and to the client certificate it
    /// is bound to. Used on its own by the token endpoint and the admin API.
    pub fn authenticate(
        &self,
        kind: TokenKind,
        token: Bearer<'_>,
        source: Option<IpAddr>,
        cert: Option<&str>,
    ) -> Result<Arc<Entry>, Refused> {
        let text = match token {
            Bearer::Token(text) => text,
            Bearer::Absent => return Err(DenyReason::NoToken.into()),
            Bearer::Several => return Err(DenyReason::MalformedToken.into()),
        };
        let entry = self
            .index
            .authenticate(text, &self.pepper, kind, self.clock.now_ms())
            .map_err(|r| Refused {
                reason: r.reason,
                token_id: r.token_id,
                principal: r.entry.map(|e| e.record.principal.clone()),
            })?;
        self.check_lineage(&entry, source)
            .map_err(|reason| Refused::with_entry(reason, &entry))?;
        if let Some(bound) = &entry.record.cert_thumbprint {
            if !cert.is_some_and(|c| same_thumbprint(c, bound)) {
                return Err(Refused::with_entry(DenyReason::CertificateMismatch, &entry));
            }
        }
        Ok(entry)
    }

    /// What a token was obtained with, if it is in the index: the client credential
    /// it was exchanged for, or the person's session it was asked through.
    pub fn lineage_parent(&self, entry: &Entry) -> Option<Arc<Entry>> {
        let parent = self.index.get(entry.record.parent_id.as_deref()?)?;
        matches!(
            parent.record.kind,
            TokenKind::ClientCredential | TokenKind::Session
        )
        .then_some(parent)
    }

    /// A token obtained with a credential or through a session is held to it on
    /// every use: it must not be revoked, and a credential's source networks apply.
    fn check_lineage(&self, entry: &Entry, source: Option<IpAddr>) -> Result<(), DenyReason> {
        let Some(parent) = self.lineage_parent(entry) else {
            return Ok(());
        };
        if parent.revoked() {
            return Err(DenyReason::Revoked);
        }
        match &parent.record.scope {
            Some(scope) if !source.map_or(scope.cidrs.is_empty(), |s| scope.allows_source(s)) => {
                Err(DenyReason::SourceNotAllowed)
            }
            _ => Ok(()),
        }
    }
}

/// Constant-time comparison of two thumbprints.
pub fn same_thumbprint(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Step 1: the service the attempt reaches: a listener's own copy while a service of
/// that name and protocol is in force, or the one in force by the name sent.
fn in_force<'c>(config: &'c Config, reached: Reached<'c>) -> Result<&'c Service, DenyReason> {
    match reached {
        Reached::Served(own) => match config.service(&own.name) {
            Some(now) if same_protocol(now, own) => Ok(own),
            _ => Err(DenyReason::UnknownService),
        },
        Reached::Named(name) => config.service(name).ok_or(DenyReason::UnknownService),
    }
}

fn same_protocol(a: &Service, b: &Service) -> bool {
    std::mem::discriminant(&a.kind) == std::mem::discriminant(&b.kind)
}

/// Whether `svc` is reached by `protocol`.
fn speaks(svc: &Service, protocol: Protocol) -> bool {
    matches!(
        (&svc.kind, protocol),
        (ServiceKind::Http(_), Protocol::Http)
            | (ServiceKind::Tcp(_), Protocol::Tcp)
            | (ServiceKind::Postgres(_), Protocol::Postgres)
    )
}

// === impl Admitted ===

impl Admitted {
    /// Records the use of the token, once the protocol's own checks passed too.
    pub fn mark_used(&self, now: UnixMillis) {
        self.entry.mark_used(now);
    }
}

// === impl Refused ===

impl Refused {
    fn with_entry(reason: DenyReason, entry: &Entry) -> Self {
        Self {
            reason,
            token_id: Some(entry.id().to_owned()),
            principal: Some(entry.record.principal.clone()),
        }
    }
}

impl From<DenyReason> for Refused {
    fn from(reason: DenyReason) -> Self {
        Self {
            reason,
            token_id: None,
            principal: None,
        }
    }
}
