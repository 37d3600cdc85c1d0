//! The admin API's requests and answers: what the gateway serves and the CLI reads,
//! in one place both use. Plain data; how each is made is the gateway's business.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::plan::Plan;

/// What `issue` is asked for.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
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
    /// For an MCP service: the tools, resources and prompts the token may reach
    /// (patterns, `*` for any run of characters).
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub prompts: Vec<String>,
    /// For an MCP service: the server may ask the agent's model for completions.
    #[serde(default)]
    pub sampling: bool,
    /// For an MCP service: the server may ask the agent's user for input.
    #[serde(default)]
    pub elicitation: bool,
}

/// What `credential issue` is asked for.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
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

/// A token as the admin API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub kind: String,
    pub principal: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub methods: Vec<String>,
    pub paths: Vec<String>,
    /// For database services: the role the token connects as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// For MCP services: the tools, resources and prompts granted.
    #[serde(default, skip_serializing_if = "crate::Mcp::is_empty")]
    pub mcp: crate::Mcp,
    pub state: String,
    pub created_at: String,
    pub expires_at: String,
    pub revoked_at: Option<String>,
    pub last_used_at: Option<String>,
    /// For a token obtained through a policy: the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// And the issuer of the identity that obtained it (`iss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

/// A token issued, shown this once, with what it grants.
// Its `Debug` leaves the token out.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Issued {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("token", &"***")
            .field("info", &self.info)
            .finish()
    }
}

/// An enrollment, given once: the token and the CA pin joined by `.`, as
/// `keyway agent run --enroll-token-file` reads it.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Enrollment {
    pub enrollment: String,
    pub expires_at: String,
}

/// What `keyway agent list` shows of an agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentStatus {
    pub name: String,
    /// `connected`, `disconnected` or `revoked`.
    pub state: String,
    pub connections: usize,
    pub version: Option<String>,
    pub last_heartbeat: Option<String>,
    pub peers: Vec<String>,
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Report {
    /// The window's start.
    pub since: String,
    pub unused_tokens: Vec<Unused>,
    pub credentials_near_max_age: Vec<Unused>,
    pub quiet_services: Vec<QuietService>,
    pub broad_grants: Vec<BroadGrant>,
    pub agents_not_connected: Vec<String>,
    /// The audit log had more distinct uses than the report reads: older uses may be
    /// missing (a service may show as quiet, a method as unused).
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Unused {
    pub id: String,
    pub kind: String,
    pub principal: String,
    pub service: Option<String>,
    pub expires_at: String,
    pub last_used_at: Option<String>,
    /// The policy the token came through: narrow or remove it there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QuietService {
    pub service: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BroadGrant {
    pub token_id: String,
    pub principal: String,
    pub service: String,
    /// What the grant allows; empty means every method, or the whole service.
    pub granted_methods: Vec<String>,
    pub granted_paths: Vec<String>,
    /// What was used within the window: methods, and first path segments.
    pub used_methods: Vec<String>,
    pub used_paths: Vec<String>,
    /// Granted path prefixes nothing was asked under.
    #[serde(default)]
    pub unused_paths: Vec<String>,
    /// The policy the grant came from: narrow it there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// What a reload did, or would do.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Outcome {
    pub plan: Plan,
    pub applied: bool,
    /// The SHA-256 of the config text now in force (after an apply) or proposed.
    pub sha256: String,
    /// The SHA-256 of the config text that was in force before.
    pub previous_sha256: String,
    /// Where each service with a port listens now.
    pub listening: BTreeMap<String, String>,
    /// The folder relative paths in the proposed config were taken from: the running
    /// config's, wherever the file was sent from.
    #[serde(default)]
    pub base_dir: String,
}
