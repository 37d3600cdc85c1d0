//! The Keyway gateway: the listeners of every service, the admin API, the token
//! index, and the audit writer, wired together.
//!
//! # Layout
//!
//! - [`gateway`]: the shared state ([`Gateway`]) and the operations on it: open the
//!   data folder, issue and revoke tokens, set secrets.
//! - [`index`]: the in-memory token index the hot path reads; revocation cuts streams.
//! - [`proxy`]: the data plane, one module per protocol (`proxy::http`).
//! - [`admin`]: the admin API (axum), always authenticated.
//! - [`audit`]: the bounded, batched audit writer (`fail_closed` by default).
//! - [`listener`]: accepting HTTP/1 connections with bounds, for every listener.
//!
//! [`run`] takes bound listeners and a shutdown signal, so tests bind port 0.

#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod gateway;
pub mod index;
pub mod listener;
pub mod proxy;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keyway_core::config::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use gateway::{Gateway, IssueRequest};

/// The sockets a gateway serves, bound before it starts.
#[derive(Debug)]
pub struct Listeners {
    pub admin: TcpListener,
    pub services: BTreeMap<String, TcpListener>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (`{key}`): {source}")]
pub struct BindError {
    pub key: String,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

// === impl Listeners ===

impl Listeners {
    /// Binds every address the config names.
    pub async fn bind(config: &Config) -> Result<Self, BindError> {
        let bind = |key: String, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| BindError { key, addr, source })
        };
        let admin = bind("admin_listen".into(), config.admin_listen).await?;
        let mut services = BTreeMap::new();
        for (name, svc) in &config.services {
            services.insert(
                name.clone(),
                bind(format!("services.{name}.listen"), svc.listen).await?,
            );
        }
        Ok(Self { admin, services })
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    pub fn service_addr(&self, name: &str) -> Option<SocketAddr> {
        self.services.get(name).and_then(|l| l.local_addr().ok())
    }
}

/// Serves until `shutdown` fires, then drains connections, flushes last-used times
/// and the audit queue, and returns.
pub async fn run(gw: Arc<Gateway>, listeners: Listeners, shutdown: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    for (name, listener) in listeners.services {
        let Some(svc) = gw.config.service(&name).cloned() else {
            continue;
        };
        let proxy = proxy::http::HttpProxy::new(gw.clone(), svc);
        tasks.spawn(proxy.serve(listener, shutdown.clone()));
    }
    let admin = admin::router(gw.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let stop = shutdown.clone();
    tasks.spawn(async move {
        let serve =
            axum::serve(listeners.admin, admin).with_graceful_shutdown(stop.cancelled_owned());
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    tasks.spawn(housekeeping(gw.clone(), shutdown.clone()));
    while tasks.join_next().await.is_some() {}
    gw.flush_last_used(0).await;
    gw.close().await;
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
        flushed = gw.flush_last_used(flushed).await;
        n += 1;
        if n.is_multiple_of(60) {
            let day = 24 * 3600 * 1000;
            let pruned = gw.index.prune_expired(gw.now() - day);
            if pruned > 0 {
                tracing::debug!(pruned, "expired tokens left the index");
            }
        }
    }
}
