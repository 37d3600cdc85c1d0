//! The gateway's metrics, in Prometheus text format at the admin API's `/metrics`.
//!
//! Each gateway has its own recorder (several gateways can live in one test process),
//! and most series are fed from the one place every decision passes: the audit
//! events on their way to the store ([`Metrics::event`]). What is a state rather than
//! an event (live tokens, agents, blocked sources) is read when scraped.

use std::collections::HashMap;
use std::sync::OnceLock;

use keyway_core::EventKind;
use keyway_store::AuditEvent;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::audit::AuditCounts;

pub mod traffic;

const LATENCY: &str = "keyway_upstream_latency_seconds";
/// Upstream latency buckets, in seconds: 1 ms to 30 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// One gateway's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Configured service names: the only values of the `service` label, so that a
    /// client cannot grow the series by naming services that do not exist. Each with
    /// the series every request feeds, registered once rather than looked up by
    /// their labels per event.
    services: std::sync::RwLock<HashMap<String, Series>>,
    /// The last hour by minute, per service (the console's overview).
    pub traffic: traffic::Traffic,
}

/// A service's request and connection counters by decision, and its upstream
/// latency: each registered the first time it counts (a series appears with its
/// first event, as before), then at hand.
#[derive(Default)]
struct Series {
    requests: [OnceLock<Counter>; 2],
    connections: [OnceLock<Counter>; 2],
    latency: OnceLock<Histogram>,
}

/// Counts a session as active until dropped.
pub struct SessionGuard(Gauge);

/// The states a scrape reports beside the counters: read from the token index, the
/// audit sink, the admission check and the agents at the moment of the scrape.
#[derive(Debug, Clone, Default)]
pub struct States {
    pub tokens_live: u64,
    pub tokens_expiring_24h: u64,
    pub credentials_live: u64,
    pub credentials_near_max_age: u64,
    pub audit: AuditCounts,
    pub audit_queue: usize,
    pub audit_queue_bytes: usize,
    pub blocked_sources: usize,
    pub observations_dropped: u64,
    /// The store's write-ahead log on disk, in bytes (when the store keeps one).
    pub store_wal_bytes: Option<u64>,
    /// Each configured agent: name, state (`connected`, `disconnected`, `revoked`),
    /// live connections.
    pub agents: Vec<(String, String, usize)>,
}

// === impl Metrics ===

impl crate::audit::Subscriber for Metrics {
    fn observe(&self, event: &AuditEvent) {
        self.event(event);
    }
}

impl Metrics {
    pub fn new(services: impl IntoIterator<Item = String>) -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(LATENCY.into()), &LATENCY_BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        let m = Self {
            recorder,
            handle,
            services: Default::default(),
            traffic: traffic::Traffic::default(),
        };
        m.with(describe);
        m.add_services(services);
        m
    }

    /// Services added by a reload: their names become label values too. Removed
    /// services keep theirs, so their series stay readable.
    pub fn add_services(&self, names: impl IntoIterator<Item = String>) {
        let mut known = self.services.write().unwrap_or_else(|p| p.into_inner());
        for name in names {
            known.entry(name).or_default();
        }
    }

    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&self.recorder, f)
    }

    /// A `service` label: a configured name, else `(unknown)`.
    fn label(&self, service: &str) -> String {
        let known = self.services.read().unwrap_or_else(|p| p.into_inner());
        if known.contains_key(service) {
            service.to_owned()
        } else {
            "(unknown)".into()
        }
    }

    fn service_label(&self, ev: &AuditEvent) -> String {
        match &ev.service {
            Some(s) => self.label(s),
            // Events of the gateway's own endpoints: `admin.denied`, `token.exchange`.
            None => format!("({})", ev.kind.split('.').next().unwrap_or("gateway")),
        }
    }

    /// Counts what one audit event says happened.
    pub fn event(&self, ev: &AuditEvent) {
        let kind = EventKind::from_name(&ev.kind);
        let counted = matches!(kind, Some(EventKind::Request | EventKind::ConnectionOpen));
        // The common case, a request or a connection of a configured service: its
        // series are at hand.
        if let (true, Some(service), Some(d)) = (counted, &ev.service, &ev.decision) {
            let known = self.services.read().unwrap_or_else(|p| p.into_inner());
            let decided = match d.as_str() {
                "allow" => Some(0),
                "deny" => Some(1),
                _ => None,
            };
            if let (Some(series), Some(i)) = (known.get(service), decided) {
                self.traffic.count(service, ev.at, ev.denied());
                let s = || service.clone();
                match kind {
                    Some(EventKind::Request) => series.requests[i].get_or_init(|| {
                        self.with(|| counter!("keyway_requests_total", "service" => s(), "decision" => d.clone()))
                    }),
                    _ => series.connections[i].get_or_init(|| {
                        self.with(|| counter!("keyway_connections_total", "service" => s(), "decision" => d.clone()))
                    }),
                }
                .increment(1);
                if let Some(ms) = ev.upstream_ms() {
                    series
                        .latency
                        .get_or_init(|| self.with(|| histogram!(LATENCY, "service" => s())))
                        .record(ms / 1000.0);
                }
                let tool = ev.detail.get("tool").and_then(|t| t.as_str());
                if !ev.denied() && tool.is_none() {
                    return;
                }
                drop(known);
                self.by_labels(ev, service.clone(), d, kind, tool);
                return;
            }
        }
        let service = self.service_label(ev);
        self.with(|| {
            if let Some(d) = &ev.decision {
                if counted && ev.service.is_some() {
                    self.traffic.count(&service, ev.at, ev.denied());
                }
                match kind {
                    Some(EventKind::Request) => {
                        counter!("keyway_requests_total", "service" => service.clone(), "decision" => d.clone())
                            .increment(1);
                    }
                    Some(EventKind::ConnectionOpen) => {
                        counter!("keyway_connections_total", "service" => service.clone(), "decision" => d.clone())
                            .increment(1);
                    }
                    _ => {}
                }
                let tool = ev.detail.get("tool").and_then(|t| t.as_str());
                self.by_labels(ev, service.clone(), d, kind, tool);
            }
            if let Some(ms) = ev.upstream_ms() {
                histogram!(LATENCY, "service" => service.clone()).record(ms / 1000.0);
            }
            if ev.kind == EventKind::ConnectionClose.as_str() {
                for (field, direction) in [("bytes_in", "in"), ("bytes_out", "out")] {
                    if let Some(n) = ev.detail.get(field).and_then(|v| v.as_u64()) {
                        counter!("keyway_bytes_total", "service" => service.clone(), "direction" => direction)
                            .increment(n);
                    }
                }
            }
        });
    }

    /// The series whose labels come from the event itself: an MCP tool call's, and
    /// a refusal's reason.
    fn by_labels(
        &self,
        ev: &AuditEvent,
        service: String,
        decision: &str,
        kind: Option<EventKind>,
        tool: Option<&str>,
    ) {
        self.with(|| {
            // An MCP tool call. A refused call's name is the client's to choose, so
            // it is no label (the audit event has it).
            if let (Some(EventKind::Request), Some(tool)) = (kind, tool) {
                let tool = if ev.denied() { "(refused)".to_owned() } else { tool.to_owned() };
                counter!("keyway_mcp_calls_total", "service" => service.clone(), "tool" => tool, "decision" => decision.to_owned())
                    .increment(1);
            }
            if ev.denied() {
                let reason = ev.reason.clone().unwrap_or_else(|| "unknown".into());
                counter!("keyway_denials_total", "service" => service, "reason" => reason)
                    .increment(1);
            }
        });
    }

    /// A session (a TCP or PostgreSQL connection, or a WebSocket) that counts as
    /// active until the guard is dropped.
    pub fn session(&self, service: &str) -> SessionGuard {
        let service = self.label(service);
        let g = self.with(|| gauge!("keyway_active_sessions", "service" => service));
        g.increment(1.0);
        SessionGuard(g)
    }

    /// The counter of bytes relayed for `service` in `direction` (`in` is client to
    /// upstream), for a body that counts as it streams.
    pub fn bytes(&self, service: &str, direction: &'static str) -> metrics::Counter {
        let service = self.label(service);
        self.with(|| counter!("keyway_bytes_total", "service" => service, "direction" => direction))
    }

    pub fn detector_fired(&self, detector: &'static str, action: &'static str) {
        self.with(|| {
            counter!("keyway_detector_firings_total", "detector" => detector, "action" => action)
                .increment(1)
        });
    }

    /// The newest scheduled port audit's findings.
    pub fn port_audit(&self, undeclared: usize, stale: usize, unreachable: usize) {
        self.with(|| {
            gauge!("keyway_port_audit_findings", "state" => "undeclared").set(undeclared as f64);
            gauge!("keyway_port_audit_findings", "state" => "stale").set(stale as f64);
            gauge!("keyway_port_audit_findings", "state" => "unreachable").set(unreachable as f64);
        });
    }

    /// A connection refused because its source is blocked.
    pub fn blocked_connection(&self) {
        self.with(|| counter!("keyway_blocked_connections_total").increment(1));
    }

    /// One webhook delivery's outcome: `delivered`, `retried` or `failed`.
    pub fn webhook(&self, outcome: &'static str) {
        self.with(|| counter!("keyway_alert_webhooks_total", "outcome" => outcome).increment(1));
    }

    /// Histograms keep samples until rendered; this folds them when nobody scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The text a scrape returns: `states`, read by the caller just now, then every
    /// series.
    pub fn render(&self, states: &States) -> String {
        let s = states;
        self.with(|| {
            gauge!("keyway_tokens_live").set(s.tokens_live as f64);
            gauge!("keyway_tokens_expiring_24h").set(s.tokens_expiring_24h as f64);
            gauge!("keyway_credentials_live").set(s.credentials_live as f64);
            gauge!("keyway_credentials_near_max_age").set(s.credentials_near_max_age as f64);
            counter!("keyway_audit_events_written_total").absolute(s.audit.written);
            counter!("keyway_audit_events_dropped_total").absolute(s.audit.dropped);
            counter!("keyway_audit_write_errors_total").absolute(s.audit.write_errors);
            counter!("keyway_audit_commits_total").absolute(s.audit.commits);
            counter!("keyway_audit_commit_microseconds_total").absolute(s.audit.commit_micros);
            gauge!("keyway_audit_queue").set(s.audit_queue as f64);
            gauge!("keyway_audit_queue_bytes").set(s.audit_queue_bytes as f64);
            gauge!("keyway_blocked_sources").set(s.blocked_sources as f64);
            counter!("keyway_detector_observations_dropped_total").absolute(s.observations_dropped);
            if let Some(bytes) = s.store_wal_bytes {
                gauge!("keyway_store_wal_bytes").set(bytes as f64);
            }
            for state in ["connected", "disconnected", "revoked"] {
                let n = s.agents.iter().filter(|a| a.1 == state).count();
                gauge!("keyway_agents", "state" => state).set(n as f64);
            }
            for (name, _, connections) in &s.agents {
                gauge!("keyway_agent_connections", "agent" => name.clone())
                    .set(*connections as f64);
            }
        });
        self.handle.render()
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "keyway_requests_total",
        "HTTP requests, by service and decision."
    );
    describe_counter!(
        "keyway_connections_total",
        "TCP and PostgreSQL connections, by service and decision."
    );
    describe_counter!("keyway_denials_total", "Refusals, by service and reason.");
    describe_counter!(
        "keyway_mcp_calls_total",
        "MCP tool calls, by service, tool (`(refused)` for a refused call) and decision."
    );
    describe_gauge!(
        "keyway_active_sessions",
        "Open TCP, PostgreSQL and WebSocket sessions."
    );
    describe_counter!(
        "keyway_bytes_total",
        Unit::Bytes,
        "Bytes relayed: TCP and PostgreSQL sessions when they end, HTTP response bodies as they stream; `in` is client to upstream."
    );
    describe_histogram!(
        LATENCY,
        Unit::Seconds,
        "Time to the upstream's response head."
    );
    describe_gauge!(
        "keyway_tokens_live",
        "Access tokens neither expired nor revoked."
    );
    describe_gauge!(
        "keyway_tokens_expiring_24h",
        "Live access tokens that expire within 24 hours."
    );
    describe_gauge!(
        "keyway_credentials_live",
        "Client credentials neither expired nor revoked."
    );
    describe_gauge!(
        "keyway_credentials_near_max_age",
        "Live client credentials within 14 days of their maximum age."
    );
    describe_counter!(
        "keyway_audit_events_written_total",
        "Audit events written to the store."
    );
    describe_counter!(
        "keyway_audit_events_dropped_total",
        "Audit events dropped (fail_open, or denials in a flood)."
    );
    describe_counter!(
        "keyway_audit_write_errors_total",
        "Failed audit batch writes (retried)."
    );
    describe_counter!(
        "keyway_audit_commits_total",
        "Audit batches the store committed."
    );
    describe_counter!(
        "keyway_audit_commit_microseconds_total",
        "Time the committed audit batches took to write, fsync included: divided by keyway_audit_commits_total, what an answer gated on its event's commit waits at least."
    );
    describe_gauge!("keyway_audit_queue", "Audit events waiting to be written.");
    describe_gauge!(
        "keyway_audit_queue_bytes",
        "Bytes (about) the audit events waiting to be written hold (bounded by audit.queue_bytes)."
    );
    describe_gauge!(
        "keyway_store_wal_bytes",
        Unit::Bytes,
        "The store's write-ahead log (keyway.db-wal) on disk; folded in and emptied past 16 MiB."
    );
    describe_gauge!("keyway_agents", "Declared and enrolled agents, by state.");
    describe_gauge!(
        "keyway_agent_connections",
        "Live tunnel connections of each agent."
    );
    describe_counter!(
        "keyway_detector_firings_total",
        "Intrusion detector firings, by detector and action."
    );
    describe_gauge!("keyway_blocked_sources", "Source addresses blocked now.");
    describe_gauge!(
        "keyway_port_audit_findings",
        "The newest scheduled port audit: open undeclared ports, stale declarations."
    );
    describe_counter!(
        "keyway_detector_observations_dropped_total",
        "Events the detectors did not see because they fell behind."
    );
    describe_counter!(
        "keyway_blocked_connections_total",
        "Connections refused because their source is blocked."
    );
    describe_counter!(
        "keyway_alert_webhooks_total",
        "Alert webhook deliveries: delivered, retried, failed."
    );
}

// === impl SessionGuard ===

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
