//! The audit writer: events leave the hot path through a bounded queue and are written
//! in batches, one transaction each (group commit).
//!
//! With `durability = "commit"` (the default) an answer waits for its event: the
//! caller gets a [`Committed`] for each event it sends, and releases the response (an
//! HTTP status, a tunnel's opening, a database session, a statement) only once it
//! resolves `true`, so an answer implies a durable event, even across `kill -9` or a
//! power cut. Many answers share one write and fsync. With `"batched"` the answer goes
//! at once and the event follows within milliseconds; a crash can lose those.
//!
//! When the queue is full, or the store refuses writes (a full disk), the gateway does
//! what the config says: `fail_closed` refuses new requests (503 `audit_unavailable`)
//! until the writer catches up (a request reserves its event's place in the queue
//! before it is forwarded), `fail_open` lets them through and counts the dropped
//! events. Nothing is lost silently. The queue is bounded twice: by events
//! (`audit.queue`) and by the bytes they hold (`audit.queue_bytes`, counted from
//! each event's queueing until its batch is written), so that under sustained
//! overload its memory has a ceiling whatever the events carry. A failed batch is kept and retried until the
//! store takes it; the answers that waited for it were refused, and their events say
//! so (`"withheld": "audit_unavailable"`).
//!
//! Every event, even one that cannot be queued, is shown first to the [`Subscriber`]s
//! the gateway was built with: the metrics count it and the intrusion detectors see
//! it. The sink knows them only through that trait.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keyway_core::config::{Durability, OnFull};
use keyway_core::{Clock, EventKind, UnixMillis};
use keyway_store::{AuditEvent, Store};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::runtime::ConfigInForce;

const BATCH: usize = 1024;
/// How long the writer, under load, waits for more events when a batch is small.
const LINGER: Duration = Duration::from_millis(5);
/// The longest wait between two tries of a batch the store refused: once the disk
/// has room again, the gateway serves within about this long.
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The sending side, shared by every listener.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Queued>,
    /// The bytes queued events hold, against `audit.queue_bytes`.
    bytes: Arc<Bytes>,
    on_full: OnFull,
    durability: Durability,
    stats: Arc<AuditStats>,
    tap: Arc<Tap>,
    clock: Arc<dyn Clock>,
}

/// An event on its way to the store, and who waits for its commit.
struct Queued {
    event: AuditEvent,
    ack: Option<oneshot::Sender<bool>>,
    /// What it counts for in [`Bytes`].
    bytes: usize,
}

/// The bytes (about: [`AuditEvent::approx_bytes`]) the events between queueing and
/// their batch's write hold, and how many they may.
#[derive(Debug)]
struct Bytes {
    held: AtomicUsize,
    max: usize,
}

/// Resolves once an event is durable: `true` when the answer it gates may go,
/// `false` when the store did not take it (the answer must then be a refusal).
#[must_use = "an answer waits for its event's commit"]
pub struct Committed(Result<oneshot::Receiver<bool>, bool>);

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
    /// Batches the store took, and the time their writes took in all (what the
    /// answers gated on them waited for, fsync included).
    pub commits: u64,
    pub commit_micros: u64,
}

#[derive(Debug, Default)]
pub struct AuditStats {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub write_errors: AtomicU64,
    pub commits: AtomicU64,
    pub commit_micros: AtomicU64,
    /// Set while the store refuses the writer's batches; cleared by the next commit.
    pub failing: AtomicBool,
}

/// A reserved place in the queue for one event.
pub struct Reservation {
    permit: Option<mpsc::OwnedPermit<Queued>>,
    bytes: Arc<Bytes>,
    tap: Arc<Tap>,
    durability: Durability,
}

/// The queue is full and the config says to fail closed.
#[derive(Debug, Clone, Copy)]
pub struct AuditFull;

// === impl AuditSink ===

impl AuditSink {
    /// Starts the writer. It runs until `stop` fires, then writes what is queued and
    /// ends.
    pub fn start(
        store: Arc<dyn Store>,
        config: &keyway_core::config::AuditConfig,
        stop: CancellationToken,
        subscribers: Vec<Arc<dyn Subscriber>>,
        clock: Arc<dyn Clock>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue);
        let stats = Arc::new(AuditStats::default());
        let bytes = Arc::new(Bytes {
            held: AtomicUsize::new(0),
            max: config.queue_bytes,
        });
        let task = tokio::spawn(write_loop(store, rx, stats.clone(), bytes.clone(), stop));
        let tap = Arc::new(Tap(subscribers));
        (
            Self {
                tx,
                bytes,
                on_full: config.on_full,
                durability: config.durability,
                stats,
                tap,
                clock,
            },
            task,
        )
    }

    /// Whether the store refuses writes now (a full disk, an I/O error) and the
    /// config says to refuse rather than answer unaudited.
    fn refusing(&self) -> bool {
        self.on_full == OnFull::FailClosed && self.stats.failing.load(Ordering::Relaxed)
    }

    fn reservation(&self, permit: Option<mpsc::OwnedPermit<Queued>>) -> Reservation {
        Reservation {
            permit,
            bytes: self.bytes.clone(),
            tap: self.tap.clone(),
            durability: self.durability,
        }
    }

    /// Events the store took outside the queue, each in the transaction of the
    /// change it records (a token issued, a secret set): shown to the subscribers
    /// and counted as written.
    pub fn committed(&self, events: &[AuditEvent]) {
        for e in events {
            self.tap.see(e);
        }
        self.stats
            .written
            .fetch_add(events.len() as u64, Ordering::Relaxed);
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

    /// The bytes (about) the events waiting to be written hold.
    pub fn queued_bytes(&self) -> usize {
        self.bytes.held()
    }

    /// Reserves a place for a request's event before the request goes on.
    pub fn reserve(&self) -> Result<Reservation, AuditFull> {
        if self.refusing() {
            return Err(AuditFull);
        }
        let room = if self.bytes.held() < self.bytes.max {
            self.tx.clone().try_reserve_owned().map_err(|_| ())
        } else {
            Err(())
        };
        match room {
            Ok(p) => Ok(self.reservation(Some(p))),
            Err(_) if self.on_full == OnFull::FailOpen => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("audit queue full; continuing without an audit event (fail_open)");
                Ok(self.reservation(None))
            }
            Err(_) => Err(AuditFull),
        }
    }

    /// Waits for a place for an admin change's event; fails only when the writer
    /// has stopped, so the change can be refused before it is made.
    pub async fn reserve_reliably(&self) -> Result<Reservation, AuditFull> {
        match self.tx.clone().reserve_owned().await {
            Ok(p) => Ok(self.reservation(Some(p))),
            Err(_) => Err(AuditFull),
        }
    }

    /// Reserves a place for an event of a session already under way (a database
    /// statement, a session's end): under `fail_closed` it waits for room, which
    /// slows the session rather than letting it run unaudited; under `fail_open`,
    /// or once the writer has stopped, an event without room is dropped and counted.
    pub async fn reserve_waiting(&self) -> Reservation {
        if self.on_full == OnFull::FailClosed {
            // Room in bytes comes back as the writer writes; waiting for it is
            // waiting for the store, as waiting for a place is.
            while self.bytes.held() >= self.bytes.max && !self.tx.is_closed() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if let Ok(p) = self.tx.clone().reserve_owned().await {
                return self.reservation(Some(p));
            }
        }
        self.reserve().unwrap_or_else(|_| {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!("audit writer has stopped; a session's event was not recorded");
            self.reservation(None)
        })
    }

    /// Records a refusal, whose answer (the refusal itself) waits for the returned
    /// [`Committed`] under `durability = "commit"`. Counted when it cannot be queued;
    /// under `fail_closed` the answer is then a 503 instead. Refusals may use only
    /// half the queue, so that a flood of unauthenticated requests cannot take the
    /// room allowed requests need.
    pub fn record(&self, event: AuditEvent) -> Committed {
        self.tap.see(&event);
        if self.refusing()
            || self.tx.capacity() <= self.tx.max_capacity() / 2
            || self.bytes.held() >= self.bytes.max / 2
        {
            return self.not_queued();
        }
        match self.tx.clone().try_reserve_owned() {
            Ok(p) => self.reservation(Some(p)).queue(event),
            Err(_) => self.not_queued(),
        }
    }

    fn not_queued(&self) -> Committed {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("audit queue full or store failing; an event was dropped and counted");
        Committed::ready(self.durability == Durability::Batched || self.on_full == OnFull::FailOpen)
    }

    /// Records an event that must not be dropped (a configuration applied, a block
    /// by the detectors): waits for room. The returned [`Committed`] says when it is
    /// durable.
    pub async fn record_reliably(&self, event: AuditEvent) -> Committed {
        match self.reserve_reliably().await {
            Ok(r) => r.send(event),
            Err(AuditFull) => {
                self.tap.see(&event);
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!("audit writer has stopped; an event was not recorded");
                Committed::ready(false)
            }
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
            commits: self.commits.load(Ordering::Relaxed),
            commit_micros: self.commit_micros.load(Ordering::Relaxed),
        }
    }
}

// === impl Reservation ===

impl Reservation {
    /// Queues the event; under `durability = "commit"` the answer it gates waits
    /// for the returned [`Committed`].
    pub fn send(self, event: AuditEvent) -> Committed {
        self.tap.see(&event);
        self.queue(event)
    }

    fn queue(self, event: AuditEvent) -> Committed {
        let Some(permit) = self.permit else {
            // Not queued under `fail_open`: the config chose to answer.
            return Committed::ready(true);
        };
        let bytes = event.approx_bytes();
        self.bytes.held.fetch_add(bytes, Ordering::Relaxed);
        if self.durability == Durability::Batched {
            permit.send(Queued {
                event,
                ack: None,
                bytes,
            });
            return Committed::ready(true);
        }
        let (ack, done) = oneshot::channel();
        permit.send(Queued {
            event,
            ack: Some(ack),
            bytes,
        });
        Committed(Ok(done))
    }
}

// === impl Bytes ===

impl Bytes {
    fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

// === impl Committed ===

impl Committed {
    pub fn ready(ok: bool) -> Self {
        Self(Err(ok))
    }

    /// Waits for the commit: `true` once the event is durable (or the config does
    /// not wait), `false` when the store did not take it. With the store gone, an
    /// answer already on its way waits for it to come back (the writer retries);
    /// new requests are refused at once meanwhile.
    pub async fn wait(self) -> bool {
        match self.0 {
            Err(ok) => ok,
            Ok(done) => done.await.unwrap_or(false),
        }
    }
}

#[cfg(test)]
impl Committed {
    /// A commit the test resolves: `true` sent, committed; `false`, refused.
    pub(crate) fn waiting() -> (oneshot::Sender<bool>, Self) {
        let (tx, rx) = oneshot::channel();
        (tx, Self(Ok(rx)))
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
    mut rx: mpsc::Receiver<Queued>,
    stats: Arc<AuditStats>,
    bytes: Arc<Bytes>,
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
        // wait fills the batch: one transaction (and one fsync) for many events
        // instead of a few. When events are sparse, each is written at once; and
        // never when an answer waits for the commit: what arrived during the last
        // write is the group, and more come only once these are answered.
        let waited_on = batch.iter().any(|q| q.ack.is_some());
        if busy && !waited_on && n < BATCH / 4 && !rx.is_closed() {
            tokio::time::sleep(LINGER).await;
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
        }
        let held: usize = batch.iter().map(|q| q.bytes).sum();
        let (mut events, acks): (Vec<_>, Vec<_>) =
            batch.drain(..).map(|q| (q.event, q.ack)).unzip();
        write_batch(&*store, &mut events, acks, &stats, &stop).await;
        // Written (or given up at a stop that could not wait): their memory is free.
        drop(events);
        bytes.held.fetch_sub(held, Ordering::Relaxed);
        busy = !rx.is_empty();
    }
}

/// Writes one batch, retrying until the store takes it, then tells those waiting.
/// On the first failure the waiters are told at once (their answers become
/// refusals) and their events say so; the events themselves are kept and retried.
async fn write_batch(
    store: &dyn Store,
    events: &mut [AuditEvent],
    mut acks: Vec<Option<oneshot::Sender<bool>>>,
    stats: &AuditStats,
    stop: &CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    let mut stopping_since: Option<tokio::time::Instant> = None;
    loop {
        let started = std::time::Instant::now();
        match store.append_audit(events).await {
            Ok(()) => {
                stats
                    .written
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats
                    .commit_micros
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                if stats.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("audit store writable again; serving");
                }
                for ack in acks.into_iter().flatten() {
                    let _ = ack.send(true);
                }
                return;
            }
            Err(e) => {
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                stats.failing.store(true, Ordering::Relaxed);
                tracing::error!(error = %e, events = events.len(), "audit write failed; refusing new requests and retrying");
                for (ev, ack) in events.iter_mut().zip(acks.iter_mut()) {
                    if let Some(ack) = ack.take() {
                        if ack.send(false).is_ok() {
                            withheld(ev);
                        }
                    }
                }
                // Stopping with a store that still refuses: the gateway may not wait
                // for ever. Under `durability = "commit"` the answers these events
                // record were refused (503); under `batched` they were not.
                if stop.is_cancelled() {
                    let since = *stopping_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > crate::runtime::DRAIN_TIMEOUT {
                        stats
                            .dropped
                            .fetch_add(events.len() as u64, Ordering::Relaxed);
                        tracing::error!(
                            events = events.len(),
                            "stopping: the store still refuses writes; these events are not recorded (counted as dropped)"
                        );
                        return;
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Marks an event whose answer was withheld: the client got a 503
/// `audit_unavailable` instead of what the event records.
fn withheld(ev: &mut AuditEvent) {
    if let serde_json::Value::Object(detail) = &mut ev.detail {
        detail.insert("withheld".into(), "audit_unavailable".into());
    } else {
        ev.detail = serde_json::json!({ "withheld": "audit_unavailable" });
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
            let _ = audit.record_reliably(ev).await;
        }
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "could not prune the audit log"),
    }
}

#[cfg(test)]
mod tests;
