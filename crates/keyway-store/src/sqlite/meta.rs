//! The `meta` table: small values the store keeps beside its records (the keys'
//! fingerprints, the audit anchor), by name.

use sqlx::{Row, SqlitePool};

use crate::Result;

pub(super) async fn get(pool: &SqlitePool, key: &str) -> Result<Option<Vec<u8>>> {
    let row = sqlx::query("SELECT value FROM meta WHERE key = ?")
        .bind(key)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|r| r.get(0)))
}

pub(super) async fn put(pool: &SqlitePool, key: &str, value: &[u8]) -> Result<()> {
    sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
        .bind(key)
        .bind(value)
        .execute(pool)
        .await?;
    Ok(())
}
