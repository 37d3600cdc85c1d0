//! An HTTP/2 stream of an agent's connection as bytes both ways, for the two ends of
//! that connection: the gateway's `CONNECT` and the agent's answer to it.
//!
//! hyper's upgraded HTTP/2 stream hands every write to a task of its own through a
//! channel, each write a fresh allocation; here a write goes to h2 from the task that
//! makes it, through a buffer that is reused once h2 has sent what it held. Flow
//! control is h2's: a write waits for window, and what is read is given back to the
//! peer as it is taken.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a stream dropped after its end was sent stays open for the peer's end,
/// so that what it sent last is not thrown away (see [`H2Stream`]'s `Drop`).
const LINGER: Duration = Duration::from_secs(10);

/// What one write hands h2 at most (h2 counts window in 32 bits).
const MAX_WRITE: usize = 1 << 20;

/// A relay's read buffer is renewed once less than this is left of it, so that
/// small reads share one allocation while h2 holds them.
const MIN_READ_ROOM: usize = 8 * 1024;

/// One HTTP/2 stream, read and written as a byte stream. Dropping it before its end
/// was sent resets the stream (`CANCEL`). Dropping it after its end was sent (a
/// shutdown) but before the peer's end arrived keeps the stream open for a while
/// beside it, as a closed socket would, so that what was sent still goes out: h2
/// throws away what is queued on a stream it resets.
pub struct H2Stream(Option<Ends>);

struct Ends {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// What was received and not read yet.
    unread: Bytes,
    /// Where a write's bytes are copied for h2; its memory is reused once h2 has
    /// sent (and dropped) the chunk before.
    out: BytesMut,
    /// The end of the stream was sent.
    finished: bool,
}

impl H2Stream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self(Some(Ends {
            send,
            recv,
            unread: Bytes::new(),
            out: BytesMut::new(),
            finished: false,
        }))
    }

    fn ends(&mut self) -> io::Result<&mut Ends> {
        self.0
            .as_mut()
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        let Some(Ends {
            send,
            mut recv,
            finished,
            unread,
            ..
        }) = self.0.take()
        else {
            return;
        };
        if !finished || recv.is_end_stream() {
            return;
        }
        // What was received and never read is given back at once: held until the
        // linger ends, it would narrow the whole connection's window.
        let _ = recv.flow_control().release_capacity(unread.len());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let _ = tokio::time::timeout(LINGER, async {
                while let Some(Ok(data)) = recv.data().await {
                    let _ = recv.flow_control().release_capacity(data.len());
                }
            })
            .await;
            drop(send);
        });
    }
}

impl Ends {
    /// How much of `want` bytes the peer's window lets go now (at least one), once
    /// it lets any: h2 queues what is sent beyond it, so a writer waits here instead.
    fn poll_window(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let want = want.min(MAX_WRITE);
        self.send.reserve_capacity(want);
        while self.send.capacity() == 0 {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
        Poll::Ready(Ok(self.send.capacity().min(want)))
    }

    /// Sends the end of the stream, once.
    fn finish(&mut self) -> io::Result<()> {
        if !self.finished {
            self.finished = true;
            self.send.send_data(Bytes::new(), true).map_err(io_error)?;
        }
        Ok(())
    }
}

/// The peer's end, as a byte stream's reader sees it: an error, or `None` for a
/// reset with `NO_ERROR`, which ends a stream the way a closed socket does (h2 sends
/// it for a stream dropped after its end was sent). `CANCEL` is an abort: a relay
/// torn down mid-stream, whose cut answer must not pass for a whole one.
fn read_error(e: h2::Error) -> Option<io::Error> {
    match e.reason() {
        Some(Reason::NO_ERROR) => None,
        _ => Some(io_error(e)),
    }
}

fn io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))
    } else if e.is_reset() {
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    } else {
        io::Error::new(io::ErrorKind::BrokenPipe, e)
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut().ends()?;
        while this.unread.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => this.unread = data,
                Some(Err(e)) => return Poll::Ready(read_error(e).map_or(Ok(()), Err)),
            }
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread[..n]);
        this.unread.advance(n);
        // The peer may send as much again.
        let _ = this.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut().ends()?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.finished {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = ready!(this.poll_window(cx, buf.len()))?;
        this.out.reserve(n);
        this.out.extend_from_slice(&buf[..n]);
        let chunk = this.out.split().freeze();
        this.send
            .send_data(chunk, false)
            .map_err(io_error)
            .map(|()| n)
            .into()
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2's connection writes what streams send as soon as it can.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().ends()?.finish())
    }
}

/// Carries bytes both ways between `stream` and `io` until both directions have
/// ended, or either fails: what h2 received is written to `io` as it came, and
/// what is read from `io` (up to `buffer` bytes at a time) is handed to h2 as it
/// is. Each byte is copied once fewer each way than through [`H2Stream`]'s reads
/// and writes. What waits is bounded by h2's windows and send buffer each way.
///
/// A reset from the peer, or any error, ends both directions; an error before the
/// upstream's end was sent resets the stream with `CONNECT_ERROR` (RFC 9113, 8.5),
/// which the peer's reader sees as a reset connection, not as an end.
pub async fn relay<T>(mut stream: H2Stream, io: &mut T, buffer: usize) -> io::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let s = stream.ends()?;
    let mut down = Down::default();
    let mut up = Up {
        read: BytesMut::new(),
        size: buffer.max(MIN_READ_ROOM),
        chunk: Bytes::new(),
        done: false,
    };
    let relayed = std::future::poll_fn(|cx| {
        // Both directions are polled before either's error counts: an upstream that
        // answered and closed has its whole answer (and its end) handed to h2 even
        // when a write to it fails in the same turn.
        let down = down.poll(cx, s, io);
        let up = up.poll(cx, s, io);
        match (down, up) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    })
    .await;
    if relayed.is_err() {
        if !s.finished {
            s.send.send_reset(Reason::CONNECT_ERROR);
        }
        // Once the upstream's end was sent, its answer is whole: dropped without
        // lingering, the stream is reset with NO_ERROR, which keeps what is queued.
        s.finished = false;
    }
    relayed
}

/// From the stream to `io`.
#[derive(Default)]
struct Down {
    /// Written since the last flush.
    unflushed: bool,
    /// The stream ended; `io`'s write side is being shut.
    ended: bool,
    done: bool,
}

impl Down {
    fn poll<T: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        s: &mut Ends,
        io: &mut T,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.ended {
                ready!(Pin::new(&mut *io).poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            if !s.unread.is_empty() {
                let n = ready!(Pin::new(&mut *io).poll_write(cx, &s.unread))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                s.unread.advance(n);
                let _ = s.recv.flow_control().release_capacity(n);
                self.unflushed = true;
                continue;
            }
            match s.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => s.unread = data,
                Poll::Ready(None) => self.ended = true,
                // A reset is an abort here, not an end: the upstream connection is
                // dropped, not half-closed and left waiting.
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io_error(e))),
                Poll::Pending => {
                    if self.unflushed {
                        ready!(Pin::new(&mut *io).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// From `io` to the stream.
struct Up {
    /// Where `io` is read into; a chunk read is split off it and handed to h2, and
    /// the rest of its room serves the next reads.
    read: BytesMut,
    size: usize,
    /// Read, not yet handed to h2 (it waits for window).
    chunk: Bytes,
    done: bool,
}

impl Up {
    fn poll<T: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        s: &mut Ends,
        io: &mut T,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if !self.chunk.is_empty() {
                let n = ready!(s.poll_window(cx, self.chunk.len()))?;
                s.send
                    .send_data(self.chunk.split_to(n), false)
                    .map_err(io_error)?;
                continue;
            }
            // Renewed (or reclaimed, once h2 has dropped what it held of it) only
            // when little is left: a fresh buffer for every small read would hold
            // a whole buffer for each chunk h2 queues.
            if self.read.capacity() < MIN_READ_ROOM {
                self.read.reserve(self.size);
            }
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut *io),
                cx,
                &mut self.read
            ))?;
            if n == 0 {
                s.finish()?;
                self.done = true;
            } else {
                self.chunk = self.read.split().freeze();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};
    use tokio::task::JoinHandle;

    use super::*;

    /// Small windows and pipes, so that flow control and backpressure both bite.
    const WINDOW: u32 = 16 * 1024;
    const PIPE: usize = 4 * 1024;

    /// Every step of a test is bounded: a relay that stalls fails it, not hangs it.
    async fn within<F: Future>(what: &str, f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .unwrap_or_else(|_| panic!("{what}: stalled"))
    }

    /// A CONNECT stream over HTTP/2 on an in-memory pipe, its far end relayed to an
    /// "upstream" by [`relay`]: the near end, the upstream's end, and the relay's
    /// outcome.
    async fn connected() -> (
        H2Stream,
        tokio::io::DuplexStream,
        JoinHandle<io::Result<()>>,
    ) {
        let (upstream, theirs) = duplex(PIPE);
        let (near, relayed) = connected_to(upstream).await;
        (near, theirs, relayed)
    }

    async fn connected_to<U>(upstream: U) -> (H2Stream, JoinHandle<io::Result<()>>)
    where
        U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (near, far) = duplex(PIPE);
        let relayed = tokio::spawn(async move {
            let mut conn = h2::server::Builder::new()
                .initial_window_size(WINDOW)
                .initial_connection_window_size(WINDOW)
                .handshake::<_, Bytes>(far)
                .await
                .expect("server handshake");
            let (req, mut answer) = conn.accept().await.expect("a stream").expect("ok");
            let send = answer
                .send_response(http::Response::new(()), false)
                .expect("answered");
            let stream = H2Stream::new(send, req.into_body());
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            let mut upstream = upstream;
            relay(stream, &mut upstream, 8 * 1024).await
        });
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .handshake::<_, Bytes>(near)
            .await
            .expect("client handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut send = send.ready().await.expect("ready");
        let req = http::Request::connect("upstream:1")
            .body(())
            .expect("request");
        let (resp, stream) = send.send_request(req, false).expect("sent");
        let resp = resp.await.expect("answered");
        assert_eq!(resp.status(), http::StatusCode::OK);
        (H2Stream::new(stream, resp.into_body()), relayed)
    }

    /// An upstream whose connection fails as a reset one does once something was
    /// written to it: reads fail, writes are taken.
    #[derive(Default)]
    struct Failing {
        written: bool,
        reader: Option<std::task::Waker>,
    }

    impl AsyncRead for Failing {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            _buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if !self.written {
                self.get_mut().reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        }
    }

    impl AsyncWrite for Failing {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.written = true;
            if let Some(w) = this.reader.take() {
                w.wake();
            }
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn every_byte_arrives_both_ways_and_each_end_closes_its_direction() {
        let (mut client, mut upstream, relayed) = connected().await;
        let sent = pattern(1024 * 1024 + 17);
        let wrote = {
            let sent = sent.clone();
            tokio::spawn(async move {
                client.write_all(&sent).await.expect("written");
                client.shutdown().await.expect("closed");
                client
            })
        };
        // The upstream sees the client's bytes, then their end.
        let mut got = Vec::new();
        within("the upstream's read", upstream.read_to_end(&mut got))
            .await
            .expect("read");
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the upstream got other bytes");
        // Its answer still goes back after the client's half closed.
        let answer = pattern(300_000);
        let answered = {
            let answer = answer.clone();
            tokio::spawn(async move {
                upstream.write_all(&answer).await.expect("answered");
                upstream.shutdown().await.expect("closed");
            })
        };
        let mut client = within("the writer", wrote).await.expect("the writer");
        let mut back = Vec::new();
        within("the client's read", client.read_to_end(&mut back))
            .await
            .expect("read back");
        assert_eq!(back.len(), answer.len());
        assert!(back == answer, "the client got other bytes");
        within("the upstream's writer", answered)
            .await
            .expect("the upstream's writer");
        within("the relay", relayed)
            .await
            .expect("the relay's task")
            .expect("the relay ended cleanly");
    }

    #[tokio::test]
    async fn a_slow_reader_holds_back_the_writer() {
        let (mut client, mut upstream, _relayed) = connected().await;
        // Nobody reads the upstream: the client can put only what the windows, the
        // relay's one chunk and the pipes hold before its writes wait.
        let big = pattern(4 * 1024 * 1024);
        let mut put = 0;
        while put < big.len() {
            let end = (put + 1024).min(big.len());
            match tokio::time::timeout(Duration::from_millis(200), client.write(&big[put..end]))
                .await
            {
                Ok(n) => put += n.expect("written"),
                Err(_) => break,
            }
        }
        assert!(
            put < 256 * 1024,
            "{put} bytes went in while nothing was read"
        );
        // Reading lets the rest through.
        let reader = tokio::spawn(async move {
            let mut n = 0;
            let mut buf = vec![0; 64 * 1024];
            while n < 4 * 1024 * 1024 {
                n += upstream.read(&mut buf).await.expect("read");
            }
            n
        });
        within("the rest", client.write_all(&big[put..]))
            .await
            .expect("the rest written");
        assert_eq!(
            within("the reader", reader).await.expect("the reader"),
            4 * 1024 * 1024
        );
    }

    #[tokio::test]
    async fn what_was_sent_before_a_shutdown_and_drop_still_arrives() {
        let (mut client, mut upstream, relayed) = connected().await;
        // As a PostgreSQL cancel request goes: written, shut, dropped, no answer
        // awaited. A reset of the stream would throw the queued bytes away.
        client.write_all(b"cancel 1234").await.expect("written");
        client.shutdown().await.expect("closed");
        drop(client);
        let mut got = Vec::new();
        within("the upstream's read", upstream.read_to_end(&mut got))
            .await
            .expect("read");
        assert_eq!(got, b"cancel 1234");
        // The upstream's end closes the lingering stream, and the relay ends well.
        upstream.shutdown().await.expect("closed");
        within("the relay", relayed)
            .await
            .expect("the relay's task")
            .expect("the relay ended cleanly");
    }

    #[tokio::test]
    async fn a_dropped_stream_aborts_the_upstream_and_a_failed_upstream_resets_the_stream() {
        // The client goes away without closing: the relay ends, and drops the
        // upstream connection instead of leaving it half open.
        let (client, mut upstream, relayed) = connected().await;
        drop(client);
        assert!(within("the relay", relayed)
            .await
            .expect("the relay's task")
            .is_err());
        let mut rest = Vec::new();
        let read = within("the upstream's read", upstream.read_to_end(&mut rest)).await;
        assert!(read.is_ok() && rest.is_empty(), "{read:?}");
        // The upstream's connection fails: the client reads a reset, not an end
        // (which would pass a cut answer for a whole one).
        let (mut client, relayed) = connected_to(Failing::default()).await;
        client.write_all(b"ping").await.expect("written");
        let mut buf = Vec::new();
        let read = within("the client's read", client.read_to_end(&mut buf)).await;
        let err = read.expect_err("the client saw an end, not a reset");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        assert!(within("the relay", relayed).await.expect("task").is_err());
    }
}
