//! Tokens, as records (the keyed hash, never the secret), and how a row becomes one.

use keyway_core::{Grant, TokenHash, TokenKind, UnixMillis};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::{from_json, to_json, Result, RevokedToken, Spend, StoreError, TokenRecord};

const TOKEN_COLUMNS: &str =
    "id, kind, principal, grant_json, hash, created_at, expires_at, revoked_at, \
                             last_used_at, parent_id, scope_json, cert_thumbprint, origin_json";

pub(super) async fn insert(conn: &mut SqliteConnection, t: &TokenRecord) -> Result<()> {
    let grant = to_json(&t.grant)?;
    let scope = to_json(&t.scope)?;
    let origin = to_json(&t.origin)?;
    sqlx::query(&format!(
        "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(&t.id)
    .bind(t.kind.as_str())
    .bind(&t.principal)
    .bind(grant)
    .bind(&t.hash.0[..])
    .bind(t.created_at)
    .bind(t.expires_at)
    .bind(t.revoked_at)
    .bind(t.last_used_at)
    .bind(&t.parent_id)
    .bind(scope)
    .bind(&t.cert_thumbprint)
    .bind(origin)
    .execute(conn)
    .await?;
    Ok(())
}

/// Spends a one-use value, forgetting those past their `until` first;
/// [`StoreError::Spent`] if it is spent and still valid.
pub(super) async fn spend(conn: &mut SqliteConnection, s: &Spend) -> Result<()> {
    sqlx::query("DELETE FROM spent WHERE until < ?")
        .bind(s.now)
        .execute(&mut *conn)
        .await?;
    let taken =
        sqlx::query("INSERT INTO spent (key, until) VALUES (?, ?) ON CONFLICT(key) DO NOTHING")
            .bind(&s.key)
            .bind(s.until)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    if taken == 0 {
        return Err(StoreError::Spent);
    }
    Ok(())
}

pub(super) async fn one(pool: &SqlitePool, id: &str) -> Result<Option<TokenRecord>> {
    let row = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(token_from_row).transpose()
}

/// Tokens a page of the start-up read holds.
const LOAD_PAGE: i64 = 10_000;

/// A token's columns, in [`TOKEN_COLUMNS`]' order, the hash in hex.
type Columns = (
    String,
    String,
    String,
    Option<String>,
    String,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// Every token, a page of [`LOAD_PAGE`] at a time, each page one row of JSON:
/// through the driver a row per token costs a few microseconds of hand-over
/// between its thread and the caller's, seconds for a million tokens.
pub(super) async fn each(
    pool: &SqlitePool,
    each: &mut (dyn FnMut(TokenRecord) + Send),
) -> Result<()> {
    each_paged(pool, LOAD_PAGE, each).await
}

pub(super) async fn each_paged(
    pool: &SqlitePool,
    page_size: i64,
    each: &mut (dyn FnMut(TokenRecord) + Send),
) -> Result<()> {
    let mut after = i64::MIN;
    loop {
        let (last, page): (Option<i64>, String) = sqlx::query_as(
            "SELECT max(rowid), json_group_array(json_array(id, kind, principal, grant_json, \
             hex(hash), created_at, expires_at, revoked_at, last_used_at, parent_id, scope_json, \
             cert_thumbprint, origin_json)) \
             FROM (SELECT rowid, * FROM tokens WHERE rowid > ? ORDER BY rowid LIMIT ?)",
        )
        .bind(after)
        .bind(page_size)
        .fetch_one(pool)
        .await?;
        let Some(last) = last else {
            return Ok(());
        };
        let rows: Vec<Columns> = serde_json::from_str(&page)
            .map_err(|e| StoreError::Corrupt(format!("token rows: {e}")))?;
        for c in rows {
            let hash = hex::decode(&c.4).map_err(|_| StoreError::Corrupt("token hash".into()))?;
            each(token(c, &hash)?);
        }
        after = last;
    }
}

pub(super) async fn all(pool: &SqlitePool) -> Result<Vec<TokenRecord>> {
    let rows = sqlx::query(&format!(
        "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, id"
    ))
    .fetch_all(pool)
    .await?;
    rows.iter().map(token_from_row).collect()
}

/// Ids one statement revokes at most (bound as one JSON array).
const REVOKE_CHUNK: usize = 10_000;

/// Marks the tokens revoked at `at`, keeping an earlier revocation. Returns the
/// tokens found, those this call revoked first.
///
/// Each chunk is read as one row (a JSON array of `[id, principal, service,
/// revoked]`) before it is updated: a row per token through the driver costs several
/// times what SQLite takes to revoke it.
pub(super) async fn revoke(
    conn: &mut SqliteConnection,
    ids: &[String],
    at: UnixMillis,
) -> Result<Vec<RevokedToken>> {
    let mut fresh = Vec::new();
    let mut before = Vec::new();
    for chunk in ids.chunks(REVOKE_CHUNK) {
        let list = serde_json::to_string(chunk).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let found: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(id, principal,
                    json_extract(grant_json, '$.service'), revoked_at IS NOT NULL))
             FROM tokens WHERE id IN (SELECT value FROM json_each(?))",
        )
        .bind(&list)
        .fetch_one(&mut *conn)
        .await?;
        let found: Vec<(String, String, Option<String>, i64)> = serde_json::from_str(&found)
            .map_err(|e| StoreError::Corrupt(format!("revoked tokens: {e}")))?;
        sqlx::query(
            "UPDATE tokens SET revoked_at = ? WHERE id IN (SELECT value FROM json_each(?))
             AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(&list)
        .execute(&mut *conn)
        .await?;
        for (id, principal, service, revoked) in found {
            let fresh_now = revoked == 0;
            let t = RevokedToken {
                id,
                principal,
                service,
                fresh: fresh_now,
            };
            if fresh_now {
                fresh.push(t);
            } else {
                before.push(t);
            }
        }
    }
    fresh.extend(before);
    Ok(fresh)
}

pub(super) async fn shorten_expiry(
    conn: &mut SqliteConnection,
    id: &str,
    expires_at: UnixMillis,
) -> Result<Option<TokenRecord>> {
    let row = sqlx::query(&format!(
        "UPDATE tokens SET expires_at = MIN(expires_at, ?) WHERE id = ? RETURNING {TOKEN_COLUMNS}"
    ))
    .bind(expires_at)
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(token_from_row).transpose()
}

pub(super) async fn touch(pool: &SqlitePool, used: &[(String, UnixMillis)]) -> Result<()> {
    let mut tx = pool.begin().await?;
    for (id, at) in used {
        sqlx::query(
            "UPDATE tokens SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?",
        )
        .bind(at)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

fn token_from_row(r: &SqliteRow) -> Result<TokenRecord> {
    let hash: Vec<u8> = r.get(4);
    let c: Columns = (
        r.get(0),
        r.get(1),
        r.get(2),
        r.get(3),
        String::new(),
        r.get(5),
        r.get(6),
        r.get(7),
        r.get(8),
        r.get(9),
        r.get(10),
        r.get(11),
        r.get(12),
    );
    token(c, &hash)
}

/// A token from its columns (`hash` apart: a blob in a row, hex in a page).
fn token(c: Columns, hash: &[u8]) -> Result<TokenRecord> {
    let kind = TokenKind::from_name(&c.1)
        .ok_or_else(|| StoreError::Corrupt(format!("token kind `{}`", c.1)))?;
    let grant: Option<Grant> = from_json(c.3, "token grant")?;
    Ok(TokenRecord {
        id: c.0,
        kind,
        principal: c.2,
        grant,
        hash: TokenHash::from_slice(hash)
            .ok_or_else(|| StoreError::Corrupt("token hash length".into()))?,
        created_at: c.5,
        expires_at: c.6,
        revoked_at: c.7,
        last_used_at: c.8,
        parent_id: c.9,
        scope: from_json(c.10, "token scope")?,
        cert_thumbprint: c.11,
        origin: from_json(c.12, "token origin")?,
    })
}
