//! Following a shared store: what the other replicas change is put in force here,
//! this replica's lag decides whether it serves, and it beats every second.

use std::sync::Arc;

use keyway_core::{EventKind, UnixMillis};
use keyway_store::StoreError;

use super::Gateway;

/// Changes read from the shared store at a time.
const FOLLOW_BATCH: u32 = 10_000;

// === impl Gateway ===

impl Gateway {
    /// Follows a shared store until `stop`: what other replicas change (tokens issued,
    /// revoked or shortened, secrets set, agents revoked) is put in force here (a
    /// config applied, by [`Gateway::follow_config`], which this wakes), woken
    /// by the store's hint and at least every second. A store only this gateway
    /// writes has nothing to follow.
    pub async fn follow_store(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        use keyway_store::ChangeKind;
        use std::sync::atomic::Ordering;
        if !self.store.shared() {
            return;
        }
        // When this gateway last had every change the store had.
        let mut caught_up = std::time::Instant::now();
        let started_at = self.clock.now_ms();
        let mut last_beat = std::time::Instant::now() - std::time::Duration::from_secs(2);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.store.changed() => {}
                _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            }
            let rev = self.store_rev.load(Ordering::Acquire);
            // A read that hangs (a connection black-holed) counts as behind.
            let lag = self.config().store_max_lag;
            let read = match tokio::time::timeout(lag, self.store.changes_since(rev, FOLLOW_BATCH))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(StoreError::Damaged(format!(
                    "no answer within store_max_lag ({}s)",
                    lag.as_secs()
                ))),
            };
            let whole = match read {
                Ok(changes) => {
                    let all = changes.len() < FOLLOW_BATCH as usize;
                    let mut applied_all = true;
                    for c in changes {
                        // Ours are in force already.
                        let applied = match c.kind {
                            _ if c.replica == self.config().replica => Ok(()),
                            ChangeKind::Token => self.tokens.follow_token(&c.key).await.map(drop),
                            ChangeKind::Secret => self.secrets.follow(&c.key).await,
                            ChangeKind::Agent => self.follow_agent(&c.key).await,
                            ChangeKind::Block => self.follow_block(&c.key).await,
                            ChangeKind::ToolPin => self.pins.follow(&c.key).await,
                            ChangeKind::Session => {
                                self.follow_session_end(&c.key);
                                Ok(())
                            }
                            ChangeKind::Config => {
                                self.config_applied.notify_one();
                                Ok(())
                            }
                        };
                        if let Err(e) = applied {
                            // Read again at the next round.
                            tracing::warn!(error = %e, change = c.rev, "cannot apply a change of the shared store");
                            applied_all = false;
                            break;
                        }
                        self.store_rev.store(c.rev, Ordering::Release);
                    }
                    all && applied_all
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the shared store's changes");
                    false
                }
            };
            // Without its name, this replica's chain could be forked: fail closed at
            // once when another process holds it. A store out of reach is lag, as a
            // read that fails is: refused after `store_max_lag`.
            let (named, reached) = match self.store.keep_name().await {
                Ok(()) => (true, true),
                Err(e @ StoreError::Db(_)) => {
                    tracing::warn!(error = %e, "cannot reach the shared store to hold this replica's name");
                    (true, false)
                }
                Err(e) => {
                    tracing::error!(error = %e, "this replica no longer holds its name on the shared store");
                    (false, false)
                }
            };
            if whole && reached {
                caught_up = std::time::Instant::now();
            }
            let behind = !named || caught_up.elapsed() > self.config().store_max_lag;
            if self.authz.health().set_behind(behind) {
                self.store_lag_changed(behind, caught_up.elapsed());
            }
            if last_beat.elapsed() >= std::time::Duration::from_secs(1) {
                last_beat = std::time::Instant::now();
                if let Err(e) = self.store.heartbeat(&self.beat(started_at)).await {
                    tracing::debug!(error = %e, "cannot record this replica's heartbeat");
                }
            }
        }
    }

    /// This replica's heartbeat now.
    fn beat(&self, started_at: UnixMillis) -> keyway_store::Beat {
        let config = self.config();
        keyway_store::Beat {
            replica: config.replica.clone(),
            at: self.clock.now_ms(),
            started_at,
            rev: self.store_rev.load(std::sync::atomic::Ordering::Acquire),
            config_sha256: config.written.sha256.clone(),
            agents: self
                .agents
                .status(&config)
                .into_iter()
                .filter(|a| a.state == "connected")
                .map(|a| a.name)
                .collect(),
            serving: self.authz.health().serving(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            sessions: self
                .sessions
                .list()
                .iter()
                .take(keyway_store::BEAT_SESSIONS)
                .map(crate::sessions::SessionInfo::to_beat)
                .collect(),
        }
    }

    /// Another replica's console asked for a live session to end (`REPLICA:ID`):
    /// ended here when it is one of this replica's.
    fn follow_session_end(&self, key: &str) {
        let Some((replica, id)) = key.rsplit_once(':') else {
            return;
        };
        if replica == self.config().replica {
            if let Ok(id) = id.parse() {
                self.sessions.end(id);
            }
        }
    }

    /// Says (log, metric, audit) that this replica fell behind the shared store or
    /// caught up again.
    fn store_lag_changed(&self, behind: bool, lag: std::time::Duration) {
        let lag_ms = lag.as_millis() as u64;
        if behind {
            tracing::error!(lag_ms, "behind the shared store for longer than store_max_lag: refusing every request until it catches up");
        } else {
            tracing::info!("caught up with the shared store again: serving");
        }
        metrics::gauge!("keyway_store_behind").set(if behind { 1.0 } else { 0.0 });
        let mut ev = self.audit.event(EventKind::StoreLag);
        if behind {
            ev.deny_with("store_behind");
        } else {
            ev.allow();
        }
        ev.detail = serde_json::json!({ "replica": self.config().replica, "lag_ms": lag_ms });
        let _ = self.audit.record(ev);
    }

    /// A source another replica's detectors blocked: blocked here too.
    async fn follow_block(&self, source: &str) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        for (s, until) in self.store.blocks(now).await? {
            if s == source {
                self.admission.block_stored(&s, until);
            }
        }
        Ok(())
    }

    /// An agent another replica revoked: refused here too, its connections closed.
    async fn follow_agent(&self, name: &str) -> Result<(), StoreError> {
        let revoked = self.store.agent_revocations().await?;
        if let Some((_, at)) = revoked.iter().find(|(n, _)| n == name) {
            self.agents.revoke(name, *at);
        }
        Ok(())
    }
}
