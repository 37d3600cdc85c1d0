//! The admission check and the detectors' intake: every accepted connection passes
//! [`Admission::admit`] (a blocked source is closed there), and every audit event
//! passes [`Admission::observe`] on its way to the store. What a detector needs of
//! them is copied into a bounded queue for the detector task (`detect.rs`), which
//! writes the blocklist back through [`Admission::block`]. The hot path only copies a
//! few fields and, while something is blocked, reads the blocklist.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use ipnet::IpNet;
use keyway_core::config::{DetectConfig, DetectorKind};
use keyway_core::{Clock, Decision, DenyReason, EventKind, UnixMillis};
use keyway_store::AuditEvent;
use tokio::sync::mpsc;

use crate::telemetry::Metrics;

/// Observations waiting for the detector task; beyond this they are counted and
/// dropped rather than slowing the data plane.
const QUEUE: usize = 65_536;
/// A block's strikes are forgotten after a day without a block.
pub(crate) const STRIKE_MEMORY: UnixMillis = 24 * 3600 * 1000;

/// Denials that are a failed authentication. Not an expired or revoked token: its
/// owner's client retrying after a revocation is not an attack on the gateway, and
/// blocking it would block everyone behind the same address.
pub(crate) const AUTH_FAILURES: [DenyReason; 7] = [
    DenyReason::NoToken,
    DenyReason::MalformedToken,
    DenyReason::BadChecksum,
    DenyReason::UnknownToken,
    DenyReason::WrongSecret,
    DenyReason::WrongKind,
    DenyReason::CertificateMismatch,
];
/// The detectors' handle, shared by the listeners, the audit sink and the task.
pub struct Admission {
    /// Replaced by a reload.
    config: RwLock<Arc<DetectConfig>>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
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

// === impl Admission ===

impl crate::audit::Subscriber for Admission {
    fn observe(&self, event: &AuditEvent) {
        Admission::observe(self, event);
    }
}

impl Admission {
    /// The settings in force.
    pub fn settings(&self) -> Arc<DetectConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn new(config: DetectConfig, metrics: Arc<Metrics>, clock: Arc<dyn Clock>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            config: RwLock::new(Arc::new(config)),
            metrics,
            clock,
            blocks: RwLock::default(),
            blocked_until: AtomicI64::new(0),
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
        }
    }

    /// The admission check of a connection accepted on `port`, at the clock's now
    /// ([`Admission::admit`]).
    pub fn admit_now(&self, source: IpAddr, port: u16) -> bool {
        self.admit(source, port, self.clock.now_ms())
    }

    /// Whether `source` is blocked at the clock's now.
    pub fn is_blocked_now(&self, source: IpAddr) -> bool {
        self.is_blocked(source, self.clock.now_ms())
    }

    /// Whether `source` is blocked at `now`.
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

    /// Blocks `source` until `until` as a block made elsewhere says (another
    /// replica's detectors, or this gateway's before a restart): a later end already
    /// here stands, and no strike is added. `source` is a block's key (an address,
    /// or an IPv6 /64 by its first address); `never_block` still wins.
    pub fn block_until(&self, source: IpAddr, until: UnixMillis) {
        let source = source_key(source);
        if self
            .settings()
            .never_block
            .iter()
            .any(|n| n.contains(&source))
        {
            return;
        }
        let mut blocks = self.blocks.write().unwrap_or_else(|p| p.into_inner());
        let b = blocks.entry(source).or_insert(Block { until, strikes: 0 });
        b.until = b.until.max(until);
        self.blocked_until.fetch_max(until, Ordering::Relaxed);
    }

    /// [`Admission::block_until`] for a block as the store keeps it (its source as
    /// text); one that names no address is ignored, and logged.
    pub fn block_stored(&self, source: &str, until: UnixMillis) {
        match source.parse() {
            Ok(ip) => self.block_until(ip, until),
            Err(_) => tracing::warn!(source, "a stored block names no address; ignored"),
        }
    }

    /// Sources blocked now.
    pub fn blocked_sources(&self, now: UnixMillis) -> usize {
        let blocks = self.blocks.read().unwrap_or_else(|p| p.into_inner());
        blocks.values().filter(|b| b.until > now).count()
    }

    /// Forgets blocks whose strikes have expired.
    pub(crate) fn sweep(&self, now: UnixMillis) {
        let mut blocks = self.blocks.write().unwrap_or_else(|p| p.into_inner());
        blocks.retain(|_, b| b.until + STRIKE_MEMORY > now);
    }

    /// The observations, for the one detector task; `None` after the first call.
    pub(crate) fn take_observations(&self) -> Option<mpsc::Receiver<Seen>> {
        self.rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Puts new settings in force (a reload changed them).
    pub(crate) fn set_settings(&self, settings: DetectConfig) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
    }

    /// Sources with a block or strikes remembered.
    #[cfg(test)]
    pub(crate) fn remembered(&self) -> usize {
        self.blocks.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Observations dropped because the detector task fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// What counts as one source: an IPv4 address, or an IPv6 /64 (one host can hold a
/// whole /64, and privacy addresses change within it).
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        v6 => network(v6).addr(),
    }
}

/// The /24 of an IPv4 address, the /64 of an IPv6 one.
pub(crate) fn network(ip: IpAddr) -> IpNet {
    let ip = ip.to_canonical();
    let prefix = if ip.is_ipv4() { 24 } else { 64 };
    IpNet::new(ip, prefix).map_or(IpNet::from(ip), |n| n.trunc())
}
