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

/// Records the config last applied (one row), over the one whose hash is
/// `previous` (in a transaction that holds the write lock).
pub(super) async fn put_config(
    conn: &mut sqlx::SqliteConnection,
    c: &crate::AppliedConfig,
    previous: Option<&str>,
) -> Result<()> {
    let stored: Option<String> =
        sqlx::query_scalar("SELECT sha256 FROM applied_config WHERE id = 1")
            .fetch_optional(&mut *conn)
            .await?;
    if stored.as_deref() != previous {
        return Err(crate::StoreError::Conflict);
    }
    sqlx::query(
        "INSERT INTO applied_config (id, sha256, text, applied_at, mac) VALUES (1, ?, ?, ?, ?)
         ON CONFLICT(id) DO UPDATE SET sha256 = excluded.sha256, text = excluded.text,
             applied_at = excluded.applied_at, mac = excluded.mac",
    )
    .bind(&c.sha256)
    .bind(&c.text)
    .bind(c.at)
    .bind(&c.mac)
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) async fn applied_config(pool: &SqlitePool) -> Result<Option<crate::AppliedConfig>> {
    let row = sqlx::query("SELECT sha256, text, applied_at, mac FROM applied_config WHERE id = 1")
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|r| crate::AppliedConfig {
        sha256: r.get(0),
        text: r.get(1),
        at: r.get(2),
        mac: r.get(3),
    }))
}
