//! Keyway's store: tokens (as keyed hashes), sealed upstream secrets, and the audit
//! log, behind the [`Store`] trait so that a PostgreSQL backend can take SQLite's
//! place without touching callers.
//!
//! # Layout
//!
//! - [`sqlite`]: the embedded default, through sqlx with migrations.
//! - [`postgres`]: the shared store of several replicas, one audit chain each.
//! - [`keys`]: the pepper and the master key: files (mode 0600) or environment,
//!   always outside the database, checked against fingerprints kept in it.
//! - [`seal`]: encryption at rest of upstream credentials (XChaCha20-Poly1305).
//! - [`chain`]: the audit log's keyed hash chain, and its verification.

#![forbid(unsafe_code)]

pub mod chain;
mod event;
pub mod keys;
mod pins;
pub mod postgres;
pub mod seal;
pub mod sqlite;
#[cfg(test)]
mod suite;
mod write;

use async_trait::async_trait;
use keyway_core::grant::CredentialScope;
use keyway_core::{Grant, TokenHash, TokenKind, UnixMillis};

pub use chain::{ChainKey, Checkpoint, Verdict};
pub use event::{AuditEvent, HttpDetail, StatementCall, StatementDetail};
pub use pins::ToolPin;
pub use postgres::PgStore;
pub use seal::{Sealed, Sealer};
pub use sqlite::SqliteStore;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store holds a record this version cannot read: {0}")]
    Corrupt(String),
    /// The store's files cannot be used as they are (what was found, for the
    /// operator); nothing was written to them.
    #[error("{0}")]
    Damaged(String),
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    /// A one-use value ([`Spend`]) was used before, and is still valid: nothing was
    /// written.
    #[error("already used")]
    Spent,
    /// The record changed since it was read (another writer came first): nothing was
    /// written.
    #[error("changed meanwhile")]
    Conflict,
}

/// A one-use value spent with a write (a workload's JWT with the token it buys): kept
/// until `until`, and refused again before then, atomically with the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spend {
    /// What identifies the value (a hash, never the value itself).
    pub key: String,
    /// When it stops being valid anyway (Unix ms): kept until then.
    pub until: UnixMillis,
    /// Now, to forget those past their `until`.
    pub now: UnixMillis,
}

/// A token as the store keeps it: metadata and the keyed hash, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub kind: TokenKind,
    pub principal: String,
    /// What the token may do; `None` for kinds that call no service (admin).
    pub grant: Option<Grant>,
    pub hash: TokenHash,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
    pub revoked_at: Option<UnixMillis>,
    pub last_used_at: Option<UnixMillis>,
    /// The token this one was rotated from, or the credential it was exchanged for.
    pub parent_id: Option<String>,
    /// For client credentials: what they may be exchanged for.
    /// Boxed, as `origin` is: few tokens have one, and a million live tokens each
    /// carrying the room for it inline would take a fifth more memory.
    pub scope: Option<Box<CredentialScope>>,
    /// When bound to a client certificate: its SHA-256 thumbprint (base64url, RFC
    /// 8705 `x5t#S256`); the token is then accepted only over mTLS with it.
    pub cert_thumbprint: Option<String>,
    /// For a token obtained through a policy: which, and by whom.
    pub origin: Option<Box<Origin>>,
}

/// The policy a token was obtained through, and the identity that obtained it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    /// Empty for a person's session, which no one policy gives.
    pub policy: String,
    /// The identity provider's name in the config (`[identity.workload.NAME]` or
    /// `[identity.oidc.NAME]`).
    pub provider: String,
    /// Its issuer URL, as the identity's token carried it (`iss`).
    pub issuer: String,
    /// The subject as policies name it: `workload:<provider>:<subject>` or
    /// `user:<user>`.
    pub subject: String,
    /// For a person: how the provider's ID token was read (client id, user and groups
    /// claims); a change of those ends the sessions read the old way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_as: Option<String>,
    /// A person's groups at sign-in (policies name them as `group:<name>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The approved access request the token was minted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

/// A person's request for access that a policy makes wait for approval.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccessRequest {
    /// Public, like a token's id.
    pub id: String,
    /// Bumped by every change: a change is written only over the version it read.
    pub version: u32,
    /// The policy, and who asks (`subject` is `user:<user>`, with their groups).
    pub origin: Origin,
    /// What is asked: within the policy's grant.
    pub grant: Grant,
    /// How long the token would live, in ms.
    pub ttl_ms: u64,
    pub reason: Option<String>,
    pub created_at: UnixMillis,
    /// A pending request expires then; an approved one can be collected until then.
    pub expires_at: UnixMillis,
    pub approvals: Vec<RequestDecision>,
    pub rejected: Option<RequestDecision>,
}

/// One approver's decision on an [`AccessRequest`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestDecision {
    /// `user:<user>`.
    pub by: String,
    /// The approver entry of the policy that made them one (`group:db-owners`): an
    /// approval counts while the policy still names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    pub at: UnixMillis,
    pub reason: Option<String>,
}

/// A change another replica made to the shared store, as its log of changes has it:
/// what to read again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreChange {
    pub rev: i64,
    pub replica: String,
    pub kind: ChangeKind,
    /// The token's id, the secret's or the agent's name.
    pub key: String,
}

/// A replica's heartbeat on a shared store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Beat {
    pub replica: String,
    /// When it beat (the replica's clock, Unix ms).
    #[schema(value_type = i64)]
    pub at: UnixMillis,
    #[schema(value_type = i64)]
    pub started_at: UnixMillis,
    /// The newest change it has followed.
    pub rev: i64,
    /// SHA-256 of the config file it runs (empty when not read from a file).
    pub config_sha256: String,
    /// The agents connected to it.
    pub agents: Vec<String>,
    /// Whether it takes requests (not draining, not behind the store).
    pub serving: bool,
    pub version: String,
    /// Its live sessions, at most [`BEAT_SESSIONS`], for the other replicas'
    /// consoles.
    #[serde(default)]
    pub sessions: Vec<BeatSession>,
}

/// Live sessions a heartbeat carries at most.
pub const BEAT_SESSIONS: usize = 500;

/// A live session as a heartbeat carries it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct BeatSession {
    pub id: u64,
    pub protocol: String,
    pub service: String,
    pub principal: String,
    pub token_id: String,
    pub source: String,
    #[schema(value_type = i64)]
    pub started_at: UnixMillis,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub statement: Option<String>,
}

/// A config applied to every gateway on the store: the text as applied (it passed
/// `keyway validate`, which refuses a secret written in it), its SHA-256, and a MAC
/// of the text under a key the database does not hold (the gateway's, from its
/// pepper): whoever can write the database cannot make the replicas run a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedConfig {
    /// Hex.
    pub sha256: String,
    pub text: String,
    pub at: UnixMillis,
    pub mac: Vec<u8>,
}

/// What a [`StoreChange`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Issued, revoked, or its expiry brought forward.
    Token,
    Secret,
    /// Revoked.
    Agent,
    /// A config applied to every replica ([`Store::applied_config`]).
    Config,
    /// A source blocked by a detector ([`Store::blocks`]).
    Block,
    /// A live session to end, keyed `REPLICA:ID` ([`Store::end_session`]).
    Session,
    /// An MCP tool's pin, keyed `SERVICE/TOOL` ([`Store::tool_pins`]).
    ToolPin,
}

// === impl ChangeKind ===

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Secret => "secret",
            Self::Agent => "agent",
            Self::Config => "config",
            Self::Block => "block",
            Self::Session => "session",
            Self::ToolPin => "tool_pin",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        [
            Self::Token,
            Self::Secret,
            Self::Agent,
            Self::Config,
            Self::Block,
            Self::Session,
            Self::ToolPin,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// An audit event with its place in the log.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StoredEvent {
    pub seq: i64,
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// Which audit events to read: every filter given must match.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only events with a greater `seq`.
    pub after_seq: i64,
    pub limit: u32,
    pub principal: Option<String>,
    pub service: Option<String>,
    /// `allow` or `deny`.
    pub decision: Option<String>,
    /// Why it was refused: `revoked`, `rate_limited`, …
    pub reason: Option<String>,
    pub kind: Option<String>,
    /// At or after (Unix ms).
    pub since: Option<UnixMillis>,
    /// Strictly before (Unix ms).
    pub until: Option<UnixMillis>,
}

impl AuditQuery {
    /// The most events one read returns: the admin API refuses a larger `limit`, the
    /// CLI and the stores hold to it.
    pub const MAX_LIMIT: u32 = 10_000;

    /// How many events to read: `limit`, 0 meaning 1,000, at most [`Self::MAX_LIMIT`].
    pub fn page(&self) -> u32 {
        if self.limit == 0 {
            1_000
        } else {
            self.limit.min(Self::MAX_LIMIT)
        }
    }
}

/// Allowed uses of a service by a token, as the audit log has them: one row per
/// service, token, method and path, with the latest time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub service: String,
    pub token_id: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub last: UnixMillis,
}

/// A token a revocation found, as its audit event names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct RevokedToken {
    pub id: String,
    pub principal: String,
    /// The service its grant names; none for a client credential's scope.
    pub service: Option<String>,
    /// Whether this call revoked it (else it was revoked before, and keeps that time).
    pub fresh: bool,
}

/// How a revocation's audit event is made from a token it revoked.
pub type TokenRevocations<'a> = dyn Fn(&RevokedToken) -> AuditEvent + Sync + 'a;

/// The store, whatever its backend.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    async fn meta_put(&self, key: &str, value: &[u8]) -> Result<()>;
    /// Puts `value` under `key` unless one is there: the value in force afterwards
    /// (the one given, or the one another process put first).
    async fn meta_put_if_absent(&self, key: &str, value: &[u8]) -> Result<Vec<u8>> {
        if let Some(v) = self.meta_get(key).await? {
            return Ok(v);
        }
        self.meta_put(key, value).await?;
        Ok(value.to_vec())
    }

    // Every change of state is written with its audit events in one transaction:
    // both are in the store, or neither.

    async fn insert_token(&self, t: &TokenRecord, events: &[AuditEvent]) -> Result<()>;
    /// [`Store::insert_token`], spending `spend` in the same transaction: neither is
    /// written if it was spent before ([`StoreError::Spent`]).
    async fn insert_token_spending(
        &self,
        t: &TokenRecord,
        events: &[AuditEvent],
        spend: &Spend,
    ) -> Result<()>;
    async fn tokens(&self) -> Result<Vec<TokenRecord>>;
    /// Every token, handed to `each` as it is read, in no particular order: the
    /// gateway's start-up builds its index this way without holding a million rows
    /// (and their records) at once.
    async fn each_token(&self, each: &mut (dyn FnMut(TokenRecord) + Send)) -> Result<()>;
    async fn token(&self, id: &str) -> Result<Option<TokenRecord>>;
    /// Marks the tokens revoked at `at` (keeping an earlier revocation time), with
    /// `event(token)` for each one this call revoked. Returns the tokens found (those
    /// revoked now first, then those revoked before) and the events written. Only
    /// the tokens' names come back, not their records: a bulk revocation's caller
    /// already has those, and reading 100,000 records back costs more than revoking
    /// them.
    async fn revoke_tokens(
        &self,
        ids: &[String],
        at: UnixMillis,
        event: &TokenRevocations<'_>,
    ) -> Result<(Vec<RevokedToken>, Vec<AuditEvent>)>;
    /// Brings a token's expiry forward to `expires_at` (never later); `None` if there
    /// is no such token.
    async fn shorten_expiry(
        &self,
        id: &str,
        expires_at: UnixMillis,
        events: &[AuditEvent],
    ) -> Result<Option<TokenRecord>>;
    /// Records when tokens were last used.
    async fn touch_tokens(&self, used: &[(String, UnixMillis)]) -> Result<()>;

    async fn put_secret(
        &self,
        name: &str,
        sealed: &Sealed,
        at: UnixMillis,
        events: &[AuditEvent],
    ) -> Result<()>;
    async fn secrets(&self) -> Result<Vec<(String, Sealed)>>;

    /// Refuses the agent's certificates issued before `at` (a later call moves it).
    async fn revoke_agent(&self, name: &str, at: UnixMillis, events: &[AuditEvent]) -> Result<()>;

    /// Writes an access request: a new one (`version` 0), or a change over the
    /// version before it ([`StoreError::Conflict`] if that is not the stored one).
    async fn put_request(&self, r: &AccessRequest, events: &[AuditEvent]) -> Result<()>;
    async fn request(&self, id: &str) -> Result<Option<AccessRequest>>;
    /// Requests that expire after `after`, newest first, at most `limit`.
    async fn requests(&self, after: UnixMillis, limit: u32) -> Result<Vec<AccessRequest>>;
    async fn agent_revocations(&self) -> Result<Vec<(String, UnixMillis)>>;

    /// Records `config` as the one every gateway on this store runs, replacing the
    /// one before if that is still `previous` (the hash read before; `None`: none
    /// was applied), else [`StoreError::Conflict`] and nothing is written.
    async fn put_config(
        &self,
        config: &AppliedConfig,
        previous: Option<&str>,
        events: &[AuditEvent],
    ) -> Result<()>;
    /// The config last applied, if any.
    async fn applied_config(&self) -> Result<Option<AppliedConfig>>;

    /// Blocks `source` (as the detectors key it) until `until`, or keeps a later
    /// end already stored.
    async fn put_block(&self, source: &str, until: UnixMillis, events: &[AuditEvent])
        -> Result<()>;
    /// The blocks that end after `now`: source and end.
    async fn blocks(&self, now: UnixMillis) -> Result<Vec<(String, UnixMillis)>>;
    /// Writes an MCP tool's pin (first seen, changed, approved), replacing the one before.
    async fn put_tool_pin(&self, pin: &ToolPin, events: &[AuditEvent]) -> Result<()>;
    async fn tool_pins(&self) -> Result<Vec<ToolPin>>;
    /// Asks the replica that runs it to end the live session `REPLICA:ID`, with
    /// `events` (on a store of one gateway, only the events are written).
    async fn end_session(&self, key: &str, events: &[AuditEvent]) -> Result<()>;

    /// Chains audit events from now on under `key` (kept outside the store).
    async fn set_audit_key(&self, key: ChainKey) -> Result<()>;
    /// Appends events in one transaction, in order, each linked to the one before.
    async fn append_audit(&self, events: &[AuditEvent]) -> Result<()>;
    /// Walks the whole chain: intact, or the first event that was altered, deleted
    /// or reordered. `expect` holds `(seq, hash)` pairs kept outside (from the
    /// gateway's log): each is checked like a signed checkpoint.
    async fn verify_audit(&self, key: &ChainKey, expect: &[(i64, [u8; 32])]) -> Result<Verdict>;
    /// Signs and keeps a checkpoint of the newest event at `at`; `None` when there is
    /// no chained event or it is already checkpointed.
    async fn checkpoint_audit(&self, at: UnixMillis) -> Result<Option<Checkpoint>>;
    /// Deletes the events up to the newest checkpoint taken before `before` (all
    /// older than it), and the checkpoints before that one, which stays as the
    /// anchor. Returns the anchor's `seq` and the events deleted, if any.
    async fn prune_audit(&self, before: UnixMillis) -> Result<Option<(i64, u64)>>;
    async fn audit_events(&self, q: &AuditQuery) -> Result<Vec<StoredEvent>>;
    /// What allowed requests and connections since `since` used, grouped: at most
    /// `limit` rows, newest use first.
    async fn audit_usage(&self, since: UnixMillis, limit: u32) -> Result<Vec<Usage>>;

    // Replicas: a store others write too says what they changed. A store only this
    // process writes (SQLite) has nothing to say.

    /// Whether other processes write this store too (then this one follows it).
    fn shared(&self) -> bool {
        false
    }
    /// The newest change's revision: read before the tokens are loaded, so that
    /// following from it misses nothing.
    async fn change_head(&self) -> Result<i64> {
        Ok(0)
    }
    /// Changes other replicas made after `rev`, oldest first, at most `limit`.
    async fn changes_since(&self, _rev: i64, _limit: u32) -> Result<Vec<StoreChange>> {
        Ok(Vec::new())
    }
    /// Checks that this replica still holds its name on a shared store (the
    /// connection holding it may have dropped), taking it again if it can.
    /// [`StoreError::Db`] when the store cannot be reached (whether the name is still
    /// this replica's is not known); another error when another process holds it now.
    async fn keep_name(&self) -> Result<()> {
        Ok(())
    }
    /// Records this replica's heartbeat.
    async fn heartbeat(&self, _beat: &Beat) -> Result<()> {
        Ok(())
    }
    /// Every replica's last heartbeat, by name.
    async fn replicas(&self) -> Result<Vec<Beat>> {
        Ok(Vec::new())
    }
    /// Resolves when another replica may have changed something (a hint: the caller
    /// also reads on a timer, so a lost hint delays a change, never loses it).
    async fn changed(&self) {
        std::future::pending::<()>().await
    }

    /// The size of the store's write-ahead log on disk, in bytes; `None` for a
    /// backend that keeps none.
    fn log_bytes(&self) -> Option<u64> {
        None
    }
    /// Folds the write-ahead log into the database and empties it once it has grown
    /// past `limit` bytes (a burst of writes outran the backend's own checkpoints);
    /// gives up quickly rather than hold writers back when a reader is in the way.
    /// Whether it did.
    async fn bound_log(&self, _limit: u64) -> Result<bool> {
        Ok(false)
    }
    /// After the last write: folds the log into the database and closes.
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// An optional value as the JSON text a store keeps.
pub(crate) fn to_json<T: serde::Serialize>(v: &Option<T>) -> Result<Option<String>> {
    v.as_ref()
        .map(|v| serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string())))
        .transpose()
}

/// JSON text a store keeps, back; `what` names it when it does not read.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    v: Option<String>,
    what: &str,
) -> Result<Option<T>> {
    v.map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// An access request as the stores keep it: JSON text.
pub(crate) fn request_json(r: &AccessRequest) -> Result<String> {
    serde_json::to_string(r).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// An access request back from the JSON text a store keeps.
pub(crate) fn request_from_json(json: String) -> Result<AccessRequest> {
    serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("access request: {e}")))
}

/// A 32-byte hash as a store keeps it; `what` names its row when it is not one.
pub(crate) fn stored_hash(bytes: &[u8], what: impl FnOnce() -> String) -> Result<[u8; 32]> {
    <[u8; 32]>::try_from(bytes)
        .map_err(|_| StoreError::Corrupt(format!("{} has a hash of the wrong length", what())))
}
