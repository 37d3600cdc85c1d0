//! Revocation reaches live streams: a long download, a server-sent-events stream and
//! a WebSocket, each opened through the gateway with a token, are cut within 50 ms of
//! the revocation returning.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use http_body_util::BodyExt;
use support::{config, Conn, TestGateway, Upstream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const CUT_WITHIN: Duration = Duration::from_millis(50);

async fn gateway(upstream: &str) -> TestGateway {
    TestGateway::start(&config(&[(
        "billing",
        &format!("upstream = \"{upstream}\""),
    )]))
    .await
}

/// Opens `path` with a fresh token, reads a little, revokes, and returns how long the
/// stream took to end from the moment revocation was asked for, and the bytes read.
/// Asserts that it ended with an error (cut), not a clean end.
async fn cut_after_revoke(path: &str) -> (Duration, usize) {
    let up = Upstream::start().await;
    let gw = gateway(&up.url()).await;
    let (token, id, _) = gw.issue("billing", &[], &[], "15m").await;
    let mut conn = Conn::open(gw.addr("billing")).await;
    let resp = conn
        .request("GET", path, Some(&token), &[], Bytes::new())
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    assert!(body.frame().await.unwrap().is_ok(), "the stream started");

    // Keep reading (a slow reader would hold the download back, not end it).
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut bytes = 0;
        let cut = loop {
            match body.frame().await {
                Some(Ok(f)) => bytes += f.data_ref().map_or(0, |d| d.len()),
                Some(Err(_)) => break true,
                None => break false,
            }
        };
        let _ = tx.send((Instant::now(), cut, bytes));
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut rx = rx;
    assert!(
        matches!(
            rx.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ),
        "the stream ended before its token was revoked"
    );
    let asked = Instant::now();
    gw.gw.revoke(&id, "test", None).await.unwrap();
    let (ended, cut, bytes) = tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .expect("the stream went on")
        .unwrap();
    assert!(cut, "the stream ended cleanly instead of being cut");
    gw.stop().await;
    (ended.duration_since(asked), bytes)
}

#[tokio::test]
async fn revocation_cuts_a_long_download() {
    let (took, bytes) = cut_after_revoke("/download").await;
    eprintln!("cut after {took:?}, {bytes} bytes");
    assert!(took <= CUT_WITHIN, "cut after {took:?}");
    assert!(bytes < 1024 * 1024 * 1024, "the whole download arrived");
}

/// An answer whole in its first frame goes without the armed watch, but not past
/// what the watch would have seen: a token that expired, or was revoked, while the
/// upstream was answering never gets the body (the connection ends before it).
#[tokio::test]
async fn a_token_that_ends_while_the_upstream_answers_gets_no_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let gw = gateway(&up.url()).await;
    // `/slow` answers "slow" after 3 s, in one frame.
    let (expiring, _, _) = gw.issue("billing", &[], &[], "2s").await;
    let (revoked, id, _) = gw.issue("billing", &[], &[], "15m").await;
    let (live, _, _) = gw.issue("billing", &[], &[], "15m").await;
    let ask = |token: String| {
        let addr = gw.addr("billing");
        tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!(
                "GET /slow HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
            String::from_utf8_lossy(&got).into_owned()
        })
    };
    let (expiring, revoked_body, live) = (ask(expiring), ask(revoked), ask(live));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The gateway's clock passes the first token's expiry; the second is revoked.
    gw.clock.advance(Duration::from_secs(5));
    gw.gw.revoke(&id, "test", None).await.unwrap();
    let body = |answer: &str| answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    let expiring = expiring.await.unwrap();
    assert_ne!(
        body(&expiring).as_deref(),
        Some("slow"),
        "an expired token's body went: {expiring}"
    );
    let revoked_body = revoked_body.await.unwrap();
    assert_ne!(
        body(&revoked_body).as_deref(),
        Some("slow"),
        "a revoked token's body went: {revoked_body}"
    );
    let live = live.await.unwrap();
    assert_eq!(body(&live).as_deref(), Some("slow"), "{live}");
    gw.stop().await;
}

#[tokio::test]
async fn revocation_cuts_a_server_sent_events_stream() {
    let (took, _) = cut_after_revoke("/sse").await;
    eprintln!("cut after {took:?}");
    assert!(took <= CUT_WITHIN, "cut after {took:?}");
}

#[tokio::test]
async fn revoking_a_credential_cuts_the_streams_of_the_tokens_it_got() {
    let up = Upstream::start().await;
    let gw = gateway(&up.url()).await;
    let req = keyway_gateway::gateway::CredentialRequest {
        principal: "ci-bot".into(),
        services: vec!["billing".into()],
        ..Default::default()
    };
    let (_, cred) = gw.gw.tokens.issue_credential(&req, "test").await.unwrap();
    let entry = gw.gw.tokens.token(&cred.id).unwrap();
    let source = "127.0.0.1".parse().unwrap();
    let (token, _) = gw
        .gw
        .tokens
        .exchange(&entry, "billing", None, source, None)
        .await
        .unwrap();
    let token = secrecy::ExposeSecret::expose_secret(token.secret()).to_owned();
    let mut conn = Conn::open(gw.addr("billing")).await;
    let mut body = conn
        .request("GET", "/sse", Some(&token), &[], Bytes::new())
        .await
        .into_body();
    assert!(body.frame().await.unwrap().is_ok());
    let asked = Instant::now();
    gw.gw.revoke(&cred.id, "test", None).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(_)) => return true,
                None => return false,
            }
        }
    })
    .await
    .expect("the child's stream went on");
    let took = asked.elapsed();
    assert!(end, "cut, not ended");
    assert!(took <= CUT_WITHIN, "cut after {took:?}");
    gw.stop().await;
}

#[tokio::test]
async fn a_websocket_passes_through_and_revocation_cuts_it() {
    let (ws_addr, seen) = support::websocket_echo().await;
    let gw = gateway(&format!("http://{ws_addr}")).await;
    let (token, id, _) = gw.issue("billing", &["GET"], &["/ws"], "15m").await;

    let connect = |token: Option<String>| {
        let addr = gw.addr("billing");
        async move {
            let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
            if let Some(t) = token {
                req.headers_mut()
                    .insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio_tungstenite::client_async(req, tcp).await
        }
    };
    // Without a token the upgrade is refused like any request.
    assert!(connect(None).await.is_err());

    let (mut ws, resp) = connect(Some(token.clone())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("hello")).await.unwrap();
    let echo = ws.next().await.unwrap().unwrap();
    assert_eq!(echo.to_text().unwrap(), "hello");
    let upstream_saw = seen.lock().unwrap()[0].clone();
    assert!(
        upstream_saw.get("authorization").is_none(),
        "the token stayed at the gateway"
    );

    let revoked = Instant::now();
    gw.gw.revoke(&id, "test", None).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the WebSocket went on after revocation");
    let took = revoked.elapsed();
    eprintln!("cut after {took:?}");
    assert!(took <= CUT_WITHIN, "cut after {took:?}");
    // Its end is audited like a tunnel stream's: why, and the bytes of the frames.
    let mut close = None;
    for _ in 0..50 {
        close = gw
            .audit()
            .await
            .into_iter()
            .find(|e| e.event.kind == "connection.close");
        if close.is_some() {
            break;
        }
    }
    let close = close.expect("a connection.close for the WebSocket").event;
    assert_eq!(close.token_id.as_deref(), Some(id.as_str()));
    assert_eq!(close.service.as_deref(), Some("billing"));
    assert_eq!(close.detail["end"], "revoked");
    assert_eq!(close.detail["upgrade"], "websocket");
    // "hello" both ways: a masked client frame of 11 bytes, an unmasked one of 7.
    assert_eq!(close.detail["bytes_in"], 11);
    assert_eq!(close.detail["bytes_out"], 7);
    gw.stop().await;
}

#[tokio::test]
async fn an_h2c_upgrade_is_never_passed_through() {
    let up = Upstream::start().await;
    let gw = gateway(&up.url()).await;
    let (token, _, _) = gw.issue("billing", &[], &[], "15m").await;
    let mut conn = Conn::open(gw.addr("billing")).await;
    let r = conn
        .send(
            "GET",
            "/",
            Some(&token),
            &[
                ("connection", "upgrade, http2-settings"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAAQAAP__"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = &up.seen()[0];
    assert!(seen.headers.get("upgrade").is_none() && seen.headers.get("http2-settings").is_none());
    gw.stop().await;
}
