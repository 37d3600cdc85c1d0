//! A client that does not speak a listener's protocol is told so before the
//! connection closes: PostgreSQL's `ErrorResponse` with `08P01` on a PostgreSQL port,
//! a plain line on the tunnel for a client without TLS, and a refusal frame for a
//! TLS client whose first frame is not an opening. An odd HTTP request is answered
//! and audited like any other. Raw sockets, as the wrong client would send.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use keyway_core::tunnel::{read_frame, Reply};
use support::protocols::{config, echo};
use support::{TestGateway, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Everything the gateway sends after `bytes`, until it closes (within 5 s).
async fn answer_to(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the gateway did not close the connection")
        .unwrap();
    out
}

/// The fields of one PostgreSQL `ErrorResponse`, by field type.
fn error_fields(message: &[u8]) -> Vec<(char, String)> {
    assert_eq!(
        message.first(),
        Some(&b'E'),
        "not an ErrorResponse: {message:?}"
    );
    let len = u32::from_be_bytes(message[1..5].try_into().unwrap()) as usize;
    assert_eq!(message.len(), 1 + len, "one whole message, then the close");
    message[5..]
        .split(|&b| b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| (f[0] as char, String::from_utf8_lossy(&f[1..]).into_owned()))
        .collect()
}

async fn gateway() -> (TestGateway, Upstream) {
    // The PostgreSQL upstream is never dialled: no start-up gets that far.
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up.url(), echo().await, "")).await;
    (gw, up)
}

#[tokio::test]
async fn garbage_on_a_postgres_port_gets_a_protocol_violation() {
    let (gw, _up) = gateway().await;
    let pg = gw.addr("orders-db");

    let http = answer_to(pg, b"GET / HTTP/1.1\r\nHost: db\r\n\r\n").await;
    let fields = error_fields(&http);
    assert!(fields.contains(&('S', "FATAL".into())), "{fields:?}");
    assert!(fields.contains(&('C', "08P01".into())), "{fields:?}");
    let message = &fields.iter().find(|(k, _)| *k == 'M').unwrap().1;
    assert!(
        message.contains("invalid length of startup packet") && message.contains("PostgreSQL"),
        "{message}"
    );

    // A length a start-up packet may have, with a code no protocol has.
    let odd = answer_to(pg, &[0, 0, 0, 8, 0x12, 0x34, 0x56, 0x78]).await;
    let fields = error_fields(&odd);
    assert!(fields.contains(&('C', "08P01".into())), "{fields:?}");
    assert!(
        fields.contains(&(
            'M',
            "unsupported frontend protocol 4660.22136: Keyway speaks 3.0".into()
        )),
        "{fields:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn garbage_on_the_tunnel_is_answered_before_the_close() {
    let (gw, _up) = gateway().await;
    let tunnel = gw.tunnel.unwrap();

    // Without TLS: a line a person reads in nc or curl.
    let plain = answer_to(tunnel, b"hello\r\n").await;
    let plain = String::from_utf8(plain).unwrap();
    assert!(
        plain.contains("Keyway tunnel port") && plain.contains("keyway connect"),
        "{plain:?}"
    );

    // With TLS, a first frame that is not JSON, then one too long: a refusal frame,
    // as `keyway connect` reads refusals.
    let tls = keyway_gateway::tls::client_config(&gw.data_dir().join("ca.pem"), None).unwrap();
    for frame in [&b"\x00\x00\x00\x05hello"[..], &b"\xff\xff\xff\xff"[..]] {
        let tcp = TcpStream::connect(tunnel).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut s = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .unwrap();
        s.write_all(frame).await.unwrap();
        let reply: Reply = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut s))
            .await
            .unwrap()
            .unwrap();
        assert!(!reply.ok);
        let error = reply.error.unwrap();
        assert!(
            error.contains("not a Keyway tunnel opening") && error.contains("keyway connect"),
            "{error}"
        );
    }
    gw.stop().await;
}

/// A path of UTF-8 longer than the 512 bytes an event keeps of it, with a character
/// across byte 512: refused as any request without a token and audited with the path
/// cut at the character's edge. (The cut was made at byte 512: a panic that dropped
/// the connection unanswered and unaudited.)
#[tokio::test]
async fn a_long_path_with_a_character_across_the_cut_is_refused_and_audited() {
    let (gw, _up) = gateway().await;
    let kept = format!("/{}", "a".repeat(510));
    let request = format!("GET {kept}\u{e9}tail HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let answer = answer_to(gw.addr("billing"), request.as_bytes()).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    let events = gw.audit().await;
    let refused = events
        .iter()
        .find(|e| e.event.reason.as_deref() == Some("no_token"))
        .expect("the refusal is audited");
    assert_eq!(refused.event.detail["path"], kept.as_str());
    assert_eq!(refused.event.detail["status"], 401);
    gw.stop().await;
}
