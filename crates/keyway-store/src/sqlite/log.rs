//! The database checked before it is used.

use sqlx::SqlitePool;

use crate::{Result, StoreError};

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
