//! The control plane's handles: what the admin API, the hygiene report, the port
//! audit and the alert webhooks are given. The operator's side of the gateway sees
//! more than a proxy does (the store, the reloads, the agents' registry), and still
//! not the keys.

use std::sync::Arc;

use keyway_core::config::Config;
use keyway_core::{Clock, EventKind, TokenKind, UnixMillis};
use keyway_store::{AuditEvent, Store, StoreError};

use crate::admission::Admission;
use crate::agents::Registry;
use crate::alerts::Alerts;
use crate::audit::AuditSink;
use crate::authz::Authorizer;
use crate::index::TokenIndex;
use crate::reloads::Reloads;
use crate::runtime::ConfigInForce;
use crate::secrets::Secrets;
use crate::telemetry::{Metrics, States};
use crate::tokens::Tokens;

/// The control plane's handles. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    pub config: ConfigInForce,
    pub clock: Arc<dyn Clock>,
    pub store: StoreView,
    pub index: Arc<TokenIndex>,
    pub authz: Authorizer,
    pub tokens: Arc<Tokens>,
    pub secrets: Arc<Secrets>,
    pub audit: AuditSink,
    pub admission: Arc<Admission>,
    pub metrics: Arc<Metrics>,
    pub agents: Arc<Registry>,
    pub alerts: Arc<Alerts>,
    pub reloads: Arc<Reloads>,
    /// The live sessions, to list and end (the console).
    pub sessions: crate::sessions::Sessions,
    /// The audit chain's key, to verify the chain (the console).
    pub chain_key: Arc<secrecy::SecretBox<keyway_store::ChainKey>>,
    /// MCP tools' pins, to list and approve.
    pub pins: Arc<crate::pins::Pins>,
}

/// The store as the control plane sees it: token records and the audit log to read;
/// the writes it makes are an agent's revocation and a request to another replica to
/// end a session. Tokens and secrets are written
/// through their own handles, never here.
#[derive(Clone)]
pub struct StoreView(Arc<dyn Store>);

// === impl StoreView ===

impl StoreView {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self(store)
    }

    /// Every replica's last heartbeat on a shared store (none on SQLite).
    pub async fn replicas(&self) -> Result<Vec<keyway_store::Beat>, StoreError> {
        self.0.replicas().await
    }

    /// Whether other replicas share the store.
    pub fn shared(&self) -> bool {
        self.0.shared()
    }

    /// The config last applied (to every replica, on a shared store).
    pub async fn applied_config(&self) -> Result<Option<keyway_store::AppliedConfig>, StoreError> {
        self.0.applied_config().await
    }

    /// Records a detector's block of `source` (a block's key) until `until`.
    pub async fn put_block(&self, source: &str, until: UnixMillis) -> Result<(), StoreError> {
        self.0.put_block(source, until, &[]).await
    }

    /// The shared store's newest change.
    pub async fn change_head(&self) -> Result<i64, StoreError> {
        self.0.change_head().await
    }

    /// Every token record (never a secret: they hold keyed hashes).
    pub async fn tokens(&self) -> Result<Vec<keyway_store::TokenRecord>, StoreError> {
        self.0.tokens().await
    }

    /// Asks another replica to end one of its live sessions (`REPLICA:ID`), with
    /// the audit event that says who asked.
    pub async fn end_session(
        &self,
        key: &str,
        events: &[keyway_store::AuditEvent],
    ) -> Result<(), StoreError> {
        self.0.end_session(key, events).await
    }

    /// Walks the whole audit chain (every replica's, on a shared store) and its
    /// signed checkpoints under `key`, as `keyway audit verify` does.
    pub async fn verify_audit(
        &self,
        key: &keyway_store::ChainKey,
    ) -> Result<keyway_store::Verdict, StoreError> {
        self.0.verify_audit(key, &[]).await
    }

    /// Audit events, as `q` asks.
    pub async fn audit_events(
        &self,
        q: &keyway_store::AuditQuery,
    ) -> Result<Vec<keyway_store::StoredEvent>, StoreError> {
        self.0.audit_events(q).await
    }

    /// What each token did since `since`, for the report.
    pub async fn audit_usage(
        &self,
        since: UnixMillis,
        limit: u32,
    ) -> Result<Vec<keyway_store::Usage>, StoreError> {
        self.0.audit_usage(since, limit).await
    }

    /// The store's write-ahead log on disk, in bytes, when it keeps one.
    pub fn log_bytes(&self) -> Option<u64> {
        self.0.log_bytes()
    }

    /// Refuses `agent`'s certificates issued before `at`, across restarts, with the
    /// events that record it.
    async fn revoke_agent(
        &self,
        agent: &str,
        at: UnixMillis,
        events: &[AuditEvent],
    ) -> Result<(), StoreError> {
        self.0.revoke_agent(agent, at, events).await
    }
}

// === impl Control ===

impl Control {
    pub fn now(&self) -> UnixMillis {
        self.clock.now_ms()
    }

    /// The config in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config.current()
    }

    /// Plans (`dry_run`) or applies a config text for the admin token `by`
    /// ([`Reloads::propose`]).
    pub async fn propose(
        &self,
        text: &str,
        by: &str,
        token_id: Option<&str>,
        dry_run: bool,
    ) -> Result<crate::reloads::Outcome, crate::reloads::ApplyError> {
        let shared = self.store.shared();
        self.reloads
            .propose(text, &self.config(), shared, (by, token_id), dry_run)
            .await
    }

    /// The admin token `token` presented on connection `conn`, checked as every
    /// admin call checks it (source, lineage, certificate binding) and marked used;
    /// the refusal otherwise. The admin API and the console's sign-in take it here.
    pub fn authenticate_admin(
        &self,
        token: keyway_core::head::Bearer<'_>,
        conn: Option<&crate::listener::ConnInfo>,
    ) -> Result<Arc<crate::index::Entry>, crate::authz::Refused> {
        let source = conn.map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| {
            c.peer.ip().to_canonical()
        });
        let cert = conn.and_then(|c| c.cert_thumbprint.as_deref());
        let entry = self
            .authz
            .authenticate(TokenKind::Admin, token, Some(source), cert)?;
        entry.mark_used(self.now());
        Ok(entry)
    }

    /// A fresh audit event, dated now.
    pub fn event(&self, kind: EventKind) -> AuditEvent {
        self.audit.event(kind)
    }

    /// Revokes an agent: its connections close now, and its certificates issued
    /// before now are refused, also after a restart. Returns how many connections
    /// were closed.
    pub async fn revoke_agent(&self, agent: &str, by: &str) -> Result<usize, StoreError> {
        let now = self.now();
        let closed = self.agents.revoke(agent, now);
        let mut ev = self.audit.event(EventKind::AgentRevoked);
        ev.principal = Some(agent.to_owned());
        ev.detail = serde_json::json!({ "by": by, "connections_closed": closed });
        let events = [ev];
        self.store.revoke_agent(agent, now, &events).await?;
        self.audit.committed(&events);
        // Unspent enrollment tokens would bring it back: they die too.
        let pending: Vec<String> = self
            .index
            .entries()
            .into_iter()
            .filter(|e| {
                e.record.kind == TokenKind::AgentEnrollment
                    && e.record.principal == agent
                    && !e.revoked()
            })
            .map(|e| e.id().to_owned())
            .collect();
        for id in pending {
            self.tokens.revoke(&id, by, Some("agent_revoked")).await?;
        }
        Ok(closed)
    }

    /// The states a metrics scrape reports, read now.
    pub fn states(&self) -> States {
        let now = self.now();
        let mut s = States::default();
        for e in self.index.entries() {
            if e.check_live(now).is_err() {
                continue;
            }
            match e.record.kind {
                TokenKind::Access => {
                    s.tokens_live += 1;
                    if e.expires_at() - now <= 24 * 3600 * 1000 {
                        s.tokens_expiring_24h += 1;
                    }
                }
                TokenKind::ClientCredential => {
                    s.credentials_live += 1;
                    if e.near_max_age(now) {
                        s.credentials_near_max_age += 1;
                    }
                }
                _ => {}
            }
        }
        s.audit = self.audit.stats().snapshot();
        s.audit_queue = self.audit.queued();
        s.audit_queue_bytes = self.audit.queued_bytes();
        s.blocked_sources = self.admission.blocked_sources(now);
        s.observations_dropped = self.admission.dropped();
        s.store_wal_bytes = self.store.log_bytes();
        s.agents = self
            .agents
            .status(&self.config())
            .into_iter()
            .map(|a| (a.name, a.state, a.connections))
            .collect();
        s
    }
}
