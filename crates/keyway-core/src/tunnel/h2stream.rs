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
mod tests;
