//! Changing a running gateway: the plan of a new config, applying it as one atomic
//! change (`keyway apply`, SIGHUP), and the rule live sessions follow afterwards.
//!
//! A reload replaces the config whole ([`Gateway::config`]). Services that did not
//! change keep their listener and every connection. A removed service's port closes
//! and its sessions end; a changed service gets a new proxy on the same port (its
//! HTTP keep-alive connections close after the request in flight). Every live
//! session (TCP, PostgreSQL, WebSocket, streamed response) watches the config and
//! ends when it no longer fits ([`fits`]): its service gone, its source outside the
//! service's `allow_cidrs`, its token's lifetime above the `max_ttl`, its database
//! role gone, its upstream another one.
//!
//! Everything that can fail (binding new ports, reading certificates) happens before
//! anything is replaced, so a reload is applied whole or not at all.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use keyway_core::config::lint;
use keyway_core::config::plan::{self, Op, Plan};
use keyway_core::config::{Config, Service, ServiceKind};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::index::Entry;
use crate::{proxy, Gateway};

/// What a live session is, to judge whether it still fits a new config.
#[derive(Debug, Clone)]
pub struct Session {
    pub service: String,
    pub source: IpAddr,
    /// The token's whole lifetime, issue to expiry.
    pub lifetime: std::time::Duration,
    /// Where the session goes when it started ([`destination`]), and through which
    /// agent.
    pub upstream: String,
    pub via: Option<String>,
    /// A database session's role, and the upstream user it logged in as.
    pub role: Option<(String, String)>,
}

/// Why a session was ended by a reload, for its audit event and its client.
pub type Unfit = &'static str;

/// Whether `s` still fits `config`.
pub fn fits(config: &Config, s: &Session) -> Result<(), Unfit> {
    let svc = config.service(&s.service).ok_or("service_removed")?;
    if destination(svc) != s.upstream || svc.via != s.via {
        return Err("upstream_changed");
    }
    if !svc.allows_source(s.source) {
        return Err("source_not_allowed");
    }
    if s.lifetime > config.max_ttl_of(svc) {
        return Err("ttl_above_max");
    }
    if let Some((role, user)) = &s.role {
        let ServiceKind::Postgres(pg) = &svc.kind else {
            return Err("upstream_changed");
        };
        if pg.roles.get(role).is_none_or(|r| &r.user != user) {
            return Err("role_removed");
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

/// Resolves when a live session must end, with why: `revoked`, `expired`, why a
/// reload left it outside its service, or `shutdown` ([`Gateway::end_sessions`]).
/// The one watch every session keeps (TCP, PostgreSQL, WebSocket, streamed
/// response); the token's end wins when several are ready.
pub fn session_end(
    gw: &Gateway,
    entry: Arc<Entry>,
    session: Session,
) -> impl std::future::Future<Output = &'static str> + Send + 'static {
    let left = entry.expires_at().saturating_sub(gw.now()).max(0);
    let unfit = until_unfit(gw.watch_config(), session);
    let stopping = gw.stopping.clone();
    async move {
        tokio::select! {
            biased;
            () = entry.cancel.cancelled() => "revoked",
            () = tokio::time::sleep(std::time::Duration::from_millis(left as u64)) => "expired",
            why = unfit => why,
            () = stopping.cancelled() => "shutdown",
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

/// A proposed config's text, checked as `keyway validate` checks it
/// ([`lint::check`]): a parse error or a validator's error (a secret written in it, a
/// service without `max_ttl`, …) refuses it. Relative paths are taken from
/// `base_dir`. The answer names keys and lines, with anything secret-looking masked.
pub fn check_text(text: &str, base_dir: &std::path::Path) -> Result<Config, String> {
    let (config, findings) = lint::check(text, base_dir);
    let errors: Vec<String> = findings
        .into_iter()
        .filter(|f| f.severity == lint::Severity::Error)
        .map(|f| format!("{}: {}", f.at, f.message))
        .collect();
    match config {
        Some(c) if errors.is_empty() => Ok(c),
        Some(_) => Err(format!(
            "the config does not pass `keyway validate`:\n{}",
            errors.join("\n")
        )),
        None => Err(format!("the config is not valid:\n{}", errors.join("\n"))),
    }
}

/// A reload asked for.
pub struct Request {
    pub config: Config,
    /// Who asked: an admin token's principal, or `SIGHUP`.
    pub by: String,
    /// The admin token it came with.
    pub token_id: Option<String>,
    /// Plan only.
    pub dry_run: bool,
    pub reply: oneshot::Sender<Result<Outcome, ApplyError>>,
}

/// What a reload did, or would do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub plan: Plan,
    pub applied: bool,
    /// The SHA-256 of the config text now in force (after an apply) or proposed.
    pub sha256: String,
    /// The SHA-256 of the config text that was in force before.
    pub previous_sha256: String,
    /// Where each service with a port listens now.
    pub listening: BTreeMap<String, String>,
    /// The folder relative paths in the proposed config were taken from: the running
    /// config's, wherever the file was sent from.
    #[serde(default)]
    pub base_dir: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("only a restart can change {0}; nothing was applied")]
    NeedsRestart(String),
    #[error("cannot listen on {addr} for service `{service}`: {why}; nothing was applied")]
    Bind {
        service: String,
        addr: SocketAddr,
        why: String,
    },
    #[error("service `{service}`: {why}; nothing was applied")]
    Tls { service: String, why: String },
    #[error("`{key}`: {why}; nothing was applied")]
    OwnTls { key: &'static str, why: String },
    #[error("the gateway is shutting down")]
    Stopped,
    #[error("the audit log cannot record the change; nothing was applied")]
    Unaudited,
}

/// The way to the task that owns the running services.
pub struct Reloads {
    tx: mpsc::Sender<Request>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Request>>>,
}

impl Default for Reloads {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(8);
        Self {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }
}

impl Gateway {
    /// Plans `config` against the one in force and, unless `dry_run`, applies it.
    /// `by` names who asked (an admin token's principal, `SIGHUP`) and `token_id`
    /// the admin token, for the audit log.
    pub async fn reload(
        &self,
        config: Config,
        by: &str,
        token_id: Option<&str>,
        dry_run: bool,
    ) -> Result<Outcome, ApplyError> {
        let (reply, answer) = oneshot::channel();
        let req = Request {
            config,
            by: by.to_owned(),
            token_id: token_id.map(str::to_owned),
            dry_run,
            reply,
        };
        self.reloads
            .tx
            .send(req)
            .await
            .map_err(|_| ApplyError::Stopped)?;
        answer.await.map_err(|_| ApplyError::Stopped)?
    }
}

/// A service being served: its proxy's task, stopped by `stop`.
struct Running {
    svc: Service,
    listener: Option<Arc<TcpListener>>,
    stop: CancellationToken,
    /// SHA-256 over its certificate, key and client CA files when it started: a
    /// renewed certificate at the same path is a change.
    tls_files: Option<[u8; 32]>,
}

/// One of the gateway's own TLS listeners (the token endpoint; the tunnel with
/// `tunnel_tls`). Its address and paths change only with a restart, but its
/// certificate files renewed in place are loaded by a reload.
struct OwnTls {
    /// Its setting: `token_tls` or `tunnel_tls`.
    key: &'static str,
    alpn: &'static [u8],
    acceptor: crate::tls::Renewable,
    /// SHA-256 over its files as loaded.
    files: Option<[u8; 32]>,
}

/// The setting `key` of [`OwnTls`] in `config`.
fn own_tls<'a>(config: &'a Config, key: &str) -> Option<&'a keyway_core::config::TlsConfig> {
    match key {
        "token_tls" => config.token_tls.as_ref(),
        "tunnel_tls" => config.tunnel_tls.as_ref(),
        _ => None,
    }
}

/// A listener's certificate files renewed in place since they were loaded (digest
/// `loaded`), as a change of the plan (`section` `name`, its field `key`). Files that
/// cannot be read now are a change too: loading them says why.
fn renewal(
    t: &keyway_core::config::TlsConfig,
    loaded: [u8; 32],
    section: &str,
    name: &str,
    key: &str,
) -> Option<plan::Change> {
    (crate::tls::files_digest(t) != Some(loaded)).then(|| plan::Change {
        op: Op::Change,
        section: section.into(),
        name: name.into(),
        fields: vec![plan::Field {
            key: key.into(),
            before: Some("(certificate files as loaded)".into()),
            after: Some("(certificate files renewed)".into()),
        }],
        restart: false,
    })
}

/// The services of a running gateway, and the task that changes them.
pub(crate) struct Services {
    gw: Arc<Gateway>,
    running: BTreeMap<String, Running>,
    own_tls: Vec<OwnTls>,
    /// Cancel keys of each PostgreSQL service's sessions, kept across its proxies.
    cancels: HashMap<String, proxy::postgres::CancelKeys>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Services {
    pub(crate) fn new(gw: Arc<Gateway>, shutdown: CancellationToken) -> Self {
        Self {
            gw,
            running: BTreeMap::new(),
            own_tls: Vec::new(),
            cancels: HashMap::new(),
            tasks: TaskTracker::new(),
            shutdown,
        }
    }

    /// Serves `svc` on `listener` (HTTP and PostgreSQL services; TCP services are
    /// reached through the tunnel and only need to be known).
    pub(crate) fn start(
        &mut self,
        svc: Service,
        listener: Option<Arc<TcpListener>>,
        tls: Option<crate::tls::Loaded>,
    ) {
        let stop = self.shutdown.child_token();
        let tls_files = tls.as_ref().and_then(|t| t.files);
        let tls = tls.map(|t| t.acceptor);
        if let Some(l) = listener.clone() {
            let gw = self.gw.clone();
            let cancels = self.cancels.entry(svc.name.clone()).or_default().clone();
            if let Some(pg) =
                proxy::postgres::PgProxy::new(gw.clone(), svc.clone(), tls.clone(), cancels)
            {
                self.tasks.spawn(pg.serve(l, stop.clone()));
            } else if let Some(http) = proxy::http::HttpProxy::new(gw, svc.clone()) {
                self.tasks.spawn(http.serve(l, tls, stop.clone()));
            }
        }
        self.running.insert(
            svc.name.clone(),
            Running {
                svc,
                listener,
                stop,
                tls_files,
            },
        );
    }

    /// Hands the TLS of one of the gateway's own listeners (setting `key`, speaking
    /// `alpn`, loaded from the files of digest `files`) to the reloads, which load it
    /// again when its files change.
    pub(crate) fn renew_own_tls(
        &mut self,
        key: &'static str,
        alpn: &'static [u8],
        acceptor: crate::tls::Renewable,
        files: Option<[u8; 32]>,
    ) {
        self.own_tls.push(OwnTls {
            key,
            alpn,
            acceptor,
            files,
        });
    }

    /// Takes reload requests until shutdown, then waits for the services to drain.
    pub(crate) async fn run(mut self) {
        let rx = self
            .gw
            .reloads
            .rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut rx) = rx {
            loop {
                let req = tokio::select! {
                    () = self.shutdown.cancelled() => break,
                    r = rx.recv() => match r {
                        Some(r) => r,
                        None => break,
                    },
                };
                let result = self
                    .apply(req.config, (&req.by, req.token_id), req.dry_run)
                    .await;
                let _ = req.reply.send(result);
            }
        }
        self.shutdown.cancelled().await;
        self.running.clear();
        self.tasks.close();
        self.tasks.wait().await;
    }

    async fn apply(
        &mut self,
        new: Config,
        (by, token_id): (&str, Option<String>),
        dry_run: bool,
    ) -> Result<Outcome, ApplyError> {
        let old = self.gw.config();
        let mut plan = plan::plan(&old, &new);
        // A certificate renewed in place (same paths, new files) changes its service.
        for (name, r) in &self.running {
            let (Some(before), Some(t)) =
                (r.tls_files, new.service(name).and_then(|s| s.tls.as_ref()))
            else {
                continue;
            };
            let listed = plan
                .changes
                .iter()
                .any(|c| c.section == "service" && &c.name == name);
            if !listed {
                plan.changes
                    .extend(renewal(t, before, "service", name, "tls"));
            }
        }
        // The same for the gateway's own listeners, whose paths only a restart
        // changes (the plan says so when they differ).
        let mut renewing = Vec::new();
        for (i, own) in self.own_tls.iter().enumerate() {
            let (Some(before), Some(t)) = (own.files, own_tls(&new, own.key)) else {
                continue;
            };
            if own_tls(&old, own.key) != Some(t) {
                continue;
            }
            if let Some(change) = renewal(t, before, "setting", own.key, own.key) {
                plan.changes.push(change);
                renewing.push((i, t));
            }
        }
        let mut outcome = Outcome {
            plan,
            applied: false,
            sha256: new.written.sha256.clone(),
            previous_sha256: old.written.sha256.clone(),
            listening: self.listening(),
            base_dir: new.written.base_dir.display().to_string(),
        };
        let restart: Vec<&str> = outcome
            .plan
            .needs_restart()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        // A new text with the same meaning (comments, `60m` for `1h`) changes
        // nothing running, but is still put in force and audited: the hash the
        // gateway reports is the file's.
        let same_text = new.written.sha256 == old.written.sha256;
        if dry_run || (outcome.plan.is_empty() && same_text) {
            return Ok(outcome);
        }
        if !restart.is_empty() {
            return Err(ApplyError::NeedsRestart(restart.join(", ")));
        }

        // Everything that can fail, first: ports and certificates of the services
        // that start or change. A changed service keeps its port when it keeps its
        // address; a port freed by another service in this change is taken over.
        let mut held: HashMap<SocketAddr, Arc<TcpListener>> = self
            .running
            .values()
            .filter_map(|r| Some((r.svc.listen?, r.listener.clone()?)))
            .collect();
        let mut starting = Vec::new();
        for c in &outcome.plan.changes {
            if c.section != "service" || c.op == Op::Remove {
                continue;
            }
            let Some(svc) = new.service(&c.name).cloned() else {
                continue;
            };
            let listener =
                match svc.listen {
                    None => None,
                    Some(addr) => Some(match held.remove(&addr) {
                        Some(l) => l,
                        None => Arc::new(TcpListener::bind(addr).await.map_err(|e| {
                            ApplyError::Bind {
                                service: svc.name.clone(),
                                addr,
                                why: e.to_string(),
                            }
                        })?),
                    }),
                };
            let tls = crate::tls::service_acceptor(&svc)
                .transpose()
                .map_err(|e| ApplyError::Tls {
                    service: svc.name.clone(),
                    why: e.to_string(),
                })?;
            starting.push((svc, listener, tls));
        }

        let mut renewed = Vec::new();
        for (i, t) in renewing {
            let own = &self.own_tls[i];
            let loaded = crate::tls::load(t, own.alpn).map_err(|e| ApplyError::OwnTls {
                key: own.key,
                why: e.to_string(),
            })?;
            renewed.push((i, loaded));
        }

        // The change is recorded, or not made.
        let Ok(reservation) = self.gw.audit.reserve_reliably().await else {
            return Err(ApplyError::Unaudited);
        };

        // Nothing can fail from here: the new config goes in force, and sessions
        // judge themselves against it.
        let new = Arc::new(new);
        self.gw.replace_config(new.clone());
        for c in &outcome.plan.changes {
            if c.section == "service" && c.op != Op::Add {
                if let Some(r) = self.running.remove(&c.name) {
                    r.stop.cancel();
                }
                if c.op == Op::Remove {
                    self.cancels.remove(&c.name);
                }
            }
        }
        for (svc, listener, tls) in starting {
            self.start(svc, listener, tls);
        }
        for (i, loaded) in renewed {
            self.own_tls[i].acceptor.replace(loaded.acceptor);
            self.own_tls[i].files = loaded.files;
        }
        outcome.applied = true;
        outcome.listening = self.listening();

        let mut ev = self.gw.event("config.applied");
        ev.principal = Some(by.to_owned());
        ev.token_id = token_id;
        ev.detail = serde_json::json!({
            "sha256": new.written.sha256,
            "previous_sha256": old.written.sha256,
            "added": names(&outcome.plan, Op::Add),
            "changed": names(&outcome.plan, Op::Change),
            "removed": names(&outcome.plan, Op::Remove),
            "services": new.services.keys().collect::<Vec<_>>(),
        });
        reservation.send(ev);
        tracing::info!(
            by,
            sha256 = %new.written.sha256,
            added = outcome.plan.count(Op::Add),
            changed = outcome.plan.count(Op::Change),
            removed = outcome.plan.count(Op::Remove),
            "config applied"
        );
        Ok(outcome)
    }

    fn listening(&self) -> BTreeMap<String, String> {
        self.running
            .iter()
            .filter_map(|(n, r)| {
                let addr = r.listener.as_ref()?.local_addr().ok()?;
                Some((n.clone(), addr.to_string()))
            })
            .collect()
    }
}

/// `section name` of each change of one kind, as the audit event lists them.
fn names(plan: &Plan, op: Op) -> Vec<String> {
    plan.changes
        .iter()
        .filter(|c| c.op == op)
        .map(|c| format!("{} {}", c.section, c.name))
        .collect()
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
            lifetime: std::time::Duration::from_secs(30 * 60),
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
            ),
            Err("ttl_above_max")
        );
        assert_eq!(
            fits(&with(|c| c.replace("10.0.0.0/8", "192.168.0.0/16")), &s),
            Err("source_not_allowed")
        );
        assert_eq!(
            fits(&with(|c| c.replace("roles.readonly", "roles.writer")), &s),
            Err("role_removed")
        );
        assert_eq!(
            fits(
                &with(|c| c.replace("user = \"reader\"", "user = \"other\"")),
                &s
            ),
            Err("role_removed")
        );
        assert_eq!(
            fits(&with(|c| c.replace("127.0.0.1:5432", "127.0.0.1:5433")), &s),
            Err("upstream_changed")
        );
        assert_eq!(
            fits(
                &with(|c| c.replace("database = \"test\"", "database = \"other\"")),
                &s
            ),
            Err("upstream_changed")
        );
        assert_eq!(
            fits(&with(|c| c.replace("services.db", "services.db2")), &s),
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

    #[test]
    fn a_refused_config_never_echoes_a_secret() {
        // Pasted as a key, it fails parsing and would be named in "unknown field".
        let secret = "Zx8Qw3Lp0Rt7Yb2Nc5VmKq4Hd9";
        let text = format!("{CONFIG}\n{secret} = 1\n");
        let refused = check_text(&text, Path::new("/")).expect_err("refused");
        assert!(refused.starts_with("the config is not valid"), "{refused}");
        assert!(!refused.contains(secret), "{refused}");
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
        let why = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woke")
            .expect("no panic");
        assert_eq!(why, "source_not_allowed");
    }
}
