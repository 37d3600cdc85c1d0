//! The data plane: one module per protocol, and the handles every protocol is given.
//!
//! A proxy reaches the rest of the gateway only through [`Handles`]: the
//! authorizer, the token lifecycle (to revoke a token leaked into a URL, to exchange
//! and enroll), the upstream credentials, the audit sink, the session registry, the
//! admission check, the metrics and the agents to dial through. It never sees the
//! store, the keys, the detectors or the reloads.

use std::sync::Arc;

use keyway_core::config::Config;
use keyway_core::{Clock, UnixMillis};

use crate::admission::Admission;
use crate::agents::Registry;
use crate::audit::AuditSink;
use crate::authz::Authorizer;
use crate::runtime::ConfigInForce;
use crate::secrets::Secrets;
use crate::sessions::Sessions;
use crate::telemetry::Metrics;
use crate::tokens::Tokens;

pub mod http;
pub mod postgres;

/// What a protocol's proxy may use. Cheap to clone.
#[derive(Clone)]
pub struct Handles {
    pub config: ConfigInForce,
    pub clock: Arc<dyn Clock>,
    pub authz: Authorizer,
    pub tokens: Arc<Tokens>,
    pub secrets: Arc<Secrets>,
    pub audit: AuditSink,
    pub sessions: Sessions,
    pub admission: Arc<Admission>,
    pub metrics: Arc<Metrics>,
    pub agents: Arc<Registry>,
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
