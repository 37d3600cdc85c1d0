//! The tunnel listener. Its connections say what they are for in a first frame
//! ([`Hello`]): a `keyway connect` stream to a TCP service, or an agent enrolling,
//! renewing or offering to serve ([`crate::agents`]).
//!
//! A TCP service stream: one TLS connection per client connection, the opening frame
//! names the service and carries the token, every check of the gateway, then bytes
//! both ways with backpressure and half-close (`copy_bidirectional`) until either side
//! ends, the token is revoked or expires, a reload leaves it outside its service, or
//! the gateway stops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keyway_core::config::{Service, ServiceKind};
use keyway_core::head::Bearer;
use keyway_core::tunnel::{self, read_frame, FrameError, Hello, Open, Reply};
use keyway_core::DenyReason;
use keyway_core::EventKind;
use serde_json::json;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

mod agents;

use crate::authz::{Ask, Attempt, Protocol, Reached};
use crate::index::Entry;
use crate::proxy::Handles;

/// Time for the TLS handshake and the opening frame.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client that does not speak TLS is told before the connection closes.
const NOT_TLS: &str = "this is a Keyway tunnel port: it speaks TLS to `keyway connect` and \
                       `keyway agent` only\n";

/// The gateway's answer to a first frame: a refusal, or go-ahead (with a
/// certificate, for an enrolling or renewing agent).
pub(crate) async fn reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    error: Option<&str>,
    cert_pem: Option<String>,
) {
    let r = Reply {
        ok: error.is_none(),
        error: error.map(str::to_owned),
        cert_pem,
    };
    let _ = w.write_all(&tunnel::encode(&r)).await;
    let _ = w.flush().await;
}

/// Serves the tunnel listener until `shutdown`. Its streams and agents are the
/// gateway's sessions ([`Sessions::end_all`](crate::sessions::Sessions::end_all)): a reload does not end them.
pub async fn serve(
    h: Handles,
    listener: TcpListener,
    acceptor: crate::tls::Renewable,
    ca: Option<Arc<crate::tls::LocalCa>>,
    shutdown: CancellationToken,
) {
    let slots = crate::listener::Slots::new(crate::DATA_CAPS);
    while let Some((stream, peer, slot)) =
        crate::listener::next_connection(&listener, "tunnel", &slots, &h.admission, &shutdown).await
    {
        let session = {
            let (h, acceptor, ca) = (h.clone(), acceptor.current(), ca.clone());
            async move {
                handle(&h, stream, peer, acceptor, ca.as_deref()).await;
                drop(slot);
            }
        };
        h.sessions.spawn(session);
    }
}

async fn handle(
    h: &Handles,
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    ca: Option<&crate::tls::LocalCa>,
) {
    let opening = tokio::time::timeout(OPEN_TIMEOUT, async {
        let mut stream = stream;
        if !starts_with_tls(&stream).await {
            // Not a TLS client (curl, nc, psql at the wrong port): told in plain text.
            let _ = stream.write_all(NOT_TLS.as_bytes()).await;
            let _ = stream.shutdown().await;
            return None;
        }
        let mut tls = acceptor.accept(stream).await.ok()?;
        let hello = read_frame::<Hello, _>(&mut tls).await;
        Some((tls, hello))
    });
    // A stream not yet open when the gateway stops is not waited for.
    let opened = tokio::select! {
        biased;
        () = h.sessions.stopping() => return,
        opened = opening => opened,
    };
    let Ok(Some((mut tls, hello))) = opened else {
        tracing::debug!(%peer, "tunnel stream did not open");
        return;
    };
    let hello = match hello {
        Ok(hello) => hello,
        Err(FrameError::Closed) => return,
        // A client of another version, or something else speaking TLS: say so.
        Err(e) => {
            tracing::debug!(%peer, error = %e, "tunnel: not an opening frame");
            let why = format!(
                "not a Keyway tunnel opening ({e}); use `keyway connect` or `keyway agent` \
                 of this gateway's version"
            );
            reply(&mut tls, Some(&why), None).await;
            return;
        }
    };
    let open = match (hello, ca) {
        (Hello::Open(open), _) => open,
        (Hello::Enroll(e), Some(ca)) => return agents::enroll(h, tls, peer, e, ca).await,
        (Hello::Renew(r), Some(ca)) => return agents::renew(h, tls, peer, r, ca).await,
        (Hello::Agent(hello), Some(ca)) => return agents::serve(h, tls, peer, hello, ca).await,
        (_, None) => {
            reply(
                &mut tls,
                Some("agents need the gateway's own CA on the tunnel"),
                None,
            )
            .await;
            return;
        }
    };
    open_stream(h, tls, peer, open).await;
}

/// Whether the client's first byte begins a TLS handshake record; waits for it (the
/// caller bounds the wait).
async fn starts_with_tls(stream: &TcpStream) -> bool {
    /// A TLS record's content type: handshake.
    const HANDSHAKE: u8 = 0x16;
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0] == HANDSHAKE)
}

/// A `keyway connect` stream to a TCP service.
async fn open_stream(
    h: &Handles,
    mut tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    open: Open,
) {
    let source = peer.ip().to_canonical();
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| crate::tls::thumbprint(c.as_ref()));
    let mut ev = h.audit.event(EventKind::ConnectionOpen);
    // Only a configured name: a client's mistake (a token pasted as the service name)
    // must not reach the audit log.
    ev.service = Some(match h.config().service(&open.service) {
        Some(svc) => svc.name.clone(),
        None => "unknown".into(),
    });
    ev.source = Some(source.to_string());

    let decided = decide(h, &open, source, cert.as_deref(), &mut ev);
    drop(open);
    let (entry, svc, session) = match decided {
        Ok(x) => x,
        Err(reason) => {
            ev.deny(reason);
            let shown = match reason.status() {
                _ if !h.audit.record(ev).wait().await => "unavailable",
                401 => "unauthorized",
                403 => "forbidden",
                _ => "unavailable",
            };
            reply(&mut tls, Some(shown), None).await;
            return;
        }
    };
    let Ok(reservation) = h.audit.reserve() else {
        reply(&mut tls, Some("unavailable"), None).await;
        return;
    };
    let upstream = match h
        .dialer
        .dial(&svc, &session.upstream, svc.connect_timeout())
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(service = ?ev.service, reason = e.reason, why = %e.why, "tunnel upstream unreachable");
            ev.allow();
            ev.detail = json!({ "error": e.reason, "why": e.why });
            let shown = match reservation.send(ev).wait().await {
                true => "upstream unreachable",
                false => "unavailable",
            };
            reply(&mut tls, Some(shown), None).await;
            return;
        }
    };
    // Revoked while the upstream connection was being made: no byte goes through.
    if let Err(reason) = entry.check_live(h.now()) {
        ev.deny(reason);
        let _ = reservation.send(ev).wait().await;
        reply(&mut tls, Some("unauthorized"), None).await;
        return;
    }
    ev.allow();
    let (service, token_id, principal) = (
        ev.service.clone(),
        ev.token_id.clone(),
        ev.principal.clone(),
    );
    // The opening is answered once its event is committed (`durability = "commit"`).
    if !reservation.send(ev).wait().await {
        reply(&mut tls, Some("unavailable"), None).await;
        return;
    }
    reply(&mut tls, None, None).await;

    let _active = h.metrics.session(service.as_deref().unwrap_or_default());
    let mut close = h.audit.event(EventKind::ConnectionClose);
    close.service = service;
    close.token_id = token_id;
    close.principal = principal;
    close.source = Some(source.to_string());
    let (live, end) = h.sessions.open("tcp", entry, session);
    crate::relay::relay_audited(&h.audit, tls, upstream, end, close, live.meter()).await;
}

/// The [`Authorizer`](crate::authz::Authorizer)'s checks, as for every protocol.
fn decide(
    h: &Handles,
    open: &Open,
    source: std::net::IpAddr,
    cert: Option<&str>,
    ev: &mut keyway_store::AuditEvent,
) -> Result<(Arc<Entry>, Service, crate::sessions::Session), DenyReason> {
    let attempt = Attempt {
        protocol: Protocol::Tcp,
        service: Reached::Named(&open.service),
        source: Some(source),
        token: Bearer::Token(&open.token),
        cert,
        ask: Ask::Stream,
    };
    let admitted = h.authz.admit(&attempt).map_err(|r| {
        ev.token_id = r.token_id;
        ev.principal = r.principal;
        r.reason
    })?;
    let entry = &admitted.entry;
    ev.token_id = Some(entry.id().to_owned());
    ev.principal = Some(entry.record.principal.clone());
    // The TCP service admitted to, in the config it was judged by; a refusal, not a
    // panic, if it were not.
    let Some(svc) = admitted
        .config
        .service(&open.service)
        .filter(|svc| matches!(svc.kind, ServiceKind::Tcp(_)))
    else {
        return Err(DenyReason::WrongService);
    };
    admitted.mark_used(h.now());
    // The session's upstream and agent are the service's, as they are now.
    let session = crate::sessions::Session::new(svc, entry, source);
    Ok((admitted.entry.clone(), svc.clone(), session))
}

/// The client side: opens one tunnel stream to `service` through the gateway at
/// `addr` (TLS, verified against the gateway's CA as `server_name`), all within
/// `OPEN_TIMEOUT`.
pub async fn open(
    addr: &str,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    service: &str,
    token: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let opening = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot reach the gateway at {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(|_| format!("`{server_name}` is not a valid TLS server name"))?;
        let mut stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with the gateway failed: {e}"))?;
        let frame = tunnel::encode(&Hello::Open(Open {
            service: service.to_owned(),
            token: token.to_owned(),
        }));
        stream
            .write_all(&frame)
            .await
            .map_err(|e| format!("sending to the gateway: {e}"))?;
        let reply: Reply = read_frame(&mut stream)
            .await
            .map_err(|_| "the gateway closed the stream".to_owned())?;
        if !reply.ok {
            return Err(format!(
                "the gateway refused: {}",
                reply.error.unwrap_or_default()
            ));
        }
        Ok(stream)
    };
    tokio::time::timeout(OPEN_TIMEOUT, opening)
        .await
        .map_err(|_| format!("the gateway at {addr} did not open the stream in time"))?
}
