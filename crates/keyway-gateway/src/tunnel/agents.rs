//! The tunnel's side of agents: an agent enrolling (its one-use token for a
//! certificate), renewing its certificate, and serving (its connection, checked, then
//! HTTP/2 with the gateway as the client, kept alive by heartbeats, registered in the
//! [`Registry`](crate::agents::Registry) the proxies dial through).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use keyway_core::head::Bearer;
use keyway_core::tunnel::{self, AgentHello, Enroll, Renew};
use keyway_core::{EventKind, TokenKind, UnixMillis};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::reply;
use crate::agents::{AgentConn, AgentEnd, AgentRefusal};
use crate::proxy::Handles;
use crate::tls::LocalCa;

const HEARTBEAT: Duration = tunnel::AGENT_HEARTBEAT;
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
/// Missed heartbeats after which a connection is closed.
const MISSED_HEARTBEATS: u32 = 3;
/// Peer-chosen text for logs and the audit: printable ASCII, capped.
fn printable(s: &str, max: usize) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(max)
        .collect()
}

/// The agent a connection's client certificate names, and when it was issued: only
/// a certificate the local CA issued names one (the tunnel may take others, for
/// tokens bound to them, from `tunnel_client_ca`).
fn presented_agent(tls: &TlsStream<TcpStream>, ca: &LocalCa) -> Option<(String, UnixMillis)> {
    let der = tls.get_ref().1.peer_certificates()?.first()?.clone();
    if !ca.issued(&der) {
        return None;
    }
    crate::tls::agent_identity(der.as_ref())
}

/// An agent trades its one-use enrollment token for a certificate.
pub async fn enroll(
    h: &Handles,
    mut tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    e: Enroll,
    ca: &LocalCa,
) {
    let source = peer.ip().to_canonical();
    let mut ev = h.audit.event(EventKind::AgentEnroll);
    ev.source = Some(source.to_string());
    let decided = async {
        let entry = h
            .authz
            .authenticate(
                TokenKind::AgentEnrollment,
                Bearer::Token(&e.token),
                Some(source),
                None,
            )
            .map_err(|r| {
                ev.token_id = r.token_id.clone();
                AgentRefusal::Token(r.reason)
            })?;
        ev.token_id = Some(entry.id().to_owned());
        // The token names its agent; the agent must still be in the config.
        let agent = entry.record.principal.clone();
        ev.principal = Some(agent.clone());
        if !h.config().agents.contains_key(&agent) {
            return Err(AgentRefusal::UnknownAgent);
        }
        if h.agents.is_revoked(&agent, entry.record.created_at) {
            return Err(AgentRefusal::AgentRevoked);
        }
        // A malformed request does not spend the token.
        let cert = ca
            .sign_agent(&e.csr_pem, &agent, h.now(), h.config().agent_cert_ttl)
            .map_err(|_| AgentRefusal::BadCertificateRequest)?;
        match h.tokens.use_once(entry.id()).await {
            Ok(true) => Ok(cert),
            Ok(false) => Err(AgentRefusal::Spent),
            Err(_) => Err(AgentRefusal::StoreUnavailable),
        }
    }
    .await;
    if let Err(reason) = decided {
        tracing::warn!(%peer, reason = reason.as_str(), "an agent enrollment was refused");
        // A spent or expired token still names its agent: say which was targeted.
        if ev.principal.is_none() {
            ev.principal = ev
                .token_id
                .as_deref()
                .and_then(|id| h.tokens.token(id))
                .map(|e| e.record.principal.clone());
        }
    }
    answer_with_certificate(h, &mut tls, ev, decided, "enrollment refused").await;
}

/// Audits an enrollment or renewal and answers it: the certificate, or a refusal.
async fn answer_with_certificate(
    h: &Handles,
    tls: &mut TlsStream<TcpStream>,
    mut ev: keyway_store::AuditEvent,
    decided: Result<String, AgentRefusal>,
    refusal: &str,
) {
    match decided {
        Ok(cert) => {
            ev.allow();
            // The certificate goes out once its event is committed.
            if !h.audit.record_reliably(ev).await.wait().await {
                reply(tls, Some("unavailable"), None).await;
                return;
            }
            reply(tls, None, Some(cert)).await;
        }
        Err(reason) => {
            ev.deny_with(reason.as_str());
            // Bounded like every denial: unauthenticated peers cannot fill the queue.
            let _ = h.audit.record(ev).wait().await;
            reply(tls, Some(refusal), None).await;
        }
    }
}

/// An enrolled agent renews its certificate before it expires.
pub async fn renew(
    h: &Handles,
    mut tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    r: Renew,
    ca: &LocalCa,
) {
    let mut ev = h.audit.event(EventKind::AgentRenew);
    ev.source = Some(peer.ip().to_canonical().to_string());
    let decided = match presented_agent(&tls, ca) {
        Some((agent, issued)) if h.config().agents.contains_key(&agent) => {
            ev.principal = Some(agent.clone());
            if h.agents.is_revoked(&agent, issued) {
                Err(AgentRefusal::AgentRevoked)
            } else {
                ca.sign_agent(&r.csr_pem, &agent, h.now(), h.config().agent_cert_ttl)
                    .map_err(|_| AgentRefusal::BadCertificateRequest)
            }
        }
        _ => Err(AgentRefusal::NoAgentCertificate),
    };
    answer_with_certificate(h, &mut tls, ev, decided, "renewal refused").await;
}

/// An enrolled agent's connection: checked, then HTTP/2 with the gateway as the
/// client until it closes, stops answering heartbeats, the agent is revoked, or the
/// gateway stops ([`Sessions::end_all`](crate::sessions::Sessions::end_all)).
pub async fn serve(
    h: &Handles,
    mut tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    hello: AgentHello,
    ca: &LocalCa,
) {
    let mut ev = h.audit.event(EventKind::AgentConnect);
    ev.source = Some(peer.ip().to_canonical().to_string());
    let checked = match presented_agent(&tls, ca) {
        None => Err(AgentRefusal::NoAgentCertificate),
        Some((agent, _)) if agent != hello.agent => Err(AgentRefusal::CertificateForAnotherAgent),
        Some((agent, _)) if !h.config().agents.contains_key(&agent) => {
            Err(AgentRefusal::UnknownAgent)
        }
        Some((agent, issued)) if h.agents.is_revoked(&agent, issued) => {
            Err(AgentRefusal::AgentRevoked)
        }
        Some((agent, issued)) => Ok((agent, issued)),
    };
    ev.principal = Some(printable(&hello.agent, 64));
    let (agent, issued) = match checked {
        Ok(a) => a,
        Err(reason) => {
            ev.deny_with(reason.as_str());
            let _ = h.audit.record(ev).wait().await;
            tracing::warn!(%peer, reason = reason.as_str(), "an agent connection was refused");
            reply(&mut tls, Some("agent refused"), None).await;
            return;
        }
    };
    reply(&mut tls, None, None).await;
    // h2 itself, not hyper: a stream's bytes go from the task relaying them to the
    // connection, with no task of hyper's between (`tunnel::H2Stream`).
    let handshake = h2::client::Builder::new()
        // What hyper set, and the gateway's listeners keep: a compromised agent
        // pushes nothing and sends no header block above the listeners' bound.
        .enable_push(false)
        .max_header_list_size(tunnel::AGENT_H2_MAX_HEADERS)
        .initial_max_send_streams(100)
        .max_frame_size(tunnel::AGENT_H2_FRAME)
        .initial_window_size(tunnel::AGENT_H2_STREAM_WINDOW)
        .initial_connection_window_size(tunnel::AGENT_H2_CONN_WINDOW)
        .max_send_buffer_size(tunnel::AGENT_H2_SEND_BUF)
        .handshake::<_, Bytes>(tls)
        .await;
    let Ok((send, connection)) = handshake else {
        return;
    };
    let version = printable(&hello.version, 32);
    ev.allow();
    ev.detail = json!({ "version": version });
    // The agent carries nothing until its connection is on record.
    if !h.audit.record_reliably(ev).await.wait().await {
        return;
    }
    tracing::info!(agent, %peer, version, "agent connected");
    let added = h.agents.add(&agent, issued, send, version, peer, h.now());
    let conn = match added {
        Ok(conn) => conn,
        Err(reason) => {
            let mut ev = h.audit.event(EventKind::AgentConnect);
            ev.principal = Some(agent);
            ev.source = Some(peer.ip().to_canonical().to_string());
            ev.deny_with(reason.as_str());
            let _ = h.audit.record(ev);
            return;
        }
    };
    let ended = tokio::select! {
        r = connection => if r.is_ok() { AgentEnd::Closed } else { AgentEnd::Error },
        () = conn.cancel.cancelled() => AgentEnd::Revoked,
        () = heartbeats(h, &conn) => AgentEnd::HeartbeatsMissed,
        () = h.sessions.stopping() => AgentEnd::Shutdown,
    };
    h.agents.remove(&agent, conn.id);
    // Streams through this connection end with it, whatever ended it.
    conn.cancel.cancel();
    tracing::info!(agent, %peer, ended = ended.as_str(), "agent disconnected");
    let mut ev = h.audit.event(EventKind::AgentDisconnect);
    ev.principal = Some(agent);
    ev.source = Some(peer.ip().to_canonical().to_string());
    ev.detail = json!({
        "end": ended.as_str(),
        "duration_ms": h.now().saturating_sub(conn.connected_at),
    });
    // Under `fail_closed` it waits for room in the audit queue, as a session's end
    // does.
    let _ = h.audit.reserve_waiting().await.send(ev);
}

/// Asks the agent `GET /health` every [`HEARTBEAT`]; returns after
/// [`MISSED_HEARTBEATS`] in a row go unanswered.
async fn heartbeats(h: &Handles, conn: &AgentConn) {
    let mut missed = 0;
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(req) = Request::get("/health").body(()) else {
            return;
        };
        let answered = tokio::time::timeout(HEARTBEAT_TIMEOUT, async {
            let mut send = conn.send.clone().ready().await?;
            let (resp, _) = send.send_request(req, true)?;
            resp.await
        })
        .await;
        match answered {
            Ok(Ok(resp)) if resp.status().is_success() => {
                missed = 0;
                conn.last_heartbeat.store(h.now(), Ordering::Relaxed);
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
