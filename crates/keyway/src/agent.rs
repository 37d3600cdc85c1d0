//! `keyway agent`: enroll an agent (admin), run one (inside the private network),
//! list and revoke them (admin).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use keyway_core::api::AgentStatus;
use keyway_core::api::Enrollment;
use serde_json::json;

use crate::client::{self, AdminArgs, AdminClient};
use crate::serve;

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Make a one-use enrollment token for an agent declared in the config (valid
    /// 1 h). Prints it alone on stdout; it carries the gateway CA's pin, so the agent
    /// needs no CA file.
    Enroll {
        /// The agent's name (`[agents.NAME]` in the config).
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Run an agent: dial the gateway's tunnel, carry the connections of the
    /// services assigned to this agent. Reconnects on its own; Ctrl-C stops it.
    Run(RunArgs),
    /// Each agent's state, version, last heartbeat and services.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Disconnect an agent now and refuse its certificates from now on (enroll it
    /// again to let it back).
    Revoke {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A gateway's tunnel listener, HOST:PORT. Repeat it (or separate with commas)
    /// for the replicas of a cluster; a name that resolves to several addresses
    /// counts as all of them. The agent keeps a tunnel to each.
    #[arg(long, env = "KEYWAY_GATEWAY", value_delimiter = ',', required = true)]
    gateway: Vec<String>,
    /// The enrollment token (`keyway agent enroll NAME > tok`); needed on the first
    /// start only.
    #[arg(long)]
    enroll_token_file: Option<PathBuf>,
    /// Where the agent keeps its key, certificate and the gateway's CA.
    #[arg(long, default_value = "keyway-agent")]
    data_dir: PathBuf,
    /// An upstream (HOST:PORT) this agent may dial; repeat for several. Anything
    /// else the gateway asks for is refused and logged, so a compromised gateway
    /// cannot pivot through the agent.
    #[arg(
        long = "allow-upstream",
        value_name = "HOST:PORT",
        required_unless_present_any = ["allow_any_upstream", "mcp_stdio"]
    )]
    allow_upstreams: Vec<String>,
    /// Dial whatever address the gateway asks for (instead of --allow-upstream).
    #[arg(long, conflicts_with = "allow_upstreams")]
    allow_any_upstream: bool,
    /// Run a stdio MCP server inside this network and serve it to the gateway:
    /// `ADDR=COMMAND ARGS…` (a loopback address; the command split on spaces, no
    /// shell), like `127.0.0.1:8100=python3 tickets.py`. Each MCP session is one
    /// process of it; the address is added to --allow-upstream. The gateway's
    /// service: `protocol = "mcp"`, `upstream = "http://ADDR/mcp"`, `via` this agent.
    #[arg(long = "mcp-stdio", value_name = "ADDR=COMMAND")]
    mcp_stdio: Vec<String>,
}

pub async fn run(cmd: AgentCommand, log: &str, format: serve::LogFormat) -> Result<ExitCode> {
    match cmd {
        AgentCommand::Enroll { name, admin } => {
            let client = AdminClient::resolve(&admin)?;
            let e: Enrollment = client
                .post(
                    &format!("/v1/agents/{}/enroll", client::path_segment(&name)),
                    &json!({}),
                )
                .await?;
            eprintln!(
                "enrollment token for agent `{name}`, one use, valid until {}",
                e.expires_at
            );
            println!("{}", e.enrollment);
        }
        AgentCommand::Run(args) => {
            serve::init_logging(log, format)?;
            let (stop, stopped) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                let _ = stop.send(true);
            });
            let opts = keyway_agent::Options {
                gateways: args.gateway,
                data_dir: args.data_dir,
                enroll_token_file: args.enroll_token_file,
                allow_upstreams: args.allow_upstreams,
                allow_any_upstream: args.allow_any_upstream,
                mcp_stdio: args
                    .mcp_stdio
                    .iter()
                    .map(|s| keyway_agent::stdio::StdioServer::parse(s))
                    .collect::<Result<_, _>>()?,
            };
            keyway_agent::run(opts, stopped)
                .await
                .map_err(|e| anyhow!("{e}"))?;
        }
        AgentCommand::List { json, admin } => {
            let client = AdminClient::resolve(&admin)?;
            let agents: Vec<AgentStatus> = client.get("/v1/agents").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&agents)?);
                return Ok(ExitCode::SUCCESS);
            }
            if agents.is_empty() {
                eprintln!("no agents in the config");
            }
            let rows: Vec<[String; 6]> = agents
                .iter()
                .map(|a| {
                    [
                        a.name.clone(),
                        a.state.clone(),
                        a.connections.to_string(),
                        a.version.clone().unwrap_or_else(|| "-".into()),
                        a.last_heartbeat.clone().unwrap_or_else(|| "-".into()),
                        a.services.join(","),
                    ]
                })
                .collect();
            crate::table::print_table(
                [
                    "AGENT",
                    "STATE",
                    "CONNECTIONS",
                    "VERSION",
                    "LAST HEARTBEAT",
                    "SERVICES",
                ],
                &rows,
            );
        }
        AgentCommand::Revoke { name, admin } => {
            let client = AdminClient::resolve(&admin)?;
            let r: serde_json::Value = client
                .post(
                    &format!("/v1/agents/{}/revoke", client::path_segment(&name)),
                    &json!({}),
                )
                .await?;
            eprintln!(
                "revoked agent `{name}`: {} connection(s) closed; its certificates are refused from now on",
                r["connections_closed"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
