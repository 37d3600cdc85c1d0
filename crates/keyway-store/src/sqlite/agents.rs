//! Agent revocations: the time before which an agent's certificates are refused.

use keyway_core::UnixMillis;
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::Result;

pub(super) async fn revoke(conn: &mut SqliteConnection, name: &str, at: UnixMillis) -> Result<()> {
    sqlx::query(
        "INSERT INTO agent_revocations (name, revoked_at) VALUES (?, ?)
         ON CONFLICT(name) DO UPDATE SET revoked_at = excluded.revoked_at",
    )
    .bind(name)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) async fn revocations(pool: &SqlitePool) -> Result<Vec<(String, UnixMillis)>> {
    let rows = sqlx::query("SELECT name, revoked_at FROM agent_revocations ORDER BY name")
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
