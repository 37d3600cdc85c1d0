//! The data plane: one module per protocol, and the handles every protocol is given.
//!
//! A proxy reaches the rest of the gateway only through [`Handles`]: the
//! authorizer, what a protocol may do with tokens (revoke one leaked into a URL,
//! exchange a credential, spend an enrollment token), the upstream credentials to
//! inject (read only), the audit sink, the session registry, the admission check, the
//! metrics and the agents to dial through. It never sees the store, the keys, the
//! detectors or the reloads, and cannot issue a token or set a secret.

use std::sync::Arc;

use keyway_core::config::Config;
use keyway_core::{Clock, UnixMillis};

use crate::admission::Admission;
use crate::agents::Registry;
use crate::audit::AuditSink;
use crate::authz::Authorizer;
use crate::runtime::ConfigInForce;
use crate::secrets::SecretHeaders;
use crate::sessions::Sessions;
use crate::telemetry::Metrics;
use crate::tokens::TokenUse;

pub mod http;
pub mod postgres;

/// What a protocol's proxy may use. Cheap to clone.
#[derive(Clone)]
pub struct Handles {
    pub config: ConfigInForce,
    pub clock: Arc<dyn Clock>,
    pub authz: Authorizer,
    pub tokens: TokenUse,
    pub secrets: SecretHeaders,
    pub audit: AuditSink,
    pub sessions: Sessions,
    pub admission: Arc<Admission>,
    pub metrics: Arc<Metrics>,
    pub agents: Arc<Registry>,
    /// Dials upstreams: directly or through agents, in TLS where a service says.
    pub dialer: crate::upstream::Dialer,
    /// MCP tools' pinned definitions.
    pub pins: Arc<crate::pins::Pins>,
}

// === impl Handles ===

impl Handles {
    pub fn now(&self) -> UnixMillis {
        self.clock.now_ms()
    }

    /// The config in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config.current()
    }
}
