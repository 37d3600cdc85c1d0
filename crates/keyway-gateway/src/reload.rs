//! Changing a running gateway: the plan of a new config, applying it as one atomic
//! change (`keyway apply`, SIGHUP), asked for through [`crate::reloads`].
//!
//! A reload replaces the config whole ([`Gateway::config`]). Services that did not
//! change keep their listener and every connection. A removed service's port closes
//! and its sessions end; a changed service gets a new proxy on the same port, started
//! before the old one is retired. An HTTP proxy hands its open connections to its
//! successor: the next request on each is served by the new proxy and its answer
//! closes the connection (`Connection: close`), so no request is refused or cut for
//! the swap. Every live session (TCP, PostgreSQL, WebSocket, streamed response)
//! watches the config and ends when it no longer fits ([`crate::sessions::fits`]).
//!
//! Everything that can fail (binding new ports, reading certificates) happens before
//! anything is replaced, so a reload is applied whole or not at all.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use keyway_core::config::plan::{self, Op, Plan};
use keyway_core::config::{Config, Service};
use keyway_core::EventKind;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::listener::Stop;
pub use crate::reloads::{check_text, ApplyError, Outcome};
use crate::{proxy, Gateway};

/// A service being served: its proxy's task, stopped by `stop`.
struct Running {
    svc: Service,
    listener: Option<Arc<TcpListener>>,
    stop: Stop,
    /// An HTTP service's proxy, to hand its connections to the next one.
    http: Option<Arc<proxy::http::HttpProxy>>,
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
    alpn: &'static [&'static [u8]],
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
        let stop = Stop::new(self.shutdown.child_token());
        let tls_files = tls.as_ref().and_then(|t| t.files);
        let tls = tls.map(|t| t.acceptor);
        let mut http = None;
        if let Some(l) = listener.clone() {
            let h = self.gw.proxy_handles();
            let cancels = self.cancels.entry(svc.name.clone()).or_default().clone();
            if let Some(pg) =
                proxy::postgres::PgProxy::new(h.clone(), svc.clone(), tls.clone(), cancels)
            {
                self.tasks.spawn(pg.serve(l, stop.drain_token()));
            } else if let Some(proxy) = proxy::http::HttpProxy::new(h, svc.clone()) {
                self.tasks.spawn(proxy.clone().serve(l, tls, stop.clone()));
                http = Some(proxy);
            }
        }
        self.running.insert(
            svc.name.clone(),
            Running {
                svc,
                listener,
                stop,
                http,
                tls_files,
            },
        );
    }

    /// Stops `old`, the proxy of a changed service, once its successor is serving:
    /// an HTTP proxy followed by an HTTP proxy hands over its connections and only
    /// stops taking new ones; any other stops (its sessions live on, judged by
    /// [`crate::sessions::fits`]).
    fn retire(&self, old: Running) {
        let next = self.running.get(&old.svc.name).and_then(|r| r.http.clone());
        match (old.http, next) {
            (Some(old_http), Some(next)) => {
                old_http.hand_over(next);
                old.stop.retire();
            }
            _ => old.stop.drain(),
        }
    }

    /// Hands the TLS of one of the gateway's own listeners (setting `key`, speaking
    /// `alpn`, loaded from the files of digest `files`) to the reloads, which load it
    /// again when its files change.
    pub(crate) fn renew_own_tls(
        &mut self,
        key: &'static str,
        alpn: &'static [&'static [u8]],
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
        let rx = self.gw.reloads.take_requests();
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
                    .apply(
                        req.config,
                        (&req.by, req.token_id),
                        req.dry_run,
                        req.publish,
                    )
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
        publish: Option<String>,
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
        // The config the store holds now: a text to publish is recorded over it
        // (and only over it), even when this replica runs the text already (the
        // other replicas may not).
        let stored = match &publish {
            Some(_) if !dry_run => match self.gw.store.applied_config().await {
                Ok(a) => Some(a.map(|a| a.sha256)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the config applied");
                    return Err(ApplyError::Unaudited);
                }
            },
            _ => None,
        };
        let unpublished = stored
            .as_ref()
            .is_some_and(|s| s.as_deref() != Some(&new.written.sha256));
        // TLS to upstreams, loaded (their files read and checked) before anything
        // changes; renewed files are taken even when nothing else changed.
        let upstream_tls =
            self.gw
                .upstream_tls
                .prepare(&new)
                .map_err(|(service, e)| ApplyError::Tls {
                    service,
                    why: e.to_string(),
                })?;
        if dry_run {
            return Ok(outcome);
        }
        if outcome.plan.is_empty() && same_text && !unpublished {
            self.gw.upstream_tls.install(upstream_tls);
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
            let tls = crate::tls::service_acceptor(&svc, &new.data_dir)
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

        // The change is recorded, or not made: its event is committed first, with
        // the text when it is published to every replica of the store.
        let mut ev = self.gw.event(EventKind::ConfigApplied);
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
        match publish {
            Some(text) => {
                let applied = keyway_store::AppliedConfig {
                    sha256: new.written.sha256.clone(),
                    mac: crate::gateway::config_mac(&self.gw.config_key, &text),
                    text,
                    at: ev.at,
                };
                let events = [ev];
                let over = stored.flatten();
                match self
                    .gw
                    .store
                    .put_config(&applied, over.as_deref(), &events)
                    .await
                {
                    Ok(()) => self.gw.audit.committed(&events),
                    Err(keyway_store::StoreError::Conflict) => {
                        let now = self.gw.store.applied_config().await.ok().flatten();
                        return Err(ApplyError::Conflict(
                            now.map(|a| a.sha256).unwrap_or_default(),
                        ));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot record the config applied");
                        return Err(ApplyError::Unaudited);
                    }
                }
            }
            None => {
                let recorded = self.gw.audit.record_reliably(ev).await;
                if !recorded.wait().await {
                    return Err(ApplyError::Unaudited);
                }
            }
        }

        // Nothing can fail from here: the new config goes in force, and sessions
        // judge themselves against it.
        let new = Arc::new(new);
        self.gw.upstream_tls.install(upstream_tls);
        self.gw.replace_config(new.clone());
        // A removed service stops now; a changed one once its successor serves.
        let mut replaced = HashMap::new();
        for c in &outcome.plan.changes {
            if c.section == "service" && c.op != Op::Add {
                if let Some(r) = self.running.remove(&c.name) {
                    if c.op == Op::Remove {
                        r.stop.drain();
                    } else {
                        replaced.insert(c.name.clone(), r);
                    }
                }
                if c.op == Op::Remove {
                    self.cancels.remove(&c.name);
                }
            }
        }
        for (svc, listener, tls) in starting {
            let old = replaced.remove(&svc.name);
            self.start(svc, listener, tls);
            if let Some(old) = old {
                self.retire(old);
            }
        }
        for old in replaced.into_values() {
            old.stop.drain();
        }
        for (i, loaded) in renewed {
            self.own_tls[i].acceptor.replace(loaded.acceptor);
            self.own_tls[i].files = loaded.files;
        }
        // A policy removed or narrowed ends the tokens (and their sessions) it no
        // longer allows; a lowered `max_ttl` shortens them.
        if outcome
            .plan
            .changes
            .iter()
            .any(|c| c.section == "policy" || c.section == "identity")
        {
            match self.gw.tokens.enforce_policies(&new, by).await {
                Ok((0, 0)) => {}
                Ok((revoked, shortened)) => tracing::info!(
                    revoked,
                    shortened,
                    "a policy change ended or shortened the tokens it gave"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "tokens a changed policy no longer allows are refused, but the store did not record it")
                }
            }
        }
        outcome.applied = true;
        outcome.listening = self.listening();

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
