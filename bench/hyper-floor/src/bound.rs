//! The floor with a leaner upstream path than the pool (`--bound`): each client
//! connection opens an upstream connection of its own on its first request, and
//! one task drives both. A request crosses no task (the pooled client's connections
//! run in tasks of their own, reached through a channel) and takes nothing from a
//! shared pool (no lock, no checkout). The price: as many upstream connections as
//! client connections. A request that meets an upstream connection closing under it
//! is answered 502, not retried (the pool retries one never written); `bench/run`'s
//! upstream keeps its connections for a million requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::{accept_each, allowed, audit, committed, plain, Body};

/// An upstream connection, to be driven by its client connection's task.
type Upstream = Connection<TokioIo<TcpStream>, Incoming>;

/// The way to send a request on the client connection's upstream connection, when
/// one is open and no request holds it.
type Slot = Arc<Mutex<Option<SendRequest<Incoming>>>>;

pub async fn serve(
    listen: SocketAddr,
    upstream: SocketAddr,
    authorization: Arc<str>,
    audit: Option<audit::Audit>,
) -> std::io::Result<()> {
    accept_each(listen, move |stream| {
        connection(stream, upstream, authorization.clone(), audit.clone())
    })
    .await
}

/// Serves one client connection, and drives the upstream connections its requests
/// open (one at a time: a new one only when the upstream closed the last).
async fn connection(
    stream: TcpStream,
    upstream: SocketAddr,
    authorization: Arc<str>,
    audit: Option<audit::Audit>,
) {
    let (opened, mut to_drive) = mpsc::unbounded_channel::<Upstream>();
    let slot: Slot = Arc::default();
    let service = hyper::service::service_fn(move |req| {
        let (slot, opened, authorization, audit) = (
            slot.clone(),
            opened.clone(),
            authorization.clone(),
            audit.clone(),
        );
        async move {
            Ok::<_, Infallible>(
                forward(
                    &slot,
                    &opened,
                    upstream,
                    &authorization,
                    audit.as_ref(),
                    req,
                )
                .await,
            )
        }
    });
    let server = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    let mut server = std::pin::pin!(server);
    let mut driven: Option<Pin<Box<Upstream>>> = None;
    loop {
        tokio::select! {
            _ = server.as_mut() => return,
            _ = async { driven.as_mut().expect("enabled only when some").await }, if driven.is_some() => {
                driven = None;
            }
            Some(conn) = to_drive.recv() => driven = Some(Box::pin(conn)),
        }
    }
}

async fn forward(
    slot: &Slot,
    opened: &mpsc::UnboundedSender<Upstream>,
    upstream: SocketAddr,
    authorization: &str,
    audit: Option<&audit::Audit>,
    req: Request<Incoming>,
) -> Response<Body> {
    if !allowed(&req, authorization) {
        return plain(StatusCode::UNAUTHORIZED);
    }
    let path = audit.map(|_| req.uri().path().to_owned());
    let held = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    let mut sender = match held {
        Some(sender) if !sender.is_closed() => sender,
        _ => match open(upstream, opened).await {
            Some(sender) => sender,
            None => return plain(StatusCode::BAD_GATEWAY),
        },
    };
    // The request goes as it came, in origin form, with the client's Host.
    let resp = match sender.ready().await {
        Ok(()) => sender.send_request(req).await,
        Err(e) => Err(e),
    };
    *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender);
    let resp = match resp {
        Ok(resp) => resp.map(BodyExt::boxed_unsync),
        Err(_) => plain(StatusCode::BAD_GATEWAY),
    };
    committed(audit, path, resp).await
}

/// A new upstream connection: its sender, its connection handed to the client
/// connection's task.
async fn open(
    upstream: SocketAddr,
    opened: &mpsc::UnboundedSender<Upstream>,
) -> Option<SendRequest<Incoming>> {
    let stream = TcpStream::connect(upstream).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    opened.send(conn).ok()?;
    Some(sender)
}
