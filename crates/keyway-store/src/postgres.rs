//! The store on PostgreSQL, for several gateways (replicas) sharing one database.
//!
//! Every change is written with its audit events in one transaction, as on SQLite.
//! The audit log holds one keyed hash chain per replica (`rseq` counts within it), so
//! a replica appends without waiting on the others; verification walks each chain.
//! A replica's name is held with a session advisory lock while it runs: two
//! processes writing one chain would break it, so the second is refused.
//!
//! # Layout
//!
//! - `tokens`: token records, one-use values, revocation, expiry, last use.
//! - `audit`: the per-replica chains: append, checkpoint, prune, verify, read.
//! - `tests`: the store's suite against a fresh database on the machine's server.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keyway_core::UnixMillis;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::Connection;
use tokio::sync::Mutex;

use crate::write::{Change, Events, Written};
use crate::{
    AccessRequest, AppliedConfig, AuditEvent, AuditQuery, ChangeKind, Result, RevokedToken, Sealed,
    Spend, Store, StoreError, StoredEvent, TokenRecord, TokenRevocations,
};

mod audit;
mod cluster;
mod state;
mod tokens;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long to wait for a connection from the pool, or to open one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The PostgreSQL store, as one replica uses it.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    replica: String,
    /// This replica's chain: its key once set, its head, and its last `rseq`. Held
    /// across each write, so that writes commit in the order they chain.
    chain: Arc<Mutex<audit::Chain>>,
    /// The connection holding the replica's advisory lock, for as long as it runs.
    holder: Arc<Mutex<Option<PgConnection>>>,
    /// Woken by the other replicas' `NOTIFY keyway_changes`.
    hint: Arc<tokio::sync::Notify>,
    /// How to connect again (the name's holder).
    opts: Option<sqlx::postgres::PgConnectOptions>,
    /// The task listening for them.
    listener: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

// === impl PgStore ===

impl PgStore {
    /// Connects to the database at `url` as replica `replica`, brings its schema up
    /// to date (sqlx's migrator takes its own lock, so replicas starting together
    /// migrate once) and takes the replica's name. Refused while another process
    /// holds that name.
    pub async fn connect(url: &str, replica: &str) -> Result<Self> {
        if !keyway_core::config::valid_replica(replica) {
            return Err(StoreError::Damaged(format!(
                "`{replica}` cannot name a replica: 1 to 63 of a-z, 0-9, `-`, `_`, `.`"
            )));
        }
        let opts = cluster::bounded(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(opts.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        let holder = cluster::take_name(&opts, replica).await?;
        let chain = audit::Chain::load(&pool, replica).await?;
        let hint = Arc::new(tokio::sync::Notify::new());
        let listener = tokio::spawn(cluster::listen(url.to_owned(), hint.clone()));
        Ok(Self {
            pool,
            replica: replica.to_owned(),
            chain: Arc::new(Mutex::new(chain)),
            holder: Arc::new(Mutex::new(Some(holder))),
            hint,
            opts: Some(opts),
            listener: Arc::new(std::sync::Mutex::new(Some(listener))),
        })
    }

    /// Connects to read (`keyway audit verify` beside running replicas): no replica's
    /// name is taken and nothing is written; verification walks every replica's
    /// chain.
    pub async fn open_reader(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect(url)
            .await?;
        Ok(Self {
            pool,
            replica: String::new(),
            chain: Arc::new(Mutex::new(audit::Chain::empty())),
            holder: Arc::new(Mutex::new(None)),
            hint: Arc::new(tokio::sync::Notify::new()),
            opts: None,
            listener: Arc::new(std::sync::Mutex::new(None)),
        })
    }

    /// This replica's name.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    async fn write(&self, change: Change<'_>, events: Events<'_>) -> Result<Written> {
        let mut chain = self.chain.lock().await;
        match self.write_on(&mut chain, change, events).await {
            Ok(w) => Ok(w),
            Err(e) => {
                // The commit's outcome may be unknown (a connection lost at COMMIT):
                // the chain is read back from the store before the next write.
                if !matches!(e, StoreError::Spent | StoreError::Conflict) {
                    if let Ok(reloaded) = audit::Chain::load(&self.pool, &self.replica).await {
                        chain.reload(reloaded);
                    }
                }
                Err(e)
            }
        }
    }

    async fn write_on(
        &self,
        chain: &mut audit::Chain,
        change: Change<'_>,
        events: Events<'_>,
    ) -> Result<Written> {
        let mut tx = self.pool.begin().await?;
        let mut w = Written::default();
        match change {
            Change::Events => {}
            Change::InsertToken(t, spend) => {
                if let Some(s) = spend {
                    tokens::spend(&mut tx, s).await?;
                }
                tokens::insert(&mut tx, t).await?;
            }
            Change::RevokeTokens(ids, at) => w.revoked = tokens::revoke(&mut tx, ids, at).await?,
            Change::ShortenExpiry(id, at) => {
                w.token = tokens::shorten_expiry(&mut tx, id, at).await?
            }
            Change::PutSecret(name, sealed, at) => {
                state::put_secret(&mut tx, name, sealed, at).await?
            }
            Change::RevokeAgent(name, at) => state::revoke_agent(&mut tx, name, at).await?,
            Change::PutRequest(r) => state::put_request(&mut tx, r).await?,
            Change::PutBlock(source, until) => state::block(&mut tx, source, until).await?,
            Change::PutToolPin(pin) => state::put_pin(&mut tx, pin).await?,
            Change::PutConfig(c, previous) => state::put_config(&mut tx, c, previous).await?,
            Change::EndSession(_) => {}
        }
        let pin_key = match change {
            Change::PutToolPin(p) => p.key(),
            _ => String::new(),
        };
        let changed: Vec<(ChangeKind, &str)> = match change {
            Change::InsertToken(t, _) => vec![(ChangeKind::Token, t.id.as_str())],
            Change::RevokeTokens(..) => w
                .revoked
                .iter()
                .filter(|t| t.fresh)
                .map(|t| (ChangeKind::Token, t.id.as_str()))
                .collect(),
            Change::ShortenExpiry(id, _) => vec![(ChangeKind::Token, id)],
            Change::PutSecret(name, ..) => vec![(ChangeKind::Secret, name)],
            Change::RevokeAgent(name, _) => vec![(ChangeKind::Agent, name)],
            Change::PutConfig(c, _) => vec![(ChangeKind::Config, c.sha256.as_str())],
            Change::PutBlock(source, _) => vec![(ChangeKind::Block, source)],
            Change::PutToolPin(_) => vec![(ChangeKind::ToolPin, pin_key.as_str())],
            Change::EndSession(key) => vec![(ChangeKind::Session, key)],
            Change::Events | Change::PutRequest(_) => vec![],
        };
        if !changed.is_empty() {
            cluster::record_changes(&mut tx, &self.replica, &changed).await?;
        }
        let written = w.events(events);
        let next = audit::append_on(&mut tx, &self.replica, chain, written).await?;
        tx.commit().await?;
        *chain = next;
        Ok(w)
    }
}

// === impl Store for PgStore ===

#[async_trait]
impl Store for PgStore {
    async fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn meta_put(&self, key: &str, value: &[u8]) -> Result<()> {
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn meta_put_if_absent(&self, key: &str, value: &[u8]) -> Result<Vec<u8>> {
        // Replicas starting together on an empty database: the first one's stands.
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn insert_token(&self, t: &TokenRecord, events: &[AuditEvent]) -> Result<()> {
        self.write(Change::InsertToken(t, None), Events::These(events))
            .await
            .map(drop)
    }

    async fn insert_token_spending(
        &self,
        t: &TokenRecord,
        events: &[AuditEvent],
        spend: &Spend,
    ) -> Result<()> {
        self.write(Change::InsertToken(t, Some(spend)), Events::These(events))
            .await
            .map(drop)
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        tokens::all(&self.pool).await
    }

    async fn each_token(&self, each: &mut (dyn FnMut(TokenRecord) + Send)) -> Result<()> {
        tokens::each(&self.pool, each).await
    }

    async fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        tokens::one(&self.pool, id).await
    }

    async fn revoke_tokens(
        &self,
        ids: &[String],
        at: UnixMillis,
        event: &TokenRevocations<'_>,
    ) -> Result<(Vec<RevokedToken>, Vec<AuditEvent>)> {
        let w = self
            .write(Change::RevokeTokens(ids, at), Events::PerRevoked(event))
            .await?;
        Ok((w.revoked, w.made))
    }

    async fn shorten_expiry(
        &self,
        id: &str,
        expires_at: UnixMillis,
        events: &[AuditEvent],
    ) -> Result<Option<TokenRecord>> {
        let w = self
            .write(Change::ShortenExpiry(id, expires_at), Events::These(events))
            .await?;
        Ok(w.token)
    }

    async fn touch_tokens(&self, used: &[(String, UnixMillis)]) -> Result<()> {
        tokens::touch(&self.pool, used).await
    }

    async fn put_secret(
        &self,
        name: &str,
        sealed: &Sealed,
        at: UnixMillis,
        events: &[AuditEvent],
    ) -> Result<()> {
        self.write(Change::PutSecret(name, sealed, at), Events::These(events))
            .await
            .map(drop)
    }

    async fn secrets(&self) -> Result<Vec<(String, Sealed)>> {
        state::secrets(&self.pool).await
    }

    async fn revoke_agent(&self, name: &str, at: UnixMillis, events: &[AuditEvent]) -> Result<()> {
        self.write(Change::RevokeAgent(name, at), Events::These(events))
            .await
            .map(drop)
    }

    async fn put_request(&self, r: &AccessRequest, events: &[AuditEvent]) -> Result<()> {
        self.write(Change::PutRequest(r), Events::These(events))
            .await
            .map(drop)
    }

    async fn request(&self, id: &str) -> Result<Option<AccessRequest>> {
        state::request(&self.pool, id).await
    }

    async fn requests(&self, after: UnixMillis, limit: u32) -> Result<Vec<AccessRequest>> {
        state::requests(&self.pool, after, limit).await
    }

    async fn agent_revocations(&self) -> Result<Vec<(String, UnixMillis)>> {
        state::agent_revocations(&self.pool).await
    }

    async fn put_config(
        &self,
        config: &AppliedConfig,
        previous: Option<&str>,
        events: &[AuditEvent],
    ) -> Result<()> {
        self.write(Change::PutConfig(config, previous), Events::These(events))
            .await
            .map(drop)
    }

    async fn put_block(
        &self,
        source: &str,
        until: UnixMillis,
        events: &[AuditEvent],
    ) -> Result<()> {
        self.write(Change::PutBlock(source, until), Events::These(events))
            .await
            .map(drop)
    }

    async fn blocks(&self, now: UnixMillis) -> Result<Vec<(String, UnixMillis)>> {
        state::blocks(&self.pool, now).await
    }

    async fn put_tool_pin(&self, pin: &crate::ToolPin, events: &[AuditEvent]) -> Result<()> {
        self.write(Change::PutToolPin(pin), Events::These(events))
            .await
            .map(drop)
    }

    async fn tool_pins(&self) -> Result<Vec<crate::ToolPin>> {
        state::pins(&self.pool).await
    }

    async fn end_session(&self, key: &str, events: &[AuditEvent]) -> Result<()> {
        self.write(Change::EndSession(key), Events::These(events))
            .await
            .map(drop)
    }

    async fn applied_config(&self) -> Result<Option<AppliedConfig>> {
        state::applied_config(&self.pool).await
    }

    async fn set_audit_key(&self, key: crate::ChainKey) -> Result<()> {
        self.chain.lock().await.set_key(key);
        Ok(())
    }

    async fn append_audit(&self, events: &[AuditEvent]) -> Result<()> {
        self.write(Change::Events, Events::These(events))
            .await
            .map(drop)
    }

    async fn verify_audit(
        &self,
        key: &crate::ChainKey,
        expect: &[(i64, [u8; 32])],
    ) -> Result<crate::Verdict> {
        audit::verify(&self.pool, &self.replica, key, expect).await
    }

    async fn checkpoint_audit(&self, at: UnixMillis) -> Result<Option<crate::Checkpoint>> {
        let chain = *self.chain.lock().await;
        audit::checkpoint(&self.pool, &self.replica, &chain, at).await
    }

    async fn prune_audit(&self, before: UnixMillis) -> Result<Option<(i64, u64)>> {
        let chain = *self.chain.lock().await;
        audit::prune(&self.pool, &self.replica, &chain, before).await
    }

    async fn audit_events(&self, q: &AuditQuery) -> Result<Vec<StoredEvent>> {
        audit::events(&self.pool, q).await
    }

    async fn audit_usage(&self, since: UnixMillis, limit: u32) -> Result<Vec<crate::Usage>> {
        audit::usage(&self.pool, since, limit).await
    }

    fn shared(&self) -> bool {
        true
    }

    async fn change_head(&self) -> Result<i64> {
        let rev: Option<i64> = sqlx::query_scalar("SELECT MAX(rev) FROM changes")
            .fetch_one(&self.pool)
            .await?;
        Ok(rev.unwrap_or(0))
    }

    async fn changes_since(&self, rev: i64, limit: u32) -> Result<Vec<crate::StoreChange>> {
        let pruned: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'changes_pruned_through'")
                .fetch_optional(&self.pool)
                .await?;
        let pruned = pruned
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, i64::from_be_bytes);
        if rev < pruned {
            return Err(StoreError::Damaged(format!(
                "changes up to revision {pruned} were forgotten before this replica read them (it is at {rev}); restart it to read everything again"
            )));
        }
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT rev, replica, kind, key FROM changes WHERE rev > $1 ORDER BY rev LIMIT $2",
        )
        .bind(rev)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(rev, replica, kind, key)| {
                Some(crate::StoreChange {
                    rev,
                    kind: ChangeKind::from_name(&kind)?,
                    replica,
                    key,
                })
            })
            .collect())
    }

    async fn keep_name(&self) -> Result<()> {
        let Some(opts) = &self.opts else {
            return Ok(());
        };
        let mut holder = self.holder.lock().await;
        if let Some(c) = holder.as_mut() {
            if sqlx::query("SELECT 1").execute(&mut *c).await.is_ok() {
                return Ok(());
            }
        }
        // The lock went with its connection: take it again, and read the chain back
        // (another process may have written under the name meanwhile).
        // Held again only once the chain is read back: a read that fails lets the
        // lock go with `taken`, and the next call starts over.
        *holder = None;
        let taken = cluster::take_name(opts, &self.replica).await?;
        let reloaded = audit::Chain::load(&self.pool, &self.replica).await?;
        self.chain.lock().await.reload(reloaded);
        *holder = Some(taken);
        tracing::warn!(replica = %self.replica, "the replica's name was held again after its connection dropped");
        Ok(())
    }

    async fn heartbeat(&self, beat: &crate::Beat) -> Result<()> {
        let json = serde_json::to_string(beat).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO replicas (name, at, json) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET at = excluded.at, json = excluded.json",
        )
        .bind(&beat.replica)
        .bind(beat.at)
        .bind(json)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn replicas(&self) -> Result<Vec<crate::Beat>> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT json FROM replicas ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|j| {
                serde_json::from_str(j).map_err(|e| StoreError::Corrupt(format!("heartbeat: {e}")))
            })
            .collect()
    }

    async fn changed(&self) {
        self.hint.notified().await
    }

    async fn close(&self) -> Result<()> {
        if let Some(l) = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            l.abort();
        }
        if let Some(c) = self.holder.lock().await.take() {
            let _ = c.close().await;
        }
        self.pool.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
