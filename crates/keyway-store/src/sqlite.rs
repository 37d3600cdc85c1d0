//! The embedded default store: one SQLite file in the data folder, in WAL mode.
//!
//! # Layout
//!
//! - `meta`: small values kept by name (key fingerprints, the audit anchor).
//! - `tokens`: token records, and how a row becomes one.
//! - `secrets`: upstream secrets, sealed.
//! - `agents`: agent revocations.
//! - `audit`: the audit log on its hash chain: append, checkpoint, prune, verify, read.
//! - `tests`: the store against an in-memory or temporary database.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use keyway_core::UnixMillis;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use crate::{AuditEvent, AuditQuery, Result, Sealed, Store, StoredEvent, TokenRecord};
use audit::Chain;

mod agents;
mod audit;
mod meta;
mod secrets;
mod tokens;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The chain key and the newest event's hash, once the gateway set the key.
    chain: std::sync::Arc<std::sync::Mutex<Option<Chain>>>,
}

// === impl SqliteStore ===

impl SqliteStore {
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

// === impl Store for SqliteStore ===

#[async_trait]
impl Store for SqliteStore {
    async fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        meta::get(&self.pool, key).await
    }

    async fn meta_put(&self, key: &str, value: &[u8]) -> Result<()> {
        meta::put(&self.pool, key, value).await
    }

    async fn insert_token(&self, t: &TokenRecord) -> Result<()> {
        tokens::insert(&self.pool, t).await
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        tokens::all(&self.pool).await
    }

    async fn revoke_token(&self, id: &str, at: UnixMillis) -> Result<Option<TokenRecord>> {
        tokens::revoke(&self.pool, id, at).await
    }

    async fn shorten_expiry(
        &self,
        id: &str,
        expires_at: UnixMillis,
    ) -> Result<Option<TokenRecord>> {
        tokens::shorten_expiry(&self.pool, id, expires_at).await
    }

    async fn touch_tokens(&self, used: &[(String, UnixMillis)]) -> Result<()> {
        tokens::touch(&self.pool, used).await
    }

    async fn put_secret(&self, name: &str, sealed: &Sealed, at: UnixMillis) -> Result<()> {
        secrets::put(&self.pool, name, sealed, at).await
    }

    async fn secrets(&self) -> Result<Vec<(String, Sealed)>> {
        secrets::all(&self.pool).await
    }

    async fn revoke_agent(&self, name: &str, at: UnixMillis) -> Result<()> {
        agents::revoke(&self.pool, name, at).await
    }

    async fn agent_revocations(&self) -> Result<Vec<(String, UnixMillis)>> {
        agents::revocations(&self.pool).await
    }

    async fn set_audit_key(&self, key: crate::ChainKey) -> Result<()> {
        audit::set_key(&self.pool, &self.chain, key).await
    }

    async fn append_audit(&self, events: &[AuditEvent]) -> Result<()> {
        audit::append(&self.pool, &self.chain, events).await
    }

    async fn checkpoint_audit(&self, at: UnixMillis) -> Result<Option<crate::Checkpoint>> {
        audit::checkpoint(&self.pool, &self.chain, at).await
    }

    async fn prune_audit(&self, before: UnixMillis) -> Result<Option<(i64, u64)>> {
        audit::prune(&self.pool, &self.chain, before).await
    }

    async fn verify_audit(
        &self,
        key: &crate::ChainKey,
        expect: &[(i64, [u8; 32])],
    ) -> Result<crate::Verdict> {
        audit::verify(&self.pool, key, expect).await
    }

    async fn audit_usage(&self, since: UnixMillis, limit: u32) -> Result<Vec<crate::Usage>> {
        audit::usage(&self.pool, since, limit).await
    }

    async fn audit_events(&self, q: &AuditQuery) -> Result<Vec<StoredEvent>> {
        audit::events(&self.pool, q).await
    }
}

#[cfg(test)]
mod tests;
