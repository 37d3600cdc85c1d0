//! Agent revocations (the time before which an agent's certificates are refused),
//! and the sources the detectors blocked: who may not come in.

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

pub(super) async fn block(
    conn: &mut SqliteConnection,
    source: &str,
    until: UnixMillis,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO blocks (source, until) VALUES (?, ?)
         ON CONFLICT(source) DO UPDATE SET until = MAX(until, excluded.until)",
    )
    .bind(source)
    .bind(until)
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) async fn blocks(
    pool: &SqlitePool,
    now: UnixMillis,
) -> Result<Vec<(String, UnixMillis)>> {
    let rows = sqlx::query("SELECT source, until FROM blocks WHERE until > ? ORDER BY source")
        .bind(now)
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

pub(super) async fn put_pin(conn: &mut SqliteConnection, p: &crate::ToolPin) -> Result<()> {
    sqlx::query(
        "INSERT INTO tool_pins (service, tool, pinned, seen, definition, first_seen, changed_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT(service, tool) DO UPDATE SET pinned = excluded.pinned,
           seen = excluded.seen, definition = excluded.definition,
           changed_at = excluded.changed_at",
    )
    .bind(&p.service)
    .bind(&p.tool)
    .bind(&p.pinned)
    .bind(&p.seen)
    .bind(&p.definition)
    .bind(p.first_seen)
    .bind(p.changed_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) async fn pins(pool: &SqlitePool) -> Result<Vec<crate::ToolPin>> {
    let rows = sqlx::query(crate::pins::SELECT).fetch_all(pool).await?;
    Ok(rows.iter().map(crate::ToolPin::from_row).collect())
}
