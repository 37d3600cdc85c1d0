//! The embedded default store: one SQLite file in the data folder, in WAL mode.
//!
//! # Layout
//!
//! - `meta`: small values kept by name (key fingerprints, the audit anchor).
//! - `tokens`: token records, and how a row becomes one.
//! - `secrets`: upstream secrets, sealed.
//! - `agents`: agent revocations.
//! - `audit`: the audit log on its hash chain: append, checkpoint, prune, verify, read.
//! - [`files`]: the files on disk read before SQLite opens them (a missing, empty or
//!   foreign database file, a damaged log), which SQLite would take for a new store.
//! - `log`: the write-ahead log kept small while running and folded in at close; an
//!   online copy of the database.
//! - `tests`: the store against an in-memory or temporary database.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use keyway_core::UnixMillis;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Sqlite, SqliteConnection, SqlitePool};

use crate::write::{Change, Events, Written};
use crate::{
    AuditEvent, AuditQuery, Result, RevokedToken, Sealed, Spend, Store, StoreError, StoredEvent,
    TokenRecord, TokenRevocations,
};
use audit::Chain;

mod agents;
mod audit;
pub mod files;
mod log;
mod meta;
mod requests;
mod secrets;
mod tokens;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The chain key and the newest event's hash, once the gateway set the key. Held
    /// across each write, so that writes commit in the order they chain.
    chain: std::sync::Arc<tokio::sync::Mutex<Option<Chain>>>,
    /// The connection changes and audit batches are written on, kept from one write
    /// to the next (taken under the chain's lock). SQLite empties a connection's page
    /// cache when another connection wrote since its last transaction: writes that
    /// took turns on the pool's connections read the tables' pages back every time.
    writer: std::sync::Arc<tokio::sync::Mutex<Option<PoolConnection<Sqlite>>>>,
    /// Set as the store closes: a write that finishes after it gives its connection
    /// back instead of keeping it, so that the pool's close does not wait for it.
    closing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The database's log, for a store on disk.
    log: Option<std::sync::Arc<log::Log>>,
}

/// Each connection's page cache at most, in KiB.
const CACHE_KIB: i64 = 32 * 1024;

/// What SQLite's busy handler waits for a lock, for the store's work.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

// === impl SqliteStore ===

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, checks it (`PRAGMA
    /// quick_check`) and brings its schema up to date. A database SQLite cannot read
    /// is [`StoreError::Damaged`]. A caller that must not take a missing or damaged
    /// file for a new store looks with [`files::inspect`] first, or calls
    /// [`SqliteStore::open_existing`].
    /// Every commit is on disk before it returns (`synchronous = FULL`), so a power
    /// cut loses nothing that was acknowledged.
    pub async fn open(path: &Path) -> Result<Self> {
        Self::open_file(path, true, true).await
    }

    /// [`SqliteStore::open`]; with `durable` false, commits reach the disk at the
    /// next checkpoint (`synchronous = NORMAL`): a killed process loses nothing, a
    /// power cut may lose the last commits.
    pub async fn open_with(path: &Path, durable: bool) -> Result<Self> {
        Self::open_file(path, true, durable).await
    }

    /// Opens the store at `path` only when its files hold one as they should
    /// ([`files::inspect`] finds [`files::Found::Store`]); never creates one.
    pub async fn open_existing(path: &Path) -> Result<Self> {
        let found = files::inspect(path)
            .map_err(|e| StoreError::Damaged(format!("cannot read {}: {e}", path.display())))?;
        if found != files::Found::Store {
            return Err(StoreError::Damaged(found.describe(path)));
        }
        Self::open_file(path, false, true).await
    }

    async fn open_file(path: &Path, create: bool, durable: bool) -> Result<Self> {
        let sync = if durable {
            SqliteSynchronous::Full
        } else {
            SqliteSynchronous::Normal
        };
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sync)
            .busy_timeout(BUSY_TIMEOUT)
            // A bulk change (100,000 revocations and their events) touches tens of
            // MiB of pages; with SQLite's default 2 MiB cache it spills them to the
            // log mid-transaction and reads them back. The cache grows only as used.
            // (A negative `cache_size` is in KiB, a positive one in pages.)
            .pragma("cache_size", format!("-{CACHE_KIB}"))
            // Once the log restarts, its file is cut back to this (SQLite otherwise
            // keeps it at its largest).
            .pragma("journal_size_limit", log::SIZE_LIMIT.to_string())
            .foreign_keys(true);
        let log = log::Log::new(path, &opts);
        let mut store = Self::connect(opts, true, true).await?;
        store.log = Some(std::sync::Arc::new(log));
        Ok(store)
    }

    /// An in-memory store, for tests.
    pub async fn in_memory() -> Result<Self> {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:")?;
        Self::connect(opts, false, true).await
    }

    /// Opens a copy of a store (a backup) to read it, without writing a byte to it
    /// or beside it; checked as [`SqliteStore::open`] checks.
    pub async fn open_copy(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .immutable(true);
        Self::connect(opts, true, false).await
    }

    async fn connect(opts: SqliteConnectOptions, check: bool, migrate: bool) -> Result<Self> {
        // One writer at a time is SQLite's way; a small pool lets reads go alongside.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            // A ping per acquire is a round trip to the connection's thread; a
            // file database does not go away underneath.
            .test_before_acquire(false)
            .connect_with(opts)
            .await
            .map_err(damaged)?;
        let ready = async {
            if check {
                // Before the migrations, which would write into a damaged file.
                log::quick_check(&pool).await?;
            }
            if migrate {
                MIGRATOR.run(&pool).await.map_err(|e| match e {
                    sqlx::migrate::MigrateError::Execute(e) => damaged(e),
                    e => StoreError::Migrate(e),
                })?;
            }
            Ok(())
        };
        if let Err(e) = ready.await {
            // Closed before the caller refuses and exits: SQLite then removes the log
            // and index files its opening made, and the folder is left as it was
            // found (a dropped pool closes its connections later, maybe never).
            pool.close().await;
            return Err(e);
        }
        Ok(Self {
            pool,
            chain: Default::default(),
            writer: Default::default(),
            closing: Default::default(),
            log: None,
        })
    }

    /// Writes a consistent copy of the database to `out`, a new file (mode 0600),
    /// while the store is in use: SQLite's `VACUUM INTO`, one read snapshot. Returns
    /// the copy's size in bytes.
    pub async fn backup_into(&self, out: &Path) -> Result<u64> {
        log::backup_into(&self.pool, out).await
    }

    /// Closes the connections without folding the log in: for a reader beside a
    /// running gateway (which folds the log itself), or of a copy.
    pub async fn disconnect(&self) {
        if let Some(l) = &self.log {
            l.close().await;
        }
        self.give_back_writer().await;
        self.pool.close().await;
    }

    /// Folds the log into the database file and empties it, then closes: after it,
    /// `keyway.db` alone holds everything. Call after the last write.
    pub async fn close(&self) -> Result<()> {
        // Back to the pool first: the fold needs no other connection in use, and the
        // pool's close waits for every connection to come back.
        self.give_back_writer().await;
        let folded = log::fold(&self.pool).await;
        if let Some(l) = &self.log {
            l.close().await;
        }
        let closing = self.pool.close();
        if tokio::time::timeout(BUSY_TIMEOUT, closing).await.is_err() {
            tracing::warn!("a store connection was still in use at close");
        }
        folded.map(|_| ())
    }

    /// Keeps the write connection for the next write, unless the store is closing.
    fn keep(&self, writer: &mut Option<PoolConnection<Sqlite>>, conn: PoolConnection<Sqlite>) {
        if !self.closing.load(std::sync::atomic::Ordering::SeqCst) {
            *writer = Some(conn);
        }
    }

    /// Gives the kept write connection back to the pool, for good: the flag is set
    /// before the lock is taken, and a write checks it under the lock.
    async fn give_back_writer(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.writer.lock().await.take();
    }

    /// Writes a change and its events in one transaction, chained on from the head:
    /// both are in, or neither. Returns the token records the change touched, and
    /// the events it made ([`Events::PerRevoked`]; none for [`Events::These`], which
    /// the caller holds).
    async fn write(&self, change: Change<'_>, events: Events<'_>) -> Result<Written> {
        let mut chain = self.chain.lock().await;
        let mut writer = self.writer.lock().await;
        let mut conn = match writer.take() {
            Some(conn) => conn,
            None => self.pool.acquire().await?,
        };
        match write_on(&mut conn, chain.as_ref(), change, events).await {
            Ok((written, head)) => {
                if head.is_some() {
                    *chain = head;
                }
                self.keep(&mut writer, conn);
                Ok(written)
            }
            // Refused, not failed: the transaction is rolled back as it is dropped.
            Err(e @ (StoreError::Spent | StoreError::Conflict)) => {
                self.keep(&mut writer, conn);
                Err(e)
            }
            Err(e) => {
                // A failed write (a full disk, an I/O error) can leave a connection
                // inside a transaction it cannot end, holding the write lock: close
                // it (SQLite rolls back) and let the pool open a fresh one.
                let _ = conn.detach().close().await;
                Err(e)
            }
        }
    }
}

async fn write_on(
    conn: &mut SqliteConnection,
    chain: Option<&Chain>,
    change: Change<'_>,
    events: Events<'_>,
) -> Result<(Written, Option<Chain>)> {
    // Events alone that one statement holds (the audit writer's every batch under
    // load) need no transaction of their own: a statement is atomic, and it is one
    // round trip to SQLite's thread where BEGIN, INSERT and COMMIT are three.
    if let (Change::Events, Events::These(events)) = (&change, &events) {
        if audit::one_statement(events) {
            let head = audit::append_on(conn, chain, events).await?;
            return Ok((Written::default(), head));
        }
    }
    // IMMEDIATE: the write lock from the start. A change that reads before it writes
    // (a revocation finds its tokens first) would otherwise fail at once, busy, when
    // another writer (last-use times, checkpoints) commits in between.
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let mut w = Written::default();
    match change {
        Change::Events => {}
        Change::InsertToken(t, spend) => {
            if let Some(s) = spend {
                tokens::spend(&mut tx, s).await?;
            }
            tokens::insert(&mut tx, t).await?
        }
        Change::RevokeTokens(ids, at) => w.revoked = tokens::revoke(&mut tx, ids, at).await?,
        Change::ShortenExpiry(id, at) => w.token = tokens::shorten_expiry(&mut tx, id, at).await?,
        Change::PutSecret(name, sealed, at) => secrets::put(&mut tx, name, sealed, at).await?,
        Change::RevokeAgent(name, at) => agents::revoke(&mut tx, name, at).await?,
        Change::PutRequest(r) => requests::put(&mut tx, r).await?,
        Change::PutConfig(c, previous) => meta::put_config(&mut tx, c, previous).await?,
        Change::PutBlock(source, until) => agents::block(&mut tx, source, until).await?,
        Change::PutToolPin(pin) => agents::put_pin(&mut tx, pin).await?,
        // No other replica reads this store: nothing to tell.
        Change::EndSession(_) => {}
    }
    let written = w.events(events);
    let head = audit::append_on(&mut tx, chain, written).await?;
    tx.commit().await?;
    Ok((w, head))
}

/// An error SQLite gives for a file it cannot read as a database, as
/// [`StoreError::Damaged`]; any other as it is.
fn damaged(e: sqlx::Error) -> StoreError {
    // SQLITE_CORRUPT (11) and SQLITE_NOTADB (26), with their extended codes.
    let code = e
        .as_database_error()
        .and_then(|d| d.code())
        .and_then(|c| c.parse::<i32>().ok());
    match code {
        Some(c) if c & 0xff == 11 || c & 0xff == 26 => StoreError::Damaged(format!(
            "SQLite cannot read it: {}",
            e.as_database_error()
                .map_or(String::new(), |d| d.message().to_owned())
        )),
        _ => StoreError::Db(e),
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
        secrets::all(&self.pool).await
    }

    async fn revoke_agent(&self, name: &str, at: UnixMillis, events: &[AuditEvent]) -> Result<()> {
        self.write(Change::RevokeAgent(name, at), Events::These(events))
            .await
            .map(drop)
    }

    async fn agent_revocations(&self) -> Result<Vec<(String, UnixMillis)>> {
        agents::revocations(&self.pool).await
    }

    async fn put_config(
        &self,
        config: &crate::AppliedConfig,
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
        agents::blocks(&self.pool, now).await
    }

    async fn put_tool_pin(&self, pin: &crate::ToolPin, events: &[AuditEvent]) -> Result<()> {
        self.write(Change::PutToolPin(pin), Events::These(events))
            .await
            .map(drop)
    }

    async fn tool_pins(&self) -> Result<Vec<crate::ToolPin>> {
        agents::pins(&self.pool).await
    }

    async fn end_session(&self, key: &str, events: &[AuditEvent]) -> Result<()> {
        self.write(Change::EndSession(key), Events::These(events))
            .await
            .map(drop)
    }

    async fn applied_config(&self) -> Result<Option<crate::AppliedConfig>> {
        meta::applied_config(&self.pool).await
    }

    async fn put_request(&self, r: &crate::AccessRequest, events: &[AuditEvent]) -> Result<()> {
        self.write(Change::PutRequest(r), Events::These(events))
            .await
            .map(drop)
    }

    async fn request(&self, id: &str) -> Result<Option<crate::AccessRequest>> {
        requests::get(&self.pool, id).await
    }

    async fn requests(&self, after: UnixMillis, limit: u32) -> Result<Vec<crate::AccessRequest>> {
        requests::list(&self.pool, after, limit).await
    }

    async fn set_audit_key(&self, key: crate::ChainKey) -> Result<()> {
        audit::set_key(&self.pool, &self.chain, key).await
    }

    async fn append_audit(&self, events: &[AuditEvent]) -> Result<()> {
        self.write(Change::Events, Events::These(events))
            .await
            .map(drop)
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

    fn log_bytes(&self) -> Option<u64> {
        self.log.as_ref().map(|l| l.bytes())
    }

    async fn bound_log(&self, limit: u64) -> Result<bool> {
        match &self.log {
            Some(l) => l.bound(limit).await,
            None => Ok(false),
        }
    }

    async fn close(&self) -> Result<()> {
        SqliteStore::close(self).await
    }
}

#[cfg(test)]
mod tests;
