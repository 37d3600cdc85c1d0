//! Intrusion detection on the live event stream.
//!
//! Every audit event passes [`Detect::observe`] on its way to the store, and every
//! accepted connection passes [`Detect::admit`]; what a detector needs of them goes
//! down a bounded queue to one task ([`run`]), which keeps the detectors' state
//! ([`Detectors`]) and carries out what fires: the alert (audit log, metric, webhook)
//! and the action (block the source, revoke the token). The hot path only copies a
//! few fields and, when something is blocked, reads the blocklist.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ipnet::IpNet;
use keyway_core::clock::format_ms;
use keyway_core::config::{Action, DetectConfig, Detector, DetectorKind};
use keyway_core::{Decision, EventKind};
use keyway_core::{DenyReason, UnixMillis};
use keyway_store::AuditEvent;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::telemetry::Metrics;
use crate::Gateway;

/// Observations waiting for the detector task; beyond this they are counted and
/// dropped rather than slowing the data plane.
const QUEUE: usize = 65_536;
/// Sources and tokens the detectors remember; beyond this new ones are not tracked
/// until a sweep frees room.
const MAX_TRACKED: usize = 100_000;
/// Networks remembered per token by `new_network`.
const MAX_NETWORKS: usize = 32;
/// Weight of the newest window in `rate_spike`'s moving baseline.
const EWMA_ALPHA: f64 = 0.3;
/// A block's strikes are forgotten after a day without a block.
const STRIKE_MEMORY: UnixMillis = 24 * 3600 * 1000;

/// Denials that are a failed authentication. Not an expired or revoked token: its
/// owner's client retrying after a revocation is not an attack on the gateway, and
/// blocking it would block everyone behind the same address.
const AUTH_FAILURES: [DenyReason; 7] = [
    DenyReason::NoToken,
    DenyReason::MalformedToken,
    DenyReason::BadChecksum,
    DenyReason::UnknownToken,
    DenyReason::WrongSecret,
    DenyReason::WrongKind,
    DenyReason::CertificateMismatch,
];
/// Windows of a token's history `rate_spike` needs before it has a baseline.
const WARM_UP_WINDOWS: u32 = 2;
/// Denials of a well-formed token that was never issued.
const GUESSES: [DenyReason; 2] = [DenyReason::BadChecksum, DenyReason::UnknownToken];

/// The detectors' handle, shared by the listeners, the audit sink and the task.
pub struct Detect {
    /// Replaced by a reload.
    config: RwLock<Arc<DetectConfig>>,
    metrics: Arc<Metrics>,
    /// By [`source_key`]: an IPv4 address, or an IPv6 /64.
    blocks: RwLock<HashMap<IpAddr, Block>>,
    /// The latest end of any block: past it, nothing is blocked and the hot path
    /// skips the lock.
    blocked_until: AtomicI64,
    tx: mpsc::Sender<Seen>,
    rx: Mutex<Option<mpsc::Receiver<Seen>>>,
    dropped: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Block {
    until: UnixMillis,
    strikes: u32,
}

/// What a detector is told.
#[derive(Debug, Clone)]
pub enum Seen {
    /// A connection accepted on a gateway port.
    Touch {
        at: UnixMillis,
        source: IpAddr,
        port: u16,
    },
    /// A denial that is a failed authentication, or a request to an unknown service.
    Denied {
        at: UnixMillis,
        source: IpAddr,
        reason: DenyReason,
        unknown_service: bool,
    },
    /// A token used, and allowed.
    Used {
        at: UnixMillis,
        source: IpAddr,
        token_id: String,
        principal: Option<String>,
        service: Option<String>,
    },
}

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
    config: HashMap<DetectorKind, Detector>,
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

// === impl Detect ===

impl crate::audit::Subscriber for Detect {
    fn observe(&self, event: &AuditEvent) {
        Detect::observe(self, event);
    }
}

impl Detect {
    /// The settings in force.
    pub fn settings(&self) -> Arc<DetectConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn new(config: DetectConfig, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            config: RwLock::new(Arc::new(config)),
            metrics,
            blocks: RwLock::default(),
            blocked_until: AtomicI64::new(0),
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
        }
    }

    /// Whether `source` is blocked now.
    pub fn is_blocked(&self, source: IpAddr, now: UnixMillis) -> bool {
        if self.blocked_until.load(Ordering::Relaxed) <= now {
            return false;
        }
        let blocks = self.blocks.read().unwrap_or_else(|p| p.into_inner());
        blocks
            .get(&source_key(source))
            .is_some_and(|b| b.until > now)
    }

    /// A connection was accepted on `port`: false if its source is blocked (close
    /// it), otherwise it is noted for `scanning`.
    pub fn admit(&self, source: IpAddr, port: u16, now: UnixMillis) -> bool {
        let source = source.to_canonical();
        if self.is_blocked(source, now) {
            self.metrics.blocked_connection();
            return false;
        }
        if self
            .settings()
            .detectors
            .contains_key(&DetectorKind::Scanning)
        {
            self.send(Seen::Touch {
                at: now,
                source,
                port,
            });
        }
        true
    }

    /// An audit event on its way to the store.
    pub fn observe(&self, ev: &AuditEvent) {
        let Some(source) = ev.source.as_deref().and_then(|s| s.parse::<IpAddr>().ok()) else {
            return;
        };
        match ev.decision.as_deref().and_then(Decision::from_name) {
            Some(Decision::Deny) => {
                let Some(reason) = ev.reason.as_deref().and_then(DenyReason::from_name) else {
                    return;
                };
                // A name no service has (the tunnel's opening frame names its service);
                // a service a reload removed keeps its name in the event.
                let unknown_service = reason == DenyReason::UnknownService
                    && ev.service.as_deref() == Some("unknown");
                if AUTH_FAILURES.contains(&reason) || unknown_service {
                    self.send(Seen::Denied {
                        at: ev.at,
                        source,
                        reason,
                        unknown_service,
                    });
                }
            }
            Some(Decision::Allow)
                if matches!(
                    EventKind::from_name(&ev.kind),
                    Some(EventKind::Request | EventKind::ConnectionOpen)
                ) =>
            {
                if let Some(token_id) = &ev.token_id {
                    self.send(Seen::Used {
                        at: ev.at,
                        source,
                        token_id: token_id.clone(),
                        principal: ev.principal.clone(),
                        service: ev.service.clone(),
                    });
                }
            }
            _ => {}
        }
    }

    fn send(&self, seen: Seen) {
        if self.tx.try_send(seen).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Blocks `source` (an IPv6 address with its /64) for `block_for`, doubled for
    /// each block of it in the last day, up to `max_block`. None if `never_block`
    /// covers it. Returns the block's end. A source still blocked keeps its block:
    /// firings from events queued before the block add no strike.
    pub fn block(&self, source: IpAddr, now: UnixMillis) -> Option<UnixMillis> {
        let source = source.to_canonical();
        let settings = self.settings();
        if settings.never_block.iter().any(|n| n.contains(&source)) {
            return None;
        }
        let key = source_key(source);
        let mut blocks = self.blocks.write().unwrap_or_else(|p| p.into_inner());
        let strikes = match blocks.get(&key) {
            Some(b) if b.until > now => return Some(b.until),
            Some(b) if b.until + STRIKE_MEMORY > now => b.strikes + 1,
            _ => 0,
        };
        let base = settings.block_for.as_millis() as u64;
        let length = base
            .saturating_mul(1u64 << strikes.min(30))
            .min(settings.max_block.as_millis() as u64);
        let until = now + length as UnixMillis;
        blocks.insert(key, Block { until, strikes });
        self.blocked_until.fetch_max(until, Ordering::Relaxed);
        Some(until)
    }

    /// Sources blocked now.
    pub fn blocked_sources(&self, now: UnixMillis) -> usize {
        let blocks = self.blocks.read().unwrap_or_else(|p| p.into_inner());
        blocks.values().filter(|b| b.until > now).count()
    }

    /// Forgets blocks whose strikes have expired.
    fn sweep(&self, now: UnixMillis) {
        let mut blocks = self.blocks.write().unwrap_or_else(|p| p.into_inner());
        blocks.retain(|_, b| b.until + STRIKE_MEMORY > now);
    }

    /// Observations dropped because the detector task fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The detector task: runs until `shutdown`.
pub async fn run(gw: Arc<Gateway>, shutdown: CancellationToken) {
    let rx = gw
        .detect
        .rx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let Some(mut rx) = rx else { return };
    let mut detectors = Detectors::new(&gw.detect.settings());
    let mut reloads = gw.watch_config();
    let mut sweep = tokio::time::interval(Duration::from_secs(10));
    loop {
        let seen = tokio::select! {
            () = shutdown.cancelled() => return,
            Ok(()) = reloads.changed() => {
                // New settings start the detectors' counts afresh; blocks stay.
                let new = reloads.borrow_and_update().detect.clone();
                if *gw.detect.settings() != new {
                    detectors = Detectors::new(&new);
                    *gw.detect.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
                }
                continue;
            }
            _ = sweep.tick() => {
                detectors.sweep(gw.now());
                gw.detect.sweep(gw.now());
                continue;
            }
            s = rx.recv() => match s {
                Some(s) => s,
                None => return,
            },
        };
        for firing in detectors.see(&seen) {
            act(&gw, firing).await;
        }
    }
}

/// Carries out a firing: the action, then the alert to the audit log, the metric
/// and the webhook.
async fn act(gw: &Arc<Gateway>, f: Firing) {
    let detector = f.detector.as_str();
    let mut detail = serde_json::Map::new();
    detail.insert("detector".into(), detector.into());
    detail.insert("action".into(), f.action.as_str().into());
    detail.insert("summary".into(), f.summary.clone().into());
    let outcome = match (f.action, &f.token_id) {
        (Action::Alert, _) => "alerted",
        (Action::Block, _) => match gw.detect.block(f.source, gw.now()) {
            Some(until) => {
                detail.insert("blocked_until".into(), format_ms(until).into());
                "blocked"
            }
            None => "exempt",
        },
        (Action::Revoke, Some(id)) => {
            match gw
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
    gw.metrics.detector_fired(detector, f.action.as_str());

    let mut ev = gw.event(EventKind::DetectAlert);
    ev.at = f.at.max(ev.at);
    ev.source = Some(f.source.to_string());
    ev.token_id = f.token_id;
    ev.principal = f.principal;
    ev.service = f.service;
    ev.reason = Some(detector.into());
    ev.detail = detail.into();
    gw.alerts.send(&ev);
    gw.audit.record_reliably(ev).await;
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
            config: config
                .detectors
                .iter()
                .map(|(k, d)| (*k, d.clone()))
                .collect(),
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

/// What counts as one source: an IPv4 address, or an IPv6 /64 (one host can hold a
/// whole /64, and privacy addresses change within it).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        v6 => network(v6).addr(),
    }
}

/// The /24 of an IPv4 address, the /64 of an IPv6 one.
fn network(ip: IpAddr) -> IpNet {
    let ip = ip.to_canonical();
    let prefix = if ip.is_ipv4() { 24 } else { 64 };
    IpNet::new(ip, prefix).map_or(IpNet::from(ip), |n| n.trunc())
}

#[cfg(test)]
mod tests;
