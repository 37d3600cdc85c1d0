//! Accepting HTTP/1 connections, the same way for every listener: a cap on
//! connections, TLS where configured (with the client certificate's thumbprint handed
//! on), hyper's header-size and header-time bounds, and a bounded drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::runtime::BoxError;
pub use crate::runtime::DRAIN_TIMEOUT;

/// The bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

/// What serving one connection needs of its service: hyper's bounds, said once.
pub trait ConnService:
    HttpService<
        Incoming,
        Future: Send + 'static,
        Error: Into<BoxError>,
        ResBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
    > + Send
    + 'static
{
}

impl<S> ConnService for S where
    S: HttpService<
            Incoming,
            Future: Send + 'static,
            Error: Into<BoxError>,
            ResBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
        > + Send
        + 'static
{
}

/// What a request handler knows about its connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The verified client certificate's RFC 8705 thumbprint, if one was presented.
    pub cert_thumbprint: Option<String>,
}

/// Serves `listener` until `shutdown` fires; `make` builds the service of each
/// connection.
pub async fn serve_http1<S, F>(
    admission: Arc<Admission>,
    name: &str,
    listener: Arc<TcpListener>,
    limits: Limits,
    tls: Option<crate::tls::Renewable>,
    shutdown: CancellationToken,
    make: F,
) where
    F: Fn(ConnInfo) -> S + Send + Sync + 'static,
    S: ConnService,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    let make = Arc::new(make);
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    while let Some((stream, peer, permit)) =
        next_connection(&listener, name, &slots, &admission, &shutdown).await
    {
        let (builder, make, stop) = (builder.clone(), make.clone(), shutdown.clone());
        // Two kinds of task, not one with two arms: a task is as large as its largest
        // state, and a plain connection need not carry room for a TLS session (6 KiB
        // a task with it, 1.2 KiB without).
        match &tls {
            None => {
                let info = ConnInfo {
                    peer,
                    tls: false,
                    cert_thumbprint: None,
                };
                tracker.spawn(async move {
                    serve_one(&builder, stream, make(info), stop).await;
                    drop(permit);
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.current();
                tracker.spawn(async move {
                    // The handshake is bounded like the header block.
                    let accepted =
                        tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await;
                    let stream = match accepted {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let cert_thumbprint = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| crate::tls::thumbprint(c.as_ref()));
                    let info = ConnInfo {
                        peer,
                        tls: true,
                        cert_thumbprint,
                    };
                    serve_one(&builder, stream, make(info), stop).await;
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "connections still open after the drain timeout; they end with the process"
        );
    }
}

/// The next connection a listener may serve, or None once `shutdown` fires. Accept
/// errors (out of descriptors) are waited out; a blocked source, or a connection
/// beyond the listener's cap, is closed at once; the rest are shown to the
/// `scanning` detector.
pub(crate) async fn next_connection(
    listener: &TcpListener,
    name: &str,
    slots: &Arc<Semaphore>,
    admission: &Admission,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    loop {
        let (stream, peer) = tokio::select! {
            // A proxy replaced by a reload shares its listener with the new one: once
            // stopped, it takes no connection waiting in the queue.
            biased;
            () = shutdown.cancelled() => return None,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !admission.admit_now(peer.ip(), port) {
            tracing::debug!(listener = name, %peer, "blocked source; connection closed");
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                listener = name,
                "connection limit reached; refusing a connection"
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        return Some((stream, peer, permit));
    }
}

async fn serve_one<I, S>(builder: &http1::Builder, io: I, svc: S, stop: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: ConnService,
{
    // Upgrades are served so that a WebSocket can be passed through on purpose; the
    // proxy decides which upgrades to honour.
    let conn = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stop.cancelled() => {
            // Finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
