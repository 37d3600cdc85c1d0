//! The file's shape, as deserialized: every table `deny_unknown_fields`, every value
//! still as written (durations and addresses are strings). [`RawConfig::check`] turns
//! it into the checked [`super::Config`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{RawAlerts, RawDetect, RawIdentity, RawPolicy};

/// The file as written.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL store shared by several gateways, like
    /// `postgres://keyway@db.internal/keyway` (no password here: `KEYWAY_STORE_URL`
    /// or `PGPASSWORD`); the embedded SQLite in `data_dir` when unset.
    pub store: Option<String>,
    /// This gateway's name among the replicas on a shared store; the host name when
    /// unset.
    pub replica: Option<String>,
    /// On a shared store: how long this replica may go without catching up with it
    /// before it refuses requests (fail closed); `5s` when unset.
    pub store_max_lag: Option<String>,
    /// On SIGTERM: how long `/healthz` answers 503 while requests are still served,
    /// so a load balancer moves away first; `5s` on a shared store, else `0s`.
    pub drain_grace: Option<String>,
    pub admin_listen: Option<String>,
    pub max_ttl: Option<String>,
    pub admin_token_ttl: Option<String>,
    pub token_listen: Option<String>,
    pub token_tls: Option<RawTls>,
    pub tunnel_listen: Option<String>,
    pub tunnel_tls: Option<RawTls>,
    /// The CA whose client certificates the tunnel takes from `keyway connect
    /// --cert`, beside the local CA's (agents'), for tokens bound to a certificate.
    /// With `tunnel_tls`, its `client_ca` says it instead.
    pub tunnel_client_ca: Option<PathBuf>,
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
    /// The identity providers whose signed tokens Keyway takes.
    #[serde(default)]
    pub identity: RawIdentity,
    /// Who may obtain which grant, without the admin token.
    #[serde(default)]
    pub policies: BTreeMap<String, RawPolicy>,
    /// What differs per replica on a shared store: `[replicas.NAME.listen]`.
    #[serde(default)]
    pub replicas: BTreeMap<String, super::RawReplica>,
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
    pub queue_bytes: Option<usize>,
    pub on_full: Option<String>,
    /// `commit` (the default): an answer waits for its event's commit; `batched`:
    /// it does not, and a crash can lose the last events.
    pub durability: Option<String>,
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
    /// HTTPS on the listener: `{ cert = …, key = … }`, or `"local"` for a
    /// certificate from the gateway's local CA.
    pub tls: Option<RawListenerTls>,
    pub client_ca: Option<PathBuf>,
    pub require_client_cert: Option<bool>,
    /// http: cleartext HTTP/2 with prior knowledge on a listener without TLS (gRPC
    /// clients' `insecure` channels). Over TLS, HTTP/2 is offered by ALPN always.
    pub h2c: Option<bool>,
    /// http: the proxies in front of this listener (CIDRs) whose `X-Forwarded-For`
    /// is believed; the client address is then the first hop, from the right, that
    /// is not one of them. Without it, the socket's address.
    pub trusted_proxies: Option<Vec<String>>,
    /// http: how long a request body may stall between two reads before it is cut
    /// (`60s` by default; gRPC streams are exempt, ended by their token instead).
    pub body_timeout: Option<String>,
    /// http: `http1` (the default) or `h2` to the upstream (ALPN `h2` for
    /// `https://`, prior knowledge for `http://`); gRPC servers need `h2`.
    pub upstream_protocol: Option<String>,
    /// PostgreSQL and TCP: TLS to the upstream, `verify-full`, `require` (encrypted,
    /// not verified) or `disable` (the default). An http service says it with
    /// `https://`.
    pub upstream_tls: Option<String>,
    /// Trust this CA (PEM) for the upstream's certificate instead of the system's.
    pub upstream_ca: Option<PathBuf>,
    /// A client certificate (PEM) the gateway presents to the upstream, with its key.
    pub upstream_client_cert: Option<PathBuf>,
    pub upstream_client_key: Option<PathBuf>,
    /// The name verified in the upstream's certificate (and sent as SNI) when it is
    /// not the upstream's host.
    pub upstream_server_name: Option<String>,
    /// http: accept any certificate from an `https://` upstream. Never silently:
    /// `keyway validate` refuses it without `--allow-insecure`, start-up warns.
    pub upstream_insecure_skip_verify: Option<bool>,
    /// PostgreSQL: weak login methods the upstream may use where the path to it is not
    /// verified (plaintext beyond loopback, `upstream_tls = "require"`): `md5`,
    /// `password` (cleartext), `trust`; refused unless named here.
    pub allow_weak_upstream_auth: Option<Vec<String>>,
    /// PostgreSQL: the database every session opens.
    pub database: Option<String>,
    /// PostgreSQL: grant role name → upstream user and the secret holding its password.
    pub roles: Option<BTreeMap<String, RawRole>>,
    /// PostgreSQL: accept plaintext sessions from beyond loopback.
    pub allow_plaintext: Option<bool>,
    /// PostgreSQL, under `audit.durability = "commit"`: what waits for a statement's
    /// audit event to be committed. `statement` (the default): the statement reaches
    /// the database only then, so one whose event cannot be written never runs.
    /// `answer`: the statement goes at once and its answer waits, as an HTTP
    /// request's does; faster, but one whose event cannot be written may have run
    /// (its answer is withheld and the session ends).
    pub audit_holds: Option<String>,
    /// Reach the upstream through this agent; the gateway never dials it itself.
    pub via: Option<String>,
    /// mcp: record each tool call's arguments in the audit log, redacted like
    /// statements (by default only their SHA-256 and size).
    pub audit_arguments: Option<bool>,
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

/// A listener's TLS as written: certificate files, or `"local"`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(
    untagged,
    expecting = "`{ cert = \"…\", key = \"…\" }` or `\"local\"` (a certificate from the gateway's local CA)"
)]
pub enum RawListenerTls {
    Local(String),
    Files(RawTls),
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamAuth {
    pub header: String,
    pub secret: String,
    /// Written before the secret's value, like `"Bearer "`.
    pub prefix: Option<String>,
}
