//! The audit log: appended in batches on a keyed hash chain, checkpointed, pruned up
//! to a checkpoint, verified in one snapshot, and read back.

use tokio::sync::Mutex;

use keyway_core::UnixMillis;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::{AuditEvent, AuditQuery, Result, StoreError, StoredEvent};

/// Events one prune deletes at most.
const PRUNE_CHUNK: i64 = 100_000;

/// Audit rows one `INSERT` carries (11 parameters each; SQLite takes 32,766).
const AUDIT_ROWS_PER_INSERT: usize = 256;

/// The chain key and head. `Debug` leaves the key out.
#[derive(Clone, Copy)]
pub(super) struct Chain {
    key: crate::ChainKey,
    head: [u8; 32],
}

// === impl Chain ===

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("key", &"***")
            .field("head", &hex::encode(self.head))
            .finish()
    }
}

/// The audit chain's key, once the gateway has set it.
async fn chain_key(state: &Mutex<Option<Chain>>) -> Option<crate::ChainKey> {
    state.lock().await.map(|c| c.key)
}

pub(super) async fn set_key(
    pool: &SqlitePool,
    state: &Mutex<Option<Chain>>,
    key: crate::ChainKey,
) -> Result<()> {
    let head: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT hash FROM audit_events WHERE hash IS NOT NULL ORDER BY seq DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    let head = head
        .and_then(|h| <[u8; 32]>::try_from(h.as_slice()).ok())
        .unwrap_or(crate::chain::GENESIS);
    *state.lock().await = Some(Chain { key, head });
    Ok(())
}

/// Whether [`append_on`] writes `events` in one statement (atomic without a
/// transaction).
pub(super) fn one_statement(events: &[AuditEvent]) -> bool {
    events.len() <= AUDIT_ROWS_PER_INSERT
}

/// Appends `events` on `conn`, inside the caller's transaction (or alone, where
/// [`one_statement`] says it may), each linked to the one
/// before from `chain`'s head. Returns the head once they are in (unchanged without a
/// key); the caller moves it only after the commit.
pub(super) async fn append_on(
    conn: &mut SqliteConnection,
    chain: Option<&Chain>,
    events: &[AuditEvent],
) -> Result<Option<Chain>> {
    let mut head = chain.map(|c| c.head);
    let linker = chain.map(|c| crate::chain::Linker::new(&c.key));
    // Many rows a statement: each statement is a round trip to SQLite's thread,
    // which under load costs more than the insert itself. What is made here (the
    // detail's text, the two hashes) is moved into the query: a borrowed value
    // would be copied once more as sqlx sends its arguments to SQLite's thread.
    for chunk in events.chunks(AUDIT_ROWS_PER_INSERT) {
        let sql = insert_sql(chunk.len());
        let mut q = sqlx::query(&sql);
        for e in chunk {
            let detail = e.detail_json();
            let (prev, hash) = match (&linker, head) {
                (Some(linker), Some(prev)) => {
                    let hash = linker.link(&prev, e, &detail);
                    head = Some(hash);
                    (Some(prev.to_vec()), Some(hash.to_vec()))
                }
                _ => (None, None),
            };
            q = q
                .bind(e.at)
                .bind(&e.kind)
                .bind(&e.decision)
                .bind(&e.reason)
                .bind(&e.principal)
                .bind(&e.service)
                .bind(&e.token_id)
                .bind(&e.source)
                .bind(detail)
                .bind(prev)
                .bind(hash);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(chain.zip(head).map(|(c, head)| Chain { key: c.key, head }))
}

/// The `INSERT` of `rows` audit rows, written out by hand: sqlx's `QueryBuilder`
/// formats each of a row's eleven placeholders through `fmt::Write` (about 1,400
/// instructions a row, a fifth of what SQLite takes to insert it).
fn insert_sql(rows: usize) -> String {
    const HEAD: &str = "INSERT INTO audit_events (at, kind, decision, reason, principal, service, token_id, source, detail, prev_hash, hash) VALUES ";
    const ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    let mut sql = String::with_capacity(HEAD.len() + rows * (ROW.len() + 2));
    sql.push_str(HEAD);
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(ROW);
    }
    sql
}

pub(super) async fn checkpoint(
    pool: &SqlitePool,
    state: &Mutex<Option<Chain>>,
    at: UnixMillis,
) -> Result<Option<crate::Checkpoint>> {
    let Some(key) = chain_key(state).await else {
        return Ok(None);
    };
    let head = sqlx::query(
        "SELECT seq, hash FROM audit_events WHERE hash IS NOT NULL ORDER BY seq DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    let Some(head) = head else { return Ok(None) };
    let seq: i64 = head.get(0);
    let hash: Vec<u8> = head.get(1);
    let hash = crate::stored_hash(&hash, || format!("audit event {seq}"))?;
    let c = crate::Checkpoint { seq, at, hash };
    let done = sqlx::query(
        "INSERT OR IGNORE INTO audit_checkpoints (seq, at, hash, mac) VALUES (?, ?, ?, ?)",
    )
    .bind(seq)
    .bind(at)
    .bind(hash.to_vec())
    .bind(c.mac(&key).to_vec())
    .execute(pool)
    .await?;
    Ok((done.rows_affected() == 1).then_some(c))
}

pub(super) async fn prune(
    pool: &SqlitePool,
    state: &Mutex<Option<Chain>>,
    before: UnixMillis,
) -> Result<Option<(i64, u64)>> {
    let Some(key) = chain_key(state).await else {
        return Ok(None);
    };
    // IMMEDIATE: the write lock from the start, so the audit writer cannot commit
    // between the choice of the anchor and the delete.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    // The newest checkpoint older than `before` within PRUNE_CHUNK events of the
    // oldest event (the next tick takes the next chunk, so a long backlog never
    // holds the write lock for long), else the oldest such checkpoint; never the
    // newest event, so the chain's head stays in the table.
    let anchor = sqlx::query(
        "WITH bounds AS (SELECT MIN(seq) AS lo, MAX(seq) AS hi FROM audit_events),
              candidates AS (
                SELECT c.seq, c.hash FROM audit_checkpoints c, bounds b
                WHERE c.at < ?1 AND c.seq >= b.lo AND c.seq < b.hi)
         SELECT seq, hash FROM candidates
         ORDER BY (seq <= (SELECT lo FROM bounds) + ?2) DESC,
                  CASE WHEN seq <= (SELECT lo FROM bounds) + ?2 THEN -seq ELSE seq END
         LIMIT 1",
    )
    .bind(before)
    .bind(PRUNE_CHUNK)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(anchor) = anchor else {
        return Ok(None);
    };
    let seq: i64 = anchor.get(0);
    let hash: Vec<u8> = anchor.get(1);
    let hash = crate::stored_hash(&hash, || format!("audit checkpoint {seq}"))?;
    let deleted = sqlx::query("DELETE FROM audit_events WHERE seq <= ?")
        .bind(seq)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query("DELETE FROM audit_checkpoints WHERE seq < ?")
        .bind(seq)
        .execute(&mut *tx)
        .await?;
    // The signed record that this checkpoint is where pruning stopped: without
    // it, a checkpoint the chain starts from is events deleted, not pruned.
    let proof = crate::Checkpoint { seq, at: 0, hash }.anchor_mac(&key);
    let mut record = seq.to_be_bytes().to_vec();
    record.extend_from_slice(&proof);
    sqlx::query("INSERT INTO meta (key, value) VALUES ('audit_anchor', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
        .bind(record)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((deleted > 0).then_some((seq, deleted)))
}

pub(super) async fn verify(
    pool: &SqlitePool,
    key: &crate::ChainKey,
    expect: &[(i64, [u8; 32])],
) -> Result<crate::Verdict> {
    // One read transaction: one snapshot, whatever the gateway writes or prunes
    // meanwhile (WAL: the writer is not held up).
    let mut tx = pool.begin().await?;
    let stored: Vec<(i64, i64, Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT seq, at, hash, mac FROM audit_checkpoints ORDER BY seq")
            .fetch_all(&mut *tx)
            .await?;
    let proof: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT value FROM meta WHERE key = 'audit_anchor'")
            .fetch_optional(&mut *tx)
            .await?;
    let mut walk = match crate::chain::Walk::from_stored(key, stored, proof, expect) {
        Ok(w) => w,
        Err(v) => return Ok(v),
    };
    let mut after = i64::MIN;
    loop {
        let rows = sqlx::query(
            "SELECT seq, at, kind, decision, reason, principal, service, token_id, source, detail, prev_hash, hash
             FROM audit_events WHERE seq > ? ORDER BY seq LIMIT 10000",
        )
        .bind(after)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(walk.finish());
        }
        for r in &rows {
            let seq: i64 = r.get(0);
            let detail: String = r.get(9);
            // The detail is hashed as stored text; the event needs no parse of it.
            let e = event_from_row(r, serde_json::Value::Null);
            let prev: Option<Vec<u8>> = r.get(10);
            let hash: Option<Vec<u8>> = r.get(11);
            if let Err(v) = walk.step(seq, &e, &detail, prev.as_deref(), hash.as_deref()) {
                return Ok(v);
            }
            after = seq;
        }
    }
}

pub(super) async fn usage(
    pool: &SqlitePool,
    since: UnixMillis,
    limit: u32,
) -> Result<Vec<crate::Usage>> {
    let rows = sqlx::query(
        "SELECT service, token_id, json_extract(detail, '$.method'), json_extract(detail, '$.path'), MAX(at) AS last
         FROM audit_events
         WHERE decision = 'allow' AND kind IN ('request', 'connection.open') AND at >= ? AND service IS NOT NULL
         GROUP BY 1, 2, 3, 4 ORDER BY last DESC LIMIT ?",
    )
    .bind(since)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| crate::Usage {
            service: r.get(0),
            token_id: r.get(1),
            method: r.get(2),
            path: r.get(3),
            last: r.get(4),
        })
        .collect())
}

pub(super) async fn events(pool: &SqlitePool, q: &AuditQuery) -> Result<Vec<StoredEvent>> {
    let limit = q.page();
    let mut sql = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "SELECT seq, at, kind, decision, reason, principal, service, token_id, source, detail
         FROM audit_events WHERE seq > ",
    );
    sql.push_bind(q.after_seq);
    for (column, value) in [
        ("principal", &q.principal),
        ("service", &q.service),
        ("decision", &q.decision),
        ("reason", &q.reason),
        ("kind", &q.kind),
    ] {
        if let Some(v) = value {
            sql.push(format!(" AND {column} = ")).push_bind(v.clone());
        }
    }
    if let Some(t) = q.since {
        sql.push(" AND at >= ").push_bind(t);
    }
    if let Some(t) = q.until {
        sql.push(" AND at < ").push_bind(t);
    }
    sql.push(" ORDER BY seq LIMIT ").push_bind(limit);
    let rows = sql.build().fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            let detail: String = r.get(9);
            let detail =
                serde_json::from_str(&detail).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok(StoredEvent {
                seq: r.get(0),
                event: event_from_row(r, detail),
            })
        })
        .collect()
}

/// An audit row (`seq, at, kind, decision, reason, principal, service, token_id,
/// source, …`) as an event, with its detail parsed by the caller.
fn event_from_row(r: &SqliteRow, detail: serde_json::Value) -> AuditEvent {
    AuditEvent {
        at: r.get(1),
        kind: r.get(2),
        decision: r.get(3),
        reason: r.get(4),
        principal: r.get(5),
        service: r.get(6),
        token_id: r.get(7),
        source: r.get(8),
        detail,
        http: None,
        statement: None,
    }
}

#[cfg(test)]
mod tests {
    /// The hand-written `INSERT` names eleven columns and has eleven placeholders a
    /// row, as [`super::append_on`] binds eleven values a row.
    #[test]
    fn the_insert_has_a_placeholder_for_each_bound_value() {
        for rows in [1, 2, 256] {
            let sql = super::insert_sql(rows);
            let columns = sql[sql.find('(').unwrap()..sql.find(')').unwrap()].split(',');
            assert_eq!(columns.count(), 11);
            assert_eq!(sql.matches('?').count(), 11 * rows, "{sql}");
            assert_eq!(sql.matches("), (").count(), rows - 1);
        }
    }
}
