//! The bottom layer: what every other part of the gateway may use and that uses
//! nothing of the gateway's own. The config in force, the byte-stream and error
//! types shared by listeners and proxies, and the limits that hold everywhere.

use std::sync::Arc;
use std::time::Duration;

use keyway_core::config::Config;
use tokio::sync::watch;

/// The error type of bodies and services handed to hyper.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A byte stream to an upstream or from a client: TCP, TLS, or a stream through an
/// agent.
pub(crate) trait Stream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// Open connections one listener holds before it refuses more.
pub(crate) const MAX_CONNECTIONS: usize = 10_000;

/// How long a stopping listener waits for its connections' requests in flight, and
/// then the sessions for their goodbyes, each.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The config in force, replaced whole by a reload (`keyway apply`, SIGHUP). Cheap to
/// clone: every clone reads and watches the same value. Only the supervisor replaces
/// it (`ConfigInForce::replace`); the other parts read it or watch it.
#[derive(Clone)]
pub struct ConfigInForce(watch::Sender<Arc<Config>>);

// === impl ConfigInForce ===

impl ConfigInForce {
    pub fn new(config: Config) -> Self {
        Self(watch::Sender::new(Arc::new(config)))
    }

    /// The config in force now.
    pub fn current(&self) -> Arc<Config> {
        self.0.borrow().clone()
    }

    /// Follows the config in force: a session's way to hear of a reload.
    pub fn watch(&self) -> watch::Receiver<Arc<Config>> {
        self.0.subscribe()
    }

    /// Puts `config` in force; every watcher re-judges itself against it.
    pub(crate) fn replace(&self, config: Arc<Config>) {
        self.0.send_replace(config);
    }
}
