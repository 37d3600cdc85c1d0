//! The Keyway gateway: the listeners of every service, the admin API, the token
//! index and the audit writer, in layers. Each module imports only from its own
//! layer and those below (`tests/layers.rs` checks it); a part is given the narrow
//! handles it uses, never the whole gateway.
//!
//! # Layout
//!
//! Top to bottom:
//!
//! - supervisor: this file ([`run`], [`Listeners`]); [`gateway`], which opens the
//!   data folder and builds every handle once; [`reload`], which plans and applies a
//!   new config.
//! - control, given [`control::Control`]: [`admin`] (the admin API), [`detect`] (the
//!   detectors' task and its actions), [`alerts`] (signed webhooks), [`portscan`] (the
//!   port audit), [`report`] (the hygiene report).
//! - protocol proxies, given [`proxy::Handles`]: [`proxy`] (`http`, `postgres`),
//!   [`tunnel`] (TCP streams for `keyway connect`, and agents enrolling and serving),
//!   [`token_api`] (workloads exchange a client credential, or a JWT their platform
//!   signed, for an access token).
//! - network: [`listener`] (accepting with bounds and TLS), [`tls`] (certificates,
//!   thumbprints, the local CA), `relay` (bytes both ways, audited), `upstream`
//!   (dialling directly or through an agent), [`agents`] (the agents' registry).
//! - authorization and token lifecycle: [`authz`] (the one authorizer), [`tokens`]
//!   (the only writers of tokens), [`identity`] (workload JWTs verified against their
//!   issuers' keys), [`secrets`] (upstream credentials).
//! - audit: [`audit`] (the sink and the batched writer), [`telemetry`] (Prometheus
//!   metrics, a subscriber of the audit events), [`admission`] (the blocklist and the
//!   detectors' intake, another subscriber).
//! - tokens and sessions: [`index`] (the in-memory token index), [`sessions`] (live
//!   sessions, the rule that ends them, their registry).
//! - runtime: [`runtime`] (the config in force, shared types, limits), [`reloads`]
//!   (the way to ask the supervisor for a new config).

#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod agents;
pub mod alerts;
pub mod audit;
pub mod authz;
pub mod console;
pub mod control;
pub mod detect;
pub mod gateway;
pub mod identity;
pub mod index;
pub mod listener;
pub mod people;
pub mod pins;
pub mod portscan;
pub mod proxy;
mod relay;
pub mod reload;
pub mod reloads;
pub mod report;
pub mod runtime;
pub mod secrets;
pub mod sessions;
pub mod telemetry;
pub mod tls;
pub mod token_api;
pub mod tokens;
pub mod tunnel;
pub mod upstream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keyway_core::config::Config;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use gateway::{Gateway, IssueRequest};
pub(crate) use runtime::{Stream, DATA_CAPS};

/// The sockets a gateway serves, bound before it starts.
pub struct Listeners {
    pub admin: TcpListener,
    /// The token endpoint, where workloads exchange credentials.
    pub token: Option<TcpListener>,
    /// The tunnel listener, where `keyway connect` reaches TCP services.
    pub tunnel: Option<TcpListener>,
    pub services: BTreeMap<String, TcpListener>,
    /// TLS of the listeners that have it, by service name (the token endpoint's under
    /// [`TOKEN_LISTENER`]); certificates are loaded when binding, so a bad file stops
    /// start-up.
    pub tls: BTreeMap<String, tls::Loaded>,
    /// The gateway's own CA, when the tunnel uses it: it enrolls agents.
    pub local_ca: Option<Arc<tls::LocalCa>>,
    /// TLS to the services' upstreams, loaded with the listeners' for the same reason.
    pub upstream_tls: upstream::tls::Prepared,
}

/// The key of the token endpoint in [`Listeners::tls`].
pub const TOKEN_LISTENER: &str = "(token endpoint)";
/// The key of the tunnel listener in [`Listeners::tls`].
pub const TUNNEL_LISTENER: &str = "(tunnel)";

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    // The cause is the error's source, which `{:#}` prints after it.
    #[error("cannot listen on {addr} (`{key}`)")]
    Listen {
        key: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("`{key}`")]
    Tls { key: String, source: tls::TlsError },
}

// === impl Listeners ===

impl Listeners {
    /// Binds every address the config names.
    pub async fn bind(config: &Config) -> Result<Self, BindError> {
        let bind = |key: String, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| BindError::Listen { key, addr, source })
        };
        let token = match config.token_listen {
            Some(a) => Some(bind("token_listen".into(), a).await?),
            None => None,
        };
        let tunnel = match config.tunnel_listen {
            Some(a) => Some(bind("tunnel_listen".into(), a).await?),
            None => None,
        };
        let mut services = BTreeMap::new();
        for (name, svc) in &config.services {
            if let Some(addr) = svc.listen {
                services.insert(
                    name.clone(),
                    bind(format!("services.{name}.listen"), addr).await?,
                );
            }
        }
        // TLS to upstreams: its files read and checked now, as the listeners' are.
        let upstream_tls = upstream::UpstreamTlsCache::default()
            .prepare(config)
            .map_err(|(name, source)| BindError::Tls {
                key: format!("services.{name} (its upstream's TLS files)"),
                source,
            })?;
        let mut tls = BTreeMap::new();
        let mut local_ca = None;
        for (name, svc) in &config.services {
            if let Some(acceptor) = tls::service_acceptor(svc, &config.data_dir) {
                let acceptor = acceptor.map_err(|source| BindError::Tls {
                    key: format!("services.{name}.tls"),
                    source,
                })?;
                tls.insert(name.clone(), acceptor);
            }
        }
        if let Some(t) = &config.token_tls {
            let loaded = tls::load(t, &[tls::alpn::HTTP]).map_err(|source| BindError::Tls {
                key: "token_tls".into(),
                source,
            })?;
            tls.insert(TOKEN_LISTENER.to_owned(), loaded);
        }
        if let (Some(l), Some(addr)) = (&tunnel, config.tunnel_listen) {
            let local = l.local_addr().unwrap_or(addr);
            let loaded = match &config.tunnel_tls {
                Some(t) => tls::load(t, &[tls::alpn::TUNNEL]),
                // The local CA's certificate for the tunnel: no files to renew.
                None => tls::LocalCa::open(&config.data_dir).and_then(|ca| {
                    let server = ca.tunnel_server_config(local, config.tunnel_client_ca.as_deref());
                    local_ca = Some(ca);
                    Ok(tls::Loaded {
                        acceptor: TlsAcceptor::from(server?),
                        files: None,
                    })
                }),
            };
            let loaded = loaded.map_err(|source| BindError::Tls {
                key: "tunnel_tls".into(),
                source,
            })?;
            tls.insert(TUNNEL_LISTENER.to_owned(), loaded);
        }
        // The admin API last: once its port accepts connections (before anything
        // calls accept), the CLI and the tests take the gateway as ready, so every
        // file the listeners make (the local CA's `ca.pem`) must be written by then.
        let admin = bind("admin_listen".into(), config.admin_listen).await?;
        Ok(Self {
            admin,
            token,
            tunnel,
            services,
            tls,
            local_ca,
            upstream_tls,
        })
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    pub fn tunnel_addr(&self) -> Option<SocketAddr> {
        self.tunnel.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn token_addr(&self) -> Option<SocketAddr> {
        self.token.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn service_addr(&self, name: &str) -> Option<SocketAddr> {
        self.services.get(name).and_then(|l| l.local_addr().ok())
    }
}

/// Serves until `shutdown` fires, then drains connections (at most
/// [`listener::DRAIN_TIMEOUT`]), ends the sessions ([`Gateway::end_sessions`], at most
/// as long again), flushes last-used times and the audit queue, folds the store's
/// write-ahead log into its database file, and returns.
pub async fn run(gw: Arc<Gateway>, listeners: Listeners, shutdown: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    let mut services = reload::Services::new(gw.clone(), shutdown.clone());
    let mut ports = listeners.services;
    gw.upstream_tls.install(listeners.upstream_tls);
    let config = gw.config();
    for (name, svc) in &config.services {
        let listener = ports.remove(name).map(Arc::new);
        services.start(svc.clone(), listener, listeners.tls.get(name).cloned());
    }
    // The token endpoint's and the tunnel's TLS: a reload loads their certificate
    // files again when they are renewed in place (the tunnel's only with
    // `tunnel_tls`: the local CA's certificate has no files).
    let mut own_tls = |listener: &str, key: &'static str, alpn: &'static [&'static [u8]]| {
        let loaded = listeners.tls.get(listener)?;
        let renewable = tls::Renewable::new(loaded.acceptor.clone());
        if loaded.files.is_some() {
            services.renew_own_tls(key, alpn, renewable.clone(), loaded.files);
        }
        Some(renewable)
    };
    let token_tls = own_tls(TOKEN_LISTENER, "token_tls", &[tls::alpn::HTTP]);
    let tunnel_tls = own_tls(TUNNEL_LISTENER, "tunnel_tls", &[tls::alpn::TUNNEL]);
    tasks.spawn(services.run());
    // The admin API and the token endpoint: small JSON APIs, each with slots of its
    // own (the data plane cannot take them), and a short deadline for clients that
    // have not asked anything yet.
    let limits = listener::Limits {
        caps: runtime::CONTROL_CAPS,
        header_timeout: runtime::CONTROL_IDLE_TIMEOUT,
        first_request: Some(runtime::FIRST_REQUEST_TIMEOUT),
        max_header_bytes: 16 * 1024,
        max_headers: 64,
        http2: None,
    };
    let with_conn = |router: axum::Router| {
        move |conn: listener::ConnInfo| {
            let router = router.clone().layer(axum::Extension(conn));
            hyper_util::service::TowerToHyperService::new(router)
        }
    };
    let admin = with_conn(
        console::router(gw.control(), gw.people.clone()).merge(admin::router(gw.control())),
    );
    tasks.spawn(listener::serve_http(
        gw.admission.clone(),
        "admin",
        Arc::new(listeners.admin),
        limits,
        None,
        listener::Stop::new(shutdown.clone()),
        admin,
    ));
    if let Some(token) = listeners.token {
        let api = with_conn(token_api::router(gw.proxy_handles(), gw.people.clone()));
        tasks.spawn(listener::serve_http(
            gw.admission.clone(),
            "token",
            Arc::new(token),
            limits,
            token_tls,
            listener::Stop::new(shutdown.clone()),
            api,
        ));
    }
    if let (Some(l), Some(acceptor)) = (listeners.tunnel, tunnel_tls) {
        tasks.spawn(tunnel::serve(
            gw.proxy_handles(),
            l,
            acceptor,
            listeners.local_ca.clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(housekeeping(gw.clone(), shutdown.clone()));
    tasks.spawn(bound_store_log(gw.store.clone(), shutdown.clone()));
    tasks.spawn(gw.clone().follow_store(shutdown.clone()));
    tasks.spawn(gw.clone().follow_config(shutdown.clone()));
    let responders = detect::Responders {
        admission: gw.admission.clone(),
        store: control::StoreView::new(gw.store.clone()),
        tokens: gw.tokens.clone(),
        audit: gw.audit.clone(),
        alerts: gw.alerts.clone(),
        metrics: gw.metrics.clone(),
        config: gw.config.clone(),
        clock: gw.clock.clone(),
    };
    tasks.spawn(detect::run(responders, shutdown.clone()));
    tasks.spawn(audit::maintain(
        gw.store.clone(),
        gw.audit.clone(),
        gw.config.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(portscan::run_scheduled(gw.control(), shutdown.clone()));
    let courier = alerts::Courier {
        secrets: gw.secrets.clone(),
        metrics: gw.metrics.clone(),
        clock: gw.clock.clone(),
    };
    let webhook = gw.config().alerts.webhook.clone();
    tasks.spawn(alerts::run(
        gw.alerts.clone(),
        courier,
        webhook,
        shutdown.clone(),
    ));
    while tasks.join_next().await.is_some() {}
    gw.end_sessions().await;
    gw.tokens.flush_last_used(0).await;
    gw.close().await;
    // The last events are written: sign the head, so that removing them shows.
    audit::checkpoint(&*gw.store, gw.now()).await;
    // Then fold the log into the database file: stopped, keyway.db holds everything.
    if let Err(e) = gw.store.close().await {
        tracing::error!(error = %e, "could not fold the write-ahead log into the database");
    }
}

/// The store's write-ahead log past this is folded in and emptied at once.
const LOG_LIMIT_BYTES: u64 = 16 * 1024 * 1024;
/// How often the log's size is looked at (a `stat`): a burst of token issues can grow
/// it by some 60 MB a second.
const LOG_WATCH_EVERY: Duration = Duration::from_millis(250);

/// Keeps the store's log bounded: SQLite's own checkpoints cannot start it over while
/// commits keep coming from several connections, so a burst of writes would grow it
/// for as long as it lasts ([`keyway_store::Store::bound_log`]).
async fn bound_store_log(store: Arc<dyn keyway_store::Store>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(LOG_WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let before = store.log_bytes();
        match store.bound_log(LOG_LIMIT_BYTES).await {
            Ok(true) => tracing::debug!(
                bytes = before,
                "write-ahead log folded into the database and emptied"
            ),
            Ok(false) if before.is_some_and(|b| b > LOG_LIMIT_BYTES) => tracing::debug!(
                bytes = before,
                "write-ahead log not emptied yet: connections in the way; trying again"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not fold the write-ahead log in"),
        }
    }
}

/// Behind the hot path: last-used times to the store; long-expired tokens out of the
/// index.
async fn housekeeping(gw: Arc<Gateway>, shutdown: CancellationToken) {
    let mut flushed = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        flushed = gw.tokens.flush_last_used(flushed).await;
        gw.metrics.upkeep();
        n += 1;
        if n.is_multiple_of(60) {
            let day = 24 * 3600 * 1000;
            let pruned = gw.tokens.prune_expired(gw.now() - day);
            if pruned > 0 {
                tracing::debug!(pruned, "expired tokens left the index");
            }
        }
    }
}
