//! Accepting connections, the same way for every listener: the blocklist, then a
//! slot under the listener's [`ConnectionCaps`] (in all, per source, a reserve for
//! new sources; [`Slots`]). For HTTP ([`serve_http`]): TLS where configured (with
//! the client certificate's thumbprint handed on), a deadline for the first request
//! where the listener has one, hyper's header-size and header-time bounds, and a
//! bounded drain on shutdown. A listener that takes HTTP/2 ([`Http2`]) speaks it when
//! TLS agrees on ALPN `h2`, or in cleartext when the client opens with HTTP/2's
//! preface (`h2c`), with its own attack classes bounded: concurrent streams, the
//! header list's size (CONTINUATION floods included), streams reset before they are
//! served (rapid reset, CVE-2023-44487) and streams the gateway had to reset.
//!
//! A listener stops in one of two ways ([`Stop`]): drained (the gateway stops, or its
//! service is removed), or retired (a reload put another server on the same port).
//! Only a drain closes open connections; a retired listener's connections stay with
//! their server, which answers their next request and closes them then
//! (`Connection: close`), so no client's request is cut by a reload.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod h2;
mod slots;

pub(crate) use slots::{Slot, Slots};

use crate::admission::Admission;
use crate::runtime::BoxError;
pub use crate::runtime::ConnectionCaps;
pub use crate::runtime::DRAIN_TIMEOUT;

/// How long an idle HTTP/2 connection's GOAWAY may take to go out before it is
/// closed anyway.
const IDLE_GOODBYE: Duration = Duration::from_secs(1);

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
    /// HTTP/2 as well as HTTP/1.1; `None`: HTTP/1.1 only.
    pub http2: Option<Http2>,
}

/// How a listener takes HTTP/2.
#[derive(Debug, Clone, Copy)]
pub struct Http2 {
    /// Cleartext HTTP/2 with prior knowledge, on a listener without TLS.
    pub h2c: bool,
}

/// Streams one HTTP/2 connection may have open at once.
const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Streams a client may reset before the gateway took them, before its connection
/// is closed with `ENHANCE_YOUR_CALM` (rapid reset).
const MAX_PENDING_RESETS: usize = 20;
/// Streams the gateway may reset for a client's protocol errors, likewise.
const MAX_ERROR_RESETS: usize = 256;

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
    type Body: Body<Data: Send, Error: Into<BoxError>> + Send + Unpin + 'static;
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
    B: Body<Data: Send, Error: Into<BoxError>> + Send + Unpin + 'static,
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
    /// Cancelled by the service to close the connection once its requests in flight
    /// are answered: HTTP/2's way of `Connection: close` (a blocked source, a
    /// removed service).
    pub close: CancellationToken,
    /// `peer`'s address written out once for the connection ([`ConnInfo::peer_text`]).
    peer_text: Arc<str>,
    /// The same, as the upstream's `X-Forwarded-For` carries it.
    peer_header: Option<http::HeaderValue>,
}

// === impl ConnInfo ===

impl ConnInfo {
    pub fn new(
        peer: SocketAddr,
        tls: bool,
        cert_thumbprint: Option<String>,
        close: CancellationToken,
    ) -> Self {
        let text = peer.ip().to_canonical().to_string();
        Self {
            peer,
            tls,
            cert_thumbprint,
            close,
            peer_header: http::HeaderValue::from_str(&text).ok(),
            peer_text: text.into(),
        }
    }

    /// The peer's address (IPv4-mapped IPv6 as IPv4) as events and `X-Forwarded-For`
    /// carry it, written out when the connection was accepted: formatting it for
    /// each request cost more than a thousand instructions.
    pub fn peer_text(&self) -> &str {
        &self.peer_text
    }

    /// [`ConnInfo::peer_text`] as a header's value, made once for the connection.
    pub fn peer_header(&self) -> Option<&http::HeaderValue> {
        self.peer_header.as_ref()
    }
}

/// Serves `listener` until `stop` drains or retires it; `make` builds the service of
/// each connection.
pub async fn serve_http<S, F>(
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
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    let header_list = u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(header_list)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_ERROR_RESETS)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(limits.header_timeout);
    let builders = Arc::new(Builders { h1, h2 });
    let make = Arc::new(make);
    let tracker = TaskTracker::new();
    let slots = Slots::new(limits.caps);
    while let Some((stream, peer, slot)) =
        next_connection(&listener, name, &slots, &admission, &stop.accepting).await
    {
        let (builders, make) = (builders.clone(), make.clone());
        let first = limits.first_request.map(|d| Instant::now() + d);
        let opening = first.unwrap_or_else(|| Instant::now() + limits.header_timeout);
        let http2 = limits.http2;
        let conn = Conn {
            first,
            drain: stop.drain.clone(),
            retired: stop.accepting.clone(),
            close: CancellationToken::new(),
            idle: limits.header_timeout,
        };
        // Two kinds of task, not one with two arms: a task is as large as its largest
        // state, and a plain connection need not carry room for a TLS session (6 KiB
        // a task with it, 1.2 KiB without).
        match &tls {
            None => {
                let info = ConnInfo::new(peer, false, None, conn.close.clone());
                tracker.spawn(async move {
                    let mut stream = stream;
                    if let Some(Http2 { h2c: true }) = http2 {
                        // Cleartext HTTP/2 only from a client that opens with its
                        // preface; what was read to tell is read again.
                        let Some((h2, read)) = h2::read_preface(&mut stream, opening).await else {
                            return;
                        };
                        let stream = crate::runtime::Rewound::new(read, stream);
                        match h2 {
                            true => conn.serve_h2(&builders.h2, stream, make(info)).await,
                            false => conn.serve(&builders.h1, stream, make(info)).await,
                        }
                    } else {
                        conn.serve(&builders.h1, stream, make(info)).await;
                    }
                    drop(slot);
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.current();
                // The handshake is bounded like the header block, or by the first
                // request's deadline where there is one.
                tracker.spawn(async move {
                    let accepted = tokio::time::timeout_at(opening, acceptor.accept(stream)).await;
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
                    let info = ConnInfo::new(peer, true, cert_thumbprint, conn.close.clone());
                    let h2 = http2.is_some()
                        && stream.get_ref().1.alpn_protocol() == Some(crate::tls::alpn::H2);
                    if h2 {
                        conn.serve_h2(&builders.h2, stream, make(info)).await;
                    } else {
                        conn.serve(&builders.h1, stream, make(info)).await;
                    }
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

/// A listener's connection builders, one per protocol: the protocol is chosen
/// before serving (by ALPN, or by the preface), never by hyper reading unbounded.
/// hyper's own builders, not hyper-util's `auto`: that one reads every connection's
/// first bytes to tell the protocol, and hands them to HTTP/1 as a short first
/// read, after which hyper's read buffer doubles to 16 KiB for the life of the
/// connection. Now only an h2c listener's HTTP/1 connections pay that (their
/// preface is read to tell, [`h2::read_preface`]); TLS and plain ones do not.
struct Builders {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

/// How one connection is served: when it ends, and who may end it.
struct Conn {
    /// Closed at this time unless a request's header has arrived by then.
    first: Option<Instant>,
    /// The listener drains: requests in flight finish, then the connection closes.
    drain: CancellationToken,
    /// The listener is retired (a reload put another server on its port): an
    /// HTTP/2 connection is told to go (GOAWAY, its streams finish), while an
    /// HTTP/1 one stays to close after its next answer, which says `Connection:
    /// close`.
    retired: CancellationToken,
    /// The service closes the connection ([`ConnInfo::close`]).
    close: CancellationToken,
    /// An HTTP/2 connection with no stream open this long is closed.
    idle: Duration,
}

impl Conn {
    /// Serves an HTTP/1.1 connection.
    async fn serve<I, S>(self, builder: &http1::Builder, io: I, svc: S)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: ConnService,
    {
        let (svc, asked) = self.noting(svc);
        // Upgrades are served so that a WebSocket can be passed through on purpose;
        // the proxy decides which upgrades to honour.
        let conn = builder
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        self.run(conn, asked, None).await;
    }

    /// Serves an HTTP/2 connection, its streams counted so that it closes when idle.
    async fn serve_h2<I, S>(self, builder: &http2::Builder<TokioExecutor>, io: I, svc: S)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: ConnService,
    {
        let streams = h2::Streams::new();
        let svc = h2::Tracked {
            inner: svc,
            streams: streams.clone(),
        };
        let (svc, asked) = self.noting(svc);
        let conn = builder.serve_connection(TokioIo::new(io), svc);
        // Boxed: a connection's task is as large as its largest state, and an
        // HTTP/1 connection's need not carry room for HTTP/2's.
        Box::pin(self.run(conn, asked, Some(streams))).await;
    }

    /// `svc`, noting the first request where the connection has a deadline for it;
    /// the flag the deadline reads.
    fn noting<S>(&self, svc: S) -> (Noting<S>, Option<Arc<AtomicBool>>) {
        let asked = self.first.map(|_| Arc::new(AtomicBool::new(false)));
        let svc = Noting {
            inner: svc,
            asked: asked.clone(),
        };
        (svc, asked)
    }

    async fn run<C: Graceful>(
        self,
        conn: C,
        asked: Option<Arc<AtomicBool>>,
        streams: Option<Arc<h2::Streams>>,
    ) {
        let first = self.first;
        let mut conn = std::pin::pin!(conn);
        let deadline = async {
            match first {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let mut deadline = std::pin::pin!(deadline);
        let mut waiting_first = first.is_some();
        // Only HTTP/2 is checked for idleness (hyper's header timer closes an idle
        // HTTP/1 connection); an HTTP/1 one carries no timer for it, and its branch
        // below never fires.
        let mut idle_check = streams
            .is_some()
            .then(|| tokio::time::interval(self.idle.max(Duration::from_millis(100)) / 2));
        // Asked to finish (requests in flight answered: an HTTP/1 answer says
        // `Connection: close`, HTTP/2 sends GOAWAY; an idle connection closes at
        // once), within DRAIN_TIMEOUT: a client that stops reading holds it no longer.
        let h2 = streams.is_some();
        let result = loop {
            // How long the connection may take to finish once asked to.
            let finish = tokio::select! {
                r = conn.as_mut() => break r,
                () = self.drain.cancelled() => Some(DRAIN_TIMEOUT),
                () = self.close.cancelled() => Some(DRAIN_TIMEOUT),
                () = self.retired.cancelled(), if h2 => Some(DRAIN_TIMEOUT),
                Some(_) = tick(&mut idle_check) => {
                    let idle = streams.as_ref().is_some_and(|s| s.idle_for(self.idle));
                    if idle {
                        tracing::debug!("an HTTP/2 connection with no stream open; closed");
                    }
                    // Nothing in flight: its GOAWAY, then gone (a client that reads
                    // nothing, a SETTINGS flood's, holds it no longer).
                    idle.then_some(IDLE_GOODBYE)
                }
                () = deadline.as_mut(), if waiting_first => {
                    if !asked.as_ref().is_some_and(|a| a.load(Ordering::Relaxed)) {
                        tracing::debug!("no request within the first request's deadline; closed");
                        return;
                    }
                    waiting_first = false;
                    None
                }
            };
            if let Some(patience) = finish {
                conn.as_mut().graceful_shutdown();
                let mut finished = tokio::time::timeout(patience, conn.as_mut()).await;
                // A stream that raced an idle connection's GOAWAY is still answered.
                let racing = streams
                    .as_ref()
                    .is_some_and(|s| !s.idle_for(Duration::ZERO));
                if finished.is_err() && patience < DRAIN_TIMEOUT && racing {
                    finished = tokio::time::timeout(DRAIN_TIMEOUT - patience, conn.as_mut()).await;
                }
                break match finished {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::debug!(
                            "a connection did not finish within the drain timeout; closed"
                        );
                        Ok(())
                    }
                };
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// The next tick of an interval, if there is one.
async fn tick(interval: &mut Option<tokio::time::Interval>) -> Option<tokio::time::Instant> {
    match interval {
        Some(i) => Some(i.tick().await),
        None => std::future::pending().await,
    }
}

/// A connection hyper serves, which can be asked to finish what it has begun.
trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S> Graceful for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: ConnService,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S> Graceful for http2::Connection<I, S, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: ConnService,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self);
    }
}

// === impl Noting ===

impl<S: ConnService> Service<Request<Incoming>> for Noting<S> {
    type Response = S::Response;
    type Error = S::Error;
    /// Boxed: an HTTP/1 connection keeps room for one answer's future from its
    /// start to its end, so an idle keep-alive connection would otherwise hold the
    /// proxy's whole request state (7.5 KiB) while it waits.
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        if let Some(asked) = &self.asked {
            asked.store(true, Ordering::Relaxed);
        }
        Box::pin(self.inner.call(req))
    }
}
