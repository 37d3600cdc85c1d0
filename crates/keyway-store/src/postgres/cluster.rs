//! What replicas share besides the data: a replica's name (an advisory lock), the
//! log of changes the others follow (and its wake-up), and connections the server
//! bounds.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgConnection;
use sqlx::Connection;

use crate::{ChangeKind, Result, StoreError};

/// How long a change is kept in the log of changes.
const CHANGES_KEPT_MS: i64 = 24 * 3600 * 1000;

/// A connection holding the advisory lock on `replica`'s name; refused while
/// another process holds it.
pub(super) async fn take_name(
    opts: &sqlx::postgres::PgConnectOptions,
    replica: &str,
) -> Result<PgConnection> {
    let mut holder = PgConnection::connect_with(opts).await?;
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(format!("keyway replica {replica}"))
        .fetch_one(&mut holder)
        .await?;
    if !taken {
        return Err(StoreError::Damaged(format!(
            "replica `{replica}` is already running on this store; give each gateway its own `replica` name"
        )));
    }
    Ok(holder)
}

/// The connection options of `url`, with the server bounding what one connection
/// can hold: a statement, a wait for a lock, an idle transaction. A replica cut off
/// mid-transaction releases the changes lock within a minute, not at TCP's pace.
pub(super) fn bounded(url: &str) -> Result<sqlx::postgres::PgConnectOptions> {
    use std::str::FromStr;
    Ok(sqlx::postgres::PgConnectOptions::from_str(url)?.options([
        ("statement_timeout", "30s"),
        ("lock_timeout", "10s"),
        ("idle_in_transaction_session_timeout", "60s"),
    ]))
}

/// Logs what a write changed, for the other replicas, and wakes them at commit.
pub(super) async fn record_changes(
    conn: &mut PgConnection,
    replica: &str,
    changed: &[(ChangeKind, &str)],
) -> Result<()> {
    // Revisions in commit order: the lock holds until this transaction ends, so a
    // follower past revision N never sees a smaller one commit later.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('keyway changes', 0))")
        .execute(&mut *conn)
        .await?;
    let (kinds, keys): (Vec<&str>, Vec<&str>) =
        changed.iter().map(|(k, key)| (k.as_str(), *key)).unzip();
    let now = "(extract(epoch from clock_timestamp()) * 1000)::bigint";
    sqlx::query(&format!(
        "INSERT INTO changes (replica, kind, key, at)
         SELECT $1, k, key, {now} FROM UNNEST($2::text[], $3::text[]) AS c(k, key)"
    ))
    .bind(replica)
    .bind(kinds)
    .bind(keys)
    .execute(&mut *conn)
    .await?;
    // Forgotten after a day; the newest revision forgotten is kept, so that a
    // replica further behind knows it missed some.
    sqlx::query(&format!(
        "WITH gone AS (DELETE FROM changes WHERE at < {now} - $1 RETURNING rev)
         INSERT INTO meta (key, value)
         SELECT 'changes_pruned_through', int8send(MAX(rev)) FROM gone HAVING COUNT(*) > 0
         ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    ))
    .bind(CHANGES_KEPT_MS)
    .execute(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_notify('keyway_changes', '')")
        .execute(conn)
        .await?;
    Ok(())
}

/// Listens for the other replicas' changes and wakes the follower; connects again
/// after a failure (the follower's timer covers the gap).
pub(super) async fn listen(url: String, hint: Arc<tokio::sync::Notify>) {
    loop {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut l) => {
                if l.listen("keyway_changes").await.is_ok() {
                    while l.recv().await.is_ok() {
                        hint.notify_one();
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot listen for the store's changes"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
