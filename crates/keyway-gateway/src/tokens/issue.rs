//! Issuing: access tokens for one service, client credentials, agent enrollment
//! tokens, each checked against the config in force before it is minted.

use std::time::Duration;

use keyway_core::clock::{duration_ms, format_ms};
use keyway_core::config::{Config, ServiceKind};
use keyway_core::grant::{CredentialScope, GrantError};
use keyway_core::units::format_duration;
use keyway_core::{EventKind, Grant, IssuedToken, TokenKind};
use keyway_store::{StoreError, TokenRecord};

pub use keyway_core::api::{CredentialRequest, IssueRequest};

use super::{Lineage, Tokens, DEFAULT_TTL, ENROLLMENT_TTL};

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

// === impl Tokens ===

impl Tokens {
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
        let mut grant = Grant::new(&svc.name, &req.methods, &req.paths)?.with_mcp(
            &req.tools,
            &req.resources,
            &req.prompts,
        )?;
        grant.mcp.sampling = req.sampling;
        grant.mcp.elicitation = req.elicitation;
        if !grant.mcp.is_empty() && !svc.is_mcp() {
            return Err(IssueError::Invalid(format!(
                "tools, resources and prompts narrow mcp services only; `{}` is {}",
                svc.name,
                svc.protocol()
            )));
        }
        grant.role = check_role(svc, req.role.as_deref())?;
        let bound = check_thumbprint(req.cert_thumbprint.as_deref())?;
        Ok(self
            .mint(
                &req.principal,
                grant,
                ttl,
                Lineage {
                    cert_thumbprint: bound,
                    ..Lineage::default()
                },
                by,
            )
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
        let (token, record) = self.generate(TokenKind::AgentEnrollment, agent, ENROLLMENT_TTL);
        let detail = serde_json::json!({ "by": by, "expires_at": format_ms(record.expires_at) });
        self.keep(&record, EventKind::AgentEnrollmentIssued, detail)
            .await?;
        Ok((token, record))
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
