//! Intrusion detection on the live event stream.
//!
//! What a detector needs of each accepted connection and each audit event comes down
//! a bounded queue from the [`Admission`] handle to one task ([`run`]), which keeps
//! the detectors' state ([`Detectors`], pure and unit-tested) and carries out what
//! fires: the alert (audit log, metric, webhook) and the action (block the source
//! through the admission check, revoke the token through the lifecycle).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use keyway_core::clock::format_ms;
use keyway_core::config::{Action, DetectConfig, Detector, DetectorKind};
use keyway_core::{Clock, EventKind};
use keyway_core::{DenyReason, UnixMillis};
use tokio_util::sync::CancellationToken;

use crate::admission::{network, source_key, Admission, Seen, AUTH_FAILURES};
use crate::alerts::Alerts;
use crate::audit::AuditSink;
use crate::runtime::ConfigInForce;
use crate::telemetry::Metrics;
use crate::tokens::Tokens;

/// Sources and tokens the detectors remember; beyond this new ones are not tracked
/// until a sweep frees room.
const MAX_TRACKED: usize = 100_000;
/// Networks remembered per token by `new_network`.
const MAX_NETWORKS: usize = 32;
/// Weight of the newest window in `rate_spike`'s moving baseline.
const EWMA_ALPHA: f64 = 0.3;
/// Windows of a token's history `rate_spike` needs before it has a baseline.
const WARM_UP_WINDOWS: u32 = 2;
/// Denials of a well-formed token that was never issued.
const GUESSES: [DenyReason; 2] = [DenyReason::BadChecksum, DenyReason::UnknownToken];

/// A detector that fired.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    pub detector: DetectorKind,
    pub action: Action,
    pub at: UnixMillis,
    pub source: IpAddr,
    pub token_id: Option<String>,
    pub principal: Option<String>,
    pub service: Option<String>,
    /// What was seen, for people: "10 failed authentications in 60s".
    pub summary: String,
}

/// The detectors' memory: pure, fed one observation at a time.
#[derive(Debug)]
pub struct Detectors {
    /// As configured. (Looked up three times a request: a few comparisons in a
    /// `BTreeMap` of six kinds at most, where a `HashMap` runs SipHash each time.)
    config: BTreeMap<DetectorKind, Detector>,
    /// By [`source_key`].
    sources: HashMap<IpAddr, SourceState>,
    tokens: HashMap<String, TokenState>,
    /// State older than this has no window left to count in.
    longest_window: UnixMillis,
    sources_swept_at: UnixMillis,
}

#[derive(Debug, Default)]
struct SourceState {
    failures: VecDeque<UnixMillis>,
    guesses: VecDeque<UnixMillis>,
    /// Ports touched (or, as `None`, unknown services asked for) and when.
    touches: VecDeque<(UnixMillis, Option<u16>)>,
    last: UnixMillis,
}

#[derive(Debug, Default)]
struct TokenState {
    networks: Vec<IpNet>,
    recent: Vec<(IpAddr, UnixMillis)>,
    concurrent_fired: UnixMillis,
    bucket_start: UnixMillis,
    /// Windows of history behind the current one.
    windows: u32,
    bucket_count: u32,
    baseline: f64,
    spike_fired: bool,
    last: UnixMillis,
}

/// What the detector task acts with: the blocklist to write, the lifecycle to
/// revoke with, and where an alert goes.
pub struct Responders {
    pub admission: Arc<Admission>,
    /// Where a block is recorded, for the other replicas and the next start.
    pub store: crate::control::StoreView,
    pub tokens: Arc<Tokens>,
    pub audit: AuditSink,
    pub alerts: Arc<Alerts>,
    pub metrics: Arc<Metrics>,
    pub config: ConfigInForce,
    pub clock: Arc<dyn Clock>,
}

/// The detector task: runs until `shutdown`.
pub async fn run(r: Responders, shutdown: CancellationToken) {
    let Some(mut rx) = r.admission.take_observations() else {
        return;
    };
    let mut detectors = Detectors::new(&r.admission.settings());
    let mut reloads = r.config.watch();
    let mut sweep = tokio::time::interval(Duration::from_secs(10));
    // What waits is taken in batches: under load one wake-up (and one `select!`
    // over four branches) serves many events instead of each. A stop or a reload
    // that comes during a batch is still seen before the next observation.
    let mut seen = Vec::with_capacity(OBSERVED_AT_ONCE);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            Ok(()) = reloads.changed() => {
                reload(&r, &mut detectors, &mut reloads);
                continue;
            }
            _ = sweep.tick() => {
                let now = r.clock.now_ms();
                detectors.sweep(now);
                r.admission.sweep(now);
                continue;
            }
            n = rx.recv_many(&mut seen, OBSERVED_AT_ONCE) => if n == 0 {
                return;
            },
        };
        for s in seen.drain(..) {
            if shutdown.is_cancelled() {
                return;
            }
            if reloads.has_changed().unwrap_or(false) {
                reload(&r, &mut detectors, &mut reloads);
            }
            for firing in detectors.see(&s) {
                act(&r, firing).await;
            }
        }
    }
}

/// Takes the config a reload put in force: new settings start the detectors' counts
/// afresh; blocks stay.
fn reload(
    r: &Responders,
    detectors: &mut Detectors,
    reloads: &mut tokio::sync::watch::Receiver<Arc<keyway_core::config::Config>>,
) {
    let new = reloads.borrow_and_update().detect.clone();
    if *r.admission.settings() != new {
        *detectors = Detectors::new(&new);
        r.admission.set_settings(new);
    }
}

/// The most observations [`run`] takes from the queue at once.
const OBSERVED_AT_ONCE: usize = 64;

/// Carries out a firing: the action, then the alert to the audit log, the metric
/// and the webhook.
async fn act(r: &Responders, f: Firing) {
    let detector = f.detector.as_str();
    let mut detail = serde_json::Map::new();
    detail.insert("detector".into(), detector.into());
    detail.insert("action".into(), f.action.as_str().into());
    detail.insert("summary".into(), f.summary.clone().into());
    let outcome = match (f.action, &f.token_id) {
        (Action::Alert, _) => "alerted",
        (Action::Block, _) => match r.admission.block(f.source, r.clock.now_ms()) {
            Some(until) => {
                detail.insert("blocked_until".into(), format_ms(until).into());
                let key = source_key(f.source).to_string();
                if let Err(e) = r.store.put_block(&key, until).await {
                    tracing::error!(error = %e, source = %key, "a block holds here but the store did not record it (other replicas, a restart)");
                }
                "blocked"
            }
            None => "exempt",
        },
        (Action::Revoke, Some(id)) => {
            match r
                .tokens
                .revoke(id, &format!("detector:{detector}"), Some(detector))
                .await
            {
                Ok(_) => "revoked",
                Err(e) => {
                    tracing::error!(error = %e, token = %id, "a detector could not persist a revocation");
                    "revoke_failed"
                }
            }
        }
        (Action::Revoke, None) => "alerted",
    };
    detail.insert("outcome".into(), outcome.into());
    tracing::warn!(
        event = "detect.alert",
        detector,
        action = f.action.as_str(),
        outcome,
        source = %f.source,
        token = f.token_id.as_deref().unwrap_or("-"),
        summary = %f.summary,
        "intrusion detector fired"
    );
    r.metrics.detector_fired(detector, f.action.as_str());

    let mut ev = r.audit.event(EventKind::DetectAlert);
    ev.at = f.at.max(ev.at);
    ev.source = Some(f.source.to_string());
    ev.token_id = f.token_id;
    ev.principal = f.principal;
    ev.service = f.service;
    ev.reason = Some(detector.into());
    ev.detail = detail.into();
    r.alerts.send(&ev);
    let _ = r.audit.record_reliably(ev).await;
}

// === impl Detectors ===

impl Detectors {
    pub fn new(config: &DetectConfig) -> Self {
        let longest_window = config
            .detectors
            .values()
            .map(|d| d.window.as_millis() as UnixMillis)
            .max()
            .unwrap_or(0);
        Self {
            config: config.detectors.clone(),
            sources: HashMap::new(),
            tokens: HashMap::new(),
            longest_window,
            sources_swept_at: 0,
        }
    }

    /// Takes one observation; returns what fired.
    pub fn see(&mut self, seen: &Seen) -> Vec<Firing> {
        let mut fired = Vec::new();
        match seen {
            Seen::Touch { at, source, port } => {
                self.touch(*at, *source, Some(*port), &mut fired);
            }
            Seen::Denied {
                at,
                source,
                reason,
                unknown_service,
            } => {
                if *unknown_service {
                    self.touch(*at, *source, None, &mut fired);
                }
                if AUTH_FAILURES.contains(reason) {
                    self.count(DetectorKind::BruteForce, *at, *source, &mut fired);
                }
                if GUESSES.contains(reason) {
                    self.count(DetectorKind::TokenGuessing, *at, *source, &mut fired);
                }
            }
            Seen::Used {
                at,
                source,
                token_id,
                principal,
                service,
            } => self.used(*at, *source, token_id, &mut fired, |f| Firing {
                principal: principal.clone(),
                service: service.clone(),
                ..f
            }),
        }
        fired
    }

    /// The state of a source (an IPv4 address, an IPv6 /64). When the table is full
    /// the sources idle for longer than every window go first, then any one: a flood
    /// from many addresses can make the detectors forget, never stop them noticing.
    fn source(&mut self, source: IpAddr, at: UnixMillis) -> &mut SourceState {
        let key = source_key(source);
        if self.sources.len() >= MAX_TRACKED && !self.sources.contains_key(&key) {
            let idle = at - self.longest_window;
            if self.sources_swept_at < at - 1_000 {
                self.sources_swept_at = at;
                self.sources.retain(|_, s| s.last > idle);
            }
            if self.sources.len() >= MAX_TRACKED {
                if let Some(victim) = self.sources.keys().next().copied() {
                    self.sources.remove(&victim);
                }
            }
        }
        let s = self.sources.entry(key).or_default();
        s.last = s.last.max(at);
        s
    }

    /// `brute_force` and `token_guessing`: denials from one source in a window.
    fn count(
        &mut self,
        kind: DetectorKind,
        at: UnixMillis,
        source: IpAddr,
        fired: &mut Vec<Firing>,
    ) {
        let Some(d) = self.config.get(&kind).cloned() else {
            return;
        };
        let s = self.source(source, at);
        let q = match kind {
            DetectorKind::BruteForce => &mut s.failures,
            _ => &mut s.guesses,
        };
        let window = d.window.as_millis() as UnixMillis;
        while q.front().is_some_and(|&t| t <= at - window) {
            q.pop_front();
        }
        q.push_back(at);
        if q.len() >= d.threshold as usize {
            q.clear();
            let what = match kind {
                DetectorKind::BruteForce => "failed authentications",
                _ => "tokens with a wrong checksum or an unknown id",
            };
            fired.push(Firing::new(
                kind,
                &d,
                at,
                source,
                format!(
                    "{} {what} in {}",
                    d.threshold,
                    humantime::format_duration(d.window)
                ),
            ));
        }
    }

    /// `scanning`: distinct gateway ports, and unknown services, from one source.
    fn touch(
        &mut self,
        at: UnixMillis,
        source: IpAddr,
        port: Option<u16>,
        fired: &mut Vec<Firing>,
    ) {
        let Some(d) = self.config.get(&DetectorKind::Scanning).cloned() else {
            return;
        };
        let s = self.source(source, at);
        let window = d.window.as_millis() as UnixMillis;
        while s.touches.front().is_some_and(|&(t, _)| t <= at - window) {
            s.touches.pop_front();
        }
        // A port already touched in the window is only refreshed.
        if let Some(p) = port {
            s.touches.retain(|&(_, q)| q != Some(p));
        }
        s.touches.push_back((at, port));
        if s.touches.len() > 4 * d.threshold as usize {
            s.touches.pop_front();
        }
        if s.touches.len() >= d.threshold as usize {
            let ports = s.touches.iter().filter(|(_, p)| p.is_some()).count();
            let unknown = s.touches.len() - ports;
            s.touches.clear();
            fired.push(Firing::new(
                DetectorKind::Scanning,
                &d,
                at,
                source,
                format!(
                    "{ports} gateway ports and {unknown} unknown services in {}",
                    humantime::format_duration(d.window)
                ),
            ));
        }
    }

    /// `new_network`, `concurrent_sources` and `rate_spike`: a token's use.
    fn used(
        &mut self,
        at: UnixMillis,
        source: IpAddr,
        token_id: &str,
        fired: &mut Vec<Firing>,
        with: impl Fn(Firing) -> Firing,
    ) {
        if self.tokens.len() >= MAX_TRACKED && !self.tokens.contains_key(token_id) {
            if let Some(victim) = self.tokens.keys().next().cloned() {
                self.tokens.remove(&victim);
            }
        }
        let t = self.tokens.entry(token_id.to_owned()).or_default();
        t.last = t.last.max(at);
        let mut fire = |kind: DetectorKind, d: &Detector, summary: String| {
            let mut f = Firing::new(kind, d, at, source, summary);
            f.token_id = Some(token_id.to_owned());
            fired.push(with(f));
        };

        if let Some(d) = self.config.get(&DetectorKind::NewNetwork) {
            let net = network(source);
            if !t.networks.contains(&net) {
                if !t.networks.is_empty() {
                    fire(DetectorKind::NewNetwork, d, format!("first use from {net}"));
                }
                if t.networks.len() >= MAX_NETWORKS {
                    t.networks.remove(0);
                }
                t.networks.push(net);
            }
        }

        if let Some(d) = self.config.get(&DetectorKind::ConcurrentSources) {
            let window = d.window.as_millis() as UnixMillis;
            let key = source_key(source);
            t.recent.retain(|&(s, when)| s != key && when > at - window);
            let others = t.recent.len();
            if others > 0 && t.concurrent_fired <= at - window {
                t.concurrent_fired = at;
                fire(
                    DetectorKind::ConcurrentSources,
                    d,
                    format!(
                        "used from {} sources within {}",
                        others + 1,
                        humantime::format_duration(d.window)
                    ),
                );
            }
            t.recent.truncate(7);
            t.recent.push((key, at));
        }

        if let Some(d) = self.config.get(&DetectorKind::RateSpike) {
            let window = d.window.as_millis() as UnixMillis;
            if t.bucket_start == 0 {
                t.bucket_start = at;
            }
            let elapsed = (at - t.bucket_start) / window;
            if elapsed > 0 {
                t.windows = t
                    .windows
                    .saturating_add(elapsed.min(u32::MAX as i64) as u32);
                t.baseline = t.baseline * (1.0 - EWMA_ALPHA) + EWMA_ALPHA * t.bucket_count as f64;
                for _ in 1..elapsed.min(32) {
                    t.baseline *= 1.0 - EWMA_ALPHA;
                }
                t.bucket_start += elapsed * window;
                t.bucket_count = 0;
                t.spike_fired = false;
            }
            t.bucket_count += 1;
            // A token without history has no baseline to be far above.
            if !t.spike_fired
                && t.windows >= WARM_UP_WINDOWS
                && t.bucket_count >= d.threshold
                && t.bucket_count as f64 > d.factor * t.baseline
            {
                t.spike_fired = true;
                fire(
                    DetectorKind::RateSpike,
                    d,
                    format!(
                        "{} uses in {}, baseline {:.1}",
                        t.bucket_count,
                        humantime::format_duration(d.window),
                        t.baseline
                    ),
                );
            }
        }
    }

    /// Forgets sources idle for longer than every window, and tokens not seen for a
    /// day (their networks are what `new_network` compares with).
    pub fn sweep(&mut self, now: UnixMillis) {
        let day = 24 * 3600 * 1000;
        let idle = now - self.longest_window;
        self.sources.retain(|_, s| s.last > idle);
        self.tokens.retain(|_, t| t.last > now - day);
    }
}

// === impl Firing ===

impl Firing {
    fn new(
        detector: DetectorKind,
        d: &Detector,
        at: UnixMillis,
        source: IpAddr,
        summary: String,
    ) -> Self {
        Self {
            detector,
            action: d.action,
            at,
            source,
            token_id: None,
            principal: None,
            service: None,
            summary,
        }
    }
}

#[cfg(test)]
mod tests;
