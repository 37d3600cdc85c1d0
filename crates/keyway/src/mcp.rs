//! `keyway mcp`: an MCP service's tools as the gateway pinned them, and the
//! approval of a tool whose definition changed (through the admin API).

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::{self, AdminArgs, AdminClient};
use crate::table::print_table;

#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// The tools of an MCP service the gateway has seen: each with its state
    /// (`pinned`, or `changed`: withheld from lists and calls until approved), the
    /// SHA-256 of its pinned definition and when it changed. `--json` adds the
    /// definitions last seen, to read before approving.
    Tools {
        /// The MCP service (`protocol = "mcp"`).
        service: String,
        /// Print the admin API's answer as JSON, definitions included.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Serve a stdio MCP server over Streamable HTTP on a loopback address, so a
    /// gateway's `mcp` service can reach it (`upstream = "http://ADDR/mcp"`). Each
    /// MCP session is one process of the command. Runs until Ctrl-C. Inside a private
    /// network, `keyway agent run --mcp-stdio ADDR=COMMAND` does the same.
    Stdio {
        /// The loopback address to serve on.
        #[arg(long, value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// The server's command and its arguments (after `--`).
        #[arg(trailing_var_arg = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Approve the new definition of a tool that changed: it is pinned anew, listed
    /// and callable again. Read it first (`keyway mcp tools SERVICE --json`).
    Approve {
        service: String,
        tool: String,
        /// The digest of the definition you read (`seen_sha256` in `--json`; 16 hex
        /// digits or more): if the server changed the tool again since, nothing is
        /// approved.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub async fn run(cmd: McpCommand) -> Result<ExitCode> {
    match cmd {
        McpCommand::Tools {
            service,
            json,
            admin,
        } => {
            let client = AdminClient::resolve(&admin)?;
            let answer: Value = client
                .get(&format!("/v1/mcp/{}/tools", client::path_segment(&service)))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(ExitCode::SUCCESS);
            }
            let tools = answer["tools"].as_array().cloned().unwrap_or_default();
            if tools.is_empty() {
                eprintln!("no tools of `{service}` seen yet: they are pinned the first time a list shows them");
                return Ok(ExitCode::SUCCESS);
            }
            let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
            let rows: Vec<[String; 5]> = tools
                .iter()
                .map(|t| {
                    [
                        s(&t["tool"]),
                        s(&t["state"]),
                        s(&t["pinned_sha256"]).chars().take(16).collect(),
                        s(&t["first_seen"]),
                        s(&t["changed_at"]),
                    ]
                })
                .collect();
            print_table(["TOOL", "STATE", "PINNED", "FIRST SEEN", "CHANGED"], &rows);
        }
        McpCommand::Stdio { listen, command } => {
            let spec = format!("{listen}={}", command.join(" "));
            let server = keyway_agent::stdio::StdioServer::parse(&spec)?;
            server
                .serve(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
        }
        McpCommand::Approve {
            service,
            tool,
            sha256,
            admin,
        } => {
            let client = AdminClient::resolve(&admin)?;
            let approved: Value = client
                .post(
                    &format!(
                        "/v1/mcp/{}/tools/{}/approve",
                        client::path_segment(&service),
                        client::path_segment(&tool)
                    ),
                    &json!({ "sha256": sha256 }),
                )
                .await?;
            let pinned = approved["pinned_sha256"].as_str().unwrap_or("-");
            eprintln!(
                "tool `{tool}` of `{service}` approved: its new definition ({pinned}) is pinned"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
