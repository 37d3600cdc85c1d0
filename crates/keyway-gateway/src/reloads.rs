//! The way to ask the running gateway for a new config: a proposed config's text
//! checked as `keyway validate` checks it, and the request that carries it to the
//! supervisor, which plans it and applies it whole or not at all
//! (`reload.rs`). The admin API and SIGHUP hold this handle; nothing else.

use std::net::SocketAddr;

pub use keyway_core::api::Outcome;
use keyway_core::config::lint;
use keyway_core::config::Config;
use tokio::sync::{mpsc, oneshot};

/// A proposed config's text, checked as `keyway validate` checks it
/// ([`lint::check`]): a parse error or a validator's error (a secret written in it, a
/// service without `max_ttl`, …) refuses it. Relative paths are taken from
/// `base_dir`. The answer names keys and lines, with anything secret-looking masked.
pub fn check_text(text: &str, base_dir: &std::path::Path) -> Result<Config, String> {
    check_text_as(text, text, base_dir)
}

/// [`check_text`] for a replica of a shared store given the cluster's config
/// `shared`: the replica runs it with its own per-process settings
/// ([`keyway_core::config::PER_PROCESS`], from `running`, the config it runs), and
/// reports the hash of `shared`.
pub fn check_shared(shared: &str, running: &Config) -> Result<Config, String> {
    let mine = keyway_core::config::for_this_process(shared, &running.written.value);
    check_text_as(&mine, shared, &running.written.base_dir)
}

/// Checks `text`, whose hash is reported as the hash of `as_written`.
fn check_text_as(
    text: &str,
    as_written: &str,
    base_dir: &std::path::Path,
) -> Result<Config, String> {
    let (config, mut findings) = lint::check(text, base_dir);
    // As at start: turned-off verification is the service's stated choice, warned
    // about loudly when its proxy starts.
    lint::allow_insecure(&mut findings);
    let errors: Vec<String> = findings
        .into_iter()
        .filter(|f| f.severity == lint::Severity::Error)
        .map(|f| format!("{}: {}", f.at, f.message))
        .collect();
    match config {
        Some(mut c) if errors.is_empty() => {
            if as_written != text {
                c.written.sha256 = keyway_core::config::Written::sha256_of(as_written);
            }
            Ok(c)
        }
        Some(_) => Err(format!(
            "the config does not pass `keyway validate`:\n{}",
            errors.join("\n")
        )),
        None => Err(format!("the config is not valid:\n{}", errors.join("\n"))),
    }
}

/// A reload asked for.
pub struct Request {
    pub config: Config,
    /// Who asked: an admin token's principal, or `SIGHUP`.
    pub by: String,
    /// The admin token it came with.
    pub token_id: Option<String>,
    /// Plan only.
    pub dry_run: bool,
    /// The text to record in the store as the config applied (for the other
    /// replicas of a shared store); `None` when this replica follows one another
    /// applied, or for a config not read from a text.
    pub publish: Option<String>,
    pub reply: oneshot::Sender<Result<Outcome, ApplyError>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The text does not pass `keyway validate`.
    #[error("{0}")]
    Invalid(String),
    #[error("only a restart can change {0}; nothing was applied")]
    NeedsRestart(String),
    #[error("cannot listen on {addr} for service `{service}`: {why}; nothing was applied")]
    Bind {
        service: String,
        addr: SocketAddr,
        why: String,
    },
    #[error("service `{service}`: {why}; nothing was applied")]
    Tls { service: String, why: String },
    #[error("`{key}`: {why}; nothing was applied")]
    OwnTls { key: &'static str, why: String },
    #[error("the gateway is shutting down")]
    Stopped,
    #[error("the audit log cannot record the change; nothing was applied")]
    Unaudited,
    #[error(
        "another config was applied to the cluster since this one was planned \
         (sha256:{0}); plan again; nothing was applied"
    )]
    Conflict(String),
}

/// The way to the task that owns the running services.
pub struct Reloads {
    tx: mpsc::Sender<Request>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Request>>>,
}

// === impl Reloads ===

impl Default for Reloads {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(8);
        Self {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }
}

impl Reloads {
    /// Plans `config` against the one in force and, unless `dry_run`, applies it.
    /// `by` names who asked (an admin token's principal, `SIGHUP`) and `token_id`
    /// the admin token, for the audit log.
    pub async fn ask(
        &self,
        config: Config,
        by: &str,
        token_id: Option<&str>,
        dry_run: bool,
    ) -> Result<Outcome, ApplyError> {
        self.send(config, None, by, token_id, dry_run).await
    }

    /// Plans (`dry_run`) or applies the config `text` over `running`, checked as
    /// `keyway validate` checks it (relative paths from the running config's
    /// folder). Applied, the text is recorded in the store; on a `shared` store it
    /// is the cluster's, which every replica runs with its own per-process settings
    /// ([`keyway_core::config::PER_PROCESS`]). `by` and the admin token asking are
    /// for the audit log.
    pub async fn propose(
        &self,
        text: &str,
        running: &Config,
        shared: bool,
        (by, token_id): (&str, Option<&str>),
        dry_run: bool,
    ) -> Result<Outcome, ApplyError> {
        // The text as written first, so that problems name the lines people wrote.
        let mut config =
            check_text(text, &running.written.base_dir).map_err(ApplyError::Invalid)?;
        if shared {
            config = check_shared(text, running).map_err(ApplyError::Invalid)?;
        }
        self.send(config, Some(text.to_owned()), by, token_id, dry_run)
            .await
    }

    async fn send(
        &self,
        config: Config,
        publish: Option<String>,
        by: &str,
        token_id: Option<&str>,
        dry_run: bool,
    ) -> Result<Outcome, ApplyError> {
        let (reply, answer) = oneshot::channel();
        let req = Request {
            config,
            by: by.to_owned(),
            token_id: token_id.map(str::to_owned),
            dry_run,
            publish,
            reply,
        };
        self.tx.send(req).await.map_err(|_| ApplyError::Stopped)?;
        answer.await.map_err(|_| ApplyError::Stopped)?
    }

    /// The requests, for the one task that applies them; `None` after the first call.
    pub(crate) fn take_requests(&self) -> Option<mpsc::Receiver<Request>> {
        self.rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A valid config, to which the test adds a line that breaks it.
    const CONFIG: &str = "max_ttl = \"1h\"\n";

    #[test]
    fn a_refused_config_never_echoes_a_secret() {
        // Pasted as a key, it fails parsing and would be named in "unknown field".
        let secret = "Zx8Qw3Lp0Rt7Yb2Nc5VmKq4Hd9";
        let text = format!("{CONFIG}\n{secret} = 1\n");
        let refused = check_text(&text, Path::new("/")).expect_err("refused");
        assert!(refused.starts_with("the config is not valid"), "{refused}");
        assert!(!refused.contains(secret), "{refused}");
    }
}
