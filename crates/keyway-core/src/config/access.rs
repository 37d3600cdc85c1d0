//! Who may obtain what: `[identity.oidc.*]`, the identity providers people sign in
//! with (`keyway login`); `[identity.workload.*]`, the issuers whose signed JWTs the
//! token endpoint takes in place of a stored secret; and `[policies.*]`, which
//! subjects get which grants, for how long, and whose approval they wait for.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::check::{is_loopback_host, valid_name};
use super::problem::Problems;
use super::subject::check_subject;
use super::{Service, ServiceKind};
use crate::Grant;

/// The longest a policy's token lives when the policy does not say (within the
/// service's own maximum).
pub const DEFAULT_POLICY_TTL: Duration = Duration::from_secs(3600);

/// Signature algorithms a workload JWT may use when the issuer does not narrow them:
/// public-key ones only (never `none`, never HMAC, whose key a JWKS would publish).
pub const WORKLOAD_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// `[identity]` as written.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    #[serde(default)]
    pub oidc: BTreeMap<String, RawOidcProvider>,
    #[serde(default)]
    pub workload: BTreeMap<String, RawWorkloadIssuer>,
    /// Who may act in the console (terminate, revoke, approve) when signed in
    /// through the provider, like `["group:sre"]`. An admin token always acts.
    #[serde(default)]
    pub console_admins: Vec<String>,
    /// Who may sign in to the console through the provider only to look; no one
    /// else the provider knows may sign in there at all.
    #[serde(default)]
    pub console_viewers: Vec<String>,
}

/// `[identity.oidc.NAME]` as written: an OpenID Connect provider people sign in with.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOidcProvider {
    /// The provider's issuer URL; discovery is at
    /// `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// Keyway's client id at the provider; the `aud` of its ID tokens.
    pub client_id: String,
    /// The name of the secret (`keyway secret set NAME`) holding the client secret;
    /// unset for a public client (PKCE alone).
    pub client_secret: Option<String>,
    /// The ID token claim listing the person's groups; `groups` when unset.
    pub groups_claim: Option<String>,
    /// The ID token claim naming the person (`user:<value>` in policies); `email`
    /// when unset.
    pub user_claim: Option<String>,
    /// Scopes asked for; `["openid", "email", "groups"]` when unset.
    pub scopes: Option<Vec<String>>,
    /// How long a sign-in lasts; `12h` when unset.
    pub session_ttl: Option<String>,
}

/// `[identity.workload.NAME]` as written.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWorkloadIssuer {
    /// The `iss` its JWTs carry; discovery is at
    /// `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// The `aud` its JWTs must carry for Keyway.
    pub audience: String,
    /// The claim that names the workload; `sub` when unset.
    pub subject_claim: Option<String>,
    /// The issuer's key set, when it has no discovery document.
    pub jwks_url: Option<String>,
    /// Narrows the accepted signature algorithms (public-key ones only).
    pub algorithms: Option<Vec<String>>,
}

/// `[policies.NAME]` as written.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// `user:<email>`, `group:<name>` or `workload:<issuer>:<subject>`.
    pub subjects: Vec<String>,
    pub grants: Vec<RawPolicyGrant>,
    /// Like `15m`; 1h when unset, and never above the service's `max_ttl`.
    pub max_ttl: Option<String>,
    /// When set, a person's access waits for approvers.
    pub approval: Option<RawApproval>,
}

/// `approval = { approvers = [...], min = 1, request_ttl = "1h" }` as written.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApproval {
    /// `user:<email>` or `group:<name>`.
    pub approvers: Vec<String>,
    /// Distinct approvals needed; 1 when unset.
    pub min: Option<u32>,
    /// How long a request waits before it expires; `1h` when unset.
    pub request_ttl: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPolicyGrant {
    pub service: String,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    /// For a database service: the role its sessions log in as.
    pub role: Option<String>,
    /// For an MCP service: the tools, resources and prompts it may reach (`*` for
    /// any run of characters); once one kind is named, the others are denied unless
    /// named too.
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

/// The identity providers Keyway trusts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdentityConfig {
    pub oidc: BTreeMap<String, OidcProvider>,
    pub workload: BTreeMap<String, WorkloadIssuer>,
    /// The people (`user:`, `group:`) who act in the console.
    pub console_admins: Vec<String>,
    /// The people who may sign in to the console to look; no one else may.
    pub console_viewers: Vec<String>,
}

/// An OpenID Connect provider people sign in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcProvider {
    pub name: String,
    pub issuer: String,
    pub client_id: String,
    /// The secret's name, not the secret.
    pub client_secret: Option<String>,
    pub groups_claim: String,
    pub user_claim: String,
    pub scopes: Vec<String>,
    pub session_ttl: Duration,
}

// === impl OidcProvider ===

impl OidcProvider {
    /// How its ID tokens are read into a person: a session keeps it, and one read
    /// another way (another client, other claims) ends.
    pub fn read_as(&self) -> String {
        format!(
            "client_id={} user_claim={} groups_claim={}",
            self.client_id, self.user_claim, self.groups_claim
        )
    }
}

/// The longest a sign-in lasts when the provider's entry does not say.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// An issuer of workload JWTs (a CI system, a Kubernetes cluster, a cloud).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadIssuer {
    pub name: String,
    pub issuer: String,
    pub audience: String,
    pub subject_claim: String,
    pub jwks_url: Option<String>,
    pub algorithms: Vec<String>,
}

/// A policy: which subjects obtain which grants, for how long at most.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    /// As written: `workload:<issuer>:<subject>`.
    pub subjects: Vec<String>,
    /// At most one per service.
    pub grants: Vec<Grant>,
    pub max_ttl: Duration,
    pub approval: Option<Approval>,
}

/// Who approves a policy's access, how many of them, and how long a request waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// `user:<email>` or `group:<name>`.
    pub approvers: Vec<String>,
    pub min: u32,
    pub request_ttl: Duration,
}

// === impl Approval ===

impl Approval {
    /// Whether a person with these subjects ([`person_subjects`]) may approve.
    pub fn approver(&self, subjects: &[String]) -> bool {
        self.approvers.iter().any(|a| subjects.contains(a))
    }
}

/// The subjects a person is, as policies name them: `user:<user>` and
/// `group:<group>` for each of their groups.
pub fn person_subjects(user: &str, groups: &[String]) -> Vec<String> {
    std::iter::once(format!("user:{user}"))
        .chain(groups.iter().map(|g| format!("group:{g}")))
        .collect()
}

// === impl Policy ===

impl Policy {
    /// Whether the policy names `subject` (`workload:<issuer>:<subject>`).
    pub fn names(&self, subject: &str) -> bool {
        self.subjects.iter().any(|s| s == subject)
    }

    /// Whether the policy names any of `subjects` (a person's user and groups).
    pub fn names_any(&self, subjects: &[String]) -> bool {
        subjects.iter().any(|s| self.names(s))
    }

    pub fn grant(&self, service: &str) -> Option<&Grant> {
        self.grants.iter().find(|g| g.service == service)
    }
}

/// The policy that gives `subject` a grant on `service`: the first by name.
pub fn policy_for<'a>(
    policies: &'a BTreeMap<String, Policy>,
    subject: &str,
    service: &str,
) -> Option<(&'a Policy, &'a Grant)> {
    policies
        .values()
        .filter(|p| p.names(subject))
        .find_map(|p| p.grant(service).map(|g| (p, g)))
}

// === impl RawIdentity ===

impl RawIdentity {
    pub(super) fn check(self, p: &mut Problems) -> IdentityConfig {
        let mut oidc = BTreeMap::new();
        for (name, raw) in self.oidc {
            let key = format!("identity.oidc.{name}");
            if !valid_name(&name) {
                p.push(
                    &key,
                    "a provider's name is 1 to 63 characters of a-z, 0-9, `-` and `_`",
                );
            }
            check_url(p, &format!("{key}.issuer"), &raw.issuer);
            if raw.client_id.is_empty() || raw.client_id.len() > 256 {
                p.push(&format!("{key}.client_id"), "must be 1 to 256 characters");
            }
            if let Some(s) = &raw.client_secret {
                if !super::valid_secret_name(s) {
                    p.push(
                        &format!("{key}.client_secret"),
                        "names a secret (`keyway secret set NAME`), never holds one: 1 to 64 characters of a-z, 0-9, `-`, `_` and `.`",
                    );
                }
            }
            let claim = |p: &mut Problems, field: &str, v: Option<String>, default: &str| {
                let v = v.unwrap_or_else(|| default.into());
                if v.is_empty() || v.len() > 64 {
                    p.push(&format!("{key}.{field}"), "must be 1 to 64 characters");
                }
                v
            };
            let groups_claim = claim(p, "groups_claim", raw.groups_claim, "groups");
            let user_claim = claim(p, "user_claim", raw.user_claim, "email");
            let scopes = raw
                .scopes
                .unwrap_or_else(|| ["openid", "email", "groups"].map(String::from).to_vec());
            if !scopes.iter().any(|s| s == "openid") {
                p.push(
                    &format!("{key}.scopes"),
                    "must include `openid`: the sign-in is an ID token",
                );
            }
            if scopes
                .iter()
                .any(|s| s.is_empty() || s.len() > 64 || !s.bytes().all(|c| c.is_ascii_graphic()))
            {
                p.push(
                    &format!("{key}.scopes"),
                    "each scope is 1 to 64 printable characters without spaces",
                );
            }
            let session_ttl = p.duration_or(
                &format!("{key}.session_ttl"),
                raw.session_ttl.as_deref(),
                DEFAULT_SESSION_TTL,
            );
            if !(Duration::from_secs(60)..=Duration::from_secs(30 * 86400)).contains(&session_ttl) {
                p.push(&format!("{key}.session_ttl"), "must be between 1m and 30d");
            }
            oidc.insert(
                name.clone(),
                OidcProvider {
                    name,
                    issuer: raw.issuer,
                    client_id: raw.client_id,
                    client_secret: raw.client_secret,
                    groups_claim,
                    user_claim,
                    scopes,
                    session_ttl,
                },
            );
        }
        if oidc.len() > 1 {
            p.push(
                "identity.oidc",
                "one sign-in provider in this version: `user:` and `group:` subjects name no provider, so a second would let its people claim the first's names",
            );
        }
        let mut workload = BTreeMap::new();
        for (name, raw) in self.workload {
            let key = format!("identity.workload.{name}");
            if !valid_name(&name) {
                p.push(
                    &key,
                    "an issuer's name is 1 to 63 characters of a-z, 0-9, `-` and `_`",
                );
            }
            check_url(p, &format!("{key}.issuer"), &raw.issuer);
            // A JWT's `iss` picks its issuer: two entries for one would leave the
            // second's audience and keys unused.
            if let Some(other) = workload
                .values()
                .find(|w: &&WorkloadIssuer| w.issuer == raw.issuer)
            {
                p.push(
                    &format!("{key}.issuer"),
                    &format!(
                        "is also `identity.workload.{}`'s; one entry per issuer",
                        other.name
                    ),
                );
            }
            if let Some(u) = &raw.jwks_url {
                check_url(p, &format!("{key}.jwks_url"), u);
            }
            if raw.audience.is_empty() || raw.audience.len() > 256 {
                p.push(&format!("{key}.audience"), "must be 1 to 256 characters");
            }
            let subject_claim = raw.subject_claim.unwrap_or_else(|| "sub".into());
            if subject_claim.is_empty() || subject_claim.len() > 64 {
                p.push(
                    &format!("{key}.subject_claim"),
                    "must be 1 to 64 characters",
                );
            }
            let algorithms = match raw.algorithms {
                None => WORKLOAD_ALGORITHMS.iter().map(|a| a.to_string()).collect(),
                Some(list) => {
                    for (i, a) in list.iter().enumerate() {
                        if !WORKLOAD_ALGORITHMS.contains(&a.as_str()) {
                            p.push(
                                &format!("{key}.algorithms[{i}]"),
                                &format!(
                                    "must be one of {}: public-key signatures only",
                                    WORKLOAD_ALGORITHMS.join(", ")
                                ),
                            );
                        }
                    }
                    if list.is_empty() {
                        p.push(&format!("{key}.algorithms"), "name at least one");
                    }
                    list
                }
            };
            workload.insert(
                name.clone(),
                WorkloadIssuer {
                    name,
                    issuer: raw.issuer,
                    audience: raw.audience,
                    subject_claim,
                    jwks_url: raw.jwks_url,
                    algorithms,
                },
            );
        }
        let mut identity = IdentityConfig {
            oidc,
            workload,
            console_admins: vec![],
            console_viewers: vec![],
        };
        for (key, list) in [
            ("console_admins", &self.console_admins),
            ("console_viewers", &self.console_viewers),
        ] {
            for (i, s) in list.iter().enumerate() {
                check_subject(p, &format!("identity.{key}[{i}]"), s, &identity, false);
            }
        }
        identity.console_admins = self.console_admins;
        identity.console_viewers = self.console_viewers;
        identity
    }
}

/// Whether an identity provider's URL may be trusted for its keys: HTTPS, or HTTP on
/// loopback (a test's own issuer). The config's check and the gateway's fetch of a
/// discovery document's `jwks_uri` both ask this.
pub fn https_or_loopback(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str() {
        Some("https") => !host.is_empty(),
        Some("http") => is_loopback_host(host),
        _ => false,
    }
}

/// An issuer's URL, as [`https_or_loopback`] takes it.
fn check_url(p: &mut Problems, key: &str, url: &str) {
    if https_or_loopback(url) {
        return;
    }
    let http = url
        .parse::<http::Uri>()
        .is_ok_and(|u| u.scheme_str() == Some("http"));
    let msg = if http {
        "must be https (http only on loopback): its keys decide who gets tokens"
    } else {
        "is not a URL like https://token.actions.githubusercontent.com"
    };
    p.push(key, msg);
}

// === impl RawPolicy ===

impl RawPolicy {
    pub(super) fn check(
        self,
        name: &str,
        services: &BTreeMap<String, Service>,
        identity: &IdentityConfig,
        p: &mut Problems,
    ) -> Policy {
        let key = format!("policies.{name}");
        if !valid_name(name) {
            p.push(
                &key,
                "a policy name is 1 to 63 characters of a-z, 0-9, `-` and `_`",
            );
        }
        if self.subjects.is_empty() {
            p.push(&format!("{key}.subjects"), "name at least one subject");
        }
        for (i, s) in self.subjects.iter().enumerate() {
            let at = format!("{key}.subjects[{i}]");
            check_subject(p, &at, s, identity, true);
        }
        let approval = self.approval.map(|raw| {
            let at = format!("{key}.approval");
            if raw.approvers.is_empty() {
                p.push(&format!("{at}.approvers"), "name at least one approver");
            }
            for (i, s) in raw.approvers.iter().enumerate() {
                check_subject(p, &format!("{at}.approvers[{i}]"), s, identity, false);
            }
            let min = raw.min.unwrap_or(1);
            if !(1..=16).contains(&min) {
                p.push(&format!("{at}.min"), "must be between 1 and 16");
            }
            let request_ttl = p.duration_or(
                &format!("{at}.request_ttl"),
                raw.request_ttl.as_deref(),
                Duration::from_secs(3600),
            );
            if !(Duration::from_secs(1)..=Duration::from_secs(7 * 86400)).contains(&request_ttl) {
                p.push(&format!("{at}.request_ttl"), "must be between 1s and 7d");
            }
            Approval {
                approvers: raw.approvers,
                min,
                request_ttl,
            }
        });
        let max_ttl = p.duration_or(
            &format!("{key}.max_ttl"),
            self.max_ttl.as_deref(),
            DEFAULT_POLICY_TTL,
        );
        if self.grants.is_empty() {
            p.push(&format!("{key}.grants"), "name at least one grant");
        }
        let mut grants: Vec<Grant> = Vec::new();
        for (i, g) in self.grants.into_iter().enumerate() {
            let at = format!("{key}.grants[{i}]");
            let Some(svc) = services.get(&g.service) else {
                p.push(
                    &format!("{at}.service"),
                    &format!(
                        "names no service; declare `[services.{}]`",
                        g.service.chars().take(64).collect::<String>()
                    ),
                );
                continue;
            };
            if grants.iter().any(|x| x.service == g.service) {
                p.push(&at, "a policy grants a service once; merge the two");
                continue;
            }
            let narrows = !g.methods.is_empty() || !g.paths.is_empty();
            match (&svc.kind, &g.role) {
                (ServiceKind::Http(_), Some(_)) => {
                    p.push(&format!("{at}.role"), "an HTTP service has no roles");
                }
                (ServiceKind::Postgres(pg), Some(r)) if !pg.roles.contains_key(r) => p.push(
                    &format!("{at}.role"),
                    &format!(
                        "names no role of `{}`; it has: {}",
                        g.service,
                        pg.roles.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ),
                (ServiceKind::Postgres(_), None) => {
                    p.push(&format!("{at}.role"), "a database grant names its role");
                }
                (ServiceKind::Tcp(_), Some(_)) => {
                    p.push(&format!("{at}.role"), "a tcp service has no roles");
                }
                _ => {}
            }
            if narrows && !matches!(svc.kind, ServiceKind::Http(_)) {
                p.push(
                    &at,
                    "methods and paths narrow HTTP services only; this service would take them as a grant to everything",
                );
            }
            let grant = Grant::new(&g.service, &g.methods, &g.paths)
                .and_then(|x| x.with_mcp(&g.tools, &g.resources, &g.prompts));
            match grant {
                Ok(mut grant) => {
                    grant.role = g.role;
                    grant.mcp.sampling = g.sampling;
                    grant.mcp.elicitation = g.elicitation;
                    if !grant.mcp.is_empty() && !svc.is_mcp() {
                        p.push(
                            &at,
                            "tools, resources and prompts narrow mcp services only; this service would take them as a grant to everything",
                        );
                    }
                    grants.push(grant);
                }
                Err(e) => p.push(&at, &e.to_string()),
            }
        }
        Policy {
            name: name.to_owned(),
            subjects: self.subjects,
            grants,
            max_ttl,
            approval,
        }
    }
}
