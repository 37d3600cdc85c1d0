//! `keyway audit ports`: which ports are open on the hosts behind the gateway, set
//! against what the config declares. Open but undeclared: close it or put it behind
//! Keyway. Declared but closed: stale config (or unreachable, when nothing answers at
//! all). The gateway's own listeners are not scanned. Run from outside the private network
//! (`--from-outside`), a declared upstream that answers is reachable without the
//! gateway.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use keyway_core::units::parse_ports;
use keyway_gateway::portscan::{self, classify, declared, DEFAULT_PORTS};

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

pub async fn run(args: PortsArgs) -> Result<ExitCode> {
    let config = crate::serve::load_config(&args.config)?;
    let declared = declared(&config).await;
    let timeout = keyway_core::units::parse_duration(&args.timeout)
        .with_context(|| format!("--timeout `{}`", args.timeout))?;
    if !(1..=10_000).contains(&args.concurrency) || !(1..=100_000).contains(&args.rate) {
        bail!("--concurrency must be 1 to 10000 and --rate 1 to 100000");
    }
    let mut ports = parse_ports(args.ports.as_deref().unwrap_or(DEFAULT_PORTS))
        .map_err(|e| anyhow!("--ports: {e}"))?;
    // Declared ports are scanned too, unless the ports were chosen.
    if args.ports.is_none() {
        ports.extend(declared.keys().map(|a| a.port()));
    }
    let own = portscan::own_listeners(&config);
    let targets = portscan::targets(&declared, &args.hosts, ports, &own)
        .await
        .map_err(|e| anyhow!(e))?;
    let bar = if args.json {
        indicatif::ProgressBar::hidden()
    } else {
        crate::scan::progress(targets.len() as u64, "ports")
    };
    let tick = bar.clone();
    let probes = portscan::scan(&targets, args.concurrency, args.rate, timeout, move || {
        tick.inc(1)
    })
    .await;
    bar.finish_and_clear();
    let report = classify(&declared, &probes, args.from_outside);
    let open = probes
        .values()
        .filter(|p| **p == portscan::Probe::Open)
        .count();
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
        crate::table::print_table(["STATE", "HOST", "PORT", "SERVICE"], &rows);
    }
    let findings = report.iter().filter(|r| r.state != "expected").count();
    eprintln!(
        "{} addresses scanned, {} open, {findings} findings",
        targets.len(),
        open
    );
    Ok(if findings > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
