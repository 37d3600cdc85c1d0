//! The port audit: which TCP ports answer on the hosts behind the gateway, set
//! against the upstreams the config declares. Open but undeclared: close it or put it
//! behind Keyway. Declared but closed: stale config. From outside the private network,
//! a declared upstream that answers is exposed. `keyway audit ports` runs it from the
//! command line; `[audit.ports] every` has the gateway run it on a schedule
//! ([`run_scheduled`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use keyway_core::config::{Config, ServiceKind};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::Gateway;

pub use keyway_core::config::PORT_AUDIT_DEFAULT as DEFAULT_PORTS;
/// Addresses one run scans at most (hosts × ports).
pub const MAX_TARGETS: usize = 2_000_000;
/// Findings one audit event lists at most (the counts are always whole).
const MAX_LISTED: usize = 1000;

/// What one open or declared port is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PortState {
    pub host: IpAddr,
    pub port: u16,
    /// `expected`, `undeclared`, `stale` or `exposed`.
    pub state: &'static str,
    /// The declaring service, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// The declared upstreams, resolved, with the service of each. Services reached
/// through an agent are inside another network and not declared here.
pub async fn declared(config: &Config) -> BTreeMap<SocketAddr, String> {
    let mut out = BTreeMap::new();
    for (name, svc) in &config.services {
        if svc.via.is_some() {
            continue;
        }
        let addr = match &svc.kind {
            ServiceKind::Http(h) => {
                let a = &h.upstream.authority;
                format!("{}:{}", a.host(), a.port_u16().unwrap_or(80))
            }
            ServiceKind::Tcp(t) => t.upstream.clone(),
            ServiceKind::Postgres(p) => p.upstream.clone(),
        };
        let resolved = tokio::net::lookup_host(addr.as_str()).await;
        match resolved {
            Ok(addrs) => {
                for a in addrs {
                    out.insert(a, name.clone());
                }
            }
            Err(e) => {
                tracing::warn!(service = %name, error = %e, "cannot resolve an upstream to audit its port")
            }
        }
    }
    out
}

/// Sorts every target into a state: open and declared is expected (or, from
/// outside, exposed), open and undeclared and declared and closed are findings.
pub fn classify(
    declared: &BTreeMap<SocketAddr, String>,
    targets: &[SocketAddr],
    open: &BTreeSet<SocketAddr>,
    from_outside: bool,
) -> Vec<PortState> {
    let scanned: BTreeSet<_> = targets.iter().collect();
    let mut out = Vec::new();
    for a in open {
        let service = declared.get(a).cloned();
        let state = match (&service, from_outside) {
            (Some(_), false) => "expected",
            (Some(_), true) => "exposed",
            (None, _) => "undeclared",
        };
        out.push(PortState {
            host: a.ip(),
            port: a.port(),
            state,
            service,
        });
    }
    for (a, service) in declared {
        if scanned.contains(a) && !open.contains(a) && !from_outside {
            out.push(PortState {
                host: a.ip(),
                port: a.port(),
                state: "stale",
                service: Some(service.clone()),
            });
        }
    }
    out.sort_by_key(|r| (r.state == "expected", r.host, r.port));
    out
}

/// TCP connect to every target: bounded in flight, paced, each bounded in time.
pub async fn scan(
    targets: &[SocketAddr],
    concurrency: usize,
    rate: u32,
    timeout: Duration,
    on_done: impl Fn() + Clone + Send + 'static,
) -> BTreeSet<SocketAddr> {
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut pace = tokio::time::interval(Duration::from_secs(1) / rate);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    for &target in targets {
        pace.tick().await;
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let on_done = on_done.clone();
        tasks.spawn(async move {
            let open = matches!(
                tokio::time::timeout(timeout, TcpStream::connect(target)).await,
                Ok(Ok(_))
            );
            on_done();
            drop(permit);
            open.then_some(target)
        });
    }
    let mut open = BTreeSet::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(Some(a)) = r {
            open.insert(a);
        }
    }
    open
}

pub async fn expand_hosts(hosts: &[String]) -> Result<Vec<IpAddr>, String> {
    let mut out = BTreeSet::new();
    for h in hosts {
        if let Ok(net) = h.parse::<IpNet>() {
            if net.prefix_len() + 16 < net.max_prefix_len() {
                return Err(format!(
                    "{h} is more than 65536 addresses; scan a smaller range"
                ));
            }
            out.extend(net.hosts());
            if net.prefix_len() == net.max_prefix_len() {
                out.insert(net.addr());
            }
        } else if let Ok(ip) = h.parse::<IpAddr>() {
            out.insert(ip);
        } else {
            let addrs = tokio::net::lookup_host((h.as_str(), 0))
                .await
                .map_err(|e| format!("cannot resolve {h}: {e}"))?;
            out.extend(addrs.map(|a| a.ip()));
        }
    }
    Ok(out.into_iter().collect())
}

/// What to scan: every port of `ports` and the declared ones, on `hosts` (hosts or
/// CIDRs), or on the declared upstreams' hosts when none are given.
pub async fn targets(
    declared: &BTreeMap<SocketAddr, String>,
    hosts: &[String],
    mut ports: BTreeSet<u16>,
) -> Result<Vec<SocketAddr>, String> {
    let hosts: Vec<IpAddr> = if hosts.is_empty() {
        declared
            .keys()
            .map(|a| a.ip())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    } else {
        expand_hosts(hosts).await?
    };
    ports.extend(declared.keys().map(|a| a.port()));
    if hosts.len().saturating_mul(ports.len()) > MAX_TARGETS {
        return Err(format!(
            "{} hosts × {} ports is more than {MAX_TARGETS} addresses; scan fewer at a time",
            hosts.len(),
            ports.len()
        ));
    }
    Ok(hosts
        .iter()
        .flat_map(|h| ports.iter().map(move |p| SocketAddr::new(*h, *p)))
        .collect())
}

/// Runs the port audit every `[audit.ports] every` until `shutdown`: each run is a
/// `ports.audit` event, `keyway_port_audit_findings{state}`, and, when it found
/// something, an alert to the webhook.
pub async fn run_scheduled(gw: Arc<Gateway>, shutdown: CancellationToken) {
    let Some(cfg) = gw.config.audit.ports.clone() else {
        return;
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(cfg.every) => {}
        }
        let declared = declared(&gw.config).await;
        let targets = match targets(&declared, &cfg.hosts, cfg.ports.clone()).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "the port audit cannot start");
                continue;
            }
        };
        let open = tokio::select! {
            () = shutdown.cancelled() => return,
            open = scan(&targets, 256, 2_000, Duration::from_millis(500), || {}) => open,
        };
        let report = classify(&declared, &targets, &open, false);
        let findings: Vec<&PortState> = report.iter().filter(|r| r.state != "expected").collect();
        let count = |s: &str| report.iter().filter(|r| r.state == s).count();
        gw.metrics.port_audit(count("undeclared"), count("stale"));
        let summary = format!(
            "{} addresses scanned, {} open: {} undeclared, {} stale",
            targets.len(),
            open.len(),
            count("undeclared"),
            count("stale")
        );
        tracing::info!(event = "ports.audit", %summary, "port audit done");
        let mut ev = gw.event("ports.audit");
        ev.detail = serde_json::json!({
            "summary": summary,
            "scanned": targets.len(),
            "open": open.len(),
            "findings": findings.iter().take(MAX_LISTED).collect::<Vec<_>>(),
        });
        if !findings.is_empty() {
            gw.alerts.send(&ev);
        }
        gw.audit.record_reliably(ev).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states() {
        let a = |p: u16| SocketAddr::from(([10, 0, 0, 5], p));
        let declared = BTreeMap::from([(a(5432), "db".to_owned()), (a(6379), "cache".to_owned())]);
        let targets = [a(22), a(5432), a(6379)];
        let open = BTreeSet::from([a(22), a(5432)]);
        let inside = classify(&declared, &targets, &open, false);
        let states: Vec<_> = inside.iter().map(|r| (r.port, r.state)).collect();
        assert_eq!(
            states,
            vec![(22, "undeclared"), (6379, "stale"), (5432, "expected")]
        );
        let outside = classify(&declared, &targets, &open, true);
        let states: Vec<_> = outside.iter().map(|r| (r.port, r.state)).collect();
        assert_eq!(states, vec![(22, "undeclared"), (5432, "exposed")]);
    }
}
