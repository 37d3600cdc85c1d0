//! The checked configuration: real types (`Duration`, `SocketAddr`, `IpNet`), no
//! field that must be set at run time, each service with its protocol's own part.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::Authority;
use http::HeaderName;
use ipnet::IpNet;

use super::problem::{without_values, ConfigError, Problem};
use super::{lint, AlertsConfig, DetectConfig, IdentityConfig, Policy, RawConfig};
use crate::units::Rate;

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// A shared PostgreSQL store's URL (never with a password); SQLite in
    /// `data_dir` when `None`.
    pub store: Option<String>,
    /// This gateway's name among the replicas of a shared store.
    pub replica: String,
    /// How long this replica may be behind a shared store before it refuses.
    pub store_max_lag: Duration,
    /// On SIGTERM, how long it keeps serving with `/healthz` at 503.
    pub drain_grace: Duration,
    pub admin_listen: SocketAddr,
    /// No token anywhere lives longer.
    pub max_ttl: Duration,
    /// Lifetime of the admin credential the gateway writes to `admin.token`.
    pub admin_token_ttl: Duration,
    /// Where workloads exchange client credentials for access tokens; none if unset.
    pub token_listen: Option<SocketAddr>,
    /// TLS (and client certificates) on the token endpoint.
    pub token_tls: Option<TlsConfig>,
    /// Where `keyway connect` reaches TCP services (always TLS).
    pub tunnel_listen: Option<SocketAddr>,
    /// The tunnel's certificate; without it, one from the gateway's local CA
    /// (`<data_dir>/ca.pem`).
    pub tunnel_tls: Option<TlsConfig>,
    /// Client certificates from this CA are taken on the tunnel (with the local CA).
    pub tunnel_client_ca: Option<PathBuf>,
    /// No client credential is accepted longer than this after its issue.
    pub credential_max_age: Duration,
    /// How long an agent's certificate lives; agents renew it at two thirds.
    pub agent_cert_ttl: Duration,
    /// Revoke a token that arrives in a URL (it is in access logs now). A request
    /// with one is refused either way.
    pub revoke_tokens_in_urls: bool,
    /// The key of token hashes; outside the database.
    pub pepper_file: PathBuf,
    /// The key that encrypts upstream credentials at rest; outside the database.
    pub master_key_file: PathBuf,
    pub audit: AuditConfig,
    pub services: BTreeMap<String, Service>,
    pub agents: BTreeMap<String, Agent>,
    /// The intrusion detectors and what they do.
    pub detect: DetectConfig,
    /// Where alerts go besides the audit log and the metrics.
    pub alerts: AlertsConfig,
    /// The identity providers whose signed tokens Keyway takes.
    pub identity: IdentityConfig,
    /// Who may obtain which grant, by name.
    pub policies: BTreeMap<String, Policy>,
    /// Where the config came from, and its shape as written.
    pub written: Written,
}

/// A config's source: what `keyway plan` shows changes in, and what the audit log
/// names it by.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Written {
    /// The file as written, untyped (JSON); `Null` when not parsed from text.
    pub value: serde_json::Value,
    /// SHA-256 of the text (hex); empty when not parsed from text.
    pub sha256: String,
    /// The folder relative paths are taken from.
    pub base_dir: PathBuf,
}

// === impl Written ===

impl Written {
    /// The hash a config's text is known by ([`Written::sha256`]): what `plan`
    /// prints, what replicas report, what an applied config is stored under.
    pub fn sha256_of(text: &str) -> String {
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text))
    }
}

/// An agent and the services it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub name: String,
    pub services: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    /// Events waiting to be written before `on_full` applies.
    pub queue: usize,
    /// Bytes those events may hold in memory (about) before `on_full` applies:
    /// under sustained overload the queue's memory is bounded by size, not only by
    /// count.
    pub queue_bytes: usize,
    pub on_full: OnFull,
    /// When an answer may go relative to its event's commit.
    pub durability: Durability,
    /// Events older than this are pruned (up to a signed checkpoint, which stays as
    /// the chain's anchor); kept for ever when unset.
    pub retention: Option<Duration>,
    /// How often the chain's head is checkpointed and signed.
    pub checkpoint_every: Duration,
    pub ports: Option<PortAuditConfig>,
}

/// `[audit.ports]`: the port audit the gateway runs on a schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct PortAuditConfig {
    pub every: Duration,
    pub hosts: Vec<String>,
    pub ports: std::collections::BTreeSet<u16>,
}

/// `audit.durability`: when an answer may go relative to its audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// An answer is released only once its event is committed and on disk (group
    /// commit: many answers share one write and fsync). The default.
    Commit,
    /// An answer goes at once; its event is written within milliseconds. A crash or
    /// power cut can lose the events of the last moments.
    Batched,
}

/// What the gateway does when the audit writer cannot keep up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// Refuse new requests (503) until the audit catches up. The default.
    FailClosed,
    /// Let requests through and count the dropped events.
    FailOpen,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    /// The gateway port that stands for the service (HTTP); TCP services have none,
    /// they are reached through `tunnel_listen`.
    pub listen: Option<SocketAddr>,
    pub max_ttl: Duration,
    /// Empty: any source address.
    pub allow_cidrs: Vec<IpNet>,
    /// Per token.
    pub rate_limit: Option<Rate>,
    /// HTTPS on the gateway's listener, and client certificates.
    pub tls: Option<TlsConfig>,
    /// The agent that reaches the upstream; `None`: the gateway dials it.
    pub via: Option<String>,
    pub kind: ServiceKind,
}

/// A listener's TLS: its certificate and key, and how client certificates are taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates are verified against this CA; without it none are asked.
    pub client_ca: Option<PathBuf>,
    /// Refuse connections without a valid client certificate.
    pub require_client_cert: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ServiceKind {
    Http(HttpService),
    Tcp(TcpService),
    Postgres(PostgresService),
}

/// A PostgreSQL service: clients log in with their Keyway token as the password; the
/// gateway logs in upstream as the role their grant maps to.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresService {
    /// `host:port`.
    pub upstream: String,
    pub database: String,
    /// Grant role name → upstream role.
    pub roles: BTreeMap<String, PgRole>,
    pub connect_timeout: Duration,
    /// Accept plaintext from beyond loopback (never by default).
    pub allow_plaintext: bool,
    /// TLS to the database; `None`: plaintext.
    pub upstream_tls: Option<UpstreamTls>,
    /// Weak login methods the database may use where the path to it is not verified
    /// (`md5`, `password`, `trust`): refused unless named.
    pub allow_weak_upstream_auth: Vec<String>,
    /// What waits for a statement's audit event to be committed (`audit_holds`).
    pub holds: PgHolds,
}

/// `audit_holds`: what of a PostgreSQL statement waits for its audit event's commit
/// under `audit.durability = "commit"` (under `batched` nothing waits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PgHolds {
    /// The statement itself: it reaches the database only once its event is
    /// committed, so a statement whose event cannot be written is never run. The
    /// default.
    #[default]
    Statement,
    /// Its answer: the statement goes at once, and what the database sends back
    /// reaches the client only once the event is committed (the commit overlaps the
    /// query). A statement whose event cannot be written may have run; its answer is
    /// withheld and the session ends.
    Answer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgRole {
    pub user: String,
    /// The name of the secret holding the password (`keyway secret set NAME`).
    pub secret: String,
}

/// A TCP service, reached with `keyway connect` through the tunnel listener.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpService {
    /// `host:port`.
    pub upstream: String,
    pub connect_timeout: Duration,
    /// TLS around the upstream connection; `None`: the bytes go as they are.
    pub upstream_tls: Option<UpstreamTls>,
}

/// TLS from the gateway to an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Verify the certificate's chain and name. `false` only where the service says
    /// so (`upstream_tls = "require"`, `upstream_insecure_skip_verify = true`).
    pub verify: bool,
    /// Trust this CA (PEM) instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// The certificate (and key) the gateway presents: mutual TLS.
    pub client_cert: Option<ClientCert>,
    /// The name verified and sent as SNI; the upstream's host when `None`.
    pub server_name: Option<String>,
}

/// A certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpService {
    pub upstream: HttpUpstream,
    /// `https://` upstreams; `None` for `http://`.
    pub upstream_tls: Option<UpstreamTls>,
    /// `tls = "local"`: the listener serves a certificate from the gateway's local CA.
    pub local_tls: bool,
    /// Cleartext HTTP/2 with prior knowledge on a listener without TLS.
    pub h2c: bool,
    /// HTTP/2 to the upstream (`upstream_protocol = "h2"`).
    pub upstream_h2: bool,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// A request body that stalls this long is cut.
    pub body_timeout: Duration,
    pub upstream_auth: Option<UpstreamAuth>,
    pub connect_timeout: Duration,
    /// Time for the upstream to start answering.
    pub upstream_timeout: Duration,
    /// Time for a client to send a request's header block.
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// `protocol = "mcp"`: the upstream is an MCP server, and calls are judged
    /// against the grant's tools, resources and prompts.
    pub mcp: Option<McpService>,
}

/// What an MCP service adds to an HTTP one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpService {
    /// Tool arguments in the audit log (redacted), not only their digest and size.
    pub audit_arguments: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpUpstream {
    pub authority: Authority,
    /// Prepended to every forwarded path; empty for none.
    pub base_path: String,
}

/// A header the gateway sets on every upstream request, its value a named secret.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamAuth {
    pub header: HeaderName,
    /// The secret's name (set with `keyway secret set NAME`), never its value.
    pub secret: String,
    /// Written before the secret's value (`Bearer `); empty for none.
    pub prefix: String,
}

// === impl Config ===

impl Config {
    /// Parses and checks `text`; relative paths are taken relative to `base_dir` (the
    /// folder of the config file).
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.span().map(|s| {
                text.as_bytes()[..s.start.min(text.len())]
                    .iter()
                    .filter(|&&c| c == b'\n')
                    .count()
                    + 1
            });
            ConfigError {
                // A secret pasted as a key comes back in the path and in "unknown
                // field `…`": masked here, for every caller.
                problems: vec![Problem {
                    line,
                    key: (!path.is_empty() && path != ".").then(|| lint::mask_secrets(&path)),
                    message: lint::mask_secrets(&without_values(inner.message().trim())),
                }],
            }
        })?;
        let mut config = raw.check(base_dir)?;
        // The same text again, untyped: the shape people wrote, for `keyway plan`.
        config.written.value = toml::from_str::<toml::Value>(text)
            .ok()
            .and_then(|v| serde_json::to_value(v).ok())
            .unwrap_or_default();
        config.written.sha256 = Written::sha256_of(text);
        Ok(config)
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(name)
    }

    /// The longest a token of `svc` may live: its own `max_ttl`, within the global
    /// one.
    pub fn max_ttl_of(&self, svc: &Service) -> Duration {
        svc.max_ttl.min(self.max_ttl)
    }
}

// === impl Service ===

impl Service {
    /// The upstream as `host:port` (an HTTP upstream's port is 80, or 443 for
    /// `https://`, unless it says).
    pub fn upstream_addr(&self) -> String {
        match &self.kind {
            ServiceKind::Http(h) => {
                let a = &h.upstream.authority;
                let default = if h.upstream_tls.is_some() { 443 } else { 80 };
                format!("{}:{}", a.host(), a.port_u16().unwrap_or(default))
            }
            ServiceKind::Tcp(t) => t.upstream.clone(),
            ServiceKind::Postgres(p) => p.upstream.clone(),
        }
    }

    /// Whether `allow_cidrs` lets `source` in (an empty list lets every address in).
    pub fn allows_source(&self, source: std::net::IpAddr) -> bool {
        self.allow_cidrs.is_empty() || self.allow_cidrs.iter().any(|n| n.contains(&source))
    }

    /// The service's TLS to its upstream, if any.
    pub fn upstream_tls(&self) -> Option<&UpstreamTls> {
        match &self.kind {
            ServiceKind::Http(h) => h.upstream_tls.as_ref(),
            ServiceKind::Tcp(t) => t.upstream_tls.as_ref(),
            ServiceKind::Postgres(p) => p.upstream_tls.as_ref(),
        }
    }

    /// Time for the upstream to accept a connection.
    pub fn connect_timeout(&self) -> Duration {
        match &self.kind {
            ServiceKind::Http(h) => h.connect_timeout,
            ServiceKind::Tcp(t) => t.connect_timeout,
            ServiceKind::Postgres(p) => p.connect_timeout,
        }
    }

    /// Whether this is an MCP service (`protocol = "mcp"`).
    pub fn is_mcp(&self) -> bool {
        matches!(&self.kind, ServiceKind::Http(h) if h.mcp.is_some())
    }

    /// `http`, `mcp`, `tcp` or `postgres`, as `protocol` says in the file.
    pub fn protocol(&self) -> &'static str {
        match &self.kind {
            ServiceKind::Http(h) if h.mcp.is_some() => "mcp",
            ServiceKind::Http(_) => "http",
            ServiceKind::Tcp(_) => "tcp",
            ServiceKind::Postgres(_) => "postgres",
        }
    }
}
