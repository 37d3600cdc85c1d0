//! The small rows of state on PostgreSQL: sealed secrets, agent revocations, access
//! requests, the detectors' blocks and the config applied. Each write runs in the
//! caller's transaction, beside its change row and audit events.

use keyway_core::UnixMillis;
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::Row;

use crate::{AccessRequest, AppliedConfig, Result, Sealed, StoreError};

pub(super) async fn put_secret(
    conn: &mut PgConnection,
    name: &str,
    sealed: &Sealed,
    at: UnixMillis,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO secrets (name, key_id, nonce, ciphertext, updated_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name) DO UPDATE SET key_id = excluded.key_id,
             nonce = excluded.nonce, ciphertext = excluded.ciphertext,
             updated_at = excluded.updated_at",
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

pub(super) async fn secrets(pool: &PgPool) -> Result<Vec<(String, Sealed)>> {
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

pub(super) async fn revoke_agent(
    conn: &mut PgConnection,
    name: &str,
    at: UnixMillis,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO agent_revocations (name, revoked_at) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET revoked_at = excluded.revoked_at",
    )
    .bind(name)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) async fn agent_revocations(pool: &PgPool) -> Result<Vec<(String, UnixMillis)>> {
    let rows = sqlx::query("SELECT name, revoked_at FROM agent_revocations ORDER BY name")
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A new request (`version` 0), or a change over the version before it
/// ([`StoreError::Conflict`] if that is not the stored one).
pub(super) async fn put_request(conn: &mut PgConnection, r: &AccessRequest) -> Result<()> {
    let json = crate::request_json(r)?;
    let done = if r.version == 0 {
        sqlx::query(
            "INSERT INTO access_requests (id, version, expires_at, json) VALUES ($1, 0, $2, $3)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&r.id)
        .bind(r.expires_at)
        .bind(json)
        .execute(conn)
        .await?
    } else {
        sqlx::query(
            "UPDATE access_requests SET version = $1, expires_at = $2, json = $3
             WHERE id = $4 AND version = $5",
        )
        .bind(i64::from(r.version))
        .bind(r.expires_at)
        .bind(json)
        .bind(&r.id)
        .bind(i64::from(r.version) - 1)
        .execute(conn)
        .await?
    };
    if done.rows_affected() == 0 {
        return Err(StoreError::Conflict);
    }
    Ok(())
}

pub(super) async fn request(pool: &PgPool, id: &str) -> Result<Option<AccessRequest>> {
    let json: Option<String> = sqlx::query_scalar("SELECT json FROM access_requests WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    json.map(crate::request_from_json).transpose()
}

pub(super) async fn requests(
    pool: &PgPool,
    after: UnixMillis,
    limit: u32,
) -> Result<Vec<AccessRequest>> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT json FROM access_requests WHERE expires_at > $1
         ORDER BY expires_at DESC LIMIT $2",
    )
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(crate::request_from_json).collect()
}

/// Blocks `source` until `until`, or keeps a later end.
pub(super) async fn block(conn: &mut PgConnection, source: &str, until: UnixMillis) -> Result<()> {
    sqlx::query(
        "INSERT INTO blocks (source, until) VALUES ($1, $2)
         ON CONFLICT (source) DO UPDATE SET until = GREATEST(blocks.until, excluded.until)",
    )
    .bind(source)
    .bind(until)
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) async fn blocks(pool: &PgPool, now: UnixMillis) -> Result<Vec<(String, UnixMillis)>> {
    let rows = sqlx::query("SELECT source, until FROM blocks WHERE until > $1 ORDER BY source")
        .bind(now)
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Records the config applied over the one whose hash is `previous` (locked for
/// the transaction), else [`StoreError::Conflict`].
pub(super) async fn put_config(
    conn: &mut PgConnection,
    c: &AppliedConfig,
    previous: Option<&str>,
) -> Result<()> {
    let stored: Option<String> =
        sqlx::query_scalar("SELECT sha256 FROM applied_config WHERE id = 1 FOR UPDATE")
            .fetch_optional(&mut *conn)
            .await?;
    if stored.as_deref() != previous {
        return Err(StoreError::Conflict);
    }
    sqlx::query(
        "INSERT INTO applied_config (id, sha256, text, applied_at, mac)
         VALUES (1, $1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET sha256 = excluded.sha256,
             text = excluded.text, applied_at = excluded.applied_at,
             mac = excluded.mac",
    )
    .bind(&c.sha256)
    .bind(&c.text)
    .bind(c.at)
    .bind(&c.mac)
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) async fn applied_config(pool: &PgPool) -> Result<Option<AppliedConfig>> {
    let row = sqlx::query("SELECT sha256, text, applied_at, mac FROM applied_config WHERE id = 1")
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|r| AppliedConfig {
        sha256: r.get(0),
        text: r.get(1),
        at: r.get(2),
        mac: r.get(3),
    }))
}

pub(super) async fn put_pin(conn: &mut PgConnection, p: &crate::ToolPin) -> Result<()> {
    sqlx::query(
        "INSERT INTO tool_pins (service, tool, pinned, seen, definition, first_seen, changed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (service, tool) DO UPDATE SET pinned = excluded.pinned,
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

pub(super) async fn pins(pool: &PgPool) -> Result<Vec<crate::ToolPin>> {
    let rows = sqlx::query(crate::pins::SELECT).fetch_all(pool).await?;
    Ok(rows.iter().map(crate::ToolPin::from_row).collect())
}
