//! `keyway audit`: reading the audit log through the admin API (query, export), and
//! checking its hash chain with no running gateway (verify).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use keyway_core::Pepper;
use keyway_store::{AuditQuery, SqliteStore, Store, StoredEvent, Verdict};

use crate::client::{AdminArgs, AdminClient};
use crate::serve;

/// Filters shared by `query` and `export`.
#[derive(Debug, clap::Args)]
pub struct Filters {
    #[arg(long)]
    principal: Option<String>,
    #[arg(long)]
    service: Option<String>,
    /// `allow` or `deny`.
    #[arg(long)]
    decision: Option<String>,
    /// Event kind, like `request`, `token.revoked`, `db.statement`.
    #[arg(long)]
    kind: Option<String>,
    /// From this time (RFC 3339) or this long ago (`1h`, `7d`).
    #[arg(long)]
    since: Option<String>,
    /// Before this time (RFC 3339) or this long ago.
    #[arg(long)]
    until: Option<String>,
}

impl Filters {
    fn query(&self, after: i64, limit: u32) -> String {
        let mut q = format!("/v1/audit?after={after}&limit={limit}");
        for (k, v) in [
            ("principal", &self.principal),
            ("service", &self.service),
            ("decision", &self.decision),
            ("kind", &self.kind),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if let Some(v) = v {
                q.push_str(&format!("&{k}={}", crate::client::path_segment(v)));
            }
        }
        q
    }
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Scan the hosts behind the gateway for open TCP ports and set them against the
    /// config: open but undeclared (close it, or put it behind Keyway), declared but
    /// closed (stale config), and with `--from-outside`, declared upstreams reachable
    /// without the gateway. Exit status 1 on findings.
    Ports(crate::ports::PortsArgs),
    /// Audit events, oldest first, a page at a time (`--after` the last seq shown).
    Query {
        #[command(flatten)]
        filters: Filters,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Events per page (at most 10000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Every matching event as JSON lines on stdout, for a SIEM.
    Export {
        #[command(flatten)]
        filters: Filters,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Walk the audit log's hash chain and name the first event that was altered,
    /// deleted or reordered, and check the signed checkpoints (which catch the
    /// newest events being removed, and anchor the chain after retention pruned it).
    /// Reads the store directly (the gateway may be running or not) and needs the
    /// pepper, which keys the chain. Exit status 1 when broken.
    Verify {
        /// The gateway's config file (for `data_dir` and `pepper_file`).
        #[arg(long, short, env = "KEYWAY_CONFIG", default_value = "keyway.toml")]
        config: PathBuf,
        /// JSON instead of a sentence.
        #[arg(long)]
        json: bool,
        /// `SEQ:HASH` of an event kept outside the database (the gateway logs one
        /// with every `audit.checkpoint`, and this command prints the newest): the
        /// event must still be there with that hash. Repeatable.
        #[arg(long, value_name = "SEQ:HASH", value_parser = parse_expect)]
        expect: Vec<(i64, [u8; 32])>,
    },
}

fn parse_expect(s: &str) -> Result<(i64, [u8; 32]), String> {
    let bad = || "expected SEQ:HASH, like 21:4456f0c4…(64 hex digits)".to_owned();
    let (seq, hash) = s.split_once(':').ok_or_else(bad)?;
    let seq = seq.trim().parse::<i64>().map_err(|_| bad())?;
    let hash = hex::decode(hash.trim()).map_err(|_| bad())?;
    Ok((
        seq,
        <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| bad())?,
    ))
}

pub async fn run(cmd: AuditCommand) -> Result<ExitCode> {
    match cmd {
        AuditCommand::Ports(args) => crate::ports::run(args).await,
        AuditCommand::Query {
            filters,
            after,
            limit,
            json,
            admin,
        } => {
            let client = AdminClient::resolve(&admin)?;
            let limit = limit.clamp(1, AuditQuery::MAX_LIMIT);
            let events: Vec<StoredEvent> = client.get(&filters.query(after, limit)).await?;
            if json {
                for e in &events {
                    println!("{}", serde_json::to_string(e)?);
                }
            } else {
                print_events(&events);
            }
            if events.len() == limit as usize {
                if let Some(last) = events.last() {
                    eprintln!("more: --after {}", last.seq);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export { filters, admin } => {
            let client = AdminClient::resolve(&admin)?;
            let mut after = 0;
            let mut n = 0u64;
            loop {
                let page: Vec<StoredEvent> = client
                    .get(&filters.query(after, AuditQuery::MAX_LIMIT))
                    .await?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for e in &page {
                    println!("{}", serde_json::to_string(e)?);
                }
                n += page.len() as u64;
            }
            eprintln!("exported {n} events");
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify {
            config,
            json,
            expect,
        } => {
            let config = serve::load_config(&config)?;
            let verdict = match keyway_gateway::gateway::store_url(&config) {
                // A shared store: every replica's chain, beside the running ones.
                Some(url) => {
                    if !expect.is_empty() {
                        bail!(
                            "--expect names one chain; a shared store keeps one per replica and \
                             --expect does not say which yet"
                        );
                    }
                    let key = chain_key(&config)?;
                    let store = keyway_store::PgStore::open_reader(&url).await?;
                    check_pepper(&store, &key.1).await?;
                    let verdict = store.verify_audit(&key.0, &expect).await;
                    store.close().await?;
                    verdict?
                }
                None => {
                    let (store, key) = open_with_chain_key(&config).await?;
                    let verdict = store.verify_audit(&key, &expect).await;
                    store.disconnect().await;
                    verdict?
                }
            };
            if json {
                println!("{}", serde_json::to_string(&verdict)?);
            }
            match verdict {
                Verdict::Intact {
                    events,
                    unchained,
                    checkpoints,
                    anchor,
                    head,
                } => {
                    if !json {
                        println!(
                            "audit log intact: {events} events in the chain, {checkpoints} signed checkpoints match"
                        );
                        if let Some(a) = anchor {
                            println!("(events up to {a} were pruned by retention; the chain starts from that signed checkpoint)");
                        }
                        if unchained > 0 {
                            println!("({unchained} older events, from before the chain, are not covered)");
                        }
                        if let Some((seq, hash)) = head {
                            println!("newest event: {seq} {hash}");
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Verdict::Broken { seq, kind, what } => {
                    if !json {
                        println!(
                            "audit log BROKEN at event {seq} ({kind}): {}",
                            match what.as_str() {
                                "deleted" => "events before it were deleted",
                                "truncated" =>
                                    "a checkpoint names it, and it and the events after it are gone",
                                "reordered" => "it was moved out of its place",
                                _ => "it was altered",
                            }
                        );
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

/// The store in the config's data folder, opened beside a gateway that may be
/// running, and the key of its audit chain (from the pepper, checked against the
/// store's fingerprint of it).
pub async fn open_with_chain_key(
    config: &keyway_core::config::Config,
) -> Result<(SqliteStore, keyway_store::ChainKey)> {
    if keyway_gateway::gateway::store_url(config).is_some() {
        bail!(
            "this gateway's store is PostgreSQL (`store`, KEYWAY_STORE_URL): back it up with \
             the database's own tools (pg_dump, a managed backup)"
        );
    }
    let db = config.data_dir.join("keyway.db");
    if !db.exists() {
        bail!("no store at {}; is `data_dir` right?", db.display());
    }
    let (key, pepper) = chain_key(config)?;
    // Never `open`: a missing or damaged file would be taken for a new store (and a
    // damaged log cut short, losing the very events to verify).
    let store = SqliteStore::open_existing(&db).await?;
    if let Err(e) = check_pepper(&store, &pepper).await {
        store.disconnect().await;
        return Err(e);
    }
    Ok((store, key))
}

/// The audit chain's key, from the pepper (and the pepper's fingerprint).
fn chain_key(config: &keyway_core::config::Config) -> Result<(keyway_store::ChainKey, [u8; 32])> {
    let (key, _) = keyway_store::keys::load_or_create(&config.pepper_file, "KEYWAY_PEPPER", false)
        .context("the pepper keys the audit chain")?;
    let pepper = Pepper::new(&key);
    Ok((
        keyway_gateway::gateway::audit_chain_key(&pepper),
        pepper.fingerprint(),
    ))
}

/// Refuses a pepper that is not the one the store was made with.
async fn check_pepper(store: &dyn Store, fingerprint: &[u8; 32]) -> Result<()> {
    let known = store.meta_get("pepper_fingerprint").await?;
    if known.is_some_and(|fp| fp[..] != fingerprint[..]) {
        bail!("this pepper is not the one the store was created with");
    }
    Ok(())
}

fn print_events(events: &[StoredEvent]) {
    let rows: Vec<[String; 8]> = events
        .iter()
        .map(|s| {
            let e = &s.event;
            let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            [
                s.seq.to_string(),
                keyway_core::clock::format_ms(e.at),
                e.kind.clone(),
                dash(&e.decision),
                dash(&e.reason),
                dash(&e.principal),
                dash(&e.service),
                dash(&e.source),
            ]
        })
        .collect();
    crate::table::print_table(
        [
            "SEQ",
            "AT",
            "KIND",
            "DECISION",
            "REASON",
            "PRINCIPAL",
            "SERVICE",
            "SOURCE",
        ],
        &rows,
    );
}
