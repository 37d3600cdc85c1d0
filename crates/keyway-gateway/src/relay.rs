//! Bytes both ways between a client and an upstream, for the sessions that are
//! streams: `keyway connect`'s tunnel streams and upgraded HTTP connections
//! (WebSockets). Backpressure and half-close are tokio's (`copy_bidirectional`); the
//! session's end (revocation, expiry, a reload, the gateway stopping) wins over bytes
//! ready to go, and the bytes are counted as they pass, so that a stream cut short
//! reports them too. Each such session ends with one `connection.close`.

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use keyway_store::AuditEvent;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::audit::AuditSink;
use crate::sessions::{Meter, SessionEnd};

/// A stream session from its first byte to its audited end: [`relay`], then `close`
/// (a `connection.close` with who and where filled in, and anything else in its
/// detail), dated at the end, with why it ended, the bytes both ways and how long it
/// lasted added to its detail. Under `fail_closed` the event waits for room in the
/// audit queue, as a database statement does.
pub(crate) async fn relay_audited<C, U>(
    audit: &AuditSink,
    client: C,
    upstream: U,
    end: impl std::future::Future<Output = SessionEnd>,
    mut close: AuditEvent,
    meter: Arc<Meter>,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let (why, (bytes_in, bytes_out)) = relay(client, upstream, end, meter).await;
    let mut detail = match close.detail.take() {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    detail.insert("end".into(), why.as_str().into());
    detail.insert("bytes_in".into(), bytes_in.into());
    detail.insert("bytes_out".into(), bytes_out.into());
    detail.insert(
        "duration_ms".into(),
        (started.elapsed().as_millis() as u64).into(),
    );
    close.at = audit.now();
    close.detail = detail.into();
    // Nothing waits on a session's end; its event is queued like any other.
    let _ = audit.reserve_waiting().await.send(close);
}

/// Carries bytes both ways until either side ends or the session must
/// ([`crate::sessions::Sessions::end_of`]: revoked, expired, no longer fitting, the gateway
/// stopping). Returns why it ended and the bytes (written to the upstream, read from
/// it), counted as they go, so that a stream cut short reports them too.
async fn relay<C, U>(
    mut client: C,
    upstream: U,
    end: impl std::future::Future<Output = SessionEnd>,
    meter: Arc<Meter>,
) -> (SessionEnd, (u64, u64))
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut upstream = Counted {
        inner: upstream,
        meter,
    };
    // Biased: the session's end wins over bytes that are ready to go.
    let why = tokio::select! {
        biased;
        why = end => why,
        r = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, keyway_core::tunnel::RELAY_BUFFER, keyway_core::tunnel::RELAY_BUFFER) => match r {
            Ok(_) => SessionEnd::Closed,
            Err(_) => SessionEnd::Error,
        },
    };
    let m = &upstream.meter;
    (why, (m.bytes_in.load(Relaxed), m.bytes_out.load(Relaxed)))
}

/// The upstream's side, counting the bytes written to it (the client's, in) and
/// read from it (out) on the session's meter, where the live listing reads them.
struct Counted<S> {
    inner: S,
    meter: Arc<Meter>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.meter.bytes_out.fetch_add(n, Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.meter.bytes_in.fetch_add(n as u64, Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
