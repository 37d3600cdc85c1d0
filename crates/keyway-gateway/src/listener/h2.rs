//! What HTTP/2 needs of a listener beyond hyper's own bounds: telling a cleartext
//! client's protocol by its first bytes (`h2c` with prior knowledge), and closing a
//! connection that has had no stream open for a while (hyper's HTTP/2 server has no
//! idle timeout, and its pings only prove the client is there).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::Service;
use hyper::{Request, Response};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::ConnService;

/// HTTP/2's first bytes from a client with prior knowledge.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads a cleartext client's first bytes, by `deadline`, until they tell HTTP/2's
/// preface from anything else: whether it is HTTP/2, and the bytes read (to be read
/// again by the server chosen). `None` if the client closed or was too slow.
pub(super) async fn read_preface(
    stream: &mut TcpStream,
    deadline: Instant,
) -> Option<(bool, Vec<u8>)> {
    let mut read = Vec::with_capacity(PREFACE.len());
    let mut buf = [0u8; PREFACE.len()];
    loop {
        let want = PREFACE.len() - read.len();
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf[..want]))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        read.extend_from_slice(&buf[..n]);
        if read[..] != PREFACE[..read.len()] {
            return Some((false, read));
        }
        if read.len() == PREFACE.len() {
            return Some((true, read));
        }
    }
}

/// The streams of one HTTP/2 connection: how many are open, and when the last
/// ended (ms since `since`).
pub(super) struct Streams {
    open: AtomicUsize,
    since: Instant,
    last_ms: AtomicU64,
}

impl Streams {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            since: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    /// Whether no stream has been open for `idle`.
    pub(super) fn idle_for(&self, idle: Duration) -> bool {
        let last = self.since + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.open.load(Ordering::Relaxed) == 0 && last.elapsed() >= idle
    }

    fn touch(&self) {
        let ms = self.since.elapsed().as_millis();
        self.last_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// A connection's service whose streams are counted in [`Streams`]: a stream is
/// open from its request until its response body ends (or is dropped).
pub(super) struct Tracked<S> {
    pub(super) inner: S,
    pub(super) streams: Arc<Streams>,
}

/// A stream's place in [`Streams`], given back when dropped.
struct Open(Arc<Streams>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.touch();
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that holds its stream open in [`Streams`].
pub(super) struct Counted<B> {
    inner: B,
    _open: Open,
}

impl<S: ConnService> Service<Request<Incoming>> for Tracked<S> {
    type Response = Response<Counted<S::Body>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.streams.open.fetch_add(1, Ordering::Relaxed);
        let open = Open(self.streams.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|inner| Counted { inner, _open: open }))
        })
    }
}

impl<B: Body + Unpin> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
