//! What a token may do, and why a request is refused.

use crate::path;

mod mcp;

pub use mcp::{glob, Mcp, McpKind};

/// The scope of a token: exactly one service, and inside it an optional narrowing to
/// HTTP methods and path prefixes (empty lists mean no narrowing).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    pub service: String,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    /// For databases: the role the token connects as (mapped to an upstream user by
    /// the service's config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// For an MCP service: the tools, resources and prompts it may reach, as names
    /// (or URIs) where `*` stands for any run of characters. When none of the three
    /// is named the grant narrows nothing; once one is, an unnamed kind is denied.
    #[serde(default, skip_serializing_if = "Mcp::is_empty")]
    pub mcp: Mcp,
}

/// What a client credential may be exchanged for: for each service it names, the
/// narrowest grant an access token can get; where it may be used from; how old it may
/// grow.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CredentialScope {
    pub grants: Vec<Grant>,
    #[serde(default)]
    pub cidrs: Vec<ipnet::IpNet>,
    /// Milliseconds after issue when the credential stops being accepted.
    pub max_age_ms: i64,
}

impl CredentialScope {
    /// The grant for `service`, if the credential names it.
    pub fn grant(&self, service: &str) -> Option<&Grant> {
        self.grants.iter().find(|g| g.service == service)
    }

    /// Whether `source` may use the credential.
    pub fn allows_source(&self, source: std::net::IpAddr) -> bool {
        self.cidrs.is_empty() || self.cidrs.iter().any(|n| n.contains(&source))
    }
}

/// Why a request was refused. The client sees only the status and a generic body;
/// the reason goes to the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    NoToken,
    MalformedToken,
    BadChecksum,
    UnknownToken,
    WrongSecret,
    WrongKind,
    Expired,
    Revoked,
    WrongService,
    MethodNotGranted,
    PathNotGranted,
    BadPath,
    SourceNotAllowed,
    RateLimited,
    TokenInUrl,
    CertificateMismatch,
    MethodNotAllowed,
    AuditUnavailable,
    UpstreamCredentialMissing,
    /// The token lives longer than the service's `max_ttl` allows since a reload
    /// lowered it.
    TtlAboveMax,
    /// The service reached is not in the config in force: never configured, or
    /// removed by a reload.
    UnknownService,
    /// This replica has not caught up with the shared store for longer than
    /// `store_max_lag`: it might honour a revoked token, so it refuses all.
    StoreBehind,
    /// MCP: a tool call, resource read or prompt the grant does not name.
    ToolNotGranted,
    ResourceNotGranted,
    PromptNotGranted,
    /// MCP: a call to a tool no list through the gateway has shown (nothing pinned).
    ToolNotListed,
    /// MCP: a call to a tool whose definition changed since it was pinned.
    ToolChanged,
    /// MCP: a session id the gateway did not hand to this token's client.
    McpSessionNotGranted,
    /// MCP: a request of the server to the agent (sampling, elicitation) that the
    /// grant does not allow; withheld, and answered for the agent.
    ServerRequestNotGranted,
    /// MCP: a message that is not JSON-RPC as MCP sends it (malformed, a batch, its
    /// `Mcp-Method` / `Mcp-Name` headers disagreeing with its body).
    BadMcpMessage,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("`{0}` is not an HTTP method")]
    Method(String),
    #[error("path prefix `{0}` is not a valid absolute path: {1}")]
    Path(String, path::PathError),
    #[error("`{0}` is not a tool, resource or prompt pattern: 1 to 256 printable characters without spaces, `*` for any run of characters")]
    Pattern(String),
}

// === impl Grant ===

impl Grant {
    /// Builds a grant, upper-casing methods and normalising path prefixes.
    pub fn new(service: &str, methods: &[String], paths: &[String]) -> Result<Self, GrantError> {
        let mut ms = Vec::with_capacity(methods.len());
        for m in methods.iter().flat_map(|m| m.split(',')) {
            let m = m.trim();
            let ok = !m.is_empty() && m.len() <= 16 && m.bytes().all(|c| c.is_ascii_alphabetic());
            if !ok {
                return Err(GrantError::Method(m.chars().take(20).collect()));
            }
            let m = m.to_ascii_uppercase();
            if !ms.contains(&m) {
                ms.push(m);
            }
        }
        let mut ps = Vec::with_capacity(paths.len());
        for p in paths {
            let shown = || p.chars().take(64).collect::<String>();
            let n = path::normalize(p, false).map_err(|e| GrantError::Path(shown(), e))?;
            if !ps.contains(&n) {
                ps.push(n);
            }
        }
        Ok(Self {
            service: service.to_owned(),
            methods: ms,
            paths: ps,
            role: None,
            mcp: Mcp::default(),
        })
    }

    /// This grant, narrowed to the MCP tools, resources and prompts named (each list
    /// may also be given comma-separated).
    pub fn with_mcp(
        mut self,
        tools: &[String],
        resources: &[String],
        prompts: &[String],
    ) -> Result<Self, GrantError> {
        let patterns = |given: &[String]| -> Result<Vec<String>, GrantError> {
            let mut out: Vec<String> = Vec::new();
            for p in given.iter().flat_map(|p| p.split(',')) {
                let p = p.trim();
                let ok = !p.is_empty()
                    && p.len() <= 256
                    && p.chars().all(|c| !c.is_whitespace() && !c.is_control());
                if !ok {
                    return Err(GrantError::Pattern(p.chars().take(64).collect()));
                }
                if !out.iter().any(|o| o == p) {
                    out.push(p.to_owned());
                }
            }
            Ok(out)
        };
        self.mcp = Mcp {
            tools: patterns(tools)?,
            resources: patterns(resources)?,
            prompts: patterns(prompts)?,
            ..self.mcp
        };
        Ok(self)
    }

    /// Whether everything this grant allows, `wider` allows too: the same service and
    /// role, methods among its methods, paths under its prefixes.
    pub fn within(&self, wider: &Grant) -> bool {
        let methods = wider.methods.is_empty()
            || (!self.methods.is_empty() && self.methods.iter().all(|m| wider.methods.contains(m)));
        let paths = wider.paths.is_empty()
            || (!self.paths.is_empty()
                && self
                    .paths
                    .iter()
                    .all(|p| wider.paths.iter().any(|w| path::under_prefix(p, w))));
        self.service == wider.service
            && self.role == wider.role
            && methods
            && paths
            && self.mcp.within(&wider.mcp)
    }

    /// Whether this grant narrows paths (and so refuses encoded slashes).
    pub fn restricts_paths(&self) -> bool {
        !self.paths.is_empty()
    }

    /// Decides a request on the grant's service; `path` must be normalised.
    pub fn check(&self, method: &str, path: &str) -> Result<(), DenyReason> {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method) {
            return Err(DenyReason::MethodNotGranted);
        }
        if !self.paths.is_empty() && !self.paths.iter().any(|p| path::under_prefix(path, p)) {
            return Err(DenyReason::PathNotGranted);
        }
        Ok(())
    }

    /// A one-line description for people (`GET,HEAD /invoices/`, `role readonly`,
    /// `tools search_*,get_ticket`).
    pub fn describe(&self) -> String {
        if let Some(r) = &self.role {
            return format!("role {r}");
        }
        if !self.mcp.is_empty() {
            return self.mcp.describe();
        }
        let m = if self.methods.is_empty() {
            "any method".to_owned()
        } else {
            self.methods.join(",")
        };
        let p = if self.paths.is_empty() {
            "any path".to_owned()
        } else {
            self.paths.join(" ")
        };
        format!("{m} {p}")
    }
}

// === impl DenyReason ===

impl DenyReason {
    pub const ALL: [Self; 30] = [
        Self::NoToken,
        Self::MalformedToken,
        Self::BadChecksum,
        Self::UnknownToken,
        Self::WrongSecret,
        Self::WrongKind,
        Self::Expired,
        Self::Revoked,
        Self::WrongService,
        Self::MethodNotGranted,
        Self::PathNotGranted,
        Self::BadPath,
        Self::SourceNotAllowed,
        Self::RateLimited,
        Self::TokenInUrl,
        Self::CertificateMismatch,
        Self::MethodNotAllowed,
        Self::AuditUnavailable,
        Self::UpstreamCredentialMissing,
        Self::TtlAboveMax,
        Self::UnknownService,
        Self::StoreBehind,
        Self::ToolNotGranted,
        Self::ResourceNotGranted,
        Self::PromptNotGranted,
        Self::ToolNotListed,
        Self::ToolChanged,
        Self::McpSessionNotGranted,
        Self::ServerRequestNotGranted,
        Self::BadMcpMessage,
    ];

    /// The reason an audit log names, back.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// The name recorded in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::NoToken => "no_token",
            DenyReason::MalformedToken => "malformed_token",
            DenyReason::BadChecksum => "bad_checksum",
            DenyReason::UnknownToken => "unknown_token",
            DenyReason::WrongSecret => "wrong_secret",
            DenyReason::WrongKind => "wrong_token_kind",
            DenyReason::Expired => "expired",
            DenyReason::Revoked => "revoked",
            DenyReason::WrongService => "wrong_service",
            DenyReason::MethodNotGranted => "method_not_granted",
            DenyReason::PathNotGranted => "path_not_granted",
            DenyReason::BadPath => "bad_path",
            DenyReason::SourceNotAllowed => "source_not_allowed",
            DenyReason::RateLimited => "rate_limited",
            DenyReason::TokenInUrl => "token_in_url",
            DenyReason::CertificateMismatch => "certificate_mismatch",
            DenyReason::MethodNotAllowed => "method_not_allowed",
            DenyReason::AuditUnavailable => "audit_unavailable",
            DenyReason::UpstreamCredentialMissing => "upstream_credential_missing",
            DenyReason::TtlAboveMax => "ttl_above_max",
            DenyReason::UnknownService => "unknown_service",
            DenyReason::StoreBehind => "store_behind",
            DenyReason::ToolNotGranted => "tool_not_granted",
            DenyReason::ResourceNotGranted => "resource_not_granted",
            DenyReason::PromptNotGranted => "prompt_not_granted",
            DenyReason::ToolNotListed => "tool_not_listed",
            DenyReason::ToolChanged => "tool_changed",
            DenyReason::McpSessionNotGranted => "mcp_session_not_granted",
            DenyReason::ServerRequestNotGranted => "server_request_not_granted",
            DenyReason::BadMcpMessage => "bad_mcp_message",
        }
    }

    /// The HTTP status a client sees.
    pub fn status(self) -> u16 {
        match self {
            DenyReason::NoToken
            | DenyReason::MalformedToken
            | DenyReason::BadChecksum
            | DenyReason::UnknownToken
            | DenyReason::WrongSecret
            | DenyReason::Expired
            | DenyReason::Revoked
            | DenyReason::TokenInUrl
            | DenyReason::CertificateMismatch
            | DenyReason::TtlAboveMax => 401,
            DenyReason::WrongKind
            | DenyReason::WrongService
            | DenyReason::UnknownService
            | DenyReason::MethodNotGranted
            | DenyReason::PathNotGranted
            | DenyReason::SourceNotAllowed
            | DenyReason::ToolNotGranted
            | DenyReason::ResourceNotGranted
            | DenyReason::PromptNotGranted
            | DenyReason::ToolNotListed
            | DenyReason::ToolChanged
            | DenyReason::ServerRequestNotGranted => 403,
            DenyReason::BadPath | DenyReason::BadMcpMessage => 400,
            // What a server answers for a session it does not know: start anew.
            DenyReason::McpSessionNotGranted => 404,
            DenyReason::MethodNotAllowed => 405,
            DenyReason::RateLimited => 429,
            DenyReason::AuditUnavailable
            | DenyReason::UpstreamCredentialMissing
            | DenyReason::StoreBehind => 503,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_grant_within_another() {
        let g = |m: &[&str], p: &[&str]| Grant::new("billing", &s(m), &s(p)).unwrap();
        let deploys = g(&["POST"], &["/deploys/"]);
        assert!(deploys.within(&deploys));
        assert!(
            deploys.within(&g(&["GET", "POST"], &["/deploys/", "/x/"])),
            "reordered, wider"
        );
        assert!(deploys.within(&g(&[], &[])), "the whole service");
        assert!(g(&["POST"], &["/deploys/prod/"]).within(&deploys));
        assert!(
            !deploys.within(&g(&["POST"], &["/deploys/prod/"])),
            "narrowed paths"
        );
        assert!(
            !deploys.within(&g(&["GET"], &["/deploys/"])),
            "narrowed methods"
        );
        assert!(
            !g(&[], &["/deploys/"]).within(&deploys),
            "every method is not POST"
        );
        assert!(!deploys.within(&Grant::new("orders", &s(&["POST"]), &s(&["/deploys/"])).unwrap()));
        let mut ro = g(&[], &[]);
        ro.role = Some("readonly".into());
        assert!(!g(&[], &[]).within(&ro), "another role");
    }

    #[test]
    fn narrowing() {
        let g = Grant::new("billing", &s(&["get,head"]), &s(&["/invoices/"])).unwrap();
        assert_eq!(g.methods, s(&["GET", "HEAD"]));
        assert_eq!(g.check("GET", "/invoices/1"), Ok(()));
        assert_eq!(
            g.check("POST", "/invoices/1"),
            Err(DenyReason::MethodNotGranted)
        );
        assert_eq!(g.check("GET", "/admin"), Err(DenyReason::PathNotGranted));
        assert_eq!(g.check("GET", "/invoices"), Err(DenyReason::PathNotGranted));
        let open = Grant::new("billing", &[], &[]).unwrap();
        assert_eq!(open.check("DELETE", "/anything"), Ok(()));
        assert_eq!(open.describe(), "any method any path");
    }

    #[test]
    fn bad_grants_are_refused() {
        assert!(Grant::new("b", &s(&["GE T"]), &[]).is_err());
        assert!(Grant::new("b", &[], &s(&["invoices"])).is_err());
        assert!(Grant::new("b", &[], &s(&["/../x"])).is_err());
        let g = Grant::new("b", &[], &s(&["/a/./b/"])).unwrap();
        assert_eq!(g.paths, s(&["/a/b/"]));
    }
}
