//! The in-memory token index: the hot path's only source of truth about tokens.
//!
//! Loaded from the store at start-up and updated by every issue and revocation in the
//! same call that writes the store, so a revocation holds on the very next request.
//! Entries are keyed by public id; the presented token's keyed hash is then compared
//! in constant time. Each entry carries a cancellation handle: revoking the token
//! fires it, and every live stream opened with the token ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use keyway_core::{DenyReason, Grant, Pepper, PresentedToken, TokenKind, UnixMillis};
use keyway_store::TokenRecord;
use tokio_util::sync::CancellationToken;

const NOT_REVOKED: i64 = i64::MAX;

/// A client credential this close to its maximum age is reported at each exchange
/// (`credential.near_max_age`), and by the metrics and the hygiene report.
pub const NEAR_MAX_AGE_MS: UnixMillis = 14 * 24 * 3600 * 1000;

/// One token, as the hot path sees it.
#[derive(Debug)]
pub struct Entry {
    pub record: TokenRecord,
    /// A flag, not a time compared with the clock: a clock stepped back must not
    /// bring a revoked token back.
    revoked: AtomicBool,
    revoked_at: AtomicI64,
    /// Starts as the record's; rotation brings it forward.
    expires_at: AtomicI64,
    last_used: AtomicI64,
    /// Fired when the token is revoked (or its shortened expiry comes); live streams
    /// opened with it watch this ([`Entry::until_cut`]). Made by the first stream to
    /// watch, or by the cut: most tokens never have a stream, and a million live
    /// tokens need not carry a million of these.
    cancel: OnceLock<CancellationToken>,
}

#[derive(Debug, Default)]
pub struct TokenIndex {
    map: RwLock<HashMap<String, Arc<Entry>>>,
}

/// A refusal, with whatever is safe to record about the token.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub reason: DenyReason,
    /// The public id, when the token parsed.
    pub token_id: Option<String>,
    /// Set only once the secret matched.
    pub entry: Option<Arc<Entry>>,
}

// === impl Entry ===

impl Entry {
    pub fn new(record: TokenRecord) -> Self {
        let revoked_at = record.revoked_at.unwrap_or(NOT_REVOKED);
        let last_used = record.last_used_at.unwrap_or(0);
        Self {
            revoked: AtomicBool::new(record.revoked_at.is_some()),
            expires_at: AtomicI64::new(record.expires_at),
            record,
            revoked_at: AtomicI64::new(revoked_at),
            last_used: AtomicI64::new(last_used),
            cancel: OnceLock::new(),
        }
    }

    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// The record as it stands now: with the revocation, expiry and last use this
    /// process knows, which the store may not have yet.
    pub fn current(&self) -> TokenRecord {
        TokenRecord {
            revoked_at: self.revoked_at(),
            expires_at: self.expires_at(),
            last_used_at: self.last_used().or(self.record.last_used_at),
            ..self.record.clone()
        }
    }

    pub fn grant(&self) -> Option<&Grant> {
        self.record.grant.as_ref()
    }

    pub fn revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    pub fn revoked_at(&self) -> Option<UnixMillis> {
        match self.revoked_at.load(Ordering::Acquire) {
            NOT_REVOKED => None,
            t => Some(t),
        }
    }

    pub fn last_used(&self) -> Option<UnixMillis> {
        match self.last_used.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// Validity at `now`: not revoked, not expired (valid strictly before `expires_at`).
    pub fn check_live(&self, now: UnixMillis) -> Result<(), DenyReason> {
        if self.revoked() {
            return Err(DenyReason::Revoked);
        }
        if now >= self.expires_at() {
            return Err(DenyReason::Expired);
        }
        Ok(())
    }

    /// When the token stops being valid (strictly before this).
    pub fn expires_at(&self) -> UnixMillis {
        self.expires_at.load(Ordering::Acquire)
    }

    /// Whether the token is within [`NEAR_MAX_AGE_MS`] of its end at `now`.
    pub fn near_max_age(&self, now: UnixMillis) -> bool {
        self.expires_at() - now <= NEAR_MAX_AGE_MS
    }

    /// The token's whole lifetime, issue to expiry.
    pub fn lifetime(&self) -> std::time::Duration {
        let ms = self
            .expires_at()
            .saturating_sub(self.record.created_at)
            .max(0);
        std::time::Duration::from_millis(ms as u64)
    }

    /// Brings the expiry forward to `at`, never later.
    pub(crate) fn shorten(&self, at: UnixMillis) {
        self.expires_at.fetch_min(at, Ordering::AcqRel);
    }

    /// Resolves when the token is revoked, or cut at a shortened expiry: every live
    /// stream opened with it ends then.
    pub fn until_cut(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancellation().cancelled()
    }

    /// The token's cancellation, made on first use; the cut makes it too, so a
    /// stream that starts watching after a cut sees it at once.
    fn cancellation(&self) -> &CancellationToken {
        self.cancel.get_or_init(CancellationToken::new)
    }

    /// Whether the token's streams were cut (revoked, or its shortened expiry came).
    pub fn is_cut(&self) -> bool {
        self.cancel
            .get()
            .is_some_and(CancellationToken::is_cancelled)
    }

    /// Ends the live streams opened with the token (its shortened expiry came).
    pub(crate) fn cut(&self) {
        self.cancellation().cancel();
    }

    pub fn mark_used(&self, now: UnixMillis) {
        self.last_used.fetch_max(now, Ordering::Relaxed);
    }

    /// Revokes; `true` for the one call that did it (a one-use token is spent by
    /// exactly one caller, however many race).
    fn revoke(&self, at: UnixMillis) -> bool {
        let first = self.refuse(at);
        self.cancellation().cancel();
        first
    }

    /// Refuses the token from now on, without cutting its streams yet ([`Entry::cut`]
    /// does): a bulk revocation refuses every match first, then cuts.
    fn refuse(&self, at: UnixMillis) -> bool {
        self.revoked_at.fetch_min(at, Ordering::AcqRel);
        !self.revoked.swap(true, Ordering::AcqRel)
    }
}

// === impl TokenIndex ===

impl TokenIndex {
    /// Adds a token read from the store at start-up.
    pub fn load_one(&self, record: TokenRecord) {
        self.insert(record);
    }

    pub(crate) fn insert(&self, record: TokenRecord) -> Arc<Entry> {
        let entry = Arc::new(Entry::new(record));
        self.write().insert(entry.record.id.clone(), entry.clone());
        entry
    }

    pub fn get(&self, id: &str) -> Option<Arc<Entry>> {
        self.read().get(id).cloned()
    }

    /// Marks the token revoked and cuts its live streams.
    pub(crate) fn revoke(&self, id: &str, at: UnixMillis) -> Option<Arc<Entry>> {
        let entry = self.get(id)?;
        entry.revoke(at);
        Some(entry)
    }

    /// Revokes, in one pass under the read lock, every live entry `matches` picks and
    /// then every entry obtained with one of them (a credential's tokens): all are
    /// refused (an atomic flag each) before any stream is cut. Returns those this
    /// call revoked: first the matched, then their children.
    pub(crate) fn revoke_matching(
        &self,
        at: UnixMillis,
        matches: impl Fn(&Entry) -> bool,
    ) -> (Vec<Arc<Entry>>, Vec<Arc<Entry>>) {
        let map = self.read();
        let matched: Vec<_> = map
            .values()
            .filter(|e| !e.revoked() && matches(e) && e.refuse(at))
            .cloned()
            .collect();
        let parents: std::collections::HashSet<&str> = matched.iter().map(|e| e.id()).collect();
        let children = map
            .values()
            .filter(|e| {
                e.record
                    .parent_id
                    .as_deref()
                    .is_some_and(|p| parents.contains(p))
                    && e.refuse(at)
            })
            .cloned()
            .collect::<Vec<_>>();
        drop(parents);
        drop(map);
        for e in matched.iter().chain(&children) {
            e.cut();
        }
        (matched, children)
    }

    /// Revokes `id` if this call is the first to: `true` then.
    pub(crate) fn revoke_first(&self, id: &str, at: UnixMillis) -> bool {
        self.get(id).is_some_and(|e| e.revoke(at))
    }

    /// Identifies a presented token: shape, checksum, known id, matching secret (in
    /// constant time), expected kind, and liveness at `now`.
    pub fn authenticate(
        &self,
        text: &str,
        pepper: &Pepper,
        kind: TokenKind,
        now: UnixMillis,
    ) -> Result<Arc<Entry>, Refusal> {
        let refuse = |reason, token_id: Option<&str>, entry| Refusal {
            reason,
            token_id: token_id.map(str::to_owned),
            entry,
        };
        let presented = PresentedToken::parse(text).map_err(|e| {
            let reason = match e {
                keyway_core::token::TokenError::Malformed => DenyReason::MalformedToken,
                keyway_core::token::TokenError::Checksum => DenyReason::BadChecksum,
            };
            refuse(reason, None, None)
        })?;
        let id = presented.id();
        let Some(entry) = self.get(id) else {
            return Err(refuse(DenyReason::UnknownToken, Some(id), None));
        };
        if !presented.hash(pepper).ct_eq(&entry.record.hash) {
            return Err(refuse(DenyReason::WrongSecret, Some(id), None));
        }
        if entry.record.kind != kind || presented.kind() != kind {
            return Err(refuse(DenyReason::WrongKind, Some(id), Some(entry)));
        }
        if let Err(reason) = entry.check_live(now) {
            return Err(refuse(reason, Some(id), Some(entry)));
        }
        Ok(entry)
    }

    /// The tokens whose parent is `id` (those obtained with a credential).
    pub fn children_of(&self, id: &str) -> Vec<Arc<Entry>> {
        self.select(|e| e.record.parent_id.as_deref() == Some(id))
    }

    /// The entries `pick` takes, in no order, in one pass under the read lock.
    pub fn select(&self, pick: impl Fn(&Entry) -> bool) -> Vec<Arc<Entry>> {
        self.read().values().filter(|e| pick(e)).cloned().collect()
    }

    /// Every entry, for listings.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        let mut v: Vec<_> = self.read().values().cloned().collect();
        v.sort_by(|a, b| {
            (a.record.created_at, &a.record.id).cmp(&(b.record.created_at, &b.record.id))
        });
        v
    }

    /// Drops entries that expired before `horizon`; a request with one of them is then
    /// refused as unknown, which it would be refused as expired anyway.
    pub(crate) fn prune_expired(&self, horizon: UnixMillis) -> usize {
        let mut map = self.write();
        let before = map.len();
        map.retain(|_, e| e.expires_at() >= horizon);
        before - map.len()
    }

    /// Tokens used since their last flush, with when: used after `since`, and after
    /// the last use the store had when the token was loaded (so that a restart does
    /// not write back every token ever used, a million rows for a million tokens).
    pub fn used_since(&self, since: UnixMillis) -> Vec<(String, UnixMillis)> {
        self.read()
            .values()
            .filter_map(|e| {
                let stored = e.record.last_used_at.unwrap_or(0);
                e.last_used()
                    .filter(|&t| t > since && t > stored)
                    .map(|t| (e.record.id.clone(), t))
            })
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Entry>>> {
        // A panic while holding the lock cannot leave the map half-updated (every
        // update is a single insert or retain), so a poisoned lock is still usable.
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Entry>>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }
}
