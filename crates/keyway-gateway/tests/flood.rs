//! Operators cannot be locked out: a flood of idle and half-open connections to the
//! admin listener and the token endpoint, from several loopback sources (Linux
//! routes all of 127.0.0.0/8 to `lo`), is refused beyond each source's share, leaves
//! the reserved slots to others, and is closed after the short first-request
//! deadline; meanwhile an admin call and a token exchange from 127.0.0.1 go through
//! at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use keyway_gateway::gateway::CredentialRequest;
use keyway_gateway::runtime::{CONTROL_CAPS, FIRST_REQUEST_TIMEOUT};
use secrecy::ExposeSecret;
use support::{config, send, send_with, svc, Conn, TestGateway, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// The flooding sources that fill every unreserved slot.
const FLOODERS: usize = (CONTROL_CAPS.total - CONTROL_CAPS.reserved) / CONTROL_CAPS.per_source;

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// When the gateway closed `s` (it never answers a flooding connection), at most
/// `within` from now; None if it was still open then.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Instant> {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => Some(Instant::now()),
        Ok(Ok(n)) => panic!(
            "the gateway answered a flooding connection: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => None,
    }
}

/// Whether the gateway has closed `s` (without waiting).
fn is_closed(s: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    !matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Connections to an empty listener from `FLOODERS` sources, each up to its share,
/// alternately idle and half-open (a header begun, never finished), which leaves only
/// the reserved slots; then a source that takes what the reserve gives it. Each
/// source's next connection is refused.
async fn flood(to: SocketAddr, partial: &str) -> Vec<TcpStream> {
    let mut held = Vec::new();
    let mut sources = Vec::new();
    for i in 0..=FLOODERS {
        let from = format!("127.0.0.{}", i + 2);
        let share = if i < FLOODERS {
            CONTROL_CAPS.per_source
        } else {
            CONTROL_CAPS.reserved_below
        };
        for n in 0..share {
            let mut s = connect_from(&from, to).await;
            if n % 2 == 1 {
                s.write_all(partial.as_bytes()).await.unwrap();
            }
            held.push(s);
        }
        sources.push(from);
    }
    // Accepted and holding slots, not closed at once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let closed = held.iter().filter(|s| is_closed(s)).count();
    assert_eq!(
        closed, 0,
        "connections within their source's share were closed"
    );
    // Beyond its share a source is refused: the gateway closes the connection at
    // once, whatever it sends.
    for from in &sources {
        let mut extra = connect_from(from, to).await;
        let _ = extra.write_all(partial.as_bytes()).await;
        assert!(
            closed_within(&mut extra, Duration::from_secs(1))
                .await
                .is_some(),
            "source {from} got a connection beyond its share"
        );
    }
    held
}

/// Every flooding connection is closed by the gateway after the first-request
/// deadline (counted from `started`, before the first was opened), not before.
async fn all_closed_after_the_deadline(held: Vec<TcpStream>, started: Instant) {
    let mut waits = tokio::task::JoinSet::new();
    for mut s in held {
        waits.spawn(async move {
            closed_within(&mut s, FIRST_REQUEST_TIMEOUT + Duration::from_secs(3)).await
        });
    }
    let (mut first, mut last) = (None::<Duration>, Duration::ZERO);
    while let Some(closed) = waits.join_next().await {
        let at = closed
            .unwrap()
            .expect("a flooding connection outlived the first-request deadline")
            - started;
        first = Some(first.map_or(at, |f| f.min(at)));
        last = last.max(at);
    }
    let first = first.unwrap();
    eprintln!("flooding connections closed {first:?} to {last:?} after the flood began");
    assert!(
        first >= FIRST_REQUEST_TIMEOUT,
        "closed after {first:?}, before the deadline"
    );
    assert!(
        last <= FIRST_REQUEST_TIMEOUT + Duration::from_millis(1500),
        "the last closed after {last:?}"
    );
}

async fn gateway() -> (TestGateway, Upstream, String) {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[("billing", &svc(&up, ""))])).await;
    let req = CredentialRequest {
        principal: "ci-bot".into(),
        services: vec!["billing".into()],
        methods: vec!["GET".into()],
        paths: vec!["/".into()],
        cidrs: vec![],
        max_age: None,
        cert_thumbprint: None,
    };
    let (t, _) = gw.gw.tokens.issue_credential(&req, "test").await.unwrap();
    let credential = t.secret().expose_secret().to_owned();
    (gw, up, credential)
}

/// What an operator and a workload do during the flood, from 127.0.0.1: both answered
/// within a second.
async fn operator_and_workload(gw: &TestGateway, credential: &str) {
    let t = Instant::now();
    let r = send(gw.admin, "GET", "/v1/tokens", Some(&gw.admin_token())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let admin_took = t.elapsed();
    let t = Instant::now();
    let r = send_with(
        gw.token.unwrap(),
        "POST",
        "/v1/token/exchange",
        Some(credential),
        &[("content-type", "application/json")],
        Bytes::from(r#"{"service": "billing"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let exchange_took = t.elapsed();
    eprintln!("during the flood: admin call {admin_took:?}, token exchange {exchange_took:?}");
    assert!(admin_took < Duration::from_secs(1), "{admin_took:?}");
    assert!(exchange_took < Duration::from_secs(1), "{exchange_took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_the_admin_listener_does_not_lock_the_operator_out() {
    let (gw, _up, credential) = gateway().await;
    let started = Instant::now();
    let held = flood(gw.admin, "GET /v1/tokens HTTP/1.1\r\nHost: gw\r\n").await;
    assert_eq!(
        held.len(),
        FLOODERS * CONTROL_CAPS.per_source + CONTROL_CAPS.reserved_below
    );
    operator_and_workload(&gw, &credential).await;
    // A kept-alive operator connection: after its first request the keep-alive idle
    // time holds, not the short deadline.
    let mut kept = Conn::open(gw.admin).await;
    let opened = Instant::now();
    let token = gw.admin_token();
    let r = kept
        .send("GET", "/v1/status", Some(&token), &[], Bytes::new())
        .await;
    assert_eq!(r.status, StatusCode::OK);

    all_closed_after_the_deadline(held, started).await;

    // The kept-alive connection outlives its first-request deadline, and still serves.
    tokio::time::sleep_until(opened + FIRST_REQUEST_TIMEOUT + Duration::from_millis(500)).await;
    let r = kept
        .send("GET", "/v1/status", Some(&token), &[], Bytes::new())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // The flooders' slots are given back: a source that flooded may connect again.
    let mut again = connect_from("127.0.0.2", gw.admin).await;
    again
        .write_all(b"GET /v1/status HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(2), again.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_the_token_endpoint_does_not_stop_exchanges() {
    let (gw, _up, credential) = gateway().await;
    let started = Instant::now();
    let held = flood(
        gw.token.unwrap(),
        "POST /v1/token/exchange HTTP/1.1\r\nHost: gw\r\nAuthorization: Bear",
    )
    .await;
    operator_and_workload(&gw, &credential).await;
    all_closed_after_the_deadline(held, started).await;
    gw.stop().await;
}
