//! `keyway backup`: a consistent copy of the store, taken while the gateway runs, and
//! the head of its audit chain to keep apart from it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use keyway_store::{SqliteStore, Store, Verdict};

use crate::serve;

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The gateway's config file (for `data_dir` and `pepper_file`).
    #[arg(long, short, env = "KEYWAY_CONFIG", default_value = "keyway.toml")]
    config: PathBuf,
    /// The file to write: a new one (never over an existing file), mode 0600.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub async fn run(args: BackupArgs) -> Result<ExitCode> {
    if args.out == Path::new("-") {
        bail!("a backup is a database file, not a stream: give --out a file (written mode 0600)");
    }
    let config = serve::load_config(&args.config)?;
    let (store, key) = crate::audit::open_with_chain_key(&config).await?;
    let copied = store.backup_into(&args.out).await;
    store.disconnect().await;
    let bytes = copied.with_context(|| format!("writing {}", args.out.display()))?;
    // The head is read from the copy itself: it is the copy's, whatever the gateway
    // wrote since.
    let copy = SqliteStore::open_copy(&args.out)
        .await
        .with_context(|| format!("reading back {}", args.out.display()))?;
    let verdict = copy.verify_audit(&key, &[]).await;
    copy.disconnect().await;
    let out = args.out.display();
    match verdict? {
        Verdict::Intact { events, head, .. } => {
            eprintln!(
                "wrote a backup to {out} ({:.1} MB, mode 0600); its audit chain is intact ({events} events)",
                bytes as f64 / 1e6
            );
            if let Some((seq, hash)) = head {
                println!("{seq}:{hash}");
                eprintln!(
                    "keep its chain head apart from it (above, on stdout): after a restore, \
                     `keyway audit verify --config {} --expect {seq}:{hash}` shows whether \
                     events are missing",
                    args.config.display()
                );
            }
            eprintln!(
                "to restore: stop the gateway, remove keyway.db-wal and keyway.db-shm from \
                 the data folder, copy {out} to {}, and start it with the same pepper and \
                 master key",
                config.data_dir.join("keyway.db").display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Verdict::Broken { seq, kind, what } => {
            eprintln!(
                "wrote a backup to {out}, but the audit chain it copied is BROKEN at event \
                 {seq} ({kind}, {what}): see `keyway audit verify`"
            );
            Ok(ExitCode::from(1))
        }
    }
}
