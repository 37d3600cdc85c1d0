//! Live sessions: the connections that outlive a request (tunnel streams, PostgreSQL
//! sessions, WebSockets, streamed responses, agents), the one rule that says when
//! each must end, and the registry that ends them all when the gateway stops.
//!
//! A session ends when its token is revoked or expires, when a reload leaves it
//! outside its service ([`fits`]: its service gone, its source outside the service's
//! `allow_cidrs`, its token's lifetime above the `max_ttl`, its database role gone,
//! its upstream another one), when an operator ends it ([`Sessions::end`]), or when
//! the gateway stops ([`Sessions::end_all`]). It outlives its listener across a
//! reload, not the gateway. The registry lists the live ones ([`Sessions::list`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyway_core::config::{Config, Service, ServiceKind};
use keyway_core::{Clock, UnixMillis};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::index::Entry;
use crate::runtime::{ConfigInForce, DRAIN_TIMEOUT};

/// What a live session is, to judge whether it still fits a new config.
#[derive(Debug, Clone)]
pub struct Session {
    pub service: String,
    pub source: IpAddr,
    /// The token's whole lifetime, issue to expiry.
    pub lifetime: Duration,
    /// Where the session goes when it started ([`destination`]), and through which
    /// agent.
    pub upstream: String,
    pub via: Option<String>,
    /// A database session's role, and the upstream user it logged in as.
    pub role: Option<(String, String)>,
}

/// Why a reload ended a session, for its audit event and its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfit {
    ServiceRemoved,
    UpstreamChanged,
    SourceNotAllowed,
    TtlAboveMax,
    RoleRemoved,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// Either side closed it.
    Closed,
    /// A read or write failed.
    Error,
    Revoked,
    Expired,
    /// A reload left it outside its service.
    Unfit(Unfit),
    /// An operator ended it ([`Sessions::end`]).
    Terminated,
    /// The gateway stopped.
    Shutdown,
    /// A statement's audit event could not be written, so it was not run
    /// (PostgreSQL, under `fail_closed`).
    Unaudited,
}

/// A live session as the registry lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionInfo {
    pub id: u64,
    /// `tcp`, `postgres` or `websocket`.
    pub protocol: &'static str,
    pub service: String,
    pub principal: String,
    pub token_id: String,
    pub source: IpAddr,
    pub started_at: UnixMillis,
    /// Bytes from the client to the upstream so far.
    pub bytes_in: u64,
    /// Bytes from the upstream to the client so far.
    pub bytes_out: u64,
    /// PostgreSQL: the last statement the client sent, redacted as the audit
    /// log has it, cut to [`STATEMENT_SHOWN`] characters.
    pub statement: Option<String>,
}

impl SessionInfo {
    /// As this replica's heartbeat carries it to the others' consoles.
    pub fn to_beat(&self) -> keyway_store::BeatSession {
        keyway_store::BeatSession {
            id: self.id,
            protocol: self.protocol.to_owned(),
            service: self.service.clone(),
            principal: self.principal.clone(),
            token_id: self.token_id.clone(),
            source: self.source.to_string(),
            started_at: self.started_at,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            statement: self.statement.clone(),
        }
    }
}

/// The characters of a session's last statement that its listing shows.
pub const STATEMENT_SHOWN: usize = 200;

/// What a live session has carried so far, kept up to date by its proxy as bytes
/// go (one relaxed atomic add a read or write) and read by the listing.
#[derive(Debug, Default)]
pub struct Meter {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    statement: Mutex<Option<String>>,
}

impl Meter {
    /// The session's latest statement, already redacted.
    pub fn set_statement(&self, text: &str) {
        // Written into the last one's place: no allocation for a statement no
        // longer than one before it.
        let mut shown = self.statement.lock().unwrap_or_else(|p| p.into_inner());
        let shown = shown.get_or_insert_with(String::new);
        shown.clear();
        shown.push_str(keyway_core::text::first_chars(text, STATEMENT_SHOWN));
    }
}

/// A session's place in the registry: listed while it is held, ended by
/// [`Sessions::end`]; dropping it takes the session off the list.
pub struct Live {
    id: u64,
    registry: Arc<Mutex<HashMap<u64, Listed>>>,
    meter: Arc<Meter>,
}

/// A listed session, the handle that ends it, and what it has carried.
struct Listed {
    info: SessionInfo,
    end: CancellationToken,
    meter: Arc<Meter>,
}

/// The registry of live sessions: they run on it rather than on their listener's
/// tasks, so a reload that restarts a proxy leaves them be, and the gateway's stop
/// ends them all and waits for their goodbyes.
#[derive(Clone)]
pub struct Sessions {
    config: ConfigInForce,
    clock: Arc<dyn Clock>,
    tracker: TaskTracker,
    /// Fired by [`Sessions::end_all`]; each session then ends with `shutdown`.
    stopping: CancellationToken,
    /// The sessions opened with [`Sessions::open`], by id.
    live: Arc<Mutex<HashMap<u64, Listed>>>,
    ids: Arc<AtomicU64>,
}

/// Whether `s` still fits `config`.
pub fn fits(config: &Config, s: &Session) -> Result<(), Unfit> {
    let svc = config.service(&s.service).ok_or(Unfit::ServiceRemoved)?;
    if destination(svc) != s.upstream || svc.via != s.via {
        return Err(Unfit::UpstreamChanged);
    }
    if !svc.allows_source(s.source) {
        return Err(Unfit::SourceNotAllowed);
    }
    if s.lifetime > config.max_ttl_of(svc) {
        return Err(Unfit::TtlAboveMax);
    }
    if let Some((role, user)) = &s.role {
        let ServiceKind::Postgres(pg) = &svc.kind else {
            return Err(Unfit::UpstreamChanged);
        };
        if pg.roles.get(role).is_none_or(|r| &r.user != user) {
            return Err(Unfit::RoleRemoved);
        }
    }
    Ok(())
}

/// Where a session of `svc` goes, as far as a reload must not move it: the upstream,
/// and what the gateway says there (an HTTP base path and injected credential, a
/// database's name).
pub fn destination(svc: &Service) -> String {
    match &svc.kind {
        ServiceKind::Http(h) => {
            let auth = h.upstream_auth.as_ref();
            format!(
                "{}{} {:?}",
                h.upstream.authority,
                h.upstream.base_path,
                auth.map(|a| (a.header.as_str(), a.secret.as_str()))
            )
        }
        ServiceKind::Tcp(t) => t.upstream.clone(),
        ServiceKind::Postgres(p) => format!("{}/{}", p.upstream, p.database),
    }
}

/// Resolves when the config in force no longer fits `s` (checked at once, then at
/// every reload); never while it fits.
pub async fn until_unfit(mut rx: watch::Receiver<Arc<Config>>, s: Session) -> Unfit {
    loop {
        if let Err(why) = fits(&rx.borrow_and_update(), &s) {
            return why;
        }
        if rx.changed().await.is_err() {
            // The gateway is gone; so is everything else.
            return std::future::pending().await;
        }
    }
}

// === impl Session ===

impl Session {
    /// A session of `svc` from `source`, with the token of `entry`.
    pub fn new(svc: &Service, entry: &Entry, source: IpAddr) -> Self {
        Self {
            service: svc.name.clone(),
            source,
            lifetime: entry.lifetime(),
            upstream: destination(svc),
            via: svc.via.clone(),
            role: None,
        }
    }
}

// === impl Unfit ===

impl Unfit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unfit::ServiceRemoved => "service_removed",
            Unfit::UpstreamChanged => "upstream_changed",
            Unfit::SourceNotAllowed => "source_not_allowed",
            Unfit::TtlAboveMax => "ttl_above_max",
            Unfit::RoleRemoved => "role_removed",
        }
    }
}

// === impl SessionEnd ===

impl SessionEnd {
    /// As the audit log's `end` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionEnd::Closed => "closed",
            SessionEnd::Error => "error",
            SessionEnd::Revoked => "revoked",
            SessionEnd::Expired => "expired",
            SessionEnd::Unfit(why) => why.as_str(),
            SessionEnd::Terminated => "terminated",
            SessionEnd::Shutdown => "shutdown",
            SessionEnd::Unaudited => "audit_unavailable",
        }
    }
}

// === impl Sessions ===

impl Sessions {
    pub fn new(config: ConfigInForce, clock: Arc<dyn Clock>) -> Self {
        Self {
            config,
            clock,
            tracker: TaskTracker::new(),
            stopping: CancellationToken::new(),
            live: Arc::default(),
            ids: Arc::default(),
        }
    }

    /// Lists a session that has started (`protocol` of `svc`, with `entry`'s token,
    /// as `session` describes it) and returns its place in the list, to hold while it
    /// runs, and the future that resolves when it must end: [`Sessions::end_of`], or
    /// an operator ending it ([`Sessions::end`]).
    pub fn open(
        &self,
        protocol: &'static str,
        entry: Arc<Entry>,
        session: Session,
    ) -> (Live, impl Future<Output = SessionEnd> + Send + 'static) {
        let id = self.ids.fetch_add(1, Ordering::Relaxed) + 1;
        let end = CancellationToken::new();
        let info = SessionInfo {
            id,
            protocol,
            service: session.service.clone(),
            principal: entry.record.principal.clone(),
            token_id: entry.id().to_owned(),
            source: session.source,
            started_at: self.clock.now_ms(),
            bytes_in: 0,
            bytes_out: 0,
            statement: None,
        };
        let meter = Arc::new(Meter::default());
        self.live.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            Listed {
                info,
                end: end.clone(),
                meter: meter.clone(),
            },
        );
        let watch = self.end_of(entry, session);
        // Polled beside the session's relay at each of its reads and writes; what
        // it waits on changes rarely, so it is polled only once that wakes it.
        let ended = crate::runtime::WhenWoken::new(async move {
            tokio::select! {
                biased;
                why = watch => why,
                () = end.cancelled() => SessionEnd::Terminated,
            }
        });
        let live = Live {
            id,
            registry: self.live.clone(),
            meter,
        };
        (live, ended)
    }

    /// The sessions live now, oldest first.
    pub fn list(&self) -> Vec<SessionInfo> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = live
            .values()
            .map(|l| SessionInfo {
                bytes_in: l.meter.bytes_in.load(Ordering::Relaxed),
                bytes_out: l.meter.bytes_out.load(Ordering::Relaxed),
                statement: l
                    .meter
                    .statement
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
                ..l.info.clone()
            })
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Ends the session `id` at once (it says goodbye and records its end as
    /// `terminated`). `false` when no such session is live.
    pub fn end(&self, id: u64) -> bool {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match live.get(&id) {
            Some(l) => {
                l.end.cancel();
                true
            }
            None => false,
        }
    }

    /// Runs a session on the registry.
    pub fn spawn<F>(&self, session: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(session);
    }

    /// What [`Sessions::end_of`] would resolve with at once, read without arming it:
    /// the token's streams cut (revoked), its expiry past, or the gateway stopping. A
    /// reload's verdict needs the watch itself.
    pub fn ended_now(&self, entry: &Entry) -> Option<SessionEnd> {
        if entry.is_cut() {
            Some(SessionEnd::Revoked)
        } else if self.clock.now_ms() >= entry.expires_at() {
            Some(SessionEnd::Expired)
        } else if self.stopping.is_cancelled() {
            Some(SessionEnd::Shutdown)
        } else {
            None
        }
    }

    /// Resolves once the gateway is stopping: a session not yet open is dropped then.
    pub fn stopping(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.stopping.cancelled()
    }

    /// The sessions running now.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Resolves when a live session must end, with why: revoked, expired, why a
    /// reload left it outside its service, or the gateway stopping. The one watch
    /// every session keeps (TCP, PostgreSQL, WebSocket, streamed response); the
    /// token's end wins when several are ready.
    pub fn end_of(
        &self,
        entry: Arc<Entry>,
        session: Session,
    ) -> impl Future<Output = SessionEnd> + Send + 'static {
        let left = entry
            .expires_at()
            .saturating_sub(self.clock.now_ms())
            .max(0);
        let unfit = until_unfit(self.config.watch(), session);
        let stopping = self.stopping.clone();
        async move {
            tokio::select! {
                biased;
                () = entry.until_cut() => SessionEnd::Revoked,
                () = tokio::time::sleep(Duration::from_millis(left as u64)) => SessionEnd::Expired,
                why = unfit => SessionEnd::Unfit(why),
                () = stopping.cancelled() => SessionEnd::Shutdown,
            }
        }
    }

    /// Ends the live sessions and waits, at most [`DRAIN_TIMEOUT`], for them to say
    /// goodbye to their clients and record how they ended. Call once the listeners
    /// have stopped taking new ones.
    pub async fn end_all(&self) {
        self.stopping.cancel();
        self.tracker.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = self.tracker.len(),
                "sessions still open after the drain timeout; they end with the process, \
                 without their end in the audit log"
            );
        }
    }
}

// === impl Live ===

impl Live {
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Live {
    /// Where the session's proxy counts what it carries.
    pub fn meter(&self) -> Arc<Meter> {
        self.meter.clone()
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const CONFIG: &str = r#"
max_ttl = "1h"
[services.db]
protocol = "postgres"
listen = "127.0.0.1:6432"
upstream = "127.0.0.1:5432"
database = "test"
max_ttl = "1h"
allow_cidrs = ["10.0.0.0/8"]
[services.db.roles.readonly]
user = "reader"
secret = "db-reader"
"#;

    fn session() -> Session {
        Session {
            service: "db".into(),
            source: "10.1.2.3".parse().expect("an address"),
            lifetime: Duration::from_secs(30 * 60),
            upstream: "127.0.0.1:5432/test".into(),
            via: None,
            role: Some(("readonly".into(), "reader".into())),
        }
    }

    fn with(edit: impl Fn(&str) -> String) -> Config {
        Config::parse(&edit(CONFIG), Path::new("/")).expect("valid config")
    }

    #[test]
    fn a_session_fits_until_its_service_narrows_past_it() {
        let s = session();
        assert_eq!(fits(&with(str::to_owned), &s), Ok(()));
        assert_eq!(
            fits(
                &with(|c| c.replace("max_ttl = \"1h\"\nallow", "max_ttl = \"10m\"\nallow")),
                &s
            )
            .map_err(Unfit::as_str),
            Err("ttl_above_max")
        );
        assert_eq!(
            fits(&with(|c| c.replace("10.0.0.0/8", "192.168.0.0/16")), &s).map_err(Unfit::as_str),
            Err("source_not_allowed")
        );
        assert_eq!(
            fits(&with(|c| c.replace("roles.readonly", "roles.writer")), &s).map_err(Unfit::as_str),
            Err("role_removed")
        );
        assert_eq!(
            fits(
                &with(|c| c.replace("user = \"reader\"", "user = \"other\"")),
                &s
            )
            .map_err(Unfit::as_str),
            Err("role_removed")
        );
        assert_eq!(
            fits(&with(|c| c.replace("127.0.0.1:5432", "127.0.0.1:5433")), &s)
                .map_err(Unfit::as_str),
            Err("upstream_changed")
        );
        assert_eq!(
            fits(
                &with(|c| c.replace("database = \"test\"", "database = \"other\"")),
                &s
            )
            .map_err(Unfit::as_str),
            Err("upstream_changed")
        );
        assert_eq!(
            fits(&with(|c| c.replace("services.db", "services.db2")), &s).map_err(Unfit::as_str),
            Err("service_removed")
        );
        // Widening is no reason to end anything.
        assert_eq!(
            fits(
                &with(|c| c.replace("[\"10.0.0.0/8\"]", "[\"10.0.0.0/8\", \"192.168.0.0/16\"]")),
                &s
            ),
            Ok(())
        );
    }

    #[tokio::test]
    async fn until_unfit_wakes_on_the_reload_that_narrows() {
        let (tx, rx) = watch::channel(Arc::new(with(str::to_owned)));
        let waiting = tokio::spawn(until_unfit(rx, session()));
        // The session is waiting before the reload comes.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        tx.send_replace(Arc::new(with(|c| {
            c.replace("[\"10.0.0.0/8\"]", "[\"10.0.0.0/8\", \"172.16.0.0/12\"]")
        })));
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "a wider config ended a session");
        tx.send_replace(Arc::new(with(|c| c.replace("10.0.0.0/8", "172.16.0.0/12"))));
        let why = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woke")
            .expect("no panic");
        assert_eq!(why.as_str(), "source_not_allowed");
    }
}
