//! Access requests: a person's ask that waits for approvers, written whole, each
//! change over the version it read.

use keyway_core::UnixMillis;
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::{AccessRequest, Result, StoreError};

pub(super) async fn put(conn: &mut SqliteConnection, r: &AccessRequest) -> Result<()> {
    let json = crate::request_json(r)?;
    let done = if r.version == 0 {
        sqlx::query(
            "INSERT INTO access_requests (id, version, expires_at, json) VALUES (?, 0, ?, ?)
             ON CONFLICT(id) DO NOTHING",
        )
        .bind(&r.id)
        .bind(r.expires_at)
        .bind(json)
        .execute(conn)
        .await?
    } else {
        sqlx::query(
            "UPDATE access_requests SET version = ?, expires_at = ?, json = ?
             WHERE id = ? AND version = ?",
        )
        .bind(r.version)
        .bind(r.expires_at)
        .bind(json)
        .bind(&r.id)
        .bind(r.version - 1)
        .execute(conn)
        .await?
    };
    if done.rows_affected() == 0 {
        return Err(StoreError::Conflict);
    }
    Ok(())
}

pub(super) async fn get(pool: &SqlitePool, id: &str) -> Result<Option<AccessRequest>> {
    let row = sqlx::query("SELECT json FROM access_requests WHERE id = ?")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.map(|r| crate::request_from_json(r.get(0))).transpose()
}

pub(super) async fn list(
    pool: &SqlitePool,
    after: UnixMillis,
    limit: u32,
) -> Result<Vec<AccessRequest>> {
    let rows = sqlx::query(
        "SELECT json FROM access_requests WHERE expires_at > ?
         ORDER BY expires_at DESC LIMIT ?",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| crate::request_from_json(r.get(0)))
        .collect()
}
