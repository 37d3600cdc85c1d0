//! `keyway`: one gateway for every internal port.
//!
//! # Layout
//!
//! - `main.rs`: the command line (clap) and dispatch.
//! - `client.rs`: finding and calling the admin API.
//! - `table.rs`: rows in columns, for the commands that list things.
//! - `token.rs`: `keyway token`: issuing, listing, revoking, exchanging and rotating tokens.
//! - `credential.rs`: `keyway credential`, client credentials to exchange for tokens.
//! - `secret.rs`: `keyway secret`, upstream credentials stored encrypted.
//! - `report.rs`: `keyway report`, the hygiene report.
//! - `cluster.rs`: `keyway cluster status`, the replicas on a shared store.
//! - `connect.rs`: `keyway connect`, a local port for a TCP service behind the gateway.
//! - `login.rs`: `keyway login` and `keyway whoami`, a person's SSO session.
//! - `access.rs`: `keyway access` and `keyway requests`, a person's access by policy.
//! - `agent.rs`: `keyway agent`: enrolling, running, listing and revoking agents.
//! - `audit.rs`: `keyway audit`: querying, exporting and verifying the audit log (offline).
//! - `backup.rs`: `keyway backup`, a consistent copy of the store while the gateway runs.
//! - `admin.rs`: `keyway admin reset`, a new admin credential with the gateway stopped.
//! - `demo.rs`: `keyway demo`, a gateway with a demo upstream and a token to try.
//! - `serve.rs`: `keyway gateway`, and the start-up shared with the demo.
//! - `host.rs`: what the host's operator could change for Keyway, as hints in the log.
//! - `plan.rs`: `keyway plan` and `keyway apply`, a config file against the running gateway.
//! - `ports.rs`: `keyway audit ports`, open ports set against the declared upstreams.
//! - `scan.rs`: `keyway scan`, finding leaked tokens in files and git history.
//! - `validate.rs`: `keyway validate` and `keyway schema`, the config for CI and editors.
//! - `manual.rs`: `keyway completions` and `keyway man`, generated from this command line.

#![forbid(unsafe_code)]

mod access;
mod admin;
mod agent;
mod audit;
mod backup;
mod client;
mod cluster;
mod connect;
mod credential;
mod demo;
mod host;
mod login;
mod manual;
mod mcp;
mod plan;
mod ports;
mod report;
mod scan;
mod secret;
mod serve;
mod table;
mod token;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// mimalloc rather than glibc's allocator: a request makes a few dozen small
/// allocations, which it serves in fewer instructions, and a million live tokens'
/// entries take less memory in it, returned to the system when freed (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use client::AdminArgs;

/// One gateway for every internal port: scoped, short-lived, revocable tokens in
/// front of internal APIs, with everything audited.
#[derive(Debug, Parser)]
#[command(name = "keyway", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Log filter (`info`, `debug`, `keyway_gateway=trace`, …). Without `--log` or
    /// KEYWAY_LOG, RUST_LOG is used if set, else `info`. At `debug` and `trace` the
    /// HTTP/2 library logs each frame a client sends, which a client can multiply:
    /// `debug,h2=info` keeps Keyway's detail without it.
    #[arg(long, global = true, env = "KEYWAY_LOG")]
    log: Option<String>,

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
        /// Start over on purpose with a new, empty store when the one in the data
        /// folder is missing, empty or damaged (start-up refuses those otherwise):
        /// its files are moved into `<data_dir>/damaged-<time>/`, the keys are kept.
        /// Refused when the store is fine.
        #[arg(long)]
        init: bool,
    },
    /// Issue, list and revoke access tokens (through the admin API).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Sign in with the gateway's identity provider (SSO): through a browser, or
    /// with `--device` on another device. Keeps a Keyway session (never the
    /// provider's tokens) in ~/.config/keyway/sessions.json, mode 0600.
    Login(login::LoginArgs),
    /// Who you are signed in as: your identity, groups, and what the policies allow
    /// you.
    Whoami(login::SessionArgs),
    /// Sign out: the session ends at the gateway, with every token obtained through
    /// it, and is forgotten here.
    Logout(login::SessionArgs),
    /// Get a token for a service as your policies allow, alone on stdout (for
    /// `PGPASSWORD=$(keyway access orders-db) psql …` or `curl -H "Authorization:
    /// Bearer $(keyway access billing)"`). A broader ask than any policy gives is
    /// refused with what they give. When the policy needs approval, a request is
    /// filed: its id is printed on stdout and the exit status is 3; `--wait` waits
    /// for the approval and prints the token instead.
    Access(access::AccessArgs),
    /// Access requests: list them, and approve, reject, collect or revoke one.
    #[command(subcommand)]
    Requests(access::RequestsCommand),
    /// The replicas sharing a PostgreSQL store (`store` in keyway.toml).
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Issue client credentials: workloads exchange them for short-lived access tokens.
    #[command(subcommand)]
    Credential(credential::CredentialCommand),
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
    Secret(secret::SecretCommand),
    /// Agents: Keyway inside a private network, dialing out to the gateway so the
    /// network opens no inbound port.
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// MCP services' tools: which the gateway pinned, which changed and wait for
    /// approval, and the approval.
    #[command(subcommand)]
    Mcp(mcp::McpCommand),
    /// Check the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Copy the store while the gateway runs: a consistent snapshot (SQLite's
    /// `VACUUM INTO`) to a new file, mode 0600. Prints the copy's audit chain head
    /// (`SEQ:HASH`) on stdout: keep it apart from the copy, and after a restore
    /// `keyway audit verify --expect SEQ:HASH` shows whether events are missing.
    Backup(backup::BackupArgs),
    /// The admin credential without a running gateway (`keyway admin reset`).
    #[command(subcommand)]
    Admin(admin::AdminCommand),
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
    /// Print the admin API's OpenAPI 3.1 document: what the gateway serves at
    /// `/v1/openapi.json`, committed as `docs/openapi.json`, for generating clients.
    Openapi,
    /// Ask the gateway whether it serves (its admin `/healthz`, no token needed):
    /// prints the answer, exit status 0 only on 200. For a container's HEALTHCHECK,
    /// where there is no shell or curl, and for scripts.
    Health {
        /// The gateway's config file; its `admin_listen` is asked.
        #[arg(long, short, env = "KEYWAY_CONFIG", default_value = "keyway.toml")]
        config: std::path::PathBuf,
    },
    /// Print a shell completion script on stdout, for example
    /// `keyway completions bash > /etc/bash_completion.d/keyway`, or for zsh into a
    /// folder on `$fpath` as `_keyway`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages, keyway(1) and one per subcommand (keyway-token(1), …),
    /// into a folder (created if missing), for example
    /// `keyway man /usr/local/share/man/man1`. Names each page on stdout.
    Man {
        /// The folder.
        dir: std::path::PathBuf,
    },
}

// === impl Cli ===

impl Cli {
    /// The log filter: `--log` or KEYWAY_LOG, then RUST_LOG (as most Rust programs
    /// read it), then `info`.
    fn log_filter(&self) -> String {
        self.log
            .clone()
            .or_else(|| std::env::var("RUST_LOG").ok())
            .filter(|f| !f.trim().is_empty())
            .unwrap_or_else(|| "info".into())
    }
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
    let log = cli.log_filter();
    match cli.command {
        Command::Demo(args) => {
            serve::init_logging(&log, cli.log_format)?;
            demo::run(args).await
        }
        Command::Gateway { config, init } => {
            serve::init_logging(&log, cli.log_format)?;
            serve::gateway(&config, init).await
        }
        Command::Token(cmd) => token::run(cmd).await,
        Command::Credential(cmd) => credential::run(cmd).await,
        Command::Cluster(cmd) => cluster::run(cmd).await,
        Command::Login(args) => login::login(args).await,
        Command::Whoami(args) => login::whoami(args).await,
        Command::Logout(args) => login::logout(args).await,
        Command::Access(args) => access::access(args).await,
        Command::Requests(cmd) => access::requests(cmd).await,
        Command::Scan(args) => scan::run(args).await,
        Command::Connect(args) => connect::run(args).await,
        Command::Secret(cmd) => secret::run(cmd).await,
        Command::Agent(cmd) => agent::run(cmd, &log, cli.log_format).await,
        Command::Audit(cmd) => audit::run(cmd).await,
        Command::Mcp(cmd) => mcp::run(cmd).await,
        Command::Backup(args) => backup::run(args).await,
        Command::Admin(cmd) => admin::run(cmd).await,
        Command::Validate(args) => validate::run(args),
        Command::Schema => validate::schema(),
        Command::Openapi => manual::openapi(),
        Command::Health { config } => client::health(&config).await,
        Command::Completions { shell } => manual::completions(shell),
        Command::Man { dir } => manual::man(&dir),
        Command::Plan(args) => plan::run(args, false).await,
        Command::Apply(args) => plan::run(args, true).await,
        Command::Report { since, json, admin } => report::run(&since, json, &admin).await,
    }
}
