//! The config applied to the cluster: recorded in the store with a MAC under a key
//! from the pepper (which the database does not hold), taken by a replica when it
//! starts, followed while it runs, and re-read on SIGHUP. Whoever can only write
//! the database cannot make a replica run a config: one whose MAC does not verify
//! is refused and logged.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use keyway_core::config::Config;
use keyway_core::Pepper;
use keyway_store::{AppliedConfig, Store};
use sha2::Sha256;

use super::Gateway;
use crate::reloads::{check_shared, check_text, ApplyError, Outcome};

/// How often a replica that does not run the cluster's config tries again (a port
/// that was taken, a store that did not answer).
const RETRY_EVERY: Duration = Duration::from_secs(5);

/// The key of the applied config's MAC, from the pepper.
pub(crate) fn config_key(pepper: &Pepper) -> [u8; 32] {
    pepper.hash(b"keyway applied config key v1").0
}

fn keyed(key: &[u8; 32], text: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key");
    mac.update(text.as_bytes());
    mac
}

/// The MAC of a config's text.
pub(crate) fn config_mac(key: &[u8; 32], text: &str) -> Vec<u8> {
    keyed(key, text).finalize().into_bytes().to_vec()
}

/// The config applied to the cluster, if any and if its MAC verifies (constant
/// time); `None` with an error logged otherwise.
pub(crate) async fn verified(store: &dyn Store, key: &[u8; 32]) -> Option<AppliedConfig> {
    let applied = match store.applied_config().await {
        Ok(a) => a?,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the config applied to the cluster");
            return None;
        }
    };
    let ok = keyed(key, &applied.text).verify_slice(&applied.mac).is_ok()
        && keyway_core::config::Written::sha256_of(&applied.text) == applied.sha256;
    if !ok {
        tracing::error!(
            sha256 = %applied.sha256,
            "the config in the store was not applied by a gateway with this pepper (its MAC \
             does not verify): refused; someone wrote the database directly"
        );
        return None;
    }
    Some(applied)
}

/// At start on a shared store: the cluster's config, with this replica's own
/// per-process settings from `file` (the config it was started with), or `file`
/// when none was applied or it does not check here.
pub(crate) async fn at_start(store: &dyn Store, key: &[u8; 32], file: Config) -> Config {
    if !store.shared() {
        return file;
    }
    let Some(applied) = verified(store, key).await else {
        return file;
    };
    if applied.sha256 == file.written.sha256 {
        return file;
    }
    match check_shared(&applied.text, &file) {
        Ok(c) => {
            tracing::info!(
                sha256 = %applied.sha256,
                "running the config applied to the cluster, not this replica's file (its own \
                 process settings kept); change it with `keyway apply`"
            );
            c
        }
        Err(e) => {
            tracing::error!(sha256 = %applied.sha256, "the cluster's config does not check here; this replica runs its file: {e}");
            file
        }
    }
}

// === impl Gateway ===

impl Gateway {
    /// Keeps this replica on the config applied to the cluster until `stop`: woken
    /// when another replica applies one, and every few seconds while it runs another.
    /// A config that cannot run here (a restart needed, a port taken) is logged once
    /// and tried again.
    pub async fn follow_config(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        if !self.store.shared() {
            return;
        }
        let mut failed: Option<String> = None;
        loop {
            let behind = match verified(self.store.as_ref(), &self.config_key).await {
                Some(applied) if applied.sha256 != self.config().written.sha256 => {
                    match self.run_applied(&applied).await {
                        Ok(()) => {
                            failed = None;
                            false
                        }
                        Err(e) => {
                            if failed.as_deref() != Some(&applied.sha256) {
                                tracing::error!(sha256 = %applied.sha256, "cannot run the config applied to the cluster; this replica keeps its own and tries again: {e}");
                                failed = Some(applied.sha256.clone());
                            }
                            true
                        }
                    }
                }
                _ => false,
            };
            let wait = if behind { RETRY_EVERY } else { RETRY_EVERY * 2 };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.config_applied.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Runs `applied` here, with this replica's own per-process settings.
    async fn run_applied(&self, applied: &AppliedConfig) -> Result<(), String> {
        let config = check_shared(&applied.text, &self.config())?;
        let o = self
            .reloads
            .ask(config, "cluster", None, false)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(
            sha256 = %applied.sha256,
            changes = o.plan.changes.len(),
            "running the config applied to the cluster"
        );
        Ok(())
    }

    /// SIGHUP: reads the config again and applies it, reloading renewed
    /// certificates. On SQLite `file` (the config file's text) is applied as
    /// `keyway apply` would; on a shared store the cluster's config is applied
    /// again (or `file` when none was applied) and nothing is published: only
    /// `keyway apply` changes the cluster's config.
    pub async fn hangup(&self, file: &str) -> Result<Outcome, ApplyError> {
        let running = self.config();
        if !self.store.shared() {
            return self
                .reloads
                .propose(file, &running, false, ("SIGHUP", None), false)
                .await;
        }
        let config = match verified(self.store.as_ref(), &self.config_key).await {
            Some(applied) => check_shared(&applied.text, &running),
            None => check_text(file, &running.written.base_dir),
        }
        .map_err(ApplyError::Invalid)?;
        self.reloads.ask(config, "SIGHUP", None, false).await
    }
}
