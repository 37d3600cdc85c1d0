//! Agents' live connections: the registry the gateway dials upstreams through, and
//! the revocations it enforces. The tunnel's side (enrollment, renewal, an agent's
//! connection and its heartbeats) is `tunnel/agents.rs`.
//!
//! Agents are Keyway processes inside private networks that dial out to the
//! gateway's tunnel listener, so those networks open no inbound port.
//!
//! - **Enrollment**: `keyway agent enroll NAME` mints a one-use token (1 h). The
//!   agent sends it with a certificate request for a key it made itself; the gateway
//!   spends the token and signs a short-lived client certificate with its local CA.
//!   A replayed token is refused and audited.
//! - **Serving**: the agent connects with that certificate (mTLS) and says which agent
//!   it is; the connection then carries HTTP/2 with the gateway as the client. Each
//!   upstream connection is a `CONNECT host:port` stream (flow-controlled by HTTP/2),
//!   which the agent may refuse (its `allow_upstreams`).
//! - **Revocation**: `keyway agent revoke NAME` closes the agent's connections at once
//!   and refuses its certificates issued before then, across restarts.
//!
//! Several connections of one agent share the load (round-robin); a dead one is
//! skipped, and its in-flight streams fail.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use keyway_core::tunnel::H2Stream;
use keyway_core::{DenyReason, UnixMillis};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

pub use keyway_core::api::AgentStatus;
use keyway_core::config::Config;

pub use crate::tokens::ENROLLMENT_TTL;
/// Live connections one agent may hold (instances × reconnects in flight).
const MAX_CONNECTIONS_PER_AGENT: usize = 16;

/// Why an agent's enrollment, renewal or connection was refused, as its audit event
/// says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentRefusal {
    /// The enrollment token was refused, for this reason.
    Token(DenyReason),
    /// The token was already spent (a replay, or a race lost).
    Spent,
    UnknownAgent,
    AgentRevoked,
    BadCertificateRequest,
    NoAgentCertificate,
    CertificateForAnotherAgent,
    TooManyConnections,
    StoreUnavailable,
}

/// Why an agent's connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentEnd {
    Closed,
    Error,
    Revoked,
    HeartbeatsMissed,
    Shutdown,
}

/// Why an upstream connection through an agent was not made.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("no connection of agent `{0}` is up")]
    NoAgent(String),
    #[error("the agent refused this upstream (not in its allow_upstreams)")]
    Refused,
    #[error("through agent `{agent}`: {why}")]
    Failed { agent: String, why: String },
}

/// The agents' live connections and revocations.
#[derive(Default)]
pub struct Registry {
    conns: Mutex<HashMap<String, Live>>,
    /// Agent → certificates issued before this time (Unix ms) are refused.
    revoked: Mutex<HashMap<String, UnixMillis>>,
    ids: AtomicU64,
}

/// An agent's live connections, and its round-robin counter.
type Live = (Vec<Arc<AgentConn>>, usize);

/// One live connection of an agent.
pub(crate) struct AgentConn {
    pub(crate) id: u64,
    pub(crate) send: SendRequest<Bytes>,
    /// Fired when the connection ends or the agent is revoked: its streams end too.
    pub(crate) cancel: CancellationToken,
    version: String,
    peer: SocketAddr,
    pub(crate) connected_at: UnixMillis,
    pub(crate) last_heartbeat: AtomicI64,
}

// === impl AgentRefusal ===

impl AgentRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentRefusal::Token(reason) => reason.as_str(),
            // A replayed token reads as revoked: it was revoked when it was spent.
            AgentRefusal::Spent => "revoked",
            AgentRefusal::UnknownAgent => "unknown_agent",
            AgentRefusal::AgentRevoked => "agent_revoked",
            AgentRefusal::BadCertificateRequest => "bad_certificate_request",
            AgentRefusal::NoAgentCertificate => "no_agent_certificate",
            AgentRefusal::CertificateForAnotherAgent => "certificate_for_another_agent",
            AgentRefusal::TooManyConnections => "too_many_connections",
            AgentRefusal::StoreUnavailable => "store_unavailable",
        }
    }
}

// === impl AgentEnd ===

impl AgentEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentEnd::Closed => "closed",
            AgentEnd::Error => "error",
            AgentEnd::Revoked => "revoked",
            AgentEnd::HeartbeatsMissed => "heartbeats_missed",
            AgentEnd::Shutdown => "shutdown",
        }
    }
}

// === impl Registry ===

impl Registry {
    pub fn new(revocations: Vec<(String, UnixMillis)>) -> Self {
        Self {
            revoked: Mutex::new(revocations.into_iter().collect()),
            ..Self::default()
        }
    }

    /// Whether a certificate of `agent` issued at `issued_at` is refused.
    pub fn is_revoked(&self, agent: &str, issued_at: UnixMillis) -> bool {
        let revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        revoked.get(agent).is_some_and(|&at| issued_at < at)
    }

    /// Refuses the agent's certificates issued before `at` and closes its
    /// connections now. Returns how many were closed.
    pub fn revoke(&self, agent: &str, at: UnixMillis) -> usize {
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(agent.to_owned(), at);
        let conns = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(agent)
            .unwrap_or_default()
            .0;
        for c in &conns {
            c.cancel.cancel();
        }
        conns.len()
    }

    /// Registers a connection of `agent` whose certificate was issued at `issued`,
    /// unless the agent was revoked meanwhile or holds its maximum already: the check
    /// and the registration are one step, so a revocation cannot fall between them.
    pub(crate) fn add(
        &self,
        agent: &str,
        issued: UnixMillis,
        send: SendRequest<Bytes>,
        version: String,
        peer: SocketAddr,
        now: UnixMillis,
    ) -> Result<Arc<AgentConn>, AgentRefusal> {
        let conn = Arc::new(AgentConn {
            id: self.ids.fetch_add(1, Ordering::Relaxed),
            send,
            cancel: CancellationToken::new(),
            version,
            peer,
            connected_at: now,
            last_heartbeat: AtomicI64::new(now),
        });
        // Lock order: conns, then revoked (as in `status`).
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        if revoked.get(agent).is_some_and(|&at| issued < at) {
            return Err(AgentRefusal::AgentRevoked);
        }
        let (list, _) = conns.entry(agent.to_owned()).or_default();
        if list.len() >= MAX_CONNECTIONS_PER_AGENT {
            return Err(AgentRefusal::TooManyConnections);
        }
        list.push(conn.clone());
        Ok(conn)
    }

    pub(crate) fn remove(&self, agent: &str, id: u64) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((list, _)) = conns.get_mut(agent) {
            list.retain(|c| c.id != id);
            if list.is_empty() {
                conns.remove(agent);
            }
        }
    }

    /// A stream to `addr` through one of `agent`'s connections, in turn; a
    /// connection that fails or refuses is skipped for the next, all within
    /// `timeout`. `Refused` only when every connection refused.
    pub async fn dial(
        &self,
        agent: &str,
        addr: &str,
        timeout: Duration,
    ) -> Result<AgentStream, DialError> {
        let (conns, start) = {
            let mut map = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            match map.get_mut(agent) {
                Some((list, next)) if !list.is_empty() => {
                    *next = next.wrapping_add(1);
                    (list.clone(), *next)
                }
                _ => return Err(DialError::NoAgent(agent.to_owned())),
            }
        };
        let failed = |why: String| DialError::Failed {
            agent: agent.to_owned(),
            why,
        };
        let attempts = async {
            let (mut why, mut refusals) = (String::new(), 0);
            for i in 0..conns.len() {
                let conn = &conns[(start + i) % conns.len()];
                if conn.cancel.is_cancelled() {
                    continue;
                }
                let req = Request::builder()
                    .method(Method::CONNECT)
                    .uri(addr)
                    .body(())
                    .map_err(|e| failed(e.to_string()))?;
                let answered = async {
                    let mut send = conn.send.clone().ready().await?;
                    let (resp, stream) = send.send_request(req, false)?;
                    Ok::<_, h2::Error>((resp.await?, stream))
                }
                .await;
                match answered {
                    Ok((resp, stream)) if resp.status() == StatusCode::OK => {
                        return Ok(AgentStream {
                            io: H2Stream::new(stream, resp.into_body()),
                            cut: Box::pin(conn.cancel.clone().cancelled_owned()),
                        })
                    }
                    Ok((resp, _)) if resp.status() == StatusCode::FORBIDDEN => refusals += 1,
                    Ok((resp, _)) => why = format!("the agent answered {}", resp.status()),
                    Err(e) => why = e.to_string(),
                }
            }
            if refusals > 0 && refusals == conns.len() {
                return Err(DialError::Refused);
            }
            Err(failed(why))
        };
        tokio::time::timeout(timeout, attempts)
            .await
            .unwrap_or_else(|_| Err(failed("timed out".into())))
    }

    /// Every configured agent's state.
    pub fn status(&self, config: &Config) -> Vec<AgentStatus> {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        config
            .agents
            .values()
            .map(|a| {
                let live = conns.get(&a.name).map(|c| c.0.clone()).unwrap_or_default();
                let state = if !live.is_empty() {
                    "connected"
                } else if revoked.contains_key(&a.name) {
                    "revoked"
                } else {
                    "disconnected"
                };
                let beat = live
                    .iter()
                    .map(|c| c.last_heartbeat.load(Ordering::Relaxed))
                    .max();
                AgentStatus {
                    name: a.name.clone(),
                    state: state.into(),
                    connections: live.len(),
                    version: live.first().map(|c| c.version.clone()),
                    last_heartbeat: beat.map(keyway_core::clock::format_ms),
                    peers: live.iter().map(|c| c.peer.to_string()).collect(),
                    services: a.services.clone(),
                }
            })
            .collect()
    }
}

/// A stream to an upstream through an agent. It fails at once when its agent
/// connection ends or the agent is revoked: the HTTP/2 stream alone would wait on a
/// connection nobody drives any more.
pub struct AgentStream {
    io: H2Stream,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl AgentStream {
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.cut.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the agent connection ended",
            ));
        }
        Ok(())
    }
}

impl AsyncRead for AgentStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for AgentStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
