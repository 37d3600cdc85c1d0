//! The gateway's handles, built once: opening the data folder and its keys, the
//! store, the token index, the audit writer, and from them every handle the parts
//! are given ([`Tokens`], [`Secrets`], the [`Authorizer`], [`Sessions`], …). The
//! supervisor (`run`, in lib.rs) hands each part the handles it uses; the methods here
//! are the CLI's and the tests' way in.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keyway_core::config::Config;
use keyway_core::EventKind;
use keyway_core::{Clock, IssuedToken, Pepper, UnixMillis};
use keyway_store::keys::{self, KeySource};
use keyway_store::{AuditEvent, Sealer, Store, StoreError, TokenRecord};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditSink;
use crate::authz::Authorizer;
use crate::index::TokenIndex;
use crate::runtime::ConfigInForce;
pub use crate::secrets::SecretError;
use crate::secrets::Secrets;
use crate::sessions::Sessions;
pub use crate::tokens::{
    CredentialRequest, ExchangeError, IssueError, IssueRequest, RevokeFilter, RotateError, Tokens,
    DEFAULT_TTL,
};
pub(crate) use applied::config_mac;
pub use data::{store_url, Start, LOCK_FILE};

mod applied;
mod data;
mod follow;

/// Everything the listeners and the admin API share.
pub struct Gateway {
    /// The config in force; replaced whole by a reload (`keyway apply`, SIGHUP), and
    /// watched by live sessions, which end when they no longer fit it.
    pub config: ConfigInForce,
    pub clock: Arc<dyn Clock>,
    pub store: Arc<dyn Store>,
    pub(crate) index: Arc<TokenIndex>,
    /// The one rule every protocol's attempts are judged by.
    pub authz: Authorizer,
    /// The token lifecycle: the only writers of tokens.
    pub tokens: Arc<Tokens>,
    /// Opened upstream credentials.
    pub secrets: Arc<Secrets>,
    pub audit: AuditSink,
    audit_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    audit_stop: CancellationToken,
    /// Where the admin credential was written, when this start wrote one.
    pub admin_token_written: Option<PathBuf>,
    /// The data folder's lock, held while the gateway lives (when it opened the
    /// folder itself).
    data_lock: Option<std::fs::File>,
    /// Agents' live connections and revocations.
    pub agents: Arc<crate::agents::Registry>,
    /// Each service's TLS to its upstream, as loaded.
    pub upstream_tls: Arc<crate::upstream::UpstreamTlsCache>,
    pub metrics: Arc<crate::telemetry::Metrics>,
    /// The admission check (the blocklist) and the detectors' intake.
    pub admission: Arc<crate::admission::Admission>,
    /// Alerts on their way to the webhook.
    pub alerts: Arc<crate::alerts::Alerts>,
    /// Sign-ins, people's access and access requests (the token endpoint's).
    pub people: Arc<crate::people::People>,
    /// MCP tools' pinned definitions.
    pub pins: Arc<crate::pins::Pins>,
    /// The shared store's revision this gateway's memory is at ([`Gateway::follow_store`]).
    store_rev: std::sync::atomic::AtomicI64,
    /// Reloads on their way to the task that runs the services.
    pub(crate) reloads: Arc<crate::reloads::Reloads>,
    /// The key of the applied config's MAC, from the pepper (`gateway/applied.rs`).
    pub(crate) config_key: [u8; 32],
    /// The audit chain's key, from the pepper: the console verifies the chain with it.
    chain_key: Arc<secrecy::SecretBox<keyway_store::ChainKey>>,
    /// Woken when another replica applies a config to the cluster.
    config_applied: tokio::sync::Notify,
    /// The sessions that outlive a request: tunnel streams, PostgreSQL sessions,
    /// WebSockets, agents. They outlive their listener across a reload, not the
    /// gateway: [`Gateway::end_sessions`].
    pub sessions: Sessions,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot prepare the data folder {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error(
        "{what} does not match the one this store was created with; start with the original key"
    )]
    KeyMismatch { what: &'static str },
    #[error(transparent)]
    AdminToken(#[from] crate::tokens::AdminTokenError),
    /// The store's files are not what they should be; the message says what was
    /// found and how to go on.
    #[error("{0}")]
    StoreRefused(String),
    #[error(
        "another Keyway process{} uses the data folder {dir} (it holds {dir}/keyway.lock): \
         stop it first: one gateway (or `keyway admin reset`) at a time uses a data folder",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked { dir: String, pid: Option<u32> },
    #[error(
        "--init starts over only a store that cannot be used, and {path} opens and checks \
         fine: start without --init (to start over anyway, move the data folder aside first)"
    )]
    InitNotNeeded { path: String },
    #[error("there is no store at {path}: is `data_dir` right?")]
    NoStore { path: String },
}

// === impl Gateway ===

impl Gateway {
    /// Opens the data folder (creating it, 0700; locked while the gateway lives), the
    /// store (refused when missing or damaged, see `gateway/data.rs`), and the keys;
    /// loads the token index and the upstream credentials; writes an admin credential
    /// when there is no live one. Must run inside a Tokio runtime (it starts the audit
    /// writer).
    pub async fn open(config: Config, clock: Arc<dyn Clock>) -> Result<Self, OpenError> {
        Self::open_with(config, clock, Start::Normal).await
    }

    /// As [`Gateway::open`], treating the data folder as `start` says; with
    /// [`Start::Recovery`] the admin credential is left to [`Gateway::reset_admin`].
    pub async fn open_with(
        config: Config,
        clock: Arc<dyn Clock>,
        start: Start,
    ) -> Result<Self, OpenError> {
        let dir = &config.data_dir;
        let dir_err = |source| OpenError::DataDir {
            path: dir.display().to_string(),
            source,
        };
        // A folder made now has the umask's mode: only one that was there is judged.
        if dir.exists() {
            warn_if_others_could_write(dir);
        }
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
        let lock = data::lock(dir)?;
        let store = data::open(&config, start).await?;
        let mut gw = Self::assemble(config, clock, store).await?;
        gw.data_lock = Some(lock);
        if start != Start::Recovery {
            gw.ensure_admin_token().await?;
        }
        Ok(gw)
    }

    /// As [`Gateway::open`], on a store the caller opened.
    pub async fn with_store(
        config: Config,
        clock: Arc<dyn Clock>,
        store: Arc<dyn Store>,
    ) -> Result<Self, OpenError> {
        let mut gw = Self::assemble(config, clock, store).await?;
        gw.ensure_admin_token().await?;
        Ok(gw)
    }

    /// Every handle, on `store`; the admin credential aside.
    async fn assemble(
        config: Config,
        clock: Arc<dyn Clock>,
        store: Arc<dyn Store>,
    ) -> Result<Self, OpenError> {
        let pepper_fp = store.meta_get("pepper_fingerprint").await?;
        let is_new = pepper_fp.is_none();

        let (pepper_key, src) = keys::load_or_create(&config.pepper_file, "KEYWAY_PEPPER", is_new)?;
        log_key("pepper", &config.pepper_file, src);
        let pepper = Pepper::new(&pepper_key);
        let pepper_fp = match pepper_fp {
            Some(fp) => fp,
            None => {
                store
                    .meta_put_if_absent("pepper_fingerprint", &pepper.fingerprint())
                    .await?
            }
        };
        if pepper_fp[..] != pepper.fingerprint()[..] {
            return Err(OpenError::KeyMismatch { what: "the pepper" });
        }

        let master_fp = store.meta_get("master_key_id").await?;
        let (master, src) = keys::load_or_create(
            &config.master_key_file,
            "KEYWAY_MASTER_KEY",
            master_fp.is_none(),
        )?;
        log_key("master key", &config.master_key_file, src);
        let sealer = Sealer::new(&master);
        let master_id = match master_fp {
            Some(id) => id,
            None => {
                store
                    .meta_put_if_absent("master_key_id", sealer.key_id().as_bytes())
                    .await?
            }
        };
        if master_id != sealer.key_id().as_bytes() {
            return Err(OpenError::KeyMismatch {
                what: "the master key",
            });
        }

        // The audit chain's key: from the pepper, so it lives outside the database.
        let chain_key = audit_chain_key(&pepper);
        store.set_audit_key(chain_key).await?;
        let chain_key = Arc::new(secrecy::SecretBox::new(Box::new(chain_key)));
        // On a shared store, the config applied to the cluster (if the file is not
        // it), before anything is started or enforced from the file's.
        let config_key = applied::config_key(&pepper);
        let config = applied::at_start(store.as_ref(), &config_key, config).await;
        // Before the tokens are read: following the store from here misses nothing.
        let store_rev = store.change_head().await?;
        let index = Arc::new(TokenIndex::default());
        store.each_token(&mut |t| index.load_one(t)).await?;
        let agents = Arc::new(crate::agents::Registry::new(
            store.agent_revocations().await?,
        ));
        let metrics = Arc::new(crate::telemetry::Metrics::new(
            config.services.keys().cloned(),
        ));
        let admission = Arc::new(crate::admission::Admission::new(
            config.detect.clone(),
            metrics.clone(),
            clock.clone(),
        ));
        // Blocks the detectors made (here before a restart, or on another replica).
        for (source, until) in store.blocks(clock.now_ms()).await? {
            admission.block_stored(&source, until);
        }
        let alerts = Arc::new(crate::alerts::Alerts::new(config.alerts.webhook.as_ref()));
        let audit_stop = CancellationToken::new();
        let (audit, audit_task) = AuditSink::start(
            store.clone(),
            &config.audit,
            audit_stop.clone(),
            vec![metrics.clone(), admission.clone()],
            clock.clone(),
        );
        let config = ConfigInForce::new(config);
        let authz = Authorizer::new(config.clone(), index.clone(), pepper.clone(), clock.clone());
        let sessions = Sessions::new(config.clone(), clock.clone());
        let secrets = Secrets::load(sealer, store.clone(), audit.clone()).await?;
        let tokens = Tokens::new(
            config.clone(),
            clock.clone(),
            store.clone(),
            pepper.clone(),
            index.clone(),
            authz.clone(),
            audit.clone(),
        );
        // Policies changed while the gateway was down end the tokens they no longer
        // allow, as an `apply` would have.
        let (revoked, shortened) = tokens.enforce_policies(&config.current(), "config").await?;
        if revoked + shortened > 0 {
            tracing::info!(
                revoked,
                shortened,
                "the config's policies changed while the gateway was down; their tokens follow"
            );
        }
        let tokens = Arc::new(tokens);
        let secrets = Arc::new(secrets);
        let people = Arc::new(crate::people::People::new(
            config.clone(),
            clock.clone(),
            store.clone(),
            tokens.clone(),
            secrets.clone(),
            audit.clone(),
            {
                let alerts = alerts.clone();
                Arc::new(move |ev: &keyway_store::AuditEvent| alerts.send(ev))
            },
        ));
        let pins = Arc::new(
            crate::pins::Pins::load(store.clone(), audit.clone(), {
                let alerts = alerts.clone();
                Arc::new(move |ev: &keyway_store::AuditEvent| alerts.send(ev))
            })
            .await?,
        );
        Ok(Self {
            pins,
            config,
            clock,
            store,
            index,
            authz,
            tokens,
            secrets,
            people,
            store_rev: std::sync::atomic::AtomicI64::new(store_rev),
            audit,
            audit_task: std::sync::Mutex::new(Some(audit_task)),
            audit_stop,
            admin_token_written: None,
            data_lock: None,
            agents,
            upstream_tls: Arc::default(),
            metrics,
            admission,
            alerts,
            reloads: Arc::default(),
            config_key,
            chain_key,
            config_applied: tokio::sync::Notify::new(),
            sessions,
        })
    }

    /// The handles the protocol proxies are given, and nothing else.
    pub fn proxy_handles(&self) -> crate::proxy::Handles {
        crate::proxy::Handles {
            config: self.config.clone(),
            clock: self.clock.clone(),
            authz: self.authz.clone(),
            tokens: crate::tokens::TokenUse::new(self.tokens.clone()),
            secrets: crate::secrets::SecretHeaders::new(self.secrets.clone()),
            audit: self.audit.clone(),
            sessions: self.sessions.clone(),
            admission: self.admission.clone(),
            metrics: self.metrics.clone(),
            agents: self.agents.clone(),
            dialer: crate::upstream::Dialer {
                agents: self.agents.clone(),
                tls: self.upstream_tls.clone(),
            },
            pins: self.pins.clone(),
        }
    }

    /// The handles of the control plane: the admin API, the report, the port audit,
    /// the alerts.
    pub fn control(&self) -> crate::control::Control {
        crate::control::Control {
            config: self.config.clone(),
            clock: self.clock.clone(),
            store: crate::control::StoreView::new(self.store.clone()),
            index: self.index.clone(),
            authz: self.authz.clone(),
            tokens: self.tokens.clone(),
            secrets: self.secrets.clone(),
            audit: self.audit.clone(),
            admission: self.admission.clone(),
            metrics: self.metrics.clone(),
            agents: self.agents.clone(),
            alerts: self.alerts.clone(),
            reloads: self.reloads.clone(),
            sessions: self.sessions.clone(),
            chain_key: self.chain_key.clone(),
            pins: self.pins.clone(),
        }
    }

    /// Revokes an agent ([`crate::control::Control::revoke_agent`]).
    pub async fn revoke_agent(&self, agent: &str, by: &str) -> Result<usize, StoreError> {
        self.control().revoke_agent(agent, by).await
    }

    /// The config in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config.current()
    }

    /// Follows the config in force: a session's way to hear of a reload.
    pub fn watch_config(&self) -> tokio::sync::watch::Receiver<Arc<Config>> {
        self.config.watch()
    }

    /// Puts `config` in force; sessions watching re-judge themselves against it.
    pub(crate) fn replace_config(&self, config: Arc<Config>) {
        self.metrics.add_services(config.services.keys().cloned());
        self.config.replace(config);
    }

    pub fn now(&self) -> UnixMillis {
        self.clock.now_ms()
    }

    /// Issues an access token ([`Tokens::issue`]).
    pub async fn issue(
        &self,
        req: &IssueRequest,
        by: &str,
    ) -> Result<(IssuedToken, TokenRecord), IssueError> {
        self.tokens.issue(req, by).await
    }

    /// Revokes a token ([`Tokens::revoke`]).
    pub async fn revoke(
        &self,
        id: &str,
        by: &str,
        reason: Option<&str>,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.tokens.revoke(id, by, reason).await
    }

    /// Sets an upstream credential ([`Secrets::set`]).
    pub async fn set_secret(
        &self,
        name: &str,
        value: &SecretString,
        by: &str,
    ) -> Result<(), SecretError> {
        self.secrets.set(name, value, by).await
    }

    /// Ends the live sessions and waits for their goodbyes ([`Sessions::end_all`]).
    /// Call once the listeners have stopped taking new ones.
    pub async fn end_sessions(&self) {
        self.sessions.end_all().await;
    }

    /// Plans `config` against the one in force and, unless `dry_run`, applies it
    /// ([`crate::reloads::Reloads::ask`]); nothing is recorded as the cluster's.
    pub async fn reload(
        &self,
        config: Config,
        by: &str,
        token_id: Option<&str>,
        dry_run: bool,
    ) -> Result<crate::reloads::Outcome, crate::reloads::ApplyError> {
        self.reloads.ask(config, by, token_id, dry_run).await
    }

    /// Stops the audit writer after it has written everything queued. Call once the
    /// listeners have drained and the sessions ended.
    pub async fn close(&self) {
        self.audit_stop.cancel();
        let task = self
            .audit_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    /// A fresh audit event at the gateway's clock.
    pub fn event(&self, kind: EventKind) -> AuditEvent {
        self.audit.event(kind)
    }

    /// `keyway admin reset`: revokes every live admin token and writes a new one to
    /// `<data_dir>/admin.token` ([`Tokens::reset_admin`]). Returns the ids revoked.
    pub async fn reset_admin(&mut self) -> Result<Vec<String>, OpenError> {
        let path = self.config().data_dir.join("admin.token");
        let revoked = self.tokens.reset_admin(&path, "(admin reset)").await?;
        self.admin_token_written = Some(path);
        Ok(revoked)
    }

    async fn ensure_admin_token(&mut self) -> Result<(), OpenError> {
        let path = self.config().data_dir.join("admin.token");
        if self.tokens.ensure_admin(&path).await? {
            self.admin_token_written = Some(path);
        }
        Ok(())
    }
}

/// A data folder others could write to may hold files they put there (a store, keys,
/// an admin credential of their own): it is closed to them from now on (0700), and
/// the operator is told to look.
fn warn_if_others_could_write(dir: &std::path::Path) {
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        tracing::warn!(
            path = %dir.display(),
            mode = %format!("{mode:04o}"),
            "the data folder was writable by group or others: anyone who could write there \
             could have replaced the store, the keys or the admin credential; it is now 0700; \
             check its contents"
        );
    }
}

fn log_key(what: &str, path: &std::path::Path, src: KeySource) {
    match src {
        KeySource::Env => tracing::info!("{what} read from the environment"),
        KeySource::File => tracing::debug!(path = %path.display(), "{what} read from file"),
        KeySource::Created => {
            tracing::info!(path = %path.display(), "{what} created (keep it; back it up apart from the database)")
        }
    }
}

/// The key of the audit log's hash chain, derived from the pepper (outside the
/// database): whoever can edit the store cannot re-link an edited chain.
pub fn audit_chain_key(pepper: &Pepper) -> keyway_store::ChainKey {
    pepper.hash(b"keyway audit chain key v1").0
}
