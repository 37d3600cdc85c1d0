//! The write-ahead log, kept small, and the database copied while in use.
//!
//! SQLite folds the log into the database by itself (a passive checkpoint after a
//! commit once the log passes 1,000 pages), but it can start the log over from its
//! beginning only at a moment when every frame is folded in and no connection reads
//! from the log. Under a steady stream of commits from several connections that moment
//! may not come for the length of a burst (measured: the log grew by some 60 MB a
//! second in such stretches), and the file keeps its largest size afterwards.
//! [`Log::bound`] forces it once the file passes a limit: a `TRUNCATE` checkpoint,
//! which waits briefly for the connections in its way and cuts the file to nothing.
//! It is tried again and again for a moment, because once the log is past 1,000 pages
//! every commit runs SQLite's own checkpoint, which holds the checkpoint lock: a
//! single try then fails at once, nine times in ten.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::SqlitePool;

use crate::{Result, StoreError};

/// What SQLite cuts the log file back to when it starts the log over
/// (`journal_size_limit`; it otherwise keeps the file at its largest): 4 MiB, about
/// what its own checkpoints (every 1,000 pages) let the log reach under steady load.
pub(super) const SIZE_LIMIT: u64 = 4 * 1024 * 1024;

/// How long one forced fold waits for the writer and readers in its way (SQLite's busy
/// timeout): it holds new writers back while it waits for the readers.
const FOLD_PATIENCE: Duration = Duration::from_millis(100);
/// How long [`Log::bound`] keeps trying for the checkpoint lock, and the pause between
/// tries.
const FOLD_TRYING: Duration = Duration::from_millis(250);
const FOLD_RETRY: Duration = Duration::from_millis(2);

/// A store's log on disk.
#[derive(Debug)]
pub(super) struct Log {
    wal: PathBuf,
    /// A connection of its own for the forced folds, with a short busy timeout, so
    /// that the store's connections keep theirs.
    upkeep: SqlitePool,
}

// === impl Log ===

impl Log {
    pub(super) fn new(db: &Path, opts: &SqliteConnectOptions) -> Self {
        let upkeep = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .connect_lazy_with(opts.clone().busy_timeout(FOLD_PATIENCE));
        Self {
            wal: super::files::wal_path(db),
            upkeep,
        }
    }

    /// The log file's size now (0 when there is none).
    pub(super) fn bytes(&self) -> u64 {
        std::fs::metadata(&self.wal).map_or(0, |m| m.len())
    }

    /// Folds the log in and empties it when it is larger than `limit`; whether it did.
    pub(super) async fn bound(&self, limit: u64) -> Result<bool> {
        if self.bytes() <= limit {
            return Ok(false);
        }
        let started = tokio::time::Instant::now();
        loop {
            if fold(&self.upkeep).await? {
                return Ok(true);
            }
            if started.elapsed() >= FOLD_TRYING {
                return Ok(false);
            }
            tokio::time::sleep(FOLD_RETRY).await;
        }
    }

    pub(super) async fn close(&self) {
        self.upkeep.close().await;
    }
}

/// `PRAGMA wal_checkpoint(TRUNCATE)`: every frame into the database, then the log
/// cut to nothing. `false` when a connection in the way outlasted the busy timeout.
pub(super) async fn fold(pool: &SqlitePool) -> Result<bool> {
    let (busy, frames, folded): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(pool)
        .await?;
    if busy != 0 {
        tracing::trace!(
            frames,
            folded,
            "the write-ahead log could not be emptied yet: a connection is in the way"
        );
    }
    Ok(busy == 0)
}

/// `PRAGMA quick_check`: SQLite's check of every page's structure (without matching
/// indexes to their tables), before anything is written.
pub(super) async fn quick_check(pool: &SqlitePool) -> Result<()> {
    let found: Vec<String> = sqlx::query_scalar("PRAGMA quick_check(5)")
        .fetch_all(pool)
        .await
        .map_err(super::damaged)?;
    if found.len() == 1 && found[0] == "ok" {
        return Ok(());
    }
    let found: Vec<&str> = found
        .iter()
        .flat_map(|f| f.lines())
        .filter(|l| !l.trim().is_empty())
        .take(5)
        .collect();
    Err(StoreError::Damaged(format!(
        "SQLite's integrity check (PRAGMA quick_check) found: {}",
        found.join("; ")
    )))
}

/// `VACUUM INTO` a new file at `out` (mode 0600): a consistent copy from one read
/// snapshot, taken while writers go on. Returns its size.
pub(super) async fn backup_into(pool: &SqlitePool, out: &Path) -> Result<u64> {
    let file_err = |source| StoreError::File {
        path: out.display().to_string(),
        source,
    };
    let name = out.to_str().ok_or_else(|| {
        file_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path must be UTF-8",
        ))
    })?;
    // Created here, empty, so that the copy is the owner's alone from its first byte
    // (it holds token hashes and sealed secrets); SQLite writes into an empty file.
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(file_err)?;
    let copied = sqlx::query("VACUUM INTO ?").bind(name).execute(pool).await;
    let synced = copied.map_err(StoreError::from).and_then(|_| {
        file.sync_all().map_err(file_err)?;
        file.metadata().map_err(file_err)
    });
    match synced {
        Ok(m) => Ok(m.len()),
        Err(e) => {
            let _ = std::fs::remove_file(out);
            Err(e)
        }
    }
}
