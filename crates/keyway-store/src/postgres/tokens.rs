//! Tokens on PostgreSQL: records (the keyed hash, never the secret), one-use values,
//! revocation in bulk, expiry, last use.

use keyway_core::{Grant, TokenHash, TokenKind, UnixMillis};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::{from_json, to_json, Result, RevokedToken, Spend, StoreError, TokenRecord};

const TOKEN_COLUMNS: &str = "id, kind, principal, grant_json, hash, created_at, expires_at, \
     revoked_at, last_used_at, parent_id, scope_json, cert_thumbprint, origin_json";

/// Ids one statement revokes at most (bound as one array).
const REVOKE_CHUNK: usize = 10_000;

pub(super) async fn insert(conn: &mut PgConnection, t: &TokenRecord) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO tokens ({TOKEN_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    ))
    .bind(&t.id)
    .bind(t.kind.as_str())
    .bind(&t.principal)
    .bind(to_json(&t.grant)?)
    .bind(&t.hash.0[..])
    .bind(t.created_at)
    .bind(t.expires_at)
    .bind(t.revoked_at)
    .bind(t.last_used_at)
    .bind(&t.parent_id)
    .bind(to_json(&t.scope)?)
    .bind(&t.cert_thumbprint)
    .bind(to_json(&t.origin)?)
    .execute(conn)
    .await?;
    Ok(())
}

/// Spends a one-use value, forgetting those past their `until` first;
/// [`StoreError::Spent`] if it is spent and still valid.
pub(super) async fn spend(conn: &mut PgConnection, s: &Spend) -> Result<()> {
    sqlx::query("DELETE FROM spent WHERE until < $1")
        .bind(s.now)
        .execute(&mut *conn)
        .await?;
    let taken =
        sqlx::query("INSERT INTO spent (key, until) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
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

pub(super) async fn one(pool: &PgPool, id: &str) -> Result<Option<TokenRecord>> {
    let row = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(token_from_row).transpose()
}

pub(super) async fn each(pool: &PgPool, each: &mut (dyn FnMut(TokenRecord) + Send)) -> Result<()> {
    use futures_util::TryStreamExt as _;
    let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens");
    let mut rows = sqlx::query(&sql).fetch(pool);
    while let Some(row) = rows.try_next().await? {
        each(token_from_row(&row)?);
    }
    Ok(())
}

pub(super) async fn all(pool: &PgPool) -> Result<Vec<TokenRecord>> {
    let rows = sqlx::query(&format!(
        "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, id"
    ))
    .fetch_all(pool)
    .await?;
    rows.iter().map(token_from_row).collect()
}

/// Marks the tokens revoked at `at`, keeping an earlier revocation. Returns the
/// tokens found, those this call revoked first.
pub(super) async fn revoke(
    conn: &mut PgConnection,
    ids: &[String],
    at: UnixMillis,
) -> Result<Vec<RevokedToken>> {
    let mut fresh = Vec::new();
    let mut before = Vec::new();
    for chunk in ids.chunks(REVOKE_CHUNK) {
        let now: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "UPDATE tokens SET revoked_at = $1 WHERE id = ANY($2) AND revoked_at IS NULL
             RETURNING id, principal, grant_json::jsonb ->> 'service'",
        )
        .bind(at)
        .bind(chunk)
        .fetch_all(&mut *conn)
        .await?;
        let done: std::collections::HashSet<&str> = now.iter().map(|t| t.0.as_str()).collect();
        let earlier: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT id, principal, grant_json::jsonb ->> 'service' FROM tokens
             WHERE id = ANY($1) AND revoked_at IS NOT NULL",
        )
        .bind(chunk)
        .fetch_all(&mut *conn)
        .await?;
        before.extend(
            earlier
                .into_iter()
                .filter(|t| !done.contains(t.0.as_str()))
                .map(|(id, principal, service)| RevokedToken {
                    id,
                    principal,
                    service,
                    fresh: false,
                }),
        );
        fresh.extend(
            now.into_iter()
                .map(|(id, principal, service)| RevokedToken {
                    id,
                    principal,
                    service,
                    fresh: true,
                }),
        );
    }
    fresh.extend(before);
    Ok(fresh)
}

pub(super) async fn shorten_expiry(
    conn: &mut PgConnection,
    id: &str,
    expires_at: UnixMillis,
) -> Result<Option<TokenRecord>> {
    let row = sqlx::query(&format!(
        "UPDATE tokens SET expires_at = LEAST(expires_at, $1) WHERE id = $2 RETURNING {TOKEN_COLUMNS}"
    ))
    .bind(expires_at)
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(token_from_row).transpose()
}

/// Records last uses, in one statement.
pub(super) async fn touch(pool: &PgPool, used: &[(String, UnixMillis)]) -> Result<()> {
    if used.is_empty() {
        return Ok(());
    }
    let (ids, ats): (Vec<String>, Vec<i64>) = used.iter().cloned().unzip();
    sqlx::query(
        "UPDATE tokens SET last_used_at = GREATEST(COALESCE(tokens.last_used_at, 0), u.at)
         FROM UNNEST($1::text[], $2::bigint[]) AS u(id, at) WHERE tokens.id = u.id",
    )
    .bind(ids)
    .bind(ats)
    .execute(pool)
    .await?;
    Ok(())
}

fn token_from_row(r: &PgRow) -> Result<TokenRecord> {
    let kind: String = r.get(1);
    let kind = TokenKind::from_name(&kind)
        .ok_or_else(|| StoreError::Corrupt(format!("token kind `{kind}`")))?;
    let grant: Option<Grant> = from_json(r.get(3), "token grant")?;
    let hash: Vec<u8> = r.get(4);
    Ok(TokenRecord {
        id: r.get(0),
        kind,
        principal: r.get(2),
        grant,
        hash: TokenHash::from_slice(&hash)
            .ok_or_else(|| StoreError::Corrupt("token hash length".into()))?,
        created_at: r.get(5),
        expires_at: r.get(6),
        revoked_at: r.get(7),
        last_used_at: r.get(8),
        parent_id: r.get(9),
        scope: from_json(r.get(10), "token scope")?,
        cert_thumbprint: r.get(11),
        origin: from_json(r.get(12), "token origin")?,
    })
}
