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

/// One HTTP/2 stream, read and written as a byte stream. Dropping it before both
/// ends closed resets the stream (`CANCEL`), as closing a socket would.
pub struct H2Stream {
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
        Self {
            send,
            recv,
            unread: Bytes::new(),
            out: BytesMut::new(),
            finished: false,
        }
    }

    /// How much of `want` bytes the peer's window lets go now (at least one), once
    /// it lets any: h2 queues what is sent beyond it, so a writer waits here instead.
    fn poll_window(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
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
}

/// The reset reasons that end a stream the way a closed socket does; any other is an
/// error.
fn read_error(e: h2::Error) -> Option<io::Error> {
    match e.reason() {
        Some(Reason::NO_ERROR) | Some(Reason::CANCEL) => None,
        Some(Reason::STREAM_CLOSED) => Some(io::Error::new(io::ErrorKind::BrokenPipe, e)),
        _ => Some(io_error(e)),
    }
}

fn io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))
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
        let this = self.get_mut();
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
        let this = self.get_mut();
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
        let this = self.get_mut();
        if !this.finished {
            this.finished = true;
            this.send.send_data(Bytes::new(), true).map_err(io_error)?;
        }
        Poll::Ready(Ok(()))
    }
}

/// Pings the peer every `every` and returns once a ping goes unanswered for
/// `within`, or pings can no longer be sent: the connection is dead even if its
/// socket is not closed. The connection must be polled meanwhile (its pongs are read
/// there).
pub async fn unanswered_ping(mut pings: h2::PingPong, every: Duration, within: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(within, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            _ => return,
        }
    }
}

/// Carries bytes both ways between `stream` and `io` until both directions have
/// ended, or either fails: what h2 received is written to `io` as it came, and
/// what is read from `io` (up to `buffer` bytes at a time) is handed to h2 as it
/// is. Each byte is copied once fewer each way than through [`H2Stream`]'s reads
/// and writes. Backpressure is each side's: one chunk waits at most per direction.
pub async fn relay<T>(mut stream: H2Stream, io: &mut T, buffer: usize) -> io::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut down = Down::default();
    let mut up = Up {
        read: BytesMut::with_capacity(buffer),
        size: buffer,
        chunk: Bytes::new(),
        done: false,
    };
    std::future::poll_fn(|cx| {
        let down = down.poll(cx, &mut stream, io)?;
        let up = up.poll(cx, &mut stream, io)?;
        if down.is_ready() && up.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
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
        s: &mut H2Stream,
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
                Poll::Ready(Some(Err(e))) => match read_error(e) {
                    None => self.ended = true,
                    Some(e) => return Poll::Ready(Err(e)),
                },
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
    /// Where `io` is read into; its memory is reused once h2 has sent (and dropped)
    /// what was read before.
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
        s: &mut H2Stream,
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
            self.read.reserve(self.size);
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut *io),
                cx,
                &mut self.read
            ))?;
            if n == 0 {
                s.finished = true;
                s.send.send_data(Bytes::new(), true).map_err(io_error)?;
                self.done = true;
            } else {
                self.chunk = self.read.split().freeze();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Small windows and pipes, so that flow control and backpressure both bite.
    const WINDOW: u32 = 16 * 1024;
    const PIPE: usize = 4 * 1024;

    /// A CONNECT stream over HTTP/2 on an in-memory pipe, its far end relayed to an
    /// "upstream" (`relay`); returns the near end and the upstream's end.
    async fn connected() -> (H2Stream, tokio::io::DuplexStream) {
        let (near, far) = duplex(PIPE);
        let (upstream, theirs) = duplex(PIPE);
        tokio::spawn(async move {
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
            relay(stream, &mut upstream, 8 * 1024)
                .await
                .expect("relayed");
        });
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .handshake::<_, Bytes>(near)
            .await
            .expect("client handshake");
        tokio::spawn(async move { conn.await.expect("the connection") });
        let mut send = send.ready().await.expect("ready");
        let req = http::Request::connect("upstream:1")
            .body(())
            .expect("request");
        let (resp, stream) = send.send_request(req, false).expect("sent");
        let resp = resp.await.expect("answered");
        assert_eq!(resp.status(), http::StatusCode::OK);
        (H2Stream::new(stream, resp.into_body()), theirs)
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn every_byte_arrives_both_ways_and_each_end_closes_its_direction() {
        let (mut client, mut upstream) = connected().await;
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
        upstream.read_to_end(&mut got).await.expect("read");
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
        let mut client = wrote.await.expect("the writer");
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.expect("read back");
        assert_eq!(back.len(), answer.len());
        assert!(back == answer, "the client got other bytes");
        answered.await.expect("the upstream's writer");
    }

    #[tokio::test]
    async fn a_slow_reader_holds_back_the_writer() {
        let (mut client, mut upstream) = connected().await;
        // Nobody reads the upstream: the client can put only what the windows, the
        // relay's one chunk and the pipes hold before its writes wait.
        let big = pattern(4 * 1024 * 1024);
        let mut put = 0;
        while put < big.len() {
            let w = tokio::time::timeout(
                std::time::Duration::from_millis(200),
                client.write(&big[put..put + 1024]),
            )
            .await;
            match w {
                Ok(n) => put += n.expect("written"),
                Err(_) => break,
            }
        }
        assert!(
            put < 256 * 1024,
            "{put} bytes went in while nothing was read"
        );
        // Reading lets the rest through.
        let rest = big.len() - put;
        let reader = tokio::spawn(async move {
            let mut n = 0;
            let mut buf = vec![0; 64 * 1024];
            while n < big.len() {
                n += upstream.read(&mut buf).await.expect("read");
            }
            n
        });
        client
            .write_all(&pattern(rest))
            .await
            .expect("the rest written");
        assert_eq!(reader.await.expect("the reader"), 4 * 1024 * 1024);
    }
}
