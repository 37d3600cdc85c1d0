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
        match tokio::time::timeout(Duration::from_millis(200), client.write(&big[put..end])).await {
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
