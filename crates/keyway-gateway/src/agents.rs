//! Agents: Keyway processes inside private networks that dial out to the gateway's
//! tunnel listener, so those networks open no inbound port.
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
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use keyway_core::tunnel::{AgentHello, Enroll, Renew};
use keyway_core::EventKind;
use keyway_core::{TokenKind, UnixMillis};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::gateway::Gateway;
use crate::tls::LocalCa;
use crate::tunnel::reply;

pub use crate::tokens::ENROLLMENT_TTL;
const HEARTBEAT: Duration = Duration::from_secs(10);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
/// Missed heartbeats after which a connection is closed.
const MISSED_HEARTBEATS: u32 = 3;
/// Live connections one agent may hold (instances × reconnects in flight).
const MAX_CONNECTIONS_PER_AGENT: usize = 16;

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
struct AgentConn {
    id: u64,
    send: SendRequest<Empty<Bytes>>,
    cancel: CancellationToken,
    version: String,
    peer: SocketAddr,
    connected_at: UnixMillis,
    last_heartbeat: AtomicI64,
}

/// What `keyway agent list` shows of an agent.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AgentStatus {
    pub name: String,
    /// `connected`, `disconnected` or `revoked`.
    pub state: String,
    pub connections: usize,
    pub version: Option<String>,
    pub last_heartbeat: Option<String>,
    pub peers: Vec<String>,
    pub services: Vec<String>,
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
    fn add(
        &self,
        agent: &str,
        issued: UnixMillis,
        conn: Arc<AgentConn>,
    ) -> Result<(), &'static str> {
        // Lock order: conns, then revoked (as in `status`).
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        if revoked.get(agent).is_some_and(|&at| issued < at) {
            return Err("agent_revoked");
        }
        let (list, _) = conns.entry(agent.to_owned()).or_default();
        if list.len() >= MAX_CONNECTIONS_PER_AGENT {
            return Err("too_many_connections");
        }
        list.push(conn);
        Ok(())
    }

    fn remove(&self, agent: &str, id: u64) {
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
                    .body(Empty::<Bytes>::new())
                    .map_err(|e| failed(e.to_string()))?;
                let mut send = conn.send.clone();
                let answered = async {
                    send.ready().await?;
                    send.send_request(req).await
                }
                .await;
                match answered {
                    Ok(resp) if resp.status() == StatusCode::OK => {
                        match hyper::upgrade::on(resp).await {
                            Ok(up) => {
                                return Ok(AgentStream {
                                    io: TokioIo::new(up),
                                    cut: Box::pin(conn.cancel.clone().cancelled_owned()),
                                })
                            }
                            Err(e) => why = e.to_string(),
                        }
                    }
                    Ok(resp) if resp.status() == StatusCode::FORBIDDEN => refusals += 1,
                    Ok(resp) => why = format!("the agent answered {}", resp.status()),
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
    pub fn status(&self, gw: &Gateway) -> Vec<AgentStatus> {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        gw.config()
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
    io: TokioIo<hyper::upgrade::Upgraded>,
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

/// The HTTP client's connector for a service behind an agent: each new upstream
/// connection of the pool is a stream through the agent.
#[derive(Clone)]
pub struct AgentConnector {
    pub gw: Arc<Gateway>,
    pub agent: String,
    pub timeout: Duration,
}

/// An upstream connection through an agent, as hyper's client pool holds it.
pub struct AgentConnection(TokioIo<AgentStream>);

impl tower_service::Service<http::Uri> for AgentConnector {
    type Response = AgentConnection;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<AgentConnection, DialError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), DialError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = dst
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let port = dst.port_u16().unwrap_or(80);
            let addr = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let stream = this
                .gw
                .agents
                .dial(&this.agent, &addr, this.timeout)
                .await?;
            Ok(AgentConnection(TokioIo::new(stream)))
        })
    }
}

impl hyper_util::client::legacy::connect::Connection for AgentConnection {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}

impl hyper::rt::Read for AgentConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for AgentConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Peer-chosen text for logs and the audit: printable ASCII, capped.
fn printable(s: &str, max: usize) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(max)
        .collect()
}

/// The agent a connection's client certificate names, and when it was issued.
fn presented_agent(tls: &TlsStream<TcpStream>) -> Option<(String, UnixMillis)> {
    let der = tls.get_ref().1.peer_certificates()?.first()?.clone();
    crate::tls::agent_identity(der.as_ref())
}

/// An agent trades its one-use enrollment token for a certificate.
pub async fn enroll(
    gw: &Arc<Gateway>,
    mut tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    e: Enroll,
    ca: &LocalCa,
) {
    let mut ev = gw.event(EventKind::AgentEnroll);
    ev.source = Some(peer.ip().to_canonical().to_string());
    let decided = async {
        let entry = gw
            .index
            .authenticate(&e.token, &gw.pepper, TokenKind::AgentEnrollment, gw.now())
            .map_err(|r| {
                ev.token_id = r.token_id.clone();
                r.reason.as_str()
            })?;
        ev.token_id = Some(entry.id().to_owned());
        // The token names its agent; the agent must still be in the config.
        let agent = entry.record.principal.clone();
        ev.principal = Some(agent.clone());
        if !gw.config().agents.contains_key(&agent) {
            return Err("unknown_agent");
        }
        if gw.agents.is_revoked(&agent, entry.record.created_at) {
            return Err("agent_revoked");
        }
        // A malformed request does not spend the token.
        let cert = ca
            .sign_agent(&e.csr_pem, &agent, gw.now(), gw.config().agent_cert_ttl)
            .map_err(|_| "bad_certificate_request")?;
        match gw.tokens.use_once(entry.id()).await {
            Ok(true) => Ok(cert),
            Ok(false) => Err("revoked"),
            Err(_) => Err("store_unavailable"),
        }
    }
    .await;
    if let Err(reason) = decided {
        tracing::warn!(%peer, reason, "an agent enrollment was refused");
        // A spent or expired token still names its agent: say which was targeted.
        if ev.principal.is_none() {
            ev.principal = ev
                .token_id
                .as_deref()
                .and_then(|id| gw.tokens.token(id))
                .map(|e| e.record.principal.clone());
        }
    }
    answer_with_certificate(gw, &mut tls, ev, decided, "enrollment refused").await;
}

/// Audits an enrollment or renewal and answers it: the certificate, or a refusal.
async fn answer_with_certificate(
    gw: &Gateway,
    tls: &mut TlsStream<TcpStream>,
    mut ev: keyway_store::AuditEvent,
    decided: Result<String, &'static str>,
    refusal: &str,
) {
    match decided {
        Ok(cert) => {
            ev.allow();
            gw.audit.record_reliably(ev).await;
            reply(tls, None, Some(cert)).await;
        }
        Err(reason) => {
            ev.deny_with(reason);
            // Bounded like every denial: unauthenticated peers cannot fill the queue.
            gw.audit.record(ev);
            reply(tls, Some(refusal), None).await;
        }
    }
}

/// An enrolled agent renews its certificate before it expires.
pub async fn renew(
    gw: &Arc<Gateway>,
    mut tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    r: Renew,
    ca: &LocalCa,
) {
    let mut ev = gw.event(EventKind::AgentRenew);
    ev.source = Some(peer.ip().to_canonical().to_string());
    let decided = match presented_agent(&tls) {
        Some((agent, issued)) if gw.config().agents.contains_key(&agent) => {
            ev.principal = Some(agent.clone());
            if gw.agents.is_revoked(&agent, issued) {
                Err("agent_revoked")
            } else {
                ca.sign_agent(&r.csr_pem, &agent, gw.now(), gw.config().agent_cert_ttl)
                    .map_err(|_| "bad_certificate_request")
            }
        }
        _ => Err("no_agent_certificate"),
    };
    answer_with_certificate(gw, &mut tls, ev, decided, "renewal refused").await;
}

/// An enrolled agent's connection: checked, then HTTP/2 with the gateway as the
/// client until it closes, stops answering heartbeats, the agent is revoked, or the
/// gateway stops ([`Gateway::end_sessions`]).
pub async fn serve(
    gw: &Arc<Gateway>,
    mut tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    h: AgentHello,
) {
    let mut ev = gw.event(EventKind::AgentConnect);
    ev.source = Some(peer.ip().to_canonical().to_string());
    let checked = match presented_agent(&tls) {
        None => Err("no_agent_certificate"),
        Some((agent, _)) if agent != h.agent => Err("certificate_for_another_agent"),
        Some((agent, _)) if !gw.config().agents.contains_key(&agent) => Err("unknown_agent"),
        Some((agent, issued)) if gw.agents.is_revoked(&agent, issued) => Err("agent_revoked"),
        Some((agent, issued)) => Ok((agent, issued)),
    };
    ev.principal = Some(printable(&h.agent, 64));
    let (agent, issued) = match checked {
        Ok(a) => a,
        Err(reason) => {
            ev.deny_with(reason);
            gw.audit.record(ev);
            tracing::warn!(%peer, reason, "an agent connection was refused");
            reply(&mut tls, Some("agent refused"), None).await;
            return;
        }
    };
    reply(&mut tls, None, None).await;
    let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(HEARTBEAT)
        .keep_alive_timeout(HEARTBEAT_TIMEOUT)
        .keep_alive_while_idle(true)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
        .await;
    let Ok((send, connection)) = handshake else {
        return;
    };
    let version = printable(&h.version, 32);
    ev.allow();
    ev.detail = json!({ "version": version });
    gw.audit.record_reliably(ev).await;
    tracing::info!(agent, %peer, version, "agent connected");
    let conn = Arc::new(AgentConn {
        id: gw.agents.ids.fetch_add(1, Ordering::Relaxed),
        send,
        cancel: CancellationToken::new(),
        version,
        peer,
        connected_at: gw.now(),
        last_heartbeat: AtomicI64::new(gw.now()),
    });
    if let Err(reason) = gw.agents.add(&agent, issued, conn.clone()) {
        let mut ev = gw.event(EventKind::AgentConnect);
        ev.principal = Some(agent);
        ev.source = Some(peer.ip().to_canonical().to_string());
        ev.deny_with(reason);
        gw.audit.record(ev);
        return;
    }
    let ended = tokio::select! {
        r = connection => if r.is_ok() { "closed" } else { "error" },
        () = conn.cancel.cancelled() => "revoked",
        () = heartbeats(gw, &conn) => "heartbeats_missed",
        () = gw.sessions.stopping() => "shutdown",
    };
    gw.agents.remove(&agent, conn.id);
    // Streams through this connection end with it, whatever ended it.
    conn.cancel.cancel();
    tracing::info!(agent, %peer, ended, "agent disconnected");
    let mut ev = gw.event(EventKind::AgentDisconnect);
    ev.principal = Some(agent);
    ev.source = Some(peer.ip().to_canonical().to_string());
    ev.detail = json!({
        "end": ended,
        "duration_ms": gw.now().saturating_sub(conn.connected_at),
    });
    // Under `fail_closed` it waits for room in the audit queue, as a session's end
    // does.
    gw.audit.reserve_waiting().await.send(ev);
}

/// Asks the agent `GET /health` every [`HEARTBEAT`]; returns after
/// [`MISSED_HEARTBEATS`] in a row go unanswered.
async fn heartbeats(gw: &Gateway, conn: &AgentConn) {
    let mut missed = 0;
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(req) = Request::get("/health").body(Empty::<Bytes>::new()) else {
            return;
        };
        let mut send = conn.send.clone();
        let answered = tokio::time::timeout(HEARTBEAT_TIMEOUT, async {
            send.ready().await?;
            send.send_request(req).await
        })
        .await;
        match answered {
            Ok(Ok(resp)) if resp.status().is_success() => {
                missed = 0;
                conn.last_heartbeat.store(gw.now(), Ordering::Relaxed);
            }
            _ => {
                missed += 1;
                if missed >= MISSED_HEARTBEATS {
                    return;
                }
            }
        }
    }
}
