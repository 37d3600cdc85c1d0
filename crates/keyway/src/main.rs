//! `keyway`: one gateway for every internal port.
//!
//! # Layout
//!
//! - `main.rs`: the command line (clap) and dispatch.
//! - `client.rs`: finding and calling the admin API.
//! - `connect.rs`: `keyway connect`, a local port for a TCP service behind the gateway.
//! - `agent.rs`: `keyway agent`: enrolling, running, listing and revoking agents.
//! - `audit.rs`: `keyway audit verify`: the audit log's hash chain, offline.
//! - `demo.rs`: `keyway demo`, a gateway with a demo upstream and a token to try.
//! - `serve.rs`: `keyway gateway`, and the start-up shared with the demo.
//! - `ports.rs`: `keyway audit ports`, open ports set against the declared upstreams.
//! - `scan.rs`: `keyway scan`, finding leaked tokens in files and git history.
//! - `validate.rs`: `keyway validate` and `keyway schema`, the config for CI and editors.

#![forbid(unsafe_code)]

mod agent;
mod audit;
mod client;
mod connect;
mod demo;
mod host;
mod plan;
mod ports;
mod scan;
mod serve;
mod validate;

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use client::{AdminArgs, AdminClient};
use keyway_gateway::admin::{Issued, TokenInfo};

/// One gateway for every internal port: scoped, short-lived, revocable tokens in
/// front of internal APIs, with everything audited.
#[derive(Debug, Parser)]
#[command(name = "keyway", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Log filter (`info`, `debug`, `keyway_gateway=trace`, …).
    #[arg(long, global = true, env = "KEYWAY_LOG", default_value = "info")]
    log: String,

    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = serve::LogFormat::Text)]
    log_format: serve::LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a demo: a gateway on the embedded default (SQLite), a demo upstream API,
    /// and a token to try with the printed `curl` lines. Runs until Ctrl-C.
    Demo(demo::DemoArgs),
    /// Run the gateway described by a config file.
    ///
    /// It runs one worker thread per CPU it may use; `TOKIO_WORKER_THREADS=N` sets the
    /// number (with 1, a single-threaded scheduler). SIGHUP applies the file again;
    /// Ctrl-C or SIGTERM drains and stops.
    Gateway {
        /// The config file.
        #[arg(long, short, env = "KEYWAY_CONFIG", default_value = "keyway.toml")]
        config: PathBuf,
    },
    /// Issue, list and revoke access tokens (through the admin API).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Issue client credentials: workloads exchange them for short-lived access tokens.
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Reach a TCP service behind the gateway on a local port: each connection to
    /// 127.0.0.1:PORT goes through the gateway's tunnel with your token. Prints the
    /// local address on stdout.
    Connect(connect::ConnectArgs),
    /// Find Keyway tokens in files (and git history): where, which public id, whether
    /// still live; never the secret. Exit status 1 when a live (or unknown) token is
    /// found, so it works as a pre-commit hook and in CI.
    Scan(scan::ScanArgs),
    /// Store upstream credentials, encrypted (through the admin API).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Agents: Keyway inside a private network, dialing out to the gateway so the
    /// network opens no inbound port.
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Check the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Check a config file without starting anything: syntax (an unknown key names
    /// its path), policy (every service names its `max_ttl`), risks (plaintext
    /// upstreams beyond this host, `allow_cidrs` open to every address: warnings),
    /// and secrets written into it (a Keyway token anywhere, a key-like value, a
    /// password in a URL). Exit status 1 on an error, for CI.
    Validate(validate::ValidateArgs),
    /// Show what a config file would change in the running gateway, like
    /// Terraform: services, agents, detectors and settings added (+), changed (~,
    /// with the keys that changed) and removed (-). Changes only a restart can make
    /// (the gateway's own listeners, keys, data folder, audit writer, alert webhook)
    /// are marked.
    /// The file is checked as `keyway validate` checks it first.
    Plan(plan::PlanArgs),
    /// Apply a config file to the running gateway as one atomic change, audited as
    /// `config.applied` with the file's SHA-256 and the admin who applied it.
    /// Unchanged services keep every connection; a removed service's port closes
    /// and its sessions end; sessions a narrowed service no longer allows (source,
    /// role, max_ttl) end. `kill -HUP` on the gateway applies its own file the
    /// same way.
    Apply(plan::PlanArgs),
    /// The hygiene report: tokens not used within the window, client credentials
    /// near their maximum age, services with no traffic (candidates to close), grants
    /// broader than what was used, agents not connected. Exit status 1 when it
    /// finds anything.
    Report {
        /// The window, like `30d`.
        #[arg(long, default_value = "30d")]
        since: String,
        /// JSON instead of sections for people.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print the JSON Schema of `keyway.toml`, for editors (for example taplo, or
    /// `#:schema ./keyway.schema.json` at the top of the file).
    Schema,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Issue an access token for one service. Prints the token alone on stdout (so
    /// `TOKEN=$(keyway token issue …)` works) and its details on stderr.
    Issue(IssueArgs),
    /// List tokens (never their secrets).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only tokens not used (nor issued) within this long, like `30d`: forgotten
        /// credentials to revoke.
        #[arg(long, value_name = "DURATION")]
        unused: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke a token by its id, or every token matching all the filters given. A
    /// revoked token stops working on its next request and its live streams end.
    Revoke {
        /// The token's public id (from `token issue` or `token list`).
        #[arg(required_unless_present_any = ["principal", "service", "issued_before"])]
        id: Option<String>,
        /// Every token of this principal.
        #[arg(long, conflicts_with = "id")]
        principal: Option<String>,
        /// Every token for this service.
        #[arg(long, conflicts_with = "id")]
        service: Option<String>,
        /// Every token issued before this time (RFC 3339, like `2026-11-28T10:00:00Z`):
        /// the panic button after an incident.
        #[arg(long, conflicts_with = "id", value_name = "TIME")]
        issued_before: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Trade a client credential for an access token at the gateway's token endpoint.
    /// Prints the access token alone on stdout; when to refresh it on stderr.
    Exchange {
        /// The token endpoint, like `http://127.0.0.1:7071` (`token_listen`).
        #[arg(long, env = "KEYWAY_GATEWAY")]
        gateway: String,
        /// A file holding the client credential.
        #[arg(long)]
        credential_file: PathBuf,
        /// The service to get a token for.
        #[arg(long)]
        service: String,
        /// Lifetime, like `10m` (default 15m; never above the service's maximum).
        #[arg(long)]
        ttl: Option<String>,
        #[command(flatten)]
        tls: client::TlsArgs,
    },
    /// Rotate an access token or a client credential: prints a successor (alone on
    /// stdout) with the same principal and grant (or scope); the old one keeps working
    /// for the overlap, then dies.
    Rotate {
        /// The token's public id.
        id: String,
        /// How long the old token keeps working (`0` ends it now).
        #[arg(long, default_value = "5m")]
        overlap: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Args)]
struct IssueArgs {
    /// The service the token is for (exactly one).
    #[arg(long)]
    service: String,
    /// Who holds it: a person, a service account, an AI agent.
    #[arg(long)]
    principal: String,
    /// Lifetime, like `15m` or `8h`; never above the service's `max_ttl`.
    #[arg(long, default_value = "15m")]
    ttl: String,
    /// Allowed HTTP methods, comma-separated (default: any).
    #[arg(long, value_delimiter = ',')]
    methods: Vec<String>,
    /// Allowed path prefix; repeat for several (default: any path).
    #[arg(long = "path")]
    paths: Vec<String>,
    /// For a database service: the role the token connects as (one of the service's
    /// `roles`); read-only is enforced by the database role.
    #[arg(long)]
    role: Option<String>,
    /// Bind the token to this client certificate (PEM): it is then accepted only
    /// over mTLS with that certificate, so a stolen token alone is useless.
    #[arg(long, value_name = "CERT.pem")]
    bind_cert: Option<PathBuf>,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Debug, Subcommand)]
enum CredentialCommand {
    /// Issue a client credential for a service principal (a CI job, an AI agent, a
    /// service). It calls nothing itself; `keyway token exchange` trades it for an
    /// access token. Prints it alone on stdout, once.
    Issue {
        /// The service principal that holds it.
        #[arg(long)]
        principal: String,
        /// A service it may get access tokens for; repeat for several. Give one its own
        /// narrowest grant as `NAME:METHODS:PATH[,PATH]`, like
        /// `billing:GET,HEAD:/invoices/`.
        #[arg(
            long = "service",
            required = true,
            value_name = "SERVICE[:METHODS[:PATHS]]"
        )]
        services: Vec<String>,
        /// Narrow every access token to these methods (comma-separated).
        #[arg(long, value_delimiter = ',')]
        methods: Vec<String>,
        /// Narrow every access token to this path prefix; repeat for several.
        #[arg(long = "path")]
        paths: Vec<String>,
        /// Source networks it may be used from; repeat for several (default: any).
        #[arg(long = "cidr")]
        cidrs: Vec<String>,
        /// How long it is accepted, like `90d` (default and ceiling: the config's
        /// `credential_max_age`).
        #[arg(long)]
        max_age: Option<String>,
        /// Bind the credential, and every access token it gets, to this client
        /// certificate (PEM); the exchange must then use mTLS with it.
        #[arg(long, value_name = "CERT.pem")]
        bind_cert: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
enum SecretCommand {
    /// Set an upstream credential. Reads the value from stdin (one line, or all of it
    /// without the final newline); it is sealed before it is stored.
    Set {
        /// The secret's name, as config files refer to it.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the names of the secrets that are set.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime: tokio's multi-thread scheduler with one worker a CPU (or
/// `TOKIO_WORKER_THREADS`), or its current-thread scheduler when that makes one
/// worker (a one-CPU host or container, `TOKIO_WORKER_THREADS=1`). The same tasks
/// either way, without the hand-offs a pool of one still pays: about 7 % more HTTP
/// requests a second on one core (BENCHMARKS.md). Nothing in Keyway calls
/// `block_in_place`, the one thing a current-thread runtime refuses.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    let bad = "TOKIO_WORKER_THREADS must be a whole number of worker threads, 1 or more";
    let workers = match std::env::var("TOKIO_WORKER_THREADS") {
        Err(std::env::VarError::NotPresent) => {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or(bad)?,
        Err(std::env::VarError::NotUnicode(_)) => return Err(bad.into()),
    };
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => {
            serve::init_logging(&cli.log, cli.log_format)?;
            demo::run(args).await
        }
        Command::Gateway { config } => {
            serve::init_logging(&cli.log, cli.log_format)?;
            serve::gateway(&config).await
        }
        Command::Token(cmd) => token(cmd).await,
        Command::Credential(cmd) => credential(cmd).await,
        Command::Scan(args) => scan::run(args).await,
        Command::Connect(args) => connect::run(args).await,
        Command::Secret(cmd) => secret(cmd).await,
        Command::Agent(cmd) => agent::run(cmd, &cli.log, cli.log_format).await,
        Command::Audit(cmd) => audit::run(cmd).await,
        Command::Validate(args) => validate::run(args),
        Command::Schema => validate::schema(),
        Command::Plan(args) => plan::run(args, false).await,
        Command::Apply(args) => plan::run(args, true).await,
        Command::Report { since, json, admin } => report(&since, json, &admin).await,
    }
}

async fn report(since: &str, json: bool, admin: &AdminArgs) -> Result<ExitCode> {
    let client = AdminClient::resolve(admin)?;
    let r: keyway_gateway::report::Report = client
        .get(&format!("/v1/report?since={}", client::path_segment(since)))
        .await?;
    let findings = r.unused_tokens.len()
        + r.credentials_near_max_age.len()
        + r.quiet_services.len()
        + r.broad_grants.len()
        + r.agents_not_connected.len();
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("Since {}:", r.since);
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        if !r.unused_tokens.is_empty() {
            println!("\nTokens not used (revoke them):");
            let rows: Vec<[String; 5]> = r
                .unused_tokens
                .iter()
                .map(|t| {
                    [
                        t.id.clone(),
                        t.kind.clone(),
                        t.principal.clone(),
                        dash(&t.service),
                        dash(&t.last_used_at),
                    ]
                })
                .collect();
            print_table(["ID", "KIND", "PRINCIPAL", "SERVICE", "LAST USED"], &rows);
        }
        if !r.credentials_near_max_age.is_empty() {
            println!("\nClient credentials near their maximum age (rotate them):");
            let rows: Vec<[String; 3]> = r
                .credentials_near_max_age
                .iter()
                .map(|t| [t.id.clone(), t.principal.clone(), t.expires_at.clone()])
                .collect();
            print_table(["ID", "PRINCIPAL", "EXPIRES"], &rows);
        }
        if !r.quiet_services.is_empty() {
            println!("\nServices with no traffic (close them?):");
            for s in &r.quiet_services {
                println!("  {}", s.service);
            }
        }
        if !r.broad_grants.is_empty() {
            println!("\nGrants broader than their use (narrow them):");
            let all = |v: &[String], what: &str| {
                if v.is_empty() {
                    what.to_owned()
                } else {
                    v.join(",")
                }
            };
            let rows: Vec<[String; 5]> = r
                .broad_grants
                .iter()
                .map(|g| {
                    [
                        g.token_id.clone(),
                        g.service.clone(),
                        format!(
                            "{} {}",
                            all(&g.granted_methods, "ALL"),
                            all(&g.granted_paths, "/")
                        ),
                        format!("{} {}", g.used_methods.join(","), g.used_paths.join(",")),
                        g.principal.clone(),
                    ]
                })
                .collect();
            print_table(["ID", "SERVICE", "GRANTED", "USED", "PRINCIPAL"], &rows);
        }
        if !r.agents_not_connected.is_empty() {
            println!("\nAgents not connected:");
            for a in &r.agents_not_connected {
                println!("  {a}");
            }
        }
        if findings == 0 {
            println!("nothing to revoke, narrow or close");
        }
        if r.truncated {
            eprintln!("(the audit log had more distinct uses than the report reads; older ones may be missing)");
        }
    }
    Ok(if findings > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn token(cmd: TokenCommand) -> Result<ExitCode> {
    match cmd {
        TokenCommand::Issue(a) => {
            let client = AdminClient::resolve(&a.admin)?;
            let body = json!({
                "service": a.service,
                "principal": a.principal,
                "ttl": a.ttl,
                "methods": a.methods,
                "paths": a.paths,
                "cert_thumbprint": thumbprint(a.bind_cert.as_deref())?,
                "role": a.role,
            });
            let issued: Issued = client.post("/v1/tokens", &body).await?;
            let i = &issued.info;
            let grant = describe(i);
            eprintln!(
                "issued {} for {} on {} ({grant}), expires {}",
                i.id,
                i.principal,
                i.service.as_deref().unwrap_or("-"),
                i.expires_at
            );
            println!("{}", issued.token);
        }
        TokenCommand::List {
            json,
            unused,
            admin,
        } => {
            let client = AdminClient::resolve(&admin)?;
            let path = match &unused {
                Some(u) => format!("/v1/tokens?unused={}", client::path_segment(u)),
                None => "/v1/tokens".to_owned(),
            };
            let tokens: Vec<TokenInfo> = client.get(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                print_tokens(&tokens);
            }
        }
        TokenCommand::Revoke {
            id: Some(id),
            admin,
            ..
        } => {
            let client = AdminClient::resolve(&admin)?;
            let path = format!("/v1/tokens/{}/revoke", client::path_segment(&id));
            let info: TokenInfo = client.post(&path, &json!({})).await?;
            eprintln!(
                "revoked {} ({} on {}) at {}",
                info.id,
                info.principal,
                info.service.as_deref().unwrap_or("-"),
                info.revoked_at.as_deref().unwrap_or("-")
            );
        }
        TokenCommand::Revoke {
            id: None,
            principal,
            service,
            issued_before,
            admin,
        } => {
            if let Some(t) = &issued_before {
                if keyway_core::clock::parse_time(t).is_none() {
                    bail!("--issued-before takes an RFC 3339 time, like 2026-11-28T10:00:00Z");
                }
            }
            let client = AdminClient::resolve(&admin)?;
            let body = json!({ "principal": principal, "service": service, "issued_before": issued_before });
            let revoked: Vec<TokenInfo> = client.post("/v1/tokens/revoke", &body).await?;
            for info in &revoked {
                eprintln!(
                    "revoked {} ({} on {})",
                    info.id,
                    info.principal,
                    info.service.as_deref().unwrap_or("-")
                );
            }
            let cascade = if revoked.iter().any(|t| t.kind == "client_credential") {
                " (and with each credential, the access tokens obtained with it)"
            } else {
                ""
            };
            eprintln!("{} token(s) revoked{cascade}", revoked.len());
        }
        TokenCommand::Exchange {
            gateway,
            credential_file,
            service,
            ttl,
            tls,
        } => {
            let credential = client::read_token(&credential_file)?;
            let mut body = json!({ "service": service });
            if let Some(t) = ttl {
                body["ttl"] = json!(t);
            }
            let answer = client::exchange(&gateway, &tls, &credential, &body).await?;
            eprintln!(
                "access token {} for {service}, expires {}; refresh after {}",
                answer["id"].as_str().unwrap_or("-"),
                answer["expires_at"].as_str().unwrap_or("-"),
                answer["refresh_after"].as_str().unwrap_or("-"),
            );
            if let Some(w) = answer["warning"].as_str() {
                eprintln!("warning: {w}");
            }
            let token = answer["access_token"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("the token endpoint answered without a token"))?;
            println!("{token}");
        }
        TokenCommand::Rotate { id, overlap, admin } => {
            let client = AdminClient::resolve(&admin)?;
            let path = format!("/v1/tokens/{}/rotate", client::path_segment(&id));
            let rotated: Rotated = client.post(&path, &json!({ "overlap": overlap })).await?;
            eprintln!(
                "rotated {id} -> {} ({} on {}); {id} works until {}, {} until {}",
                rotated.info.id,
                rotated.info.principal,
                rotated.info.service.as_deref().unwrap_or("-"),
                rotated.predecessor_expires_at,
                rotated.info.id,
                rotated.info.expires_at,
            );
            println!("{}", rotated.token);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn credential(cmd: CredentialCommand) -> Result<ExitCode> {
    match cmd {
        CredentialCommand::Issue {
            bind_cert,
            principal,
            services,
            methods,
            paths,
            cidrs,
            max_age,
            admin,
        } => {
            let client = AdminClient::resolve(&admin)?;
            let body = json!({
                "principal": principal,
                "services": services,
                "methods": methods,
                "paths": paths,
                "cidrs": cidrs,
                "max_age": max_age,
                "cert_thumbprint": thumbprint(bind_cert.as_deref())?,
            });
            let issued: Issued = client.post("/v1/credentials", &body).await?;
            let i = &issued.info;
            eprintln!(
                "issued client credential {} for {} on {} ({}), accepted until {}",
                i.id,
                i.principal,
                i.service.as_deref().unwrap_or("-"),
                describe(i),
                i.expires_at
            );
            println!("{}", issued.token);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn secret(cmd: SecretCommand) -> Result<ExitCode> {
    match cmd {
        SecretCommand::Set { name, admin } => {
            let client = AdminClient::resolve(&admin)?;
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("Type the value of `{name}`, then Enter and Ctrl-D:");
            }
            let mut value = zeroize::Zeroizing::new(String::new());
            stdin
                .lock()
                .take(64 * 1024)
                .read_to_string(&mut value)
                .context("reading the value from stdin")?;
            let trimmed = value.strip_suffix('\n').unwrap_or(&value);
            let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
            if trimmed.is_empty() {
                bail!("no value on stdin; pipe it in: `printf %s \"$VALUE\" | keyway secret set {name}`");
            }
            let body = zeroize::Zeroizing::new(json!({ "value": trimmed }).to_string());
            client
                .put_raw(
                    &format!("/v1/secrets/{}", client::path_segment(&name)),
                    body.as_bytes(),
                )
                .await?;
            eprintln!("secret `{name}` set (stored encrypted)");
        }
        SecretCommand::List { admin } => {
            let client = AdminClient::resolve(&admin)?;
            let names: Vec<String> = client.get("/v1/secrets").await?;
            if names.is_empty() {
                eprintln!("no secrets are set");
            }
            for n in names {
                println!("{n}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The RFC 8705 thumbprint of a PEM certificate file, for binding.
fn thumbprint(cert: Option<&std::path::Path>) -> Result<Option<String>> {
    cert.map(|p| keyway_gateway::tls::thumbprint_of_pem(p).map_err(anyhow::Error::from))
        .transpose()
}

/// A token's grant in a few words: the database role, the methods and paths, or the
/// whole service.
fn describe(t: &TokenInfo) -> String {
    if t.kind == "admin" {
        return "admin API".to_owned();
    }
    if let Some(role) = &t.role {
        return format!("role {role}");
    }
    match (t.methods.is_empty(), t.paths.is_empty()) {
        (true, true) => "whole service".to_owned(),
        (false, true) => format!("{} any path", t.methods.join(",")),
        (true, false) => format!("any method {}", t.paths.join(" ")),
        (false, false) => format!("{} {}", t.methods.join(","), t.paths.join(" ")),
    }
}

/// The answer to a rotation.
#[derive(serde::Deserialize)]
struct Rotated {
    token: String,
    predecessor_expires_at: String,
    info: TokenInfo,
}

fn print_tokens(tokens: &[TokenInfo]) {
    if tokens.is_empty() {
        eprintln!("no tokens match");
        return;
    }
    let rows: Vec<[String; 8]> = tokens
        .iter()
        .map(|t| {
            [
                t.id.clone(),
                match t.kind.as_str() {
                    "client_credential" => "credential".to_owned(),
                    k => k.to_owned(),
                },
                t.principal.clone(),
                t.service.clone().unwrap_or_else(|| "-".into()),
                describe(t),
                t.state.clone(),
                t.expires_at.clone(),
                t.last_used_at.clone().unwrap_or_else(|| "never".into()),
            ]
        })
        .collect();
    print_table(
        [
            "ID",
            "KIND",
            "PRINCIPAL",
            "SERVICE",
            "GRANT",
            "STATE",
            "EXPIRES",
            "LAST USED",
        ],
        &rows,
    );
}

/// Rows under a header, in columns as wide as their widest cell.
fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let header = header.map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(&header).chain(rows) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}
