//! What the gateway asks of an agent on its HTTP/2 connection: `GET /health` (the
//! heartbeat), and `CONNECT host:port`, a stream to an upstream that
//! `allow_upstreams` lists, relayed until either side ends.

use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{Method, Request, Response, StatusCode};
use keyway_core::tunnel::{self, H2Stream};
use tokio::net::TcpStream;

use crate::UPSTREAM_TIMEOUT;

/// Answers the gateway with `status`; the stream's bytes follow only after `200`
/// to a `CONNECT`, which returns the stream to send them on.
fn respond(
    answer: &mut SendResponse<Bytes>,
    status: StatusCode,
    bytes_follow: bool,
) -> Option<SendStream<Bytes>> {
    let mut r = Response::new(());
    *r.status_mut() = status;
    answer.send_response(r, !bytes_follow).ok()
}

/// A request from the gateway: a heartbeat, or a stream to an upstream.
pub(crate) async fn handle(
    req: Request<RecvStream>,
    mut answer: SendResponse<Bytes>,
    allow: Arc<Vec<String>>,
) {
    if req.method() == Method::GET && req.uri().path() == "/health" {
        respond(&mut answer, StatusCode::OK, false);
        return;
    }
    if req.method() != Method::CONNECT {
        respond(&mut answer, StatusCode::NOT_FOUND, false);
        return;
    }
    let Some(addr) = req.uri().authority().map(|a| a.as_str().to_owned()) else {
        respond(&mut answer, StatusCode::BAD_REQUEST, false);
        return;
    };
    // `allow` empty only with --allow-any-upstream.
    if !allow.is_empty() && !allow.iter().any(|a| a == &addr) {
        // The agent's side of the audit: a gateway asking for what this agent does
        // not serve may be a compromised one.
        tracing::warn!(
            event = "agent.upstream_refused",
            upstream = %addr,
            "refused an upstream that allow_upstreams does not list"
        );
        respond(&mut answer, StatusCode::FORBIDDEN, false);
        return;
    }
    let upstream = match tokio::time::timeout(UPSTREAM_TIMEOUT, TcpStream::connect(&addr)).await {
        Ok(Ok(s)) => s,
        _ => {
            tracing::warn!(upstream = %addr, "upstream unreachable");
            respond(&mut answer, StatusCode::BAD_GATEWAY, false);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    tracing::debug!(upstream = %addr, "stream opened");
    let Some(send) = respond(&mut answer, StatusCode::OK, true) else {
        return;
    };
    let stream = H2Stream::new(send, req.into_body());
    let mut upstream = upstream;
    let _ = tunnel::relay_h2(stream, &mut upstream, tunnel::RELAY_BUFFER).await;
}
