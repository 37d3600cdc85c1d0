//! The audit log on PostgreSQL: one keyed hash chain per replica, appended in the
//! transaction of each change, checkpointed, pruned up to a checkpoint, verified
//! chain by chain in one snapshot, and read back merged.

use keyway_core::UnixMillis;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::{AuditEvent, AuditQuery, Result, StoreError, StoredEvent};

/// Events one prune deletes at most.
const PRUNE_CHUNK: i64 = 100_000;
/// Audit rows one `INSERT` carries (13 parameters each; PostgreSQL takes 65,535).
const ROWS_PER_INSERT: usize = 1000;

/// One replica's chain: its key once the gateway set it, the newest chained event's
/// hash, and the newest `rseq`. `Debug` leaves the key out.
#[derive(Clone, Copy)]
pub(super) struct Chain {
    key: Option<crate::ChainKey>,
    head: [u8; 32],
    rseq: i64,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("key", &self.key.map(|_| "***"))
            .field("head", &hex::encode(self.head))
            .field("rseq", &self.rseq)
            .finish()
    }
}

// === impl Chain ===

impl Chain {
    /// The replica's chain as the store has it.
    pub(super) async fn load(pool: &PgPool, replica: &str) -> Result<Self> {
        let rseq: Option<i64> =
            sqlx::query_scalar("SELECT MAX(rseq) FROM audit_events WHERE replica = $1")
                .bind(replica)
                .fetch_one(pool)
                .await?;
        let head: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT hash FROM audit_events WHERE replica = $1 AND hash IS NOT NULL
             ORDER BY rseq DESC LIMIT 1",
        )
        .bind(replica)
        .fetch_optional(pool)
        .await?;
        Ok(Self {
            key: None,
            head: head
                .and_then(|h| <[u8; 32]>::try_from(h.as_slice()).ok())
                .unwrap_or(crate::chain::GENESIS),
            rseq: rseq.unwrap_or(0),
        })
    }

    /// A chain that writes nothing (a reader's).
    pub(super) fn empty() -> Self {
        Self {
            key: None,
            head: crate::chain::GENESIS,
            rseq: 0,
        }
    }

    /// Takes the head and `rseq` of `stored` (read back from the store), keeping the
    /// key.
    pub(super) fn reload(&mut self, stored: Chain) {
        self.head = stored.head;
        self.rseq = stored.rseq;
    }

    pub(super) fn set_key(&mut self, key: crate::ChainKey) {
        self.key = Some(key);
    }
}

/// Appends `events` for `replica` on `conn`, inside the caller's transaction, each
/// linked to the one before. Returns the chain once they are in; the caller keeps it
/// only after the commit.
pub(super) async fn append_on(
    conn: &mut PgConnection,
    replica: &str,
    chain: &Chain,
    events: &[AuditEvent],
) -> Result<Chain> {
    let mut next = *chain;
    let linker = next.key.as_ref().map(crate::chain::Linker::new);
    let mut rows = Vec::with_capacity(events.len());
    for e in events {
        let detail = e.detail_json();
        next.rseq += 1;
        let (prev, hash) = match &linker {
            Some(linker) => {
                let hash = linker.link(&next.head, e, &detail);
                let prev = next.head;
                next.head = hash;
                (Some(prev.to_vec()), Some(hash.to_vec()))
            }
            None => (None, None),
        };
        rows.push((next.rseq, e, detail, prev, hash));
    }
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "INSERT INTO audit_events (replica, rseq, at, kind, decision, reason, principal, service, token_id, source, detail, prev_hash, hash) ",
        );
        q.push_values(chunk, |mut b, (rseq, e, detail, prev, hash)| {
            b.push_bind(replica)
                .push_bind(*rseq)
                .push_bind(e.at)
                .push_bind(&e.kind)
                .push_bind(&e.decision)
                .push_bind(&e.reason)
                .push_bind(bytes(&e.principal))
                .push_bind(bytes(&e.service))
                .push_bind(bytes(&e.token_id))
                .push_bind(bytes(&e.source))
                .push_bind(detail)
                .push_bind(prev)
                .push_bind(hash);
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(next)
}

pub(super) async fn checkpoint(
    pool: &PgPool,
    replica: &str,
    chain: &Chain,
    at: UnixMillis,
) -> Result<Option<crate::Checkpoint>> {
    let Some(key) = chain.key else {
        return Ok(None);
    };
    let head = sqlx::query(
        "SELECT rseq, hash FROM audit_events WHERE replica = $1 AND hash IS NOT NULL
         ORDER BY rseq DESC LIMIT 1",
    )
    .bind(replica)
    .fetch_optional(pool)
    .await?;
    let Some(head) = head else { return Ok(None) };
    let seq: i64 = head.get(0);
    let hash: Vec<u8> = head.get(1);
    let hash = crate::stored_hash(&hash, || format!("audit event {replica}/{seq}"))?;
    let c = crate::Checkpoint { seq, at, hash };
    let done = sqlx::query(
        "INSERT INTO audit_checkpoints (replica, rseq, at, hash, mac) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(replica)
    .bind(seq)
    .bind(at)
    .bind(hash.to_vec())
    .bind(c.mac(&key).to_vec())
    .execute(pool)
    .await?;
    Ok((done.rows_affected() == 1).then_some(c))
}

fn anchor_key(replica: &str) -> String {
    format!("audit_anchor:{replica}")
}

pub(super) async fn prune(
    pool: &PgPool,
    replica: &str,
    chain: &Chain,
    before: UnixMillis,
) -> Result<Option<(i64, u64)>> {
    let Some(key) = chain.key else {
        return Ok(None);
    };
    let mut tx = pool.begin().await?;
    // As on SQLite: the newest checkpoint older than `before` within PRUNE_CHUNK
    // events of the oldest, else the oldest such; never the newest event.
    let anchor = sqlx::query(
        "WITH bounds AS (SELECT MIN(rseq) AS lo, MAX(rseq) AS hi FROM audit_events WHERE replica = $3),
              candidates AS (
                SELECT c.rseq, c.hash FROM audit_checkpoints c, bounds b
                WHERE c.replica = $3 AND c.at < $1 AND c.rseq >= b.lo AND c.rseq < b.hi)
         SELECT rseq, hash FROM candidates
         ORDER BY (rseq <= (SELECT lo FROM bounds) + $2) DESC,
                  CASE WHEN rseq <= (SELECT lo FROM bounds) + $2 THEN -rseq ELSE rseq END
         LIMIT 1",
    )
    .bind(before)
    .bind(PRUNE_CHUNK)
    .bind(replica)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(anchor) = anchor else {
        return Ok(None);
    };
    let seq: i64 = anchor.get(0);
    let hash: Vec<u8> = anchor.get(1);
    let hash = crate::stored_hash(&hash, || format!("audit checkpoint {replica}/{seq}"))?;
    let deleted = sqlx::query("DELETE FROM audit_events WHERE replica = $1 AND rseq <= $2")
        .bind(replica)
        .bind(seq)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query("DELETE FROM audit_checkpoints WHERE replica = $1 AND rseq < $2")
        .bind(replica)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
    let proof = crate::Checkpoint { seq, at: 0, hash }.anchor_mac(&key);
    let mut record = seq.to_be_bytes().to_vec();
    record.extend_from_slice(&proof);
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(anchor_key(replica))
    .bind(record)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((deleted > 0).then_some((seq, deleted)))
}

/// Walks every replica's chain in one snapshot. `expect` (pairs kept outside) is
/// this replica's. Intact when every chain is (the counts summed; the anchor and
/// head are this replica's); else the first break, naming its replica.
pub(super) async fn verify(
    pool: &PgPool,
    own: &str,
    key: &crate::ChainKey,
    expect: &[(i64, [u8; 32])],
) -> Result<crate::Verdict> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let mut replicas: Vec<String> = sqlx::query_scalar(
        "SELECT replica FROM audit_events UNION SELECT replica FROM audit_checkpoints",
    )
    .fetch_all(&mut *tx)
    .await?;
    if !own.is_empty() && !replicas.iter().any(|r| r == own) {
        replicas.push(own.to_owned());
    }
    replicas.sort();
    let several = replicas.len() > 1;
    let (mut events, mut unchained, mut checkpoints) = (0, 0, 0);
    let mut mine = None;
    for replica in &replicas {
        let expect = if replica == own { expect } else { &[] };
        match verify_one(&mut tx, replica, key, expect).await? {
            crate::Verdict::Broken { seq, kind, what } => {
                let what = if several {
                    format!("{what} (replica {replica})")
                } else {
                    what
                };
                return Ok(crate::Verdict::Broken { seq, kind, what });
            }
            crate::Verdict::Intact {
                events: e,
                unchained: u,
                checkpoints: c,
                anchor,
                head,
            } => {
                events += e;
                unchained += u;
                checkpoints += c;
                if replica == own {
                    mine = Some((anchor, head));
                }
            }
        }
    }
    let (anchor, head) = mine.unwrap_or_default();
    Ok(crate::Verdict::Intact {
        events,
        unchained,
        checkpoints,
        anchor,
        head,
    })
}

async fn verify_one(
    tx: &mut PgConnection,
    replica: &str,
    key: &crate::ChainKey,
    expect: &[(i64, [u8; 32])],
) -> Result<crate::Verdict> {
    let stored: Vec<(i64, i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT rseq, at, hash, mac FROM audit_checkpoints WHERE replica = $1 ORDER BY rseq",
    )
    .bind(replica)
    .fetch_all(&mut *tx)
    .await?;
    let proof: Option<Vec<u8>> = sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
        .bind(anchor_key(replica))
        .fetch_optional(&mut *tx)
        .await?;
    let mut walk = match crate::chain::Walk::from_stored(key, stored, proof, expect) {
        Ok(w) => w,
        Err(v) => return Ok(v),
    };
    let mut after = i64::MIN;
    loop {
        let rows = sqlx::query(
            "SELECT rseq, at, kind, decision, reason, principal, service, token_id, source, detail, prev_hash, hash
             FROM audit_events WHERE replica = $1 AND rseq > $2 ORDER BY rseq LIMIT 10000",
        )
        .bind(replica)
        .bind(after)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(walk.finish());
        }
        for r in &rows {
            let seq: i64 = r.get(0);
            let detail: String = r.get(9);
            let e = event_from_row(r, serde_json::Value::Null)?;
            let prev: Option<Vec<u8>> = r.get(10);
            let hash: Option<Vec<u8>> = r.get(11);
            // Every event on a shared store is chained (the key is set before the
            // first write): a row without a hash was put there by hand.
            if prev.is_none() || hash.is_none() {
                return Ok(crate::Verdict::Broken {
                    seq,
                    kind: e.kind,
                    what: "altered".into(),
                });
            }
            if let Err(v) = walk.step(seq, &e, &detail, prev.as_deref(), hash.as_deref()) {
                return Ok(v);
            }
            after = seq;
        }
    }
}

pub(super) async fn usage(
    pool: &PgPool,
    since: UnixMillis,
    limit: u32,
) -> Result<Vec<crate::Usage>> {
    let rows = sqlx::query(
        "SELECT service, token_id, detail::jsonb ->> 'method', detail::jsonb ->> 'path', MAX(at) AS last
         FROM audit_events
         WHERE decision = 'allow' AND kind IN ('request', 'connection.open') AND at >= $1
           AND service IS NOT NULL
         GROUP BY 1, 2, 3, 4 ORDER BY last DESC LIMIT $2",
    )
    .bind(since)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(crate::Usage {
                service: text(r.get(0))?.unwrap_or_default(),
                token_id: text(r.get(1))?,
                method: r.get(2),
                path: r.get(3),
                last: r.get(4),
            })
        })
        .collect()
}

pub(super) async fn events(pool: &PgPool, q: &AuditQuery) -> Result<Vec<StoredEvent>> {
    let limit = q.page();
    let mut sql = sqlx::QueryBuilder::<sqlx::Postgres>::new(
        "SELECT seq, at, kind, decision, reason, principal, service, token_id, source, detail
         FROM audit_events WHERE seq > ",
    );
    sql.push_bind(q.after_seq);
    for (column, value) in [("principal", &q.principal), ("service", &q.service)] {
        if let Some(v) = value {
            sql.push(format!(" AND {column} = "))
                .push_bind(v.as_bytes().to_vec());
        }
    }
    for (column, value) in [
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
    sql.push(" ORDER BY seq LIMIT ").push_bind(i64::from(limit));
    let rows = sql.build().fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            let detail: String = r.get(9);
            let detail =
                serde_json::from_str(&detail).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok(StoredEvent {
                seq: r.get(0),
                event: event_from_row(r, detail)?,
            })
        })
        .collect()
}

fn event_from_row(r: &PgRow, detail: serde_json::Value) -> Result<AuditEvent> {
    Ok(AuditEvent {
        at: r.get(1),
        kind: r.get(2),
        decision: r.get(3),
        reason: r.get(4),
        principal: text(r.get(5))?,
        service: text(r.get(6))?,
        token_id: text(r.get(7))?,
        source: text(r.get(8))?,
        detail,
        http: None,
        statement: None,
    })
}

/// A text field as stored (bytes, so that a NUL fits).
fn bytes(v: &Option<String>) -> Option<&[u8]> {
    v.as_deref().map(str::as_bytes)
}

/// A text field back from its bytes.
fn text(v: Option<Vec<u8>>) -> Result<Option<String>> {
    v.map(String::from_utf8)
        .transpose()
        .map_err(|_| StoreError::Corrupt("an audit event's text is not UTF-8".into()))
}
