//! `keyway.toml`, in two stages.
//!
//! [`RawConfig`] is the file's shape, parsed strictly (`deny_unknown_fields`). It is
//! then checked into [`Config`], which has real types (`Duration`, `SocketAddr`,
//! `IpNet`) and no field that "must be set at run time". Every problem is reported
//! with the key's path and how to fix it; no error repeats the file's text, since a
//! config file is where people mistakenly paste secrets.
//!
//! # Layout
//!
//! - `raw`: the file's shape, as deserialized: [`RawConfig`] and its tables.
//! - `model`: the checked configuration: [`Config`], its services and their kinds.
//! - `problem`: what is wrong with a config, each with its key's path: [`ConfigError`].
//! - `check`: raw into checked: global keys, audit, listeners' ports, agents.
//! - `service`: what every service checks alike, before its protocol's own part.
//! - `http`, `tcp`, `postgres`: each protocol's own part of a service's check.
//! - `access`: `[identity.oidc.*]`, `[identity.workload.*]` and `[policies.*]`: who
//!   signs in, whose signed tokens are taken, which subjects obtain which grants.
//! - `detect`: `[detect.*]` and `[alerts.webhook]`: the detectors and where alerts go.
//! - [`lint`]: what `keyway validate` checks beyond what start-up refuses.
//! - [`plan`]: what putting one config in place of another changes.
//! - `tests`: the config contract, parsed from text.

use problem::Problems;

mod access;
mod check;
mod detect;
mod http;
pub mod lint;
mod model;
pub mod plan;
mod postgres;
mod problem;
mod raw;
mod replicas;
mod service;
mod subject;
mod tcp;
mod upstream_tls;

pub use access::{
    https_or_loopback, person_subjects, policy_for, Approval, IdentityConfig, OidcProvider, Policy,
    RawApproval, RawIdentity, RawOidcProvider, RawPolicy, RawPolicyGrant, RawWorkloadIssuer,
    WorkloadIssuer, DEFAULT_POLICY_TTL, DEFAULT_SESSION_TTL, WORKLOAD_ALGORITHMS,
};
pub use check::{is_loopback_host, valid_replica, valid_secret_name};
pub use detect::{
    Action, AlertsConfig, DetectConfig, Detector, DetectorKind, RawAlerts, RawDetect, RawDetector,
    RawWebhook, Webhook,
};
pub use model::{
    Agent, AuditConfig, ClientCert, Config, Durability, HttpService, HttpUpstream, McpService,
    OnFull, PgHolds, PgRole, PortAuditConfig, PostgresService, Service, ServiceKind, TcpService,
    TlsConfig, UpstreamAuth, UpstreamTls, Written,
};
pub use problem::{ConfigError, Problem};
pub use raw::{
    RawAgent, RawAudit, RawConfig, RawListenerTls, RawPortAudit, RawRole, RawService, RawTls,
    RawUpstreamAuth,
};
pub use replicas::{for_this_process, RawReplica, PER_PROCESS};

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7070";
pub const DEFAULT_DATA_DIR: &str = "keyway-data";
/// Ports the port audit scans when `[audit.ports] ports` is unset: the well-known
/// range and where databases, caches, brokers and admin consoles usually listen.
pub const PORT_AUDIT_DEFAULT: &str = "1-1024,1433,1521,2375-2376,2379,3000,3306,5000,5432,5601,5672,5984,6379,7000-7001,8000,8008,8080-8090,8443,8888,9000,9042,9090,9092,9200,9300,11211,15672,27017";

#[cfg(test)]
mod tests;
