//! The write-ahead log folded into the database, and the database checked.

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
