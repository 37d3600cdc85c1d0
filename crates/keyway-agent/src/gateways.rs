//! Several gateways: the agent keeps one tunnel to every address its gateways
//! resolve to (several `--gateway`, or one name with several addresses), so a
//! request on any replica reaches the services it carries. Names are resolved again
//! every [`RESOLVE_EVERY`]: a replica added behind a name gets a tunnel, one gone
//! loses it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::{jitter, renew_if_due, session, AgentError, Files, Options, Shutdown};
use crate::{BACKOFF_MAX, BACKOFF_MIN, STABLE};

/// How often the gateways' names are resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(30);
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Every address of `gateways` (each `host:port`), and the entries that did not
/// resolve, with why.
pub(crate) async fn resolve(gateways: &[String]) -> (BTreeSet<SocketAddr>, Vec<String>) {
    let mut found = BTreeSet::new();
    let mut failed = Vec::new();
    for g in gateways {
        match resolve_one(g).await {
            Ok(addrs) => found.extend(addrs),
            Err(e) => failed.push(e),
        }
    }
    (found, failed)
}

async fn resolve_one(gateway: &str) -> Result<BTreeSet<SocketAddr>, String> {
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(gateway)).await {
        Ok(Ok(addrs)) => Ok(addrs.collect()),
        Ok(Err(e)) => Err(format!("{gateway}: {e}")),
        Err(_) => Err(format!("{gateway}: no answer from the resolver")),
    }
}

/// Keeps a tunnel to every address of the gateways until `shutdown` turns true.
pub(crate) async fn keep_all(opts: Arc<Options>, files: Files, mut shutdown: Shutdown) {
    // One renewal at a time, whichever tunnel finds it due.
    let renewing = Arc::new(tokio::sync::Mutex::new(()));
    let mut tunnels: BTreeMap<SocketAddr, (watch::Sender<bool>, tokio::task::JoinHandle<()>)> =
        BTreeMap::new();
    // Each gateway's addresses as last resolved: one that does not resolve now
    // keeps those it had.
    let mut resolved: BTreeMap<&str, BTreeSet<SocketAddr>> = BTreeMap::new();
    loop {
        for g in &opts.gateways {
            match resolve_one(g).await {
                Ok(addrs) => {
                    resolved.insert(g.as_str(), addrs);
                }
                Err(e) => {
                    tracing::warn!("cannot resolve a gateway ({e}); its tunnels stay as they are")
                }
            }
        }
        let addrs: BTreeSet<SocketAddr> = resolved.values().flatten().copied().collect();
        let gone: Vec<SocketAddr> = tunnels
            .keys()
            .filter(|a| !addrs.contains(a))
            .copied()
            .collect();
        for addr in gone {
            if let Some((stop, _)) = tunnels.remove(&addr) {
                tracing::info!(gateway = %addr, "no longer a gateway's address; closing its tunnel");
                let _ = stop.send(true);
            }
        }
        for addr in addrs {
            if tunnels.contains_key(&addr) {
                continue;
            }
            let (stop, stopped) = watch::channel(false);
            let task = tokio::spawn(keep(
                opts.clone(),
                files.clone(),
                renewing.clone(),
                addr.to_string(),
                stopped,
            ));
            tunnels.insert(addr, (stop, task));
        }
        let wait = if tunnels.is_empty() {
            BACKOFF_MIN * 4
        } else {
            RESOLVE_EVERY
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => break,
        }
    }
    for (stop, _) in tunnels.values() {
        let _ = stop.send(true);
    }
    for (_, (_, task)) in tunnels {
        let _ = task.await;
    }
}

/// One gateway's tunnel: serve, and on any loss reconnect with jittered exponential
/// backoff (reset after a stable session), until `stop`.
async fn keep(
    opts: Arc<Options>,
    files: Files,
    renewing: Arc<tokio::sync::Mutex<()>>,
    gateway: String,
    mut stop: Shutdown,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if let Err(e) = renew_if_due(&gateway, &files, &renewing).await {
            tracing::warn!(gateway, error = %e, "certificate renewal failed; will retry");
        }
        let started = Instant::now();
        match session(&opts, &files, &renewing, &gateway, stop.clone()).await {
            Ok(()) if *stop.borrow() => return,
            Ok(()) => tracing::warn!(gateway, "the gateway closed the tunnel"),
            Err(e @ AgentError::Refused(_)) => {
                tracing::error!(gateway, error = %e, "the gateway refused this agent")
            }
            Err(e) => tracing::warn!(gateway, error = %e, "tunnel session failed"),
        }
        if started.elapsed() >= STABLE {
            backoff = BACKOFF_MIN;
        }
        let wait = jitter(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
        tracing::info!(gateway, wait_ms = wait.as_millis() as u64, "reconnecting");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}
