//! The write-ahead log folded into the database, the database checked, and copied
//! while in use.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sqlx::SqlitePool;

use crate::{Result, StoreError};

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
