//! The audit writer: events leave the hot path through a bounded queue and are written
//! in batches, one transaction each.
//!
//! When the queue is full the gateway does what the config says: `fail_closed` refuses
//! new requests until the writer catches up (a request reserves its event's place in
//! the queue before it is forwarded), `fail_open` lets them through and counts the
//! dropped events. Nothing is lost silently.
//!
//! Every event, even one that cannot be queued, is shown first to the [`Subscriber`]s
//! the gateway was built with: the metrics count it and the intrusion detectors see
//! it. The sink knows them only through that trait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keyway_core::config::OnFull;
use keyway_core::{Clock, EventKind, UnixMillis};
use keyway_store::{AuditEvent, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::runtime::ConfigInForce;

const BATCH: usize = 1024;
/// How long the writer, under load, waits for more events when a batch is small.
const LINGER: Duration = Duration::from_millis(5);

/// The sending side, shared by every listener.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditEvent>,
    on_full: OnFull,
    stats: Arc<AuditStats>,
    tap: Arc<Tap>,
    clock: Arc<dyn Clock>,
}

/// What watches the event stream on its way to the store: it sees every event,
/// before the queue, on the task that records it, so it must be quick (count, or
/// copy a few fields into a queue of its own).
pub trait Subscriber: Send + Sync {
    fn observe(&self, event: &AuditEvent);
}

/// The subscribers, in the order they see each event.
struct Tap(Vec<Arc<dyn Subscriber>>);

/// [`AuditStats`] read at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditCounts {
    pub written: u64,
    pub dropped: u64,
    pub write_errors: u64,
}

#[derive(Debug, Default)]
pub struct AuditStats {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub write_errors: AtomicU64,
}

/// A reserved place in the queue for one event.
pub struct Reservation(Option<mpsc::OwnedPermit<AuditEvent>>, Arc<Tap>);

/// The queue is full and the config says to fail closed.
#[derive(Debug, Clone, Copy)]
pub struct AuditFull;

// === impl AuditSink ===

impl AuditSink {
    /// Starts the writer. It runs until `stop` fires, then writes what is queued and
    /// ends.
    pub fn start(
        store: Arc<dyn Store>,
        capacity: usize,
        on_full: OnFull,
        stop: CancellationToken,
        subscribers: Vec<Arc<dyn Subscriber>>,
        clock: Arc<dyn Clock>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(capacity);
        let stats = Arc::new(AuditStats::default());
        let task = tokio::spawn(write_loop(store, rx, stats.clone(), stop));
        let tap = Arc::new(Tap(subscribers));
        (
            Self {
                tx,
                on_full,
                stats,
                tap,
                clock,
            },
            task,
        )
    }

    /// Now, by the clock events are dated with.
    pub fn now(&self) -> UnixMillis {
        self.clock.now_ms()
    }

    /// A fresh event of `kind`, dated now.
    pub fn event(&self, kind: EventKind) -> AuditEvent {
        AuditEvent::new(kind, self.clock.now_ms())
    }

    pub fn stats(&self) -> &AuditStats {
        &self.stats
    }

    /// Events waiting to be written.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Reserves a place for a request's event before the request goes on.
    pub fn reserve(&self) -> Result<Reservation, AuditFull> {
        match self.tx.clone().try_reserve_owned() {
            Ok(p) => Ok(Reservation(Some(p), self.tap.clone())),
            Err(_) if self.on_full == OnFull::FailOpen => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("audit queue full; continuing without an audit event (fail_open)");
                Ok(Reservation(None, self.tap.clone()))
            }
            Err(_) => Err(AuditFull),
        }
    }

    /// Waits for a place for an admin change's event; fails only when the writer
    /// has stopped, so the change can be refused before it is made.
    pub async fn reserve_reliably(&self) -> Result<Reservation, AuditFull> {
        match self.tx.clone().reserve_owned().await {
            Ok(p) => Ok(Reservation(Some(p), self.tap.clone())),
            Err(_) => Err(AuditFull),
        }
    }

    /// Reserves a place for an event of a session already under way (a database
    /// statement, a session's end): under `fail_closed` it waits for room, which
    /// slows the session rather than letting it run unaudited; under `fail_open`,
    /// or once the writer has stopped, an event without room is dropped and counted.
    pub async fn reserve_waiting(&self) -> Reservation {
        if self.on_full == OnFull::FailClosed {
            if let Ok(p) = self.tx.clone().reserve_owned().await {
                return Reservation(Some(p), self.tap.clone());
            }
        }
        self.reserve().unwrap_or_else(|_| {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!("audit writer has stopped; a session's event was not recorded");
            Reservation(None, self.tap.clone())
        })
    }

    /// Records an event that gates nothing (a denial); counted when it cannot be
    /// queued. Denials may use only half the queue, so that a flood of unauthenticated
    /// requests cannot take the room allowed requests need under `fail_closed`.
    pub fn record(&self, event: AuditEvent) {
        self.tap.see(&event);
        if self.tx.capacity() <= self.tx.max_capacity() / 2 || self.tx.try_send(event).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("audit queue full; an event was dropped and counted");
        }
    }

    /// Records an event that must not be dropped (admin changes): waits for room.
    pub async fn record_reliably(&self, event: AuditEvent) {
        self.tap.see(&event);
        if self.tx.send(event).await.is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!("audit writer has stopped; an admin event was not recorded");
        }
    }
}

// === impl AuditStats ===

impl AuditStats {
    pub fn snapshot(&self) -> AuditCounts {
        AuditCounts {
            written: self.written.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
        }
    }
}

// === impl Reservation ===

impl Reservation {
    pub fn send(self, event: AuditEvent) {
        self.1.see(&event);
        if let Some(p) = self.0 {
            p.send(event);
        }
    }
}

// === impl Tap ===

impl Tap {
    fn see(&self, event: &AuditEvent) {
        for s in &self.0 {
            s.observe(event);
        }
    }
}

async fn write_loop(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<AuditEvent>,
    stats: Arc<AuditStats>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut busy = false;
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n,
            () = stop.cancelled(), if !rx.is_closed() => {
                // Refuse new events; what is queued (and reserved) is still received.
                rx.close();
                continue;
            }
        };
        if n == 0 {
            break;
        }
        // Under load (events came in while the last batch was written), a moment's
        // wait fills the batch: one transaction (and one trip to SQLite's thread)
        // for many events instead of a few. When events are sparse, each is written
        // at once.
        if busy && n < BATCH / 4 && !rx.is_closed() {
            tokio::time::sleep(LINGER).await;
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
        }
        write_batch(&*store, &batch, &stats).await;
        batch.clear();
        busy = !rx.is_empty();
    }
}

async fn write_batch(store: &dyn Store, batch: &[AuditEvent], stats: &AuditStats) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match store.append_audit(batch).await {
            Ok(()) => {
                stats
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                // Keep the batch and retry: while we wait the queue fills, and
                // `fail_closed` then refuses new requests rather than lose events.
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, events = batch.len(), "audit write failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Checkpoints the chain every `audit.checkpoint_every` and, with a retention set,
/// prunes what is older, until `shutdown`.
pub async fn maintain(
    store: Arc<dyn Store>,
    audit: AuditSink,
    config: ConfigInForce,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(config.current().audit.checkpoint_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        checkpoint(&*store, audit.clock.now_ms()).await;
        if let Some(retention) = config.current().audit.retention {
            prune(&*store, &audit, retention).await;
        }
    }
}

/// Signs the chain's head as it is in the store now, and logs it: the log (shipped
/// elsewhere) keeps a copy no one editing the database can reach.
pub async fn checkpoint(store: &dyn Store, now: UnixMillis) {
    match store.checkpoint_audit(now).await {
        Ok(Some(c)) => tracing::info!(
            event = "audit.checkpoint",
            seq = c.seq,
            hash = %hex::encode(c.hash),
            "audit chain checkpoint signed"
        ),
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "could not write an audit checkpoint"),
    }
}

async fn prune(store: &dyn Store, audit: &AuditSink, retention: Duration) {
    let before = audit.clock.now_ms() - retention.as_millis().min(i64::MAX as u128) as i64;
    match store.prune_audit(before).await {
        Ok(Some((anchor, events))) => {
            tracing::info!(anchor, events, "audit events past retention pruned");
            let mut ev = audit.event(EventKind::AuditPruned);
            ev.detail = serde_json::json!({
                "events": events,
                "through_seq": anchor,
                "before": keyway_core::clock::format_ms(before),
            });
            audit.record_reliably(ev).await;
        }
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "could not prune the audit log"),
    }
}
