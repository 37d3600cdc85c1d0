//! `keyway audit ports`: which ports are open on the hosts behind the gateway, set
//! against what the config declares. Open but undeclared: close it or put it behind
//! Keyway. Declared but closed: stale config. Run from outside the private network
//! (`--from-outside`), a declared upstream that answers is reachable without the
//! gateway.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use keyway_core::config::{Config, ServiceKind};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Ports scanned when none are given: the well-known range and where databases,
/// caches, brokers and admin consoles usually listen.
const DEFAULT_PORTS: &str = "1-1024,1433,1521,2375-2376,2379,3000,3306,5000,5432,5601,5672,5984,6379,7000-7001,8000,8008,8080-8090,8443,8888,9000,9042,9090,9092,9200,9300,11211,15672,27017";
/// Addresses one run scans at most (hosts × ports).
const MAX_TARGETS: usize = 2_000_000;

#[derive(Debug, clap::Args)]
pub struct PortsArgs {
    /// The gateway's config: its services' upstreams are what is declared.
    #[arg(long, short, env = "KEYWAY_CONFIG", default_value = "keyway.toml")]
    config: PathBuf,
    /// Hosts or CIDRs to scan (default: the hosts of the declared upstreams).
    #[arg(long, num_args = 1.., value_name = "HOST|CIDR")]
    hosts: Vec<String>,
    /// Ports, like `1-65535` or `22,80,5432` (default: the well-known range and the
    /// usual database, cache and broker ports, plus every declared one).
    #[arg(long)]
    ports: Option<String>,
    /// Connections under way at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// New connections per second at most.
    #[arg(long, default_value_t = 2_000)]
    rate: u32,
    /// How long a port has to accept, like `500ms`.
    #[arg(long, default_value = "500ms")]
    timeout: String,
    /// This runs outside the private network: a declared upstream that answers is
    /// reachable without the gateway, which is a finding.
    #[arg(long)]
    from_outside: bool,
    /// JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

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

pub async fn run(args: PortsArgs) -> Result<ExitCode> {
    let config = crate::serve::load_config(&args.config)?;
    let declared = declared(&config).await;
    let timeout = keyway_core::units::parse_duration(&args.timeout)
        .with_context(|| format!("--timeout `{}`", args.timeout))?;
    if !(1..=10_000).contains(&args.concurrency) || !(1..=100_000).contains(&args.rate) {
        bail!("--concurrency must be 1 to 10000 and --rate 1 to 100000");
    }
    let hosts: Vec<IpAddr> = if args.hosts.is_empty() {
        declared
            .keys()
            .map(|a| a.ip())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    } else {
        expand_hosts(&args.hosts).await?
    };
    let mut ports = parse_ports(args.ports.as_deref().unwrap_or(DEFAULT_PORTS))?;
    if args.ports.is_none() {
        ports.extend(declared.keys().map(|a| a.port()));
    }
    let targets: Vec<SocketAddr> = hosts
        .iter()
        .flat_map(|h| ports.iter().map(move |p| SocketAddr::new(*h, *p)))
        .collect();
    if targets.len() > MAX_TARGETS {
        bail!(
            "{} hosts × {} ports is more than {MAX_TARGETS} addresses; scan fewer at a time",
            hosts.len(),
            ports.len()
        );
    }
    let open = scan(&targets, args.concurrency, args.rate, timeout, !args.json).await;
    let report = classify(&declared, &targets, &open, args.from_outside);
    if args.json {
        for r in &report {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        let rows: Vec<[String; 4]> = report
            .iter()
            .map(|r| {
                [
                    r.state.to_owned(),
                    r.host.to_string(),
                    r.port.to_string(),
                    r.service.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        crate::print_table(["STATE", "HOST", "PORT", "SERVICE"], &rows);
    }
    let findings = report.iter().filter(|r| r.state != "expected").count();
    eprintln!(
        "{} addresses scanned, {} open, {findings} findings",
        targets.len(),
        open.len()
    );
    Ok(if findings > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The declared upstreams, resolved, with the service of each. Services reached
/// through an agent are inside another network and not declared here.
async fn declared(config: &Config) -> BTreeMap<SocketAddr, String> {
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
            Err(e) => eprintln!("warning: {name}: cannot resolve {addr}: {e}"),
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
async fn scan(
    targets: &[SocketAddr],
    concurrency: usize,
    rate: u32,
    timeout: Duration,
    show_progress: bool,
) -> BTreeSet<SocketAddr> {
    let bar = if show_progress {
        crate::scan::progress(targets.len() as u64, "ports")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut pace = tokio::time::interval(Duration::from_secs(1) / rate);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    for &target in targets {
        pace.tick().await;
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let bar = bar.clone();
        tasks.spawn(async move {
            let open = matches!(
                tokio::time::timeout(timeout, TcpStream::connect(target)).await,
                Ok(Ok(_))
            );
            bar.inc(1);
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
    bar.finish_and_clear();
    open
}

async fn expand_hosts(hosts: &[String]) -> Result<Vec<IpAddr>> {
    let mut out = BTreeSet::new();
    for h in hosts {
        if let Ok(net) = h.parse::<IpNet>() {
            if net.prefix_len() + 16 < net.max_prefix_len() {
                bail!("{h} is more than 65536 addresses; scan a smaller range");
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
                .with_context(|| format!("cannot resolve {h}"))?;
            out.extend(addrs.map(|a| a.ip()));
        }
    }
    Ok(out.into_iter().collect())
}

/// `1-1024,5432,8080-8090` as a sorted set.
pub fn parse_ports(s: &str) -> Result<BTreeSet<u16>> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (Ok(lo), Ok(hi)) = (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) else {
            bail!("`{part}` is not a port or a range like 8000-8100");
        };
        if lo == 0 || hi < lo {
            bail!("`{part}` is not a port or a range like 8000-8100");
        }
        out.extend(lo..=hi);
    }
    if out.is_empty() {
        bail!("no ports given");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_ranges() {
        assert_eq!(
            parse_ports("22, 80-82,80")
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            vec![22, 80, 81, 82]
        );
        assert_eq!(parse_ports("1-65535").unwrap().len(), 65535);
        for bad in ["", "0", "9-8", "http", "70000", "1-"] {
            assert!(parse_ports(bad).is_err(), "{bad}");
        }
    }

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
