//! What the HTTP gateway refuses to hold for a client: more requests than a token's
//! rate limit, oversized headers, ambiguous framing (request smuggling), headers that
//! trickle in (slowloris) and kept-alive connections left idle. Raw bytes over TCP
//! where a well-behaved client could not send them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use support::{config, svc, Conn, TestGateway, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn over_the_rate_limit_is_429_with_retry_after_per_token() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[("billing", &svc(&up, "rate_limit = \"3/m\""))])).await;
    let (a, _, _) = gw.issue("billing", &[], &[], "15m").await;
    let (b, _, _) = gw.issue("billing", &[], &[], "15m").await;
    let mut conn = Conn::open(gw.addr("billing")).await;
    for _ in 0..3 {
        assert_eq!(
            conn.send("GET", "/", Some(&a), &[], Bytes::new())
                .await
                .status,
            StatusCode::OK
        );
    }
    let limited = conn.send("GET", "/", Some(&a), &[], Bytes::new()).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    // Another token has its own budget.
    assert_eq!(
        conn.send("GET", "/", Some(&b), &[], Bytes::new())
            .await
            .status,
        StatusCode::OK
    );
    gw.stop().await;
}

/// Writes raw bytes and reads until the gateway closes or 5 s pass.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn oversized_headers_ambiguous_framing_and_slow_headers_are_refused() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[(
        "billing",
        &svc(&up, "header_timeout = \"1s\""),
    )]))
    .await;
    let (token, _, _) = gw.issue("billing", &[], &[], "15m").await;
    let a = gw.addr("billing");

    let huge = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    let resp = raw(a, huge.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");

    // Request smuggling. Both Content-Length and Transfer-Encoding: hyper lets the
    // chunked framing win, as RFC 9112 §6.3 says, drops the Content-Length and closes
    // the connection after answering, so a request hidden behind the body never runs.
    // The upstream request is re-framed by the gateway, so it cannot desync either.
    let smuggle = format!(
        "POST /a HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: 4\r\n\
         transfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\
         authorization: Bearer {token}\r\n\r\n"
    );
    let resp = raw(a, smuggle.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("connection: close"), "{resp}");
    assert_eq!(resp.matches("HTTP/1.1").count(), 1, "{resp}");
    // Two differing Content-Lengths: refused outright.
    let two = format!(
        "POST /b HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcde"
    );
    let resp = raw(a, two.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let seen: Vec<String> = up.seen().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(seen, ["/a"], "only the outer request reached the upstream");
    let framing = &up.seen()[0].headers;
    assert!(framing.get("content-length").is_none() || framing.get("transfer-encoding").is_none());

    // Slowloris: half a header block, then nothing. The gateway hangs up.
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(a).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(4), s.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the connection stayed open");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(up.seen().len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_header_timeout() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[(
        "billing",
        &svc(&up, "header_timeout = \"1s\""),
    )]))
    .await;
    let (token, _, _) = gw.issue("billing", &[], &[], "15m").await;
    let mut s = TcpStream::connect(gw.addr("billing")).await.unwrap();
    let req = format!("GET / HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then nothing: the gateway hangs up rather than hold the connection forever.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle connection stayed open");
    gw.stop().await;
}
