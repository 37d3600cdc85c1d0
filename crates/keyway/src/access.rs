//! `keyway access` and `keyway requests`: a signed-in person obtains a token as the
//! gateway's policies allow them, or files a request that approvers decide.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use http::{Method, StatusCode};
use serde_json::json;

use crate::client::{path_segment, refusal};
use crate::login::{Session, SessionArgs};

/// The exit status of `keyway access` when a request was filed and no token given.
pub const FILED: u8 = 3;

#[derive(Debug, Args)]
pub struct AccessArgs {
    /// The service.
    pub service: String,
    /// For a database: the role to connect as (the policy's when unset).
    #[arg(long)]
    pub role: Option<String>,
    /// Narrow to these HTTP methods, like `GET,HEAD` (the policy's when unset).
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    /// Narrow to this path prefix; repeat for several (the policy's when unset).
    #[arg(long = "path")]
    pub paths: Vec<String>,
    /// Lifetime, like `30m` (15m when unset; never above the policy's `max_ttl`).
    #[arg(long)]
    pub ttl: Option<String>,
    /// Why, for the audit log and the approvers.
    #[arg(long)]
    pub reason: Option<String>,
    /// When the policy needs approval, wait for it and print the token.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub session: SessionArgs,
}

#[derive(Debug, Subcommand)]
pub enum RequestsCommand {
    /// The requests you filed, and those you may approve.
    List {
        #[command(flatten)]
        session: SessionArgs,
    },
    /// Approve a request (you must be among its policy's approvers, and not its
    /// requester).
    Approve(Decide),
    /// Reject a request.
    Reject(Decide),
    /// Print the token of your approved request (once), alone on stdout.
    Collect(Decide),
    /// End the access a request gave, at once (its token is revoked), or withdraw it.
    Revoke(Decide),
}

#[derive(Debug, Args)]
pub struct Decide {
    /// The request's id (`req_…`).
    pub id: String,
    /// Why, for the audit log.
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub session: SessionArgs,
}

pub async fn access(a: AccessArgs) -> Result<ExitCode> {
    let session = Session::load(a.session)?;
    let body = json!({
        "service": a.service,
        "role": a.role,
        "methods": a.methods,
        "paths": a.paths,
        "ttl": a.ttl,
        "reason": a.reason,
    });
    let (status, v) = session
        .call(Method::POST, "/v1/access", Some(&body))
        .await?;
    match status {
        StatusCode::OK => {
            print_token(&v);
            Ok(ExitCode::SUCCESS)
        }
        StatusCode::ACCEPTED => {
            let id = v["request_id"].as_str().unwrap_or("-").to_owned();
            let approvers: Vec<&str> = v["approvers"]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
                .unwrap_or_default();
            eprintln!(
                "policy {} needs {} approval(s) from {}: request {id} filed, open until {}",
                v["policy"].as_str().unwrap_or("-"),
                v["min"].as_u64().unwrap_or(1),
                approvers.join(", "),
                v["expires_at"].as_str().unwrap_or("-"),
            );
            if !a.wait {
                eprintln!("once approved: keyway requests collect {id}");
                println!("{id}");
                return Ok(ExitCode::from(FILED));
            }
            eprintln!("waiting for approval…");
            wait(&session, &id).await
        }
        s => bail!("{} ({s})", refusal(&v)),
    }
}

/// Polls the request until it is approved (prints its token), rejected or expired.
async fn wait(session: &Session, id: &str) -> Result<ExitCode> {
    let path = format!("/v1/requests/{}/collect", path_segment(id));
    let until = Instant::now() + Duration::from_secs(7 * 86_400);
    while Instant::now() < until {
        let (status, v) = session.call(Method::POST, &path, None).await?;
        match status {
            StatusCode::OK => {
                print_token(&v);
                return Ok(ExitCode::SUCCESS);
            }
            StatusCode::CONFLICT => tokio::time::sleep(Duration::from_secs(2)).await,
            s => bail!("{} ({s})", refusal(&v)),
        }
    }
    bail!("gave up waiting")
}

fn print_token(v: &serde_json::Value) {
    eprintln!(
        "access token {} for {} (policy {}), expires {}",
        v["id"].as_str().unwrap_or("-"),
        v["service"].as_str().unwrap_or("-"),
        v["policy"].as_str().unwrap_or("-"),
        v["expires_at"].as_str().unwrap_or("-"),
    );
    println!("{}", v["access_token"].as_str().unwrap_or(""));
}

pub async fn requests(cmd: RequestsCommand) -> Result<ExitCode> {
    let (action, d) = match cmd {
        RequestsCommand::List { session } => return list(Session::load(session)?).await,
        RequestsCommand::Approve(d) => ("approve", d),
        RequestsCommand::Reject(d) => ("reject", d),
        RequestsCommand::Collect(d) => ("collect", d),
        RequestsCommand::Revoke(d) => ("revoke", d),
    };
    let session = Session::load(d.session)?;
    let path = format!("/v1/requests/{}/{action}", path_segment(&d.id));
    let body = json!({ "reason": d.reason });
    let (status, v) = session.call(Method::POST, &path, Some(&body)).await?;
    if !status.is_success() {
        bail!("{} ({status})", refusal(&v));
    }
    match action {
        "collect" => print_token(&v),
        "revoke" => {
            let n = v["revoked_tokens"].as_array().map_or(0, Vec::len);
            eprintln!("request {} revoked; {n} token(s) revoked", d.id);
        }
        _ => eprintln!(
            "request {}: {} ({} approval(s))",
            d.id,
            v["state"].as_str().unwrap_or("-"),
            v["approvals"].as_array().map_or(0, Vec::len)
        ),
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(session: Session) -> Result<ExitCode> {
    let (status, v) = session.call(Method::GET, "/v1/requests", None).await?;
    if !status.is_success() {
        bail!("{} ({status})", refusal(&v));
    }
    let empty = vec![];
    let rows: Vec<[String; 8]> = v["requests"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or("-").to_owned();
            let approvals = r["approvals"].as_array().map_or(0, Vec::len);
            [
                s("id"),
                s("state"),
                s("requester"),
                s("policy"),
                format!("{} ({})", s("service"), s("grant")),
                format!("{approvals}/{}", r["min"].as_u64().unwrap_or(0)),
                s("expires_at"),
                s("reason"),
            ]
        })
        .collect();
    if rows.is_empty() {
        eprintln!("no access requests for you to see");
        return Ok(ExitCode::SUCCESS);
    }
    crate::table::print_table(
        [
            "ID",
            "STATE",
            "REQUESTER",
            "POLICY",
            "WHAT",
            "APPROVALS",
            "EXPIRES",
            "REASON",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}
