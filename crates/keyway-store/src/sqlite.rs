//! The embedded default store: one SQLite file in the data folder, in WAL mode.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use keyway_core::{Grant, TokenHash, TokenKind, UnixMillis};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

/// Events one prune deletes at most.
const PRUNE_CHUNK: i64 = 100_000;

use crate::{AuditEvent, AuditQuery, Result, Sealed, Store, StoreError, StoredEvent, TokenRecord};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The chain key and the newest event's hash, once the gateway set the key.
    chain: std::sync::Arc<std::sync::Mutex<Option<Chain>>>,
}

/// The chain key and head. `Debug` leaves the key out.
#[derive(Clone, Copy)]
struct Chain {
    key: crate::ChainKey,
    head: [u8; 32],
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("key", &"***")
            .field("head", &hex::encode(self.head))
            .finish()
    }
}

const TOKEN_COLUMNS: &str =
    "id, kind, principal, grant_json, hash, created_at, expires_at, revoked_at, \
                             last_used_at, parent_id, scope_json, cert_thumbprint";

impl SqliteStore {
    /// The audit chain's key, once the gateway has set it.
    fn chain_key(&self) -> Option<crate::ChainKey> {
        self.chain
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|c| c.key)
    }

    /// Opens (creating if needed) the database at `path` and brings its schema up to
    /// date.
    pub async fn open(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        Self::connect(opts).await
    }

    /// An in-memory store, for tests.
    pub async fn in_memory() -> Result<Self> {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:")?;
        Self::connect(opts).await
    }

    async fn connect(opts: SqliteConnectOptions) -> Result<Self> {
        // One writer at a time is SQLite's way; a small pool lets reads go alongside.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            // A ping per acquire is a round trip to the connection's thread; a
            // file database does not go away underneath.
            .test_before_acquire(false)
            .connect_with(opts)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            pool,
            chain: Default::default(),
        })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Audit rows one `INSERT` carries (11 parameters each; SQLite takes 32,766).
const AUDIT_ROWS_PER_INSERT: usize = 256;

#[async_trait]
impl Store for SqliteStore {
    async fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn meta_put(&self, key: &str, value: &[u8]) -> Result<()> {
        sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn insert_token(&self, t: &TokenRecord) -> Result<()> {
        let grant = to_json(&t.grant)?;
        let scope = to_json(&t.scope)?;
        sqlx::query(&format!(
            "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_token(&self, id: &str, at: UnixMillis) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(&format!(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ? RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(at)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn shorten_expiry(
        &self,
        id: &str,
        expires_at: UnixMillis,
    ) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(&format!(
            "UPDATE tokens SET expires_at = MIN(expires_at, ?) WHERE id = ? RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(expires_at)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn touch_tokens(&self, used: &[(String, UnixMillis)]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
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

    async fn put_secret(&self, name: &str, sealed: &Sealed, at: UnixMillis) -> Result<()> {
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn secrets(&self) -> Result<Vec<(String, Sealed)>> {
        let rows = sqlx::query("SELECT name, key_id, nonce, ciphertext FROM secrets ORDER BY name")
            .fetch_all(&self.pool)
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

    async fn revoke_agent(&self, name: &str, at: UnixMillis) -> Result<()> {
        sqlx::query(
            "INSERT INTO agent_revocations (name, revoked_at) VALUES (?, ?)
             ON CONFLICT(name) DO UPDATE SET revoked_at = excluded.revoked_at",
        )
        .bind(name)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn agent_revocations(&self) -> Result<Vec<(String, UnixMillis)>> {
        let rows = sqlx::query("SELECT name, revoked_at FROM agent_revocations ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn set_audit_key(&self, key: crate::ChainKey) -> Result<()> {
        let head: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT hash FROM audit_events WHERE hash IS NOT NULL ORDER BY seq DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        let head = head
            .and_then(|h| <[u8; 32]>::try_from(h.as_slice()).ok())
            .unwrap_or(crate::chain::GENESIS);
        *self.chain.lock().unwrap_or_else(|p| p.into_inner()) = Some(Chain { key, head });
        Ok(())
    }

    async fn append_audit(&self, events: &[AuditEvent]) -> Result<()> {
        // One writer appends, in batches; the head moves only once a batch is in.
        let chain = *self.chain.lock().unwrap_or_else(|p| p.into_inner());
        let mut head = chain.map(|c| c.head);
        let mut rows = Vec::with_capacity(events.len());
        for e in events {
            let detail = e.detail.to_string();
            let (prev, hash) = match chain {
                Some(c) => {
                    let prev = head.unwrap_or(crate::chain::GENESIS);
                    let hash = crate::chain::link(&c.key, &prev, e, &detail);
                    head = Some(hash);
                    (Some(prev.to_vec()), Some(hash.to_vec()))
                }
                None => (None, None),
            };
            rows.push((e, detail, prev, hash));
        }
        // Many rows a statement: each statement is a round trip to SQLite's thread,
        // which under load costs more than the insert itself.
        let mut tx = self.pool.begin().await?;
        for chunk in rows.chunks(AUDIT_ROWS_PER_INSERT) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO audit_events (at, kind, decision, reason, principal, service, token_id, source, detail, prev_hash, hash) ",
            );
            q.push_values(chunk, |mut b, (e, detail, prev, hash)| {
                b.push_bind(e.at)
                    .push_bind(&e.kind)
                    .push_bind(&e.decision)
                    .push_bind(&e.reason)
                    .push_bind(&e.principal)
                    .push_bind(&e.service)
                    .push_bind(&e.token_id)
                    .push_bind(&e.source)
                    .push_bind(detail)
                    .push_bind(prev)
                    .push_bind(hash);
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        if let (Some(c), Some(head)) = (chain, head) {
            *self.chain.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Chain { key: c.key, head });
        }
        Ok(())
    }

    async fn checkpoint_audit(&self, at: UnixMillis) -> Result<Option<crate::Checkpoint>> {
        let Some(key) = self.chain_key() else {
            return Ok(None);
        };
        let head = sqlx::query(
            "SELECT seq, hash FROM audit_events WHERE hash IS NOT NULL ORDER BY seq DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        let Some(head) = head else { return Ok(None) };
        let seq: i64 = head.get(0);
        let hash: Vec<u8> = head.get(1);
        let hash = stored_hash(&hash, || format!("audit event {seq}"))?;
        let c = crate::Checkpoint { seq, at, hash };
        let done = sqlx::query(
            "INSERT OR IGNORE INTO audit_checkpoints (seq, at, hash, mac) VALUES (?, ?, ?, ?)",
        )
        .bind(seq)
        .bind(at)
        .bind(hash.to_vec())
        .bind(c.mac(&key).to_vec())
        .execute(&self.pool)
        .await?;
        Ok((done.rows_affected() == 1).then_some(c))
    }

    async fn prune_audit(&self, before: UnixMillis) -> Result<Option<(i64, u64)>> {
        let Some(key) = self.chain_key() else {
            return Ok(None);
        };
        // IMMEDIATE: the write lock from the start, so the audit writer cannot commit
        // between the choice of the anchor and the delete.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
        let hash = stored_hash(&hash, || format!("audit checkpoint {seq}"))?;
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

    async fn verify_audit(
        &self,
        key: &crate::ChainKey,
        expect: &[(i64, [u8; 32])],
    ) -> Result<crate::Verdict> {
        // One read transaction: one snapshot, whatever the gateway writes or prunes
        // meanwhile (WAL: the writer is not held up).
        let mut tx = self.pool.begin().await?;
        let stored = sqlx::query("SELECT seq, at, hash, mac FROM audit_checkpoints ORDER BY seq")
            .fetch_all(&mut *tx)
            .await?;
        let proof: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'audit_anchor'")
                .fetch_optional(&mut *tx)
                .await?;
        let proof = proof.and_then(|v| {
            let (seq, mac) = v.split_at_checked(8)?;
            Some((i64::from_be_bytes(seq.try_into().ok()?), mac.to_vec()))
        });
        let mut checkpoints = Vec::with_capacity(stored.len());
        for r in &stored {
            let (seq, at): (i64, i64) = (r.get(0), r.get(1));
            let hash: Vec<u8> = r.get(2);
            let mac: Vec<u8> = r.get(3);
            // A hash of the wrong length cannot match its signature.
            let hash = <[u8; 32]>::try_from(hash.as_slice()).unwrap_or([0xff; 32]);
            checkpoints.push((crate::Checkpoint { seq, at, hash }, mac));
        }
        // Pairs kept outside are as good as signed ones: sign them here, in order.
        for &(seq, hash) in expect {
            let c = crate::Checkpoint { seq, at: 0, hash };
            checkpoints.push((c, c.mac(key).to_vec()));
        }
        checkpoints.sort_by_key(|(c, _)| c.seq);
        let mut walk = match crate::chain::Walk::new(key).with_checkpoints(checkpoints) {
            Ok(w) => w.with_anchor_proof(proof),
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

    async fn audit_usage(&self, since: UnixMillis, limit: u32) -> Result<Vec<crate::Usage>> {
        let rows = sqlx::query(
            "SELECT service, token_id, json_extract(detail, '$.method'), json_extract(detail, '$.path'), MAX(at) AS last
             FROM audit_events
             WHERE decision = 'allow' AND kind IN ('request', 'connection.open') AND at >= ? AND service IS NOT NULL
             GROUP BY 1, 2, 3, 4 ORDER BY last DESC LIMIT ?",
        )
        .bind(since)
        .bind(limit)
        .fetch_all(&self.pool)
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

    async fn audit_events(&self, q: &AuditQuery) -> Result<Vec<StoredEvent>> {
        let limit = if q.limit == 0 {
            1000
        } else {
            q.limit.min(10_000)
        };
        let mut sql = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT seq, at, kind, decision, reason, principal, service, token_id, source, detail
             FROM audit_events WHERE seq > ",
        );
        sql.push_bind(q.after_seq);
        for (column, value) in [
            ("principal", &q.principal),
            ("service", &q.service),
            ("decision", &q.decision),
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
        let rows = sql.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let detail: String = r.get(9);
                let detail = serde_json::from_str(&detail)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok(StoredEvent {
                    seq: r.get(0),
                    event: event_from_row(r, detail),
                })
            })
            .collect()
    }
}

/// A 32-byte hash as stored; `what` names its row when it is not.
fn stored_hash(bytes: &[u8], what: impl FnOnce() -> String) -> Result<[u8; 32]> {
    <[u8; 32]>::try_from(bytes)
        .map_err(|_| StoreError::Corrupt(format!("{} has a hash of the wrong length", what())))
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
    }
}

fn token_from_row(r: &SqliteRow) -> Result<TokenRecord> {
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
    })
}

fn to_json<T: serde::Serialize>(v: &Option<T>) -> Result<Option<String>> {
    v.as_ref()
        .map(|v| serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string())))
        .transpose()
}

fn from_json<T: serde::de::DeserializeOwned>(v: Option<String>, what: &str) -> Result<Option<T>> {
    v.map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use keyway_core::{IssuedToken, Pepper};
    use secrecy::{SecretBox, SecretString};

    use super::*;
    use crate::Sealer;

    #[tokio::test]
    async fn tokens_round_trip_and_revoke_keeps_the_first_time() {
        let store = SqliteStore::in_memory().await.unwrap();
        let pepper = Pepper::new(&SecretBox::new(Box::new([1; 32])));
        let t = IssuedToken::generate(TokenKind::Access);
        let rec = TokenRecord {
            id: t.id().into(),
            kind: TokenKind::Access,
            principal: "alice".into(),
            grant: Some(Grant::new("billing", &["GET".into()], &["/invoices/".into()]).unwrap()),
            hash: t.hash(&pepper),
            created_at: 10,
            expires_at: 20,
            revoked_at: None,
            last_used_at: None,
            parent_id: Some("parent".into()),
            scope: None,
            cert_thumbprint: Some("x5t".into()),
        };
        store.insert_token(&rec).await.unwrap();
        assert_eq!(store.tokens().await.unwrap(), vec![rec.clone()]);
        let r = store.revoke_token(t.id(), 15).await.unwrap().unwrap();
        assert_eq!(r.revoked_at, Some(15));
        let r = store.revoke_token(t.id(), 18).await.unwrap().unwrap();
        assert_eq!(r.revoked_at, Some(15));
        assert!(store.revoke_token("nope", 1).await.unwrap().is_none());
        store.touch_tokens(&[(t.id().into(), 17)]).await.unwrap();
        assert_eq!(store.tokens().await.unwrap()[0].last_used_at, Some(17));
        let r = store.shorten_expiry(t.id(), 30).await.unwrap().unwrap();
        assert_eq!(r.expires_at, 20, "never later");
        let r = store.shorten_expiry(t.id(), 12).await.unwrap().unwrap();
        assert_eq!(r.expires_at, 12);
    }

    #[tokio::test]
    async fn secrets_and_audit() {
        let store = SqliteStore::in_memory().await.unwrap();
        let sealer = Sealer::new(&SecretBox::new(Box::new([2; 32])));
        let sealed = sealer.seal("k", &SecretString::from("v"));
        store.put_secret("k", &sealed, 1).await.unwrap();
        store.put_secret("k", &sealed, 2).await.unwrap();
        assert_eq!(
            store.secrets().await.unwrap(),
            vec![("k".to_owned(), sealed)]
        );

        let ev = AuditEvent {
            at: 5,
            kind: "request".into(),
            decision: Some("deny".into()),
            reason: Some("no_token".into()),
            detail: serde_json::json!({"path": "/x"}),
            ..Default::default()
        };
        store.append_audit(&[ev.clone(), ev.clone()]).await.unwrap();
        let got = store
            .audit_events(&AuditQuery {
                after_seq: 1,
                limit: 10,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].seq, &got[0].event), (2, &ev));
    }

    /// Every audit event in the store, oldest first.
    async fn stored(store: &SqliteStore) -> Vec<AuditEvent> {
        let got = store
            .audit_events(&AuditQuery {
                limit: 1000,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        got.into_iter().map(|e| e.event).collect()
    }

    /// `n` request events, the i-th at time i with `{"n": i}` as its detail.
    fn requests(n: i64) -> Vec<AuditEvent> {
        (0..n)
            .map(|i| AuditEvent {
                at: i,
                kind: "request".into(),
                detail: serde_json::json!({ "n": i }),
                ..Default::default()
            })
            .collect()
    }

    /// Asserts the chain under `key` is intact with `n` events.
    async fn assert_intact(store: &SqliteStore, key: crate::ChainKey, n: u64) {
        let verdict = store.verify_audit(&key, &[]).await.unwrap();
        assert!(
            matches!(verdict, crate::Verdict::Intact { events, .. } if events == n),
            "{verdict:?}"
        );
    }

    #[tokio::test]
    async fn a_large_batch_is_stored_in_order_on_an_intact_chain() {
        let store = SqliteStore::in_memory().await.unwrap();
        let key = [7; 32];
        store.set_audit_key(key).await.unwrap();
        let events = requests(301);
        store.append_audit(&events[..1]).await.unwrap();
        store.append_audit(&events[1..]).await.unwrap();
        assert_eq!(stored(&store).await, events);
        assert_intact(&store, key, 301).await;
    }

    #[tokio::test]
    async fn awkward_text_is_stored_exactly() {
        let store = SqliteStore::in_memory().await.unwrap();
        store.set_audit_key([3; 32]).await.unwrap();
        let ev = AuditEvent {
            at: i64::MAX,
            kind: "request".into(),
            decision: None,
            reason: Some("quote \" backslash \\ tab \t".into()),
            principal: Some("nul \0 inside, é, 雪, 🦀".into()),
            service: Some("123".into()),
            token_id: Some(String::new()),
            source: Some("::1".into()),
            detail: serde_json::json!({ "path": "/a\u{0}b", "n": 1.5, "list": [null, true] }),
        };
        store.append_audit(std::slice::from_ref(&ev)).await.unwrap();
        assert_eq!(stored(&store).await, [ev]);
        assert_intact(&store, [3; 32], 1).await;
    }

    #[tokio::test]
    async fn a_failed_batch_leaves_the_chain_as_it_was_and_its_retry_fits() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("k.db")).await.unwrap();
        let key = [9; 32];
        store.set_audit_key(key).await.unwrap();
        let events = requests(300);
        store.append_audit(&events[..10]).await.unwrap();
        // The second statement of the next batch fails: the first was written in
        // the same transaction, and must go with it.
        sqlx::query(
            "CREATE TRIGGER fail BEFORE INSERT ON audit_events WHEN NEW.at = 290 \
             BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        assert!(store.append_audit(&events[10..]).await.is_err());
        assert_eq!(stored(&store).await, events[..10]);
        sqlx::query("DROP TRIGGER fail")
            .execute(&store.pool)
            .await
            .unwrap();
        // The writer retries the same events: they chain on from the last written.
        store.append_audit(&events[10..]).await.unwrap();
        assert_eq!(stored(&store).await, events);
        assert_intact(&store, key, 300).await;
    }
}
