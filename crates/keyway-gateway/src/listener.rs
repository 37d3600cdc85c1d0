//! Accepting connections, the same way for every listener: the blocklist, then a
//! slot under the listener's [`ConnectionCaps`] (in all, per source, a reserve for
//! new sources; [`Slots`]). For HTTP/1 ([`serve_http1`]): TLS where configured (with
//! the client certificate's thumbprint handed on), a deadline for the first request
//! where the listener has one, hyper's header-size and header-time bounds, and a
//! bounded drain on shutdown.
//!
//! A listener stops in one of two ways ([`Stop`]): drained (the gateway stops, or its
//! service is removed), or retired (a reload put another server on the same port).
//! Only a drain closes open connections; a retired listener's connections stay with
//! their server, which answers their next request and closes them then
//! (`Connection: close`), so no client's request is cut by a reload.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod slots;

pub(crate) use slots::{Slot, Slots};

use crate::admission::Admission;
use crate::runtime::BoxError;
pub use crate::runtime::ConnectionCaps;
pub use crate::runtime::DRAIN_TIMEOUT;

/// The bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub caps: ConnectionCaps,
    /// Time for each request's header, counted from the end of the previous response
    /// on a kept-alive connection: hyper's one timer, so also the keep-alive idle
    /// time.
    pub header_timeout: Duration,
    /// Time from accept to the end of the first request's header, TLS handshake
    /// included, where shorter than `header_timeout`: a connection that has not yet
    /// asked for anything holds a slot only this long.
    pub first_request: Option<Duration>,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

/// What serving one connection needs of its service: hyper's bounds, said once.
pub trait ConnService:
    Service<
        Request<Incoming>,
        Response = Response<Self::Body>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Send
    + 'static
{
    type Body: Body<Data: Send, Error: Into<BoxError>> + Send + 'static;
}

impl<S, B> ConnService for S
where
    S: Service<
            Request<Incoming>,
            Response = Response<B>,
            Future: Send + 'static,
            Error: Into<BoxError>,
        > + Send
        + 'static,
    B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
{
    type Body = B;
}

/// A connection's service, noting that a first request's header has arrived.
struct Noting<S> {
    inner: S,
    asked: Option<Arc<AtomicBool>>,
}

/// When a listener stops. Cheap to clone; every clone stops the same listener.
#[derive(Debug, Clone)]
pub struct Stop {
    /// Fired: no more connections, and those open finish their requests in flight
    /// and close, within [`DRAIN_TIMEOUT`].
    drain: CancellationToken,
    /// Fired (also by `drain`, of which it is a child): no more connections.
    accepting: CancellationToken,
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

/// Serves `listener` until `stop` drains or retires it; `make` builds the service of
/// each connection.
pub async fn serve_http1<S, F>(
    admission: Arc<Admission>,
    name: &str,
    listener: Arc<TcpListener>,
    limits: Limits,
    tls: Option<crate::tls::Renewable>,
    stop: Stop,
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
    let slots = Slots::new(limits.caps);
    while let Some((stream, peer, slot)) =
        next_connection(&listener, name, &slots, &admission, &stop.accepting).await
    {
        let (builder, make, drain) = (builder.clone(), make.clone(), stop.drain.clone());
        let first = limits.first_request.map(|d| Instant::now() + d);
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
                    serve_one(&builder, stream, make(info), first, drain).await;
                    drop(slot);
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.current();
                // The handshake is bounded like the header block, or by the first
                // request's deadline where there is one.
                let handshake = first.unwrap_or_else(|| Instant::now() + limits.header_timeout);
                tracker.spawn(async move {
                    let accepted =
                        tokio::time::timeout_at(handshake, acceptor.accept(stream)).await;
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
                    serve_one(&builder, stream, make(info), first, drain).await;
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    tracker.close();
    // Retired: the connections end with their next answer (or idle out after the
    // header timeout); drained: within the drain timeout.
    let drained = async {
        stop.drain.cancelled().await;
        tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait()).await
    };
    let finished = tokio::select! {
        () = tracker.wait() => Ok(()),
        r = drained => r,
    };
    if finished.is_err() {
        tracing::warn!(
            listener = name,
            "connections still open after the drain timeout; they end with the process"
        );
    }
}

// === impl Stop ===

impl Stop {
    /// A listener drained when `drain` fires.
    pub fn new(drain: CancellationToken) -> Self {
        let accepting = drain.child_token();
        Self { drain, accepting }
    }

    /// Stops the listener and closes its connections once their requests in flight
    /// are answered.
    pub fn drain(&self) {
        self.drain.cancel();
    }

    /// Stops the listener taking connections; those open stay with their server.
    pub fn retire(&self) {
        self.accepting.cancel();
    }

    /// The token that drains it, for a server that has no connections to hand over.
    pub fn drain_token(&self) -> CancellationToken {
        self.drain.clone()
    }

    /// Resolves once the listener takes no more connections (retired or drained).
    pub async fn no_more_connections(&self) {
        self.accepting.cancelled().await;
    }
}

/// The next connection a listener may serve, with its slot, or None once `shutdown`
/// fires. Accept errors (out of descriptors) are waited out; a blocked source, or a
/// connection the listener's caps leave no slot for, is closed at once; the rest are
/// shown to the `scanning` detector.
pub(crate) async fn next_connection(
    listener: &TcpListener,
    name: &str,
    slots: &Slots,
    admission: &Admission,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr, Slot)> {
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
        // Refusals are logged by the slots, at most every few seconds.
        let Ok(slot) = slots.take(peer.ip(), name) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        return Some((stream, peer, slot));
    }
}

/// Serves one connection; closes it at `first` (if given) unless a request's header
/// has arrived by then.
async fn serve_one<I, S>(
    builder: &http1::Builder,
    io: I,
    svc: S,
    first: Option<Instant>,
    drain: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: ConnService,
{
    let asked = first.map(|_| Arc::new(AtomicBool::new(false)));
    let svc = Noting {
        inner: svc,
        asked: asked.clone(),
    };
    // Upgrades are served so that a WebSocket can be passed through on purpose; the
    // proxy decides which upgrades to honour.
    let conn = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let deadline = async {
        match first {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    let mut deadline = std::pin::pin!(deadline);
    let mut waiting_first = first.is_some();
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            () = drain.cancelled() => {
                // Finish the request in flight (its answer says `Connection: close`),
                // then close; an idle connection closes at once.
                conn.as_mut().graceful_shutdown();
                break conn.await;
            }
            () = deadline.as_mut(), if waiting_first => {
                if !asked.as_ref().is_some_and(|a| a.load(Ordering::Relaxed)) {
                    tracing::debug!("no request within the first request's deadline; closed");
                    return;
                }
                waiting_first = false;
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

// === impl Noting ===

impl<S: ConnService> Service<Request<Incoming>> for Noting<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        if let Some(asked) = &self.asked {
            asked.store(true, Ordering::Relaxed);
        }
        self.inner.call(req)
    }
}
