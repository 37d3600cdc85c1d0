//! `keyway.toml`, in two stages.
//!
//! [`RawConfig`] is the file's shape, parsed strictly (`deny_unknown_fields`). It is
//! then checked into [`Config`], which has real types (`Duration`, `SocketAddr`,
//! `IpNet`) and no field that "must be set at run time". Every problem is reported
//! with the key's path and how to fix it; no error repeats the file's text, since a
//! config file is where people mistakenly paste secrets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, Uri};
use ipnet::IpNet;
use serde::Deserialize;

use crate::units::{parse_duration, Rate};

mod detect;
pub mod lint;
pub mod plan;
pub use detect::{
    Action, AlertsConfig, DetectConfig, Detector, DetectorKind, RawAlerts, RawDetect, RawDetector,
    RawWebhook, Webhook,
};

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7070";
pub const DEFAULT_DATA_DIR: &str = "keyway-data";
const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_ADMIN_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Ports the port audit scans when `[audit.ports] ports` is unset: the well-known
/// range and where databases, caches, brokers and admin consoles usually listen.
pub const PORT_AUDIT_DEFAULT: &str = "1-1024,1433,1521,2375-2376,2379,3000,3306,5000,5432,5601,5672,5984,6379,7000-7001,8000,8008,8080-8090,8443,8888,9000,9042,9090,9092,9200,9300,11211,15672,27017";
const DEFAULT_CREDENTIAL_MAX_AGE: Duration = Duration::from_secs(90 * 24 * 3600);

/// The file as written.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub data_dir: Option<PathBuf>,
    pub admin_listen: Option<String>,
    pub max_ttl: Option<String>,
    pub admin_token_ttl: Option<String>,
    pub token_listen: Option<String>,
    pub token_tls: Option<RawTls>,
    pub tunnel_listen: Option<String>,
    pub tunnel_tls: Option<RawTls>,
    pub credential_max_age: Option<String>,
    pub agent_cert_ttl: Option<String>,
    pub revoke_tokens_in_urls: Option<bool>,
    pub pepper_file: Option<PathBuf>,
    pub master_key_file: Option<PathBuf>,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub services: BTreeMap<String, RawService>,
    #[serde(default)]
    pub agents: BTreeMap<String, RawAgent>,
    #[serde(default)]
    pub detect: RawDetect,
    #[serde(default)]
    pub alerts: RawAlerts,
}

/// An agent: a Keyway process inside a private network that dials out to the
/// gateway's tunnel and carries the connections of these services.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub services: Vec<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub queue: Option<usize>,
    pub on_full: Option<String>,
    pub retention: Option<String>,
    pub checkpoint_every: Option<String>,
    /// The port audit, run by the gateway on a schedule.
    pub ports: Option<RawPortAudit>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPortAudit {
    /// Like `7d`.
    pub every: String,
    /// Hosts or CIDRs; the declared upstreams' hosts when unset.
    pub hosts: Option<Vec<String>>,
    /// Like `1-1024,5432`; the well-known range and the usual database, cache and
    /// broker ports when unset. Declared ports are always added.
    pub ports: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub protocol: String,
    pub listen: Option<String>,
    pub upstream: String,
    pub max_ttl: Option<String>,
    pub allow_cidrs: Option<Vec<String>>,
    pub rate_limit: Option<String>,
    pub upstream_auth: Option<RawUpstreamAuth>,
    pub connect_timeout: Option<String>,
    pub upstream_timeout: Option<String>,
    pub header_timeout: Option<String>,
    pub max_header_bytes: Option<usize>,
    pub max_headers: Option<usize>,
    pub tls: Option<RawTls>,
    pub client_ca: Option<PathBuf>,
    pub require_client_cert: Option<bool>,
    /// PostgreSQL: the database every session opens.
    pub database: Option<String>,
    /// PostgreSQL: grant role name → upstream user and the secret holding its password.
    pub roles: Option<BTreeMap<String, RawRole>>,
    /// PostgreSQL: accept plaintext sessions from beyond loopback.
    pub allow_plaintext: Option<bool>,
    /// Reach the upstream through this agent; the gateway never dials it itself.
    pub via: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    pub user: String,
    pub secret: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Only in `token_tls`: verify client certificates against this CA.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamAuth {
    pub header: String,
    pub secret: String,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
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
    pub on_full: OnFull,
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpService {
    pub upstream: HttpUpstream,
    pub upstream_auth: Option<UpstreamAuth>,
    pub connect_timeout: Duration,
    /// Time for the upstream to start answering.
    pub upstream_timeout: Duration,
    /// Time for a client to send a request's header block.
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
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
}

/// Everything wrong with a config, one problem a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

/// One thing wrong with a config: where (the key's path; for a syntax error, also
/// the line) and what. Shown as ``line N: `key`: message``.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        f.write_str(&self.message)
    }
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
        config.written.sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text));
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

// === impl RawConfig ===

impl RawConfig {
    pub fn check(self, base_dir: &Path) -> Result<Config, ConfigError> {
        let mut p = Problems::default();
        let rel = |path: PathBuf| {
            if path.is_absolute() {
                path
            } else {
                base_dir.join(path)
            }
        };

        let data_dir = rel(self.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()));
        let admin_listen = p
            .addr(
                "admin_listen",
                self.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
            )
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7070)));
        let max_ttl = p.duration_or("max_ttl", self.max_ttl.as_deref(), DEFAULT_MAX_TTL);
        let admin_token_ttl = p.duration_or(
            "admin_token_ttl",
            self.admin_token_ttl.as_deref(),
            DEFAULT_ADMIN_TOKEN_TTL,
        );
        let token_listen = self
            .token_listen
            .as_deref()
            .and_then(|a| p.addr("token_listen", a));
        let token_tls = self.token_tls.map(|t| TlsConfig {
            cert: rel(t.cert),
            key: rel(t.key),
            client_ca: t.client_ca.map(rel),
            require_client_cert: false,
        });
        let tunnel_listen = self
            .tunnel_listen
            .as_deref()
            .and_then(|a| p.addr("tunnel_listen", a));
        let tunnel_tls = self.tunnel_tls.map(|t| TlsConfig {
            cert: rel(t.cert),
            key: rel(t.key),
            client_ca: t.client_ca.map(rel),
            require_client_cert: false,
        });
        let credential_max_age = p.duration_or(
            "credential_max_age",
            self.credential_max_age.as_deref(),
            DEFAULT_CREDENTIAL_MAX_AGE,
        );
        let agent_cert_ttl = p.duration_or(
            "agent_cert_ttl",
            self.agent_cert_ttl.as_deref(),
            Duration::from_secs(24 * 3600),
        );
        if !(Duration::from_secs(5)..=Duration::from_secs(30 * 24 * 3600)).contains(&agent_cert_ttl)
        {
            p.push("agent_cert_ttl", "must be between 5s and 30d");
        }
        // A path written in the file is relative to it; the defaults are already
        // under `data_dir`, which is.
        let pepper_file = self
            .pepper_file
            .map(rel)
            .unwrap_or_else(|| data_dir.join("pepper.key"));
        let master_key_file = self
            .master_key_file
            .map(rel)
            .unwrap_or_else(|| data_dir.join("master.key"));

        let on_full = match self.audit.on_full.as_deref() {
            None | Some("fail_closed") => OnFull::FailClosed,
            Some("fail_open") => OnFull::FailOpen,
            Some(_) => {
                p.push(
                    "audit.on_full",
                    "must be `fail_closed` (the default) or `fail_open`",
                );
                OnFull::FailClosed
            }
        };
        let retention = self
            .audit
            .retention
            .as_deref()
            .map(|r| p.duration_or("audit.retention", Some(r), Duration::MAX));
        let checkpoint_every = p.duration_or(
            "audit.checkpoint_every",
            self.audit.checkpoint_every.as_deref(),
            Duration::from_secs(60),
        );
        if checkpoint_every > Duration::from_secs(3600) {
            p.push("audit.checkpoint_every", "must be at most 1h");
        }
        if retention.is_some_and(|r| r < 2 * checkpoint_every) {
            p.push(
                "audit.retention",
                "must be at least twice `audit.checkpoint_every`, so that a checkpoint can anchor what is kept",
            );
        }
        let ports = self.audit.ports.map(|raw| {
            let every = p.duration_or(
                "audit.ports.every",
                Some(&raw.every),
                Duration::from_secs(7 * 24 * 3600),
            );
            if every < Duration::from_secs(1) {
                p.push("audit.ports.every", "must be at least 1s");
            }
            let ports =
                crate::units::parse_ports(raw.ports.as_deref().unwrap_or(PORT_AUDIT_DEFAULT))
                    .unwrap_or_else(|e| {
                        p.push("audit.ports.ports", &e.to_string());
                        Default::default()
                    });
            let hosts = raw.hosts.unwrap_or_default();
            if hosts.len() > 256 {
                p.push("audit.ports.hosts", "at most 256 hosts or CIDRs");
            }
            for (i, h) in hosts.iter().enumerate() {
                let ok = match h.parse::<IpNet>() {
                    Ok(n) => n.prefix_len() + 16 >= n.max_prefix_len(),
                    Err(_) => {
                        h.parse::<std::net::IpAddr>().is_ok()
                            || (!h.is_empty()
                                && h.len() <= 253
                                && h.bytes()
                                    .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-'))
                    }
                };
                if !ok {
                    p.push(
                        &format!("audit.ports.hosts[{i}]"),
                        "is not a host name, an address or a CIDR of at most 65536 addresses",
                    );
                }
            }
            PortAuditConfig {
                every,
                hosts,
                ports,
            }
        });
        let queue = self.audit.queue.unwrap_or(65_536);
        if !(64..=10_000_000).contains(&queue) {
            p.push("audit.queue", "must be between 64 and 10000000 events");
        }

        let mut services = BTreeMap::new();
        let mut listens: BTreeMap<SocketAddr, String> = BTreeMap::new();
        listens.insert(admin_listen, "admin_listen".into());
        if let Some(t) = tunnel_listen.filter(|t| t.port() != 0) {
            if claim(&mut listens, t, "tunnel_listen".into()).is_some() {
                p.push(
                    "tunnel_listen",
                    "shares its address with another listener; give each its own port",
                );
            }
        }
        if let Some(t) = token_listen.filter(|t| t.port() != 0) {
            if claim(&mut listens, t, "token_listen".into()).is_some() {
                p.push(
                    "token_listen",
                    "is the same address as `admin_listen`; give each its own port",
                );
            }
        }
        for (name, raw) in self.services {
            let via = raw.via.clone();
            let Some(mut svc) = raw.check(&name, max_ttl, base_dir, &mut p) else {
                continue;
            };
            svc.via = via;
            // Port 0 asks the system for any free port, so it never collides.
            let taken = svc
                .listen
                .filter(|l| l.port() != 0)
                .and_then(|l| claim(&mut listens, l, format!("services.{name}.listen")));
            if let Some(other) = taken {
                p.push(
                    &format!("services.{name}.listen"),
                    &format!(
                        "{} is already used by `{other}`; give each its own port",
                        svc.listen.map(|l| l.to_string()).unwrap_or_default()
                    ),
                );
            }
            if matches!(svc.kind, ServiceKind::Tcp(_)) && tunnel_listen.is_none() {
                p.push(
                    &format!("services.{name}.protocol"),
                    "a tcp service is reached through the tunnel; set `tunnel_listen` (like \"0.0.0.0:7443\")",
                );
            }
            services.insert(name, svc);
        }

        let mut agents = BTreeMap::new();
        for (name, raw) in self.agents {
            if !valid_name(&name) {
                p.push(
                    &format!("agents.{name}"),
                    "an agent name is 1 to 63 characters of a-z, 0-9, `-` and `_`",
                );
            }
            for (i, svc) in raw.services.iter().enumerate() {
                match services.get(svc) {
                    None => p.push(
                        &format!("agents.{name}.services[{i}]"),
                        &format!("names no service; declare `[services.{}]`", svc.chars().take(64).collect::<String>()),
                    ),
                    Some(s) if s.via.as_deref() != Some(name.as_str()) => p.push(
                        &format!("agents.{name}.services[{i}]"),
                        &format!("set `via = \"{name}\"` on `services.{svc}` too, so the gateway never dials it itself"),
                    ),
                    Some(_) => {}
                }
            }
            agents.insert(
                name.clone(),
                Agent {
                    name,
                    services: raw.services,
                },
            );
        }
        for (name, svc) in &services {
            let Some(via) = &svc.via else { continue };
            let key = format!("services.{name}.via");
            match agents.get(via) {
                None => p.push(&key, "names no agent; declare `[agents.NAME]`"),
                Some(a) if !a.services.contains(name) => p.push(
                    &key,
                    &format!("list `{name}` in `agents.{via}.services` too"),
                ),
                Some(_) => {}
            }
        }
        if !agents.is_empty() {
            if tunnel_listen.is_none() {
                p.push(
                    "agents",
                    "agents dial the gateway's tunnel; set `tunnel_listen`",
                );
            }
            if tunnel_tls.is_some() {
                p.push(
                    "tunnel_tls",
                    "agents are enrolled with the gateway's own CA, which the tunnel must use; remove `tunnel_tls`",
                );
            }
        }

        let detect = self.detect.check(&mut p);
        let alerts = self.alerts.check(&mut p);

        p.finish(Config {
            data_dir,
            admin_listen,
            max_ttl,
            admin_token_ttl,
            token_listen,
            token_tls,
            tunnel_listen,
            tunnel_tls,
            credential_max_age,
            agent_cert_ttl,
            revoke_tokens_in_urls: self.revoke_tokens_in_urls.unwrap_or(true),
            pepper_file,
            master_key_file,
            audit: AuditConfig {
                queue,
                on_full,
                retention,
                checkpoint_every,
                ports,
            },
            services,
            agents,
            detect,
            alerts,
            written: Written {
                base_dir: base_dir.to_path_buf(),
                ..Written::default()
            },
        })
    }
}

// === impl Service ===

impl Service {
    /// The upstream as `host:port` (an HTTP upstream's port is 80 unless it says).
    pub fn upstream_addr(&self) -> String {
        match &self.kind {
            ServiceKind::Http(h) => {
                let a = &h.upstream.authority;
                format!("{}:{}", a.host(), a.port_u16().unwrap_or(80))
            }
            ServiceKind::Tcp(t) => t.upstream.clone(),
            ServiceKind::Postgres(p) => p.upstream.clone(),
        }
    }

    /// Whether `allow_cidrs` lets `source` in (an empty list lets every address in).
    pub fn allows_source(&self, source: std::net::IpAddr) -> bool {
        self.allow_cidrs.is_empty() || self.allow_cidrs.iter().any(|n| n.contains(&source))
    }

    /// `http`, `tcp` or `postgres`, as `protocol` says in the file.
    pub fn protocol(&self) -> &'static str {
        match &self.kind {
            ServiceKind::Http(_) => "http",
            ServiceKind::Tcp(_) => "tcp",
            ServiceKind::Postgres(_) => "postgres",
        }
    }
}

// === impl RawService ===

impl RawService {
    fn check(
        self,
        name: &str,
        global_max_ttl: Duration,
        base_dir: &Path,
        p: &mut Problems,
    ) -> Option<Service> {
        let key = |k: &str| format!("services.{name}.{k}");
        let before = p.0.len();
        if !valid_name(name) {
            p.push(
                &format!("services.{name}"),
                "a service name is 1 to 63 characters of a-z, 0-9, `-` and `_`",
            );
        }
        let is_tcp = self.protocol == "tcp";
        let is_pg = self.protocol == "postgres";
        match self.protocol.as_str() {
            "http" | "tcp" | "postgres" => {}
            "mysql" | "redis" => p.push(
                &key("protocol"),
                &format!(
                    "protocol `{}` is not supported yet by this version; use `http`, `tcp` or `postgres`",
                    self.protocol
                ),
            ),
            _ => p.push(
                &key("protocol"),
                "unknown protocol; this version supports `http`, `tcp` and `postgres`",
            ),
        }
        let listen: Option<Option<SocketAddr>> = match (&self.listen, is_tcp) {
            (Some(l), false) => p.addr(&key("listen"), l).map(Some),
            (None, false) => {
                p.push(
                    &key("listen"),
                    "an http service needs `listen`: the gateway port that stands for it",
                );
                None
            }
            (Some(_), true) => {
                p.push(
                    &key("listen"),
                    "a tcp service is reached through `tunnel_listen` with `keyway connect`; remove `listen`",
                );
                None
            }
            (None, true) => Some(None),
        };
        let max_ttl = p.duration_or(&key("max_ttl"), self.max_ttl.as_deref(), global_max_ttl);
        if max_ttl > global_max_ttl {
            p.push(
                &key("max_ttl"),
                &format!(
                    "{} is longer than the global max_ttl of {}",
                    crate::units::format_duration(max_ttl),
                    crate::units::format_duration(global_max_ttl)
                ),
            );
        }
        let mut allow_cidrs = Vec::new();
        if let Some(cidrs) = &self.allow_cidrs {
            if cidrs.is_empty() {
                p.push(
                    &key("allow_cidrs"),
                    "is empty, so nothing could connect; remove the key to allow any source",
                );
            }
            for (i, c) in cidrs.iter().enumerate() {
                let parsed = c
                    .parse::<IpNet>()
                    .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from));
                match parsed {
                    Ok(n) => allow_cidrs.push(n.trunc()),
                    Err(_) => p.push(
                        &format!("{}[{i}]", key("allow_cidrs")),
                        "is not a CIDR like `10.0.0.0/8`",
                    ),
                }
            }
        }
        let rate_limit = match self.rate_limit.as_deref().map(Rate::parse) {
            None => None,
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                p.push(&key("rate_limit"), &e.to_string());
                None
            }
        };
        if is_tcp {
            let tcp = TcpService {
                upstream: check_tcp_upstream(&self.upstream, &key("upstream"), p)
                    .unwrap_or_default(),
                connect_timeout: p.duration_or(
                    &key("connect_timeout"),
                    self.connect_timeout.as_deref(),
                    Duration::from_secs(5),
                ),
            };
            let http_only = [
                ("upstream_auth", self.upstream_auth.is_some()),
                ("rate_limit", self.rate_limit.is_some()),
                ("tls", self.tls.is_some()),
                ("upstream_timeout", self.upstream_timeout.is_some()),
                ("header_timeout", self.header_timeout.is_some()),
            ];
            for (k, set) in http_only {
                if set {
                    p.push(&key(k), "applies to http services only");
                }
            }
            if p.0.len() > before {
                return None;
            }
            return Some(Service {
                name: name.to_owned(),
                listen: None,
                max_ttl,
                allow_cidrs,
                rate_limit: None,
                tls: None,
                via: None,
                kind: ServiceKind::Tcp(tcp),
            });
        }
        if is_pg {
            let mut roles = BTreeMap::new();
            match &self.roles {
                None => p.push(&key("roles"), "a postgres service maps grant roles to upstream users: `roles.readonly = { user = \"…\", secret = \"…\" }`"),
                Some(r) => {
                    for (role, raw) in r {
                        if !valid_name(role) {
                            p.push(&key(&format!("roles.{role}")), "a role name is 1 to 63 characters of a-z, 0-9, `-` and `_`");
                        }
                        if !valid_secret_name(&raw.secret) {
                            p.push(&key(&format!("roles.{role}.secret")), "is the name of a secret set with `keyway secret set NAME`, never its value");
                        }
                        if raw.user.is_empty() || raw.user.len() > 63 || raw.user.contains('\0') {
                            p.push(&key(&format!("roles.{role}.user")), "is a PostgreSQL role name");
                        }
                        roles.insert(role.clone(), PgRole { user: raw.user.clone(), secret: raw.secret.clone() });
                    }
                }
            }
            let database = self.database.clone().unwrap_or_default();
            if database.is_empty() || database.contains('\0') {
                p.push(
                    &key("database"),
                    "a postgres service names the database its sessions open",
                );
            }
            for (k, set) in [
                ("upstream_auth", self.upstream_auth.is_some()),
                ("rate_limit", self.rate_limit.is_some()),
            ] {
                if set {
                    p.push(&key(k), "applies to http services only");
                }
            }
            let pg = PostgresService {
                upstream: check_tcp_upstream(&self.upstream, &key("upstream"), p)
                    .unwrap_or_default(),
                database,
                roles,
                connect_timeout: p.duration_or(
                    &key("connect_timeout"),
                    self.connect_timeout.as_deref(),
                    Duration::from_secs(5),
                ),
                allow_plaintext: self.allow_plaintext.unwrap_or(false),
            };
            let rel = |path: PathBuf| {
                if path.is_absolute() {
                    path
                } else {
                    base_dir.join(path)
                }
            };
            let tls = self.tls.map(|t| TlsConfig {
                cert: rel(t.cert),
                key: rel(t.key),
                client_ca: self.client_ca.clone().map(rel),
                require_client_cert: self.require_client_cert.unwrap_or(false),
            });
            if p.0.len() > before {
                return None;
            }
            return Some(Service {
                name: name.to_owned(),
                listen: listen?,
                max_ttl,
                allow_cidrs,
                rate_limit: None,
                tls,
                via: None,
                kind: ServiceKind::Postgres(pg),
            });
        }
        let upstream = check_http_upstream(&self.upstream, &key("upstream"), p);
        let upstream_auth = self.upstream_auth.and_then(|a| {
            let header = match HeaderName::from_bytes(a.header.as_bytes()) {
                Ok(h) if !is_reserved_header(&h) => Some(h),
                Ok(_) => {
                    p.push(&key("upstream_auth.header"), "cannot be a hop-by-hop or Host header");
                    None
                }
                Err(_) => {
                    p.push(&key("upstream_auth.header"), "is not a valid header name");
                    None
                }
            };
            if !valid_secret_name(&a.secret) {
                p.push(
                    &key("upstream_auth.secret"),
                    "is the name of a secret (set with `keyway secret set NAME`): 1 to 64 characters of \
                     a-z, A-Z, 0-9, `.`, `-` and `_`; never the secret's value",
                );
            }
            Some(UpstreamAuth {
                header: header?,
                secret: a.secret,
            })
        });
        let http = HttpService {
            upstream: upstream.unwrap_or(HttpUpstream {
                authority: Authority::from_static("invalid"),
                base_path: String::new(),
            }),
            upstream_auth,
            connect_timeout: p.duration_or(
                &key("connect_timeout"),
                self.connect_timeout.as_deref(),
                Duration::from_secs(5),
            ),
            upstream_timeout: p.duration_or(
                &key("upstream_timeout"),
                self.upstream_timeout.as_deref(),
                Duration::from_secs(30),
            ),
            header_timeout: p.duration_or(
                &key("header_timeout"),
                self.header_timeout.as_deref(),
                Duration::from_secs(10),
            ),
            max_header_bytes: self.max_header_bytes.unwrap_or(16 * 1024),
            max_headers: self.max_headers.unwrap_or(64),
        };
        if !(8192..=1024 * 1024).contains(&http.max_header_bytes) {
            p.push(&key("max_header_bytes"), "must be between 8192 and 1048576");
        }
        if !(8..=1024).contains(&http.max_headers) {
            p.push(&key("max_headers"), "must be between 8 and 1024");
        }
        let rel = |path: PathBuf| {
            if path.is_absolute() {
                path
            } else {
                base_dir.join(path)
            }
        };
        let require = self.require_client_cert.unwrap_or(false);
        let tls = match self.tls {
            Some(t) => {
                if t.client_ca.is_some() {
                    p.push(&key("tls.client_ca"), "goes beside `tls`, as `client_ca`");
                }
                if require && self.client_ca.is_none() {
                    p.push(
                        &key("require_client_cert"),
                        "needs `client_ca` to verify client certificates against",
                    );
                }
                Some(TlsConfig {
                    cert: rel(t.cert),
                    key: rel(t.key),
                    client_ca: self.client_ca.map(rel),
                    require_client_cert: require,
                })
            }
            None => {
                if self.client_ca.is_some() || require {
                    p.push(
                        &key("client_ca"),
                        "client certificates need `tls = { cert = …, key = … }` on the listener",
                    );
                }
                None
            }
        };
        if p.0.len() > before {
            return None;
        }
        Some(Service {
            name: name.to_owned(),
            listen: listen?,
            max_ttl,
            allow_cidrs,
            rate_limit,
            tls,
            via: None,
            kind: ServiceKind::Http(http),
        })
    }
}

fn check_http_upstream(s: &str, key: &str, p: &mut Problems) -> Option<HttpUpstream> {
    let Ok(uri) = s.parse::<Uri>() else {
        p.push(key, "is not a URL like `http://10.0.0.5:8080`");
        return None;
    };
    if uri.scheme() != Some(&Scheme::HTTP) {
        p.push(
            key,
            "must be an `http://` URL (https upstreams are not supported yet)",
        );
        return None;
    }
    let authority = uri.authority()?.clone();
    if authority.as_str().contains('@') {
        p.push(
            key,
            "must not hold credentials; use `upstream_auth` with a secret",
        );
        return None;
    }
    if uri.query().is_some() {
        p.push(key, "must not have a query string");
        return None;
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    Some(HttpUpstream {
        authority,
        base_path,
    })
}

/// serde's messages quote the offending value (`invalid type: string "sk_live_…",
/// expected …`); a config file is where secrets get pasted by mistake, so keep only
/// what was expected.
fn without_values(msg: &str) -> String {
    if msg.starts_with("invalid type")
        || msg.starts_with("invalid value")
        || msg.starts_with("invalid length")
    {
        return match msg.rsplit_once(", expected ") {
            Some((_, expected)) => format!("wrong type or value here; expected {expected}"),
            None => "wrong type or value here".to_owned(),
        };
    }
    msg.to_owned()
}

/// `host:port` of a TCP upstream.
fn check_tcp_upstream(s: &str, key: &str, p: &mut Problems) -> Option<String> {
    let ok = s.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if !ok {
        p.push(key, "is not an address like `10.0.0.5:6379` (host:port)");
        return None;
    }
    Some(s.to_owned())
}

fn is_reserved_header(h: &HeaderName) -> bool {
    matches!(
        h.as_str(),
        "host"
            | "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    ) || h.as_str().starts_with("proxy-")
}

fn valid_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

/// `localhost` or a loopback address (IPv6 in brackets or not).
fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A secret's name: what `keyway secret set` takes.
pub fn valid_secret_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
}

/// Takes `addr` for `key` unless a listener already has its port on the same
/// address or on a wildcard one (`0.0.0.0:9001` holds `127.0.0.1:9001` too); returns
/// the key that has it.
fn claim(
    listens: &mut BTreeMap<SocketAddr, String>,
    addr: SocketAddr,
    key: String,
) -> Option<String> {
    let taken = listens.iter().find(|(a, _)| {
        a.port() == addr.port()
            && (a.ip() == addr.ip() || a.ip().is_unspecified() || addr.ip().is_unspecified())
    });
    if let Some((_, other)) = taken {
        return Some(other.clone());
    }
    listens.insert(addr, key);
    None
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, key: &str, msg: &str) {
        // Keys can hold names people typed (a service's, a role's).
        self.0.push(Problem {
            line: None,
            key: Some(lint::mask_secrets(key)),
            message: msg.to_owned(),
        });
    }

    fn addr(&mut self, key: &str, s: &str) -> Option<SocketAddr> {
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(key, "is not an address like `127.0.0.1:9001`");
                None
            }
        }
    }

    fn duration_or(&mut self, key: &str, s: Option<&str>, default: Duration) -> Duration {
        match s.map(parse_duration) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.push(key, &e.to_string());
                default
            }
        }
    }

    fn finish(self, c: Config) -> Result<Config, ConfigError> {
        if self.0.is_empty() {
            Ok(c)
        } else {
            Err(ConfigError { problems: self.0 })
        }
    }
}

#[cfg(test)]
mod tests;
