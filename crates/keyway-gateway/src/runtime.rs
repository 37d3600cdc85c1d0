//! The bottom layer: what every other part of the gateway may use and that uses
//! nothing of the gateway's own. The config in force, the byte-stream and error
//! types shared by listeners and proxies, the limits that hold everywhere, and a
//! future polled only when it woke (`WhenWoken`), for the watchers beside relays.

use std::sync::Arc;
use std::time::Duration;

use keyway_core::config::Config;
use tokio::sync::watch;

mod rewound;
mod woken;

pub(crate) use rewound::Rewound;
pub(crate) use woken::WhenWoken;

/// The name of the web console's session cookie. Here, below the
/// proxies, because the HTTP proxy strips it from every request it forwards.
pub const CONSOLE_COOKIE: &str = "keyway_console";

/// The error type of bodies and services handed to hyper.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A byte stream to an upstream or from a client: TCP, TLS, or a stream through an
/// agent.
pub(crate) trait Stream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// How many connections one listener holds at once, and how they are shared out
/// between sources. A source is an IPv4 address or an IPv6 /64, as for the
/// blocklist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    /// In all.
    pub total: usize,
    /// From one source.
    pub per_source: usize,
    /// The last free slots, kept for sources that hold fewer than `reserved_below`
    /// connections: a few sources that fill the listener still leave room for
    /// everyone else's first connection or two.
    pub reserved: usize,
    pub reserved_below: usize,
}

/// Each data listener (a service's, the tunnel's). One source may hold a quarter of
/// it: enough for a NAT or a load balancer in front of many clients, not the whole
/// listener. (`bench/idle.py` spreads its 10,000 connections over loopback sources.)
pub const DATA_CAPS: ConnectionCaps = ConnectionCaps {
    total: 10_000,
    per_source: 2_500,
    reserved: 0,
    reserved_below: 0,
};

/// The admin listener and the token endpoint, each its own: small APIs whose clients
/// hold a connection or two. Filling one takes 8 sources, then 16 more for the
/// reserve, each holding connections that [`FIRST_REQUEST_TIMEOUT`] closes.
pub const CONTROL_CAPS: ConnectionCaps = ConnectionCaps {
    total: 256,
    per_source: 24,
    reserved: 64,
    reserved_below: 4,
};

/// The admin listener's and the token endpoint's deadline for a new connection to
/// finish its TLS handshake and its first request's header, counted from accept:
/// short, since these clients have not authenticated yet. After the first request
/// [`CONTROL_IDLE_TIMEOUT`] holds instead.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The admin listener's and the token endpoint's keep-alive idle time, which is also
/// the time for each later request's header (hyper counts both as one).
pub const CONTROL_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Whether this gateway should be sent traffic: `/healthz` answers from it, and the
/// authorizer refuses everything while the gateway is behind a shared store.
#[derive(Debug, Default)]
pub struct Health {
    /// Not caught up with the shared store for longer than `store_max_lag`.
    behind: std::sync::atomic::AtomicBool,
    /// Stopping: the load balancer should move away.
    draining: std::sync::atomic::AtomicBool,
}

// === impl Health ===

impl Health {
    pub fn behind(&self) -> bool {
        self.behind.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Sets whether it is behind; returns whether that changed.
    pub fn set_behind(&self, behind: bool) -> bool {
        self.behind
            .swap(behind, std::sync::atomic::Ordering::AcqRel)
            != behind
    }

    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a load balancer should send it requests.
    pub fn serving(&self) -> bool {
        !self.behind() && !self.draining()
    }
}
