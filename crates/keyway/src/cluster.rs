//! `keyway cluster status`: the replicas on a shared store, from their heartbeats.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use crate::client::{AdminArgs, AdminClient};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Every replica on the shared store: whether it serves, its last heartbeat,
    /// how many changes it is behind, the config it runs, its agents; then the
    /// config applied to the cluster (`keyway apply`). Exit status 1 when one is not
    /// serving, has not beaten for 5 seconds, or runs another config.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub async fn run(cmd: ClusterCommand) -> Result<ExitCode> {
    let ClusterCommand::Status { admin } = cmd;
    let client = AdminClient::resolve(&admin)?;
    let v: serde_json::Value = client.get("/v1/cluster").await?;
    let head = v["head"].as_i64().unwrap_or(0);
    let now = v["now"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .unwrap_or_else(std::time::SystemTime::now);
    let empty = vec![];
    let replicas = v["replicas"].as_array().unwrap_or(&empty);
    if replicas.is_empty() {
        eprintln!("no replicas: this gateway's store is its own (SQLite)");
        return Ok(ExitCode::SUCCESS);
    }
    // The config applied last, which every replica should run.
    let cluster_config = v["config"]["sha256"].as_str();
    let mut healthy = true;
    let rows: Vec<[String; 7]> = replicas
        .iter()
        .map(|r| {
            let at = r["at"].as_i64().unwrap_or(0);
            let beat = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at.max(0) as u64);
            let age = now.duration_since(beat).unwrap_or_default();
            let serving = r["serving"].as_bool().unwrap_or(false);
            let config = r["config_sha256"].as_str().unwrap_or_default();
            let differs = cluster_config.is_some_and(|c| c != config);
            if !serving || age > std::time::Duration::from_secs(5) || differs {
                healthy = false;
            }
            let agents: Vec<&str> = r["agents"]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
                .unwrap_or_default();
            [
                r["replica"].as_str().unwrap_or("-").to_owned(),
                if serving { "serving" } else { "not serving" }.to_owned(),
                format!("{:.1}s ago", age.as_secs_f64()),
                (head - r["rev"].as_i64().unwrap_or(0)).max(0).to_string(),
                format!(
                    "{}{}",
                    config.chars().take(12).collect::<String>(),
                    if differs { " (not the cluster's)" } else { "" }
                ),
                if agents.is_empty() {
                    "-".into()
                } else {
                    agents.join(",")
                },
                r["version"].as_str().unwrap_or("-").to_owned(),
            ]
        })
        .collect();
    crate::table::print_table(
        [
            "REPLICA",
            "STATE",
            "HEARTBEAT",
            "BEHIND",
            "CONFIG",
            "AGENTS",
            "VERSION",
        ],
        &rows,
    );
    match cluster_config {
        Some(c) => println!(
            "\nThe cluster's config: sha256:{} (applied {}).",
            c,
            v["config"]["at"].as_str().unwrap_or("-")
        ),
        None => println!("\nNo config applied to the cluster yet: each replica runs its own file."),
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
