//! Upstream secrets, as sealed (never their plaintext), by name.

use keyway_core::UnixMillis;
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::{Result, Sealed};

pub(super) async fn put(
    conn: &mut SqliteConnection,
    name: &str,
    sealed: &Sealed,
    at: UnixMillis,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO secrets (name, key_id, nonce, ciphertext, updated_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT(name) DO UPDATE SET key_id = excluded.key_id, nonce = excluded.nonce,
             ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
    )
    .bind(name)
    .bind(&sealed.key_id)
    .bind(&sealed.nonce)
    .bind(&sealed.ciphertext)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) async fn all(pool: &SqlitePool) -> Result<Vec<(String, Sealed)>> {
    let rows = sqlx::query("SELECT name, key_id, nonce, ciphertext FROM secrets ORDER BY name")
        .fetch_all(pool)
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let sealed = Sealed {
                key_id: r.get(1),
                nonce: r.get(2),
                ciphertext: r.get(3),
            };
            (r.get(0), sealed)
        })
        .collect())
}
