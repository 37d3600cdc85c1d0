//! `keyway audit`: checks of the audit log that need no running gateway.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use keyway_core::Pepper;
use keyway_store::{SqliteStore, Store, Verdict};

use crate::serve;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the audit log's hash chain and name the first event that was altered,
    /// deleted or reordered. Reads the store directly (the gateway may be running or
    /// not) and needs the pepper, which keys the chain. Exit status 1 when broken.
    Verify {
        /// The gateway's config file (for `data_dir` and `pepper_file`).
        #[arg(long, short, env = "KEYWAY_CONFIG", default_value = "keyway.toml")]
        config: PathBuf,
        /// JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: AuditCommand) -> Result<ExitCode> {
    match cmd {
        AuditCommand::Verify { config, json } => {
            let config = serve::load_config(&config)?;
            let db = config.data_dir.join("keyway.db");
            if !db.exists() {
                bail!("no store at {}; is `data_dir` right?", db.display());
            }
            let (key, _) =
                keyway_store::keys::load_or_create(&config.pepper_file, "KEYWAY_PEPPER", false)
                    .context("the pepper keys the audit chain")?;
            let pepper = Pepper::new(&key);
            let store = SqliteStore::open(&db).await?;
            let known = store.meta_get("pepper_fingerprint").await?;
            if known.is_some_and(|fp| fp[..] != pepper.fingerprint()[..]) {
                bail!("this pepper is not the one the store was created with");
            }
            let key = keyway_gateway::gateway::audit_chain_key(&pepper);
            let verdict = store.verify_audit(&key).await?;
            store.close().await;
            if json {
                println!("{}", serde_json::to_string(&verdict)?);
            }
            match verdict {
                Verdict::Intact { events, unchained } => {
                    if !json {
                        println!("audit log intact: {events} events in the chain");
                        if unchained > 0 {
                            println!("({unchained} older events, from before the chain, are not covered)");
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
