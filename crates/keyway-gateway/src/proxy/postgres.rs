//! PostgreSQL, protocol-aware.
//!
//! The client logs in with any user name and its Keyway token as the password
//! (`AuthenticationCleartextPassword`, only inside TLS or on loopback unless the
//! service allows plaintext). The gateway checks the token like any other, then logs in
//! upstream as the role the token's grant maps to, with the password stored sealed in
//! Keyway (SCRAM-SHA-256, with channel binding over TLS; md5, cleartext or trust only
//! where no one on the path can take them: `login.rs`), and relays.
//! The client never learns the database password; read-only is the database role's
//! business, not SQL parsing.
//!
//! After start-up the bytes are relayed as they are, with two exceptions: the client's
//! `Q` (simple query), `P` (Parse) and `F` (function call) frames are read on the way
//! through for the audit (text capped and redacted, never `B` parameters; each goes
//! once its event is committed, or with `audit_holds = "answer"` at once, its answer
//! held until then), and the upstream's `BackendKeyData` is replaced by a pair of
//! Keyway's own, so a `CancelRequest` works through the gateway only for a session
//! whose token is still valid. Revocation, expiry, a reload the session no longer
//! fits, or the gateway stopping ends the session with `FATAL 57P01` (when the cut
//! falls between two upstream messages; mid-message it just closes) and cancels the
//! query the upstream was running, if any.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use keyway_core::config::{PgHolds, PostgresService, Service, ServiceKind};
use keyway_core::pgwire::{self, Capture, MAX_AUTH_MESSAGE, MAX_STATEMENT};
use keyway_core::DenyReason;
use keyway_core::EventKind;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use rand::Rng;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditSink;
use crate::authz::{Admitted, Ask, Attempt, Protocol, Reached};
use crate::index::Entry;
use crate::proxy::Handles;
use crate::sessions::SessionEnd;

/// Time for the whole start-up, TLS and login included.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Relay buffers: small, since a gateway holds thousands of idle sessions.
const RELAY_BUFFER: usize = 16 * 1024;
/// Time to tell a client why its session ends, and to close it.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

use crate::Stream as Io;

mod cancel;
mod login;
mod relay;
mod startup;
mod statements;
mod wire;

use statements::StatementAudit;
use wire::{error_response, error_text, frame, read_message};

/// Keyway's cancel key → the upstream's, and whose session it is.
pub struct CancelTarget {
    pid: i32,
    key: i32,
    entry: Arc<Entry>,
}

/// The cancel keys of one service's live sessions. Shared by the proxies a reload
/// puts in each other's place, so a session that outlives its proxy can still be
/// cancelled through the new one.
pub type CancelKeys = Arc<Mutex<HashMap<(i32, i32), CancelTarget>>>;

/// The PostgreSQL listener of one service.
pub struct PgProxy {
    h: Handles,
    svc: Service,
    pg: PostgresService,
    tls: Option<TlsAcceptor>,
    cancels: CancelKeys,
}

/// What a client opening a connection asked for.
enum Opening {
    /// A session: its start-up parameters, its password (the token), and whether
    /// it came over TLS, with the thumbprint of the certificate it showed.
    Login {
        params: HashMap<String, String>,
        token: String,
        tls: bool,
        cert: Option<String>,
    },
    /// A `CancelRequest`'s body.
    Cancel(Vec<u8>),
}

/// The answer to a client still logging in when the gateway stops.
fn shutting_down() -> Refused {
    Refused::Client("57P03", "the Keyway gateway is shutting down".into())
}

/// Why a start-up ended without a session.
enum Refused {
    /// Say this to the client (SQLSTATE, message), then close.
    Client(&'static str, String),
    /// Just close.
    Silent,
}

impl Refused {
    /// For the audit event: what the client was told, or that it was not.
    fn text(&self) -> &str {
        match self {
            Refused::Client(_, msg) => msg,
            Refused::Silent => "closed during start-up",
        }
    }
}

/// A cancel key handed to a client, removed from the map when dropped (the session
/// ended, or its start-up failed after `BackendKeyData`).
struct CancelKey<'a> {
    map: &'a Mutex<HashMap<(i32, i32), CancelTarget>>,
    key: (i32, i32),
}

impl CancelKey<'_> {
    /// Removes the key now, returning whose it was.
    fn take(self) -> Option<CancelTarget> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key)
    }
}

impl Drop for CancelKey<'_> {
    fn drop(&mut self) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

// === impl PgProxy ===

impl PgProxy {
    /// The proxy of `svc`, if it is a PostgreSQL service; `cancels` holds the keys
    /// of the service's sessions (those of the proxy this one replaces).
    pub fn new(
        h: Handles,
        svc: Service,
        tls: Option<TlsAcceptor>,
        cancels: CancelKeys,
    ) -> Option<Arc<Self>> {
        let ServiceKind::Postgres(pg) = svc.kind.clone() else {
            return None;
        };
        Some(Arc::new(Self {
            h,
            svc,
            pg,
            tls,
            cancels,
        }))
    }

    /// Accepts sessions until `shutdown` (a reload's or the gateway's). The sessions
    /// are the gateway's ([`Sessions::end_all`](crate::sessions::Sessions::end_all)): a reload does not end them.
    pub async fn serve(self: Arc<Self>, listener: Arc<TcpListener>, shutdown: CancellationToken) {
        let slots = crate::listener::Slots::new(crate::DATA_CAPS);
        while let Some((stream, peer, slot)) = crate::listener::next_connection(
            &listener,
            &self.svc.name,
            &slots,
            &self.h.admission,
            &shutdown,
        )
        .await
        {
            let this = self.clone();
            self.h.sessions.spawn(async move {
                this.session(stream, peer).await;
                drop(slot);
            });
        }
    }

    async fn session(&self, stream: TcpStream, peer: SocketAddr) {
        let mut client: Box<dyn Io> = Box::new(stream);
        let started = tokio::time::timeout(STARTUP_TIMEOUT, self.start(&mut client, peer)).await;
        let (upstream, entry, role, cancel_key) = match started {
            Ok(Ok(x)) => x,
            Ok(Err(Refused::Client(code, msg))) => {
                let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
                    let _ = client.write_all(&error_response("FATAL", code, &msg)).await;
                    let _ = client.shutdown().await;
                })
                .await;
                return;
            }
            Ok(Err(Refused::Silent)) | Err(_) => return,
        };
        let ended = self
            .relay(client, upstream, &entry, &role, peer.ip().to_canonical())
            .await;
        let target = cancel_key.and_then(CancelKey::take);
        // The upstream backend would finish a running query (a long export, a lock
        // held) before noticing its client is gone: stop it now. An idle one notices
        // at once (and a gateway stopping must not open a connection per session).
        if ended.why != SessionEnd::Closed && ended.busy {
            if let Some(t) = target {
                self.cancel_upstream(t.pid, t.key).await;
            }
        }
        // Only then, with the sockets closed and the query stopped, its event: under
        // `fail_closed` it waits for room in the audit queue, as statements do.
        let _ = self.h.audit.reserve_waiting().await.send(ended.event);
    }
}

#[cfg(test)]
mod tests;
