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
use keyway_core::config::Config;
use keyway_core::EventKind;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::control::Control;

pub use keyway_core::config::PORT_AUDIT_DEFAULT as DEFAULT_PORTS;
/// Addresses one run scans at most (hosts × ports).
pub const MAX_TARGETS: usize = 2_000_000;
/// Findings one audit event lists at most (the counts are always whole).
const MAX_LISTED: usize = 1000;
/// How long resolving one upstream's name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The first scheduled run comes this soon after start (or after `every`, if shorter).
const FIRST_RUN: Duration = Duration::from_secs(60);

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

/// The declared upstreams, resolved, with the services of each (names joined by
/// `,` when several share one). Services reached through an agent are inside another
/// network and not declared here.
pub async fn declared(config: &Config) -> BTreeMap<SocketAddr, String> {
    let mut out: BTreeMap<SocketAddr, String> = BTreeMap::new();
    for (name, svc) in &config.services {
        if svc.via.is_some() {
            continue;
        }
        let addr = svc.upstream_addr();
        let resolved =
            tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(addr.as_str())).await;
        match resolved {
            Ok(Ok(addrs)) => {
                for a in addrs {
                    out.entry(a)
                        .and_modify(|s| {
                            s.push(',');
                            s.push_str(name);
                        })
                        .or_insert_with(|| name.clone());
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(service = %name, error = %e, "cannot resolve an upstream to audit its port")
            }
            Err(_) => tracing::warn!(service = %name, "resolving an upstream timed out"),
        }
    }
    out
}

/// The gateway's own listeners: not upstreams, and not scanned (the audit must not
/// look like a scan of the gateway to its own `scanning` detector).
pub fn own_listeners(config: &Config) -> Vec<SocketAddr> {
    let mut out = vec![config.admin_listen];
    out.extend(config.token_listen);
    out.extend(config.tunnel_listen);
    out.extend(config.services.values().filter_map(|s| s.listen));
    out
}

/// What a connection attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Open,
    /// Refused: nothing listens.
    Closed,
    /// No answer in time, or another error: filtered, or the host is down.
    NoAnswer,
}

/// Sorts what was scanned into states: open and declared is expected (or, from
/// outside, exposed); open and undeclared is a finding; a declared service none of
/// whose addresses accepts is stale (all refused) or unreachable (no answer).
pub fn classify(
    declared: &BTreeMap<SocketAddr, String>,
    probes: &BTreeMap<SocketAddr, Probe>,
    from_outside: bool,
) -> Vec<PortState> {
    let mut out = Vec::new();
    for (a, _) in probes.iter().filter(|(_, p)| **p == Probe::Open) {
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
    if !from_outside {
        // A service is stale only if none of its addresses (IPv4 and IPv6 of one
        // name, say) accepts.
        let mut by_service: BTreeMap<&str, Vec<(SocketAddr, Probe)>> = BTreeMap::new();
        for (a, names) in declared {
            if let Some(p) = probes.get(a) {
                by_service.entry(names.as_str()).or_default().push((*a, *p));
            }
        }
        for (names, tried) in by_service {
            if tried.iter().any(|(_, p)| *p == Probe::Open) {
                continue;
            }
            let state = if tried.iter().all(|(_, p)| *p == Probe::Closed) {
                "stale"
            } else {
                "unreachable"
            };
            let (a, _) = tried[0];
            out.push(PortState {
                host: a.ip(),
                port: a.port(),
                state,
                service: Some(names.to_owned()),
            });
        }
    }
    out.sort_by_key(|r| (r.state == "expected", r.host, r.port));
    out
}

/// TCP connect to every target: at most `concurrency` in flight, at most `rate` new
/// ones a second, each bounded by `timeout`.
pub async fn scan(
    targets: &[SocketAddr],
    concurrency: usize,
    rate: u32,
    timeout: Duration,
    on_done: impl Fn() + Clone + Send + 'static,
) -> BTreeMap<SocketAddr, Probe> {
    let slots = Arc::new(Semaphore::new(concurrency));
    // Tokio's timer ticks in milliseconds: above 1000/s, several per tick.
    let per_tick = (rate / 1000).max(1) as usize;
    let period = if rate >= 1000 {
        Duration::from_millis(1)
    } else {
        Duration::from_secs(1) / rate
    };
    let mut pace = tokio::time::interval(period);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    let mut probes = BTreeMap::new();
    for chunk in targets.chunks(per_tick) {
        pace.tick().await;
        for &target in chunk {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let on_done = on_done.clone();
            tasks.spawn(async move {
                let probe = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
                    Ok(Ok(_)) => Probe::Open,
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        Probe::Closed
                    }
                    _ => Probe::NoAnswer,
                };
                on_done();
                drop(permit);
                (target, probe)
            });
            // Finished tasks are collected as we go, so memory stays bounded by
            // what is in flight.
            while tasks.len() > concurrency {
                if let Some(Ok((a, p))) = tasks.join_next().await {
                    probes.insert(a, p);
                }
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        if let Ok((a, p)) = r {
            probes.insert(a, p);
        }
    }
    probes
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

/// What to scan: every port of `ports` on `hosts` (hosts or CIDRs), or on the
/// declared upstreams' hosts when none are given; never the gateway's own listeners.
pub async fn targets(
    declared: &BTreeMap<SocketAddr, String>,
    hosts: &[String],
    ports: BTreeSet<u16>,
    own: &[SocketAddr],
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
    if hosts.len().saturating_mul(ports.len()) > MAX_TARGETS {
        return Err(format!(
            "{} hosts × {} ports is more than {MAX_TARGETS} addresses; scan fewer at a time",
            hosts.len(),
            ports.len()
        ));
    }
    let is_own = |a: &SocketAddr| {
        own.iter()
            .any(|o| o.port() == a.port() && (o.ip() == a.ip() || o.ip().is_unspecified()))
    };
    Ok(hosts
        .iter()
        .flat_map(|h| ports.iter().map(move |p| SocketAddr::new(*h, *p)))
        .filter(|a| !is_own(a))
        .collect())
}

/// Runs the port audit every `[audit.ports] every` until `shutdown`: each run is a
/// `ports.audit` event, `keyway_port_audit_findings{state}`, and, when it found
/// something, an alert to the webhook.
pub async fn run_scheduled(gw: Control, shutdown: CancellationToken) {
    let Some(cfg) = gw.config().audit.ports.clone() else {
        return;
    };
    // The first run soon after start, so a gateway restarted more often than
    // `every` still audits.
    let mut wait = cfg.every.min(FIRST_RUN);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = cfg.every;
        // Resolving and scanning both stop with the gateway.
        let ev = tokio::select! {
            () = shutdown.cancelled() => return,
            ev = audit_once(&gw, &cfg) => ev,
        };
        if ev
            .detail
            .get("findings")
            .and_then(|f| f.as_array())
            .is_some_and(|f| !f.is_empty())
            || ev.detail.get("error").is_some()
        {
            gw.alerts.send(&ev);
        }
        let _ = gw.audit.record_reliably(ev).await;
    }
}

/// One scheduled run, as its `ports.audit` event.
async fn audit_once(
    gw: &Control,
    cfg: &keyway_core::config::PortAuditConfig,
) -> keyway_store::AuditEvent {
    let mut ev = gw.event(EventKind::PortsAudit);
    let config = gw.config();
    let declared = declared(&config).await;
    let own = own_listeners(&config);
    // The declared ports always, besides the ones configured.
    let mut ports = cfg.ports.clone();
    ports.extend(declared.keys().map(|a| a.port()));
    let targets = match targets(&declared, &cfg.hosts, ports, &own).await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "the port audit cannot run");
            ev.detail =
                serde_json::json!({ "error": e, "summary": "the port audit could not run" });
            return ev;
        }
    };
    let probes = scan(&targets, 256, 2_000, Duration::from_millis(500), || {}).await;
    let report = classify(&declared, &probes, false);
    let findings: Vec<&PortState> = report.iter().filter(|r| r.state != "expected").collect();
    let count = |s: &str| report.iter().filter(|r| r.state == s).count();
    gw.metrics
        .port_audit(count("undeclared"), count("stale"), count("unreachable"));
    let open = probes.values().filter(|p| **p == Probe::Open).count();
    let summary = format!(
        "{} addresses scanned, {open} open: {} undeclared, {} stale, {} unreachable",
        targets.len(),
        count("undeclared"),
        count("stale"),
        count("unreachable")
    );
    tracing::info!(event = "ports.audit", %summary, "port audit done");
    ev.detail = serde_json::json!({
        "summary": summary,
        "scanned": targets.len(),
        "open": open,
        "findings": findings.iter().take(MAX_LISTED).collect::<Vec<_>>(),
    });
    ev
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states() {
        let a = |p: u16| SocketAddr::from(([10, 0, 0, 5], p));
        let v6 = |p: u16| SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, p));
        let declared = BTreeMap::from([
            (a(5432), "db".to_owned()),
            (v6(5432), "db".to_owned()),
            (a(6379), "cache".to_owned()),
            (a(9200), "search".to_owned()),
        ]);
        let probes = BTreeMap::from([
            (a(22), Probe::Open),
            (a(5432), Probe::Open),
            // The IPv6 address of a name that resolves to both: the IPv4 one answers.
            (v6(5432), Probe::Closed),
            (a(6379), Probe::Closed),
            (a(9200), Probe::NoAnswer),
        ]);
        let inside = classify(&declared, &probes, false);
        let states: Vec<_> = inside.iter().map(|r| (r.port, r.state)).collect();
        assert_eq!(
            states,
            vec![
                (22, "undeclared"),
                (6379, "stale"),
                (9200, "unreachable"),
                (5432, "expected")
            ]
        );
        let outside = classify(&declared, &probes, true);
        let states: Vec<_> = outside.iter().map(|r| (r.port, r.state)).collect();
        assert_eq!(states, vec![(22, "undeclared"), (5432, "exposed")]);
    }

    #[tokio::test]
    async fn own_listeners_are_not_scanned() {
        let declared =
            BTreeMap::from([(SocketAddr::from(([127, 0, 0, 1], 8080)), "api".to_owned())]);
        let own = [SocketAddr::from(([0, 0, 0, 0], 7070))];
        let t = targets(&declared, &[], BTreeSet::from([22, 7070, 8080]), &own)
            .await
            .unwrap();
        let ports: Vec<u16> = t.iter().map(|a| a.port()).collect();
        assert_eq!(ports, vec![22, 8080]);
    }
}
