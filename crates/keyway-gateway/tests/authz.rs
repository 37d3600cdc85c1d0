//! One authorizer for every protocol: HTTP, the TCP tunnel and PostgreSQL refuse the
//! same attempts with the same reason, in the same order. Each case is tried through
//! all three with real clients (hyper, the tunnel's own client, `psql` or the
//! PostgreSQL wire) against one gateway, and the reason read back from the audit log.
//!
//! The machine's PostgreSQL (127.0.0.1:5432) is the database upstream; `scripts/test`
//! starts it when it is down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use keyway_core::config::Config;
use keyway_gateway::listener::Stop;
use keyway_gateway::proxy::http::HttpProxy;
use support::protocols::{config, start, tokens, tunnel};
use support::{send, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// `psql` through the gateway with `token` as the password: its error output.
fn psql(addr: SocketAddr, token: &str) -> String {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p"])
        .arg(addr.port().to_string())
        .args(["-U", "whoever", "-d", "test", "-XAtqc", "select 1"])
        .env("PGPASSWORD", token)
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql must be installed (apt-get install postgresql-client)");
    assert!(!out.status.success(), "psql got through");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The reasons of the denied events of `kind` for `service`, in order.
async fn denials(gw: &TestGateway, kind: &str, service: &str) -> Vec<String> {
    gw.audit()
        .await
        .into_iter()
        .filter(|e| {
            e.event.kind == kind
                && e.event.service.as_deref() == Some(service)
                && e.event.decision.as_deref() == Some("deny")
        })
        .filter_map(|e| e.event.reason)
        .collect()
}

/// The last denial of each protocol: HTTP, tunnel, PostgreSQL.
async fn last_denials(gw: &TestGateway) -> [Option<String>; 3] {
    [
        denials(gw, "request", "billing").await.pop(),
        denials(gw, "connection.open", "cache").await.pop(),
        denials(gw, "connection.open", "orders-db").await.pop(),
    ]
}

fn all(reason: &str) -> [Option<String>; 3] {
    [(); 3].map(|()| Some(reason.to_owned()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_outside_allow_cidrs_is_refused_before_the_token_is_looked_at() {
    let (gw, up, _) = start("allow_cidrs = [\"10.0.0.0/8\"]").await;
    let t = tokens(&gw).await;

    // With a good token: refused for its source.
    let got = send(gw.addr("billing"), "GET", "/", Some(&t.http)).await;
    assert_eq!(got.status, 403);
    let refused = tunnel(&gw, "cache", &t.tcp).await.unwrap_err();
    assert!(refused.contains("forbidden"), "{refused}");
    let said = psql(gw.addr("orders-db"), &t.pg);
    assert!(said.contains("does not grant this database"), "{said}");
    assert_eq!(last_denials(&gw).await, all("source_not_allowed"));

    // With a token that is not one: the same, so nobody outside the networks can
    // tell a live token from a dead one.
    let junk = "kwat_not-a-token";
    assert_eq!(
        send(gw.addr("billing"), "GET", "/", Some(junk))
            .await
            .status,
        403
    );
    assert!(tunnel(&gw, "cache", junk).await.is_err());
    psql(gw.addr("orders-db"), junk);
    assert_eq!(last_denials(&gw).await, all("source_not_allowed"));
    assert_eq!(denials(&gw, "connection.open", "cache").await.len(), 2);
    assert!(up.seen().is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_above_a_lowered_max_ttl_is_refused_by_every_protocol() {
    let (gw, up, echo) = start("").await;
    let t = tokens(&gw).await;
    // Before the reload, each is let through.
    assert_eq!(
        send(gw.addr("billing"), "GET", "/", Some(&t.http))
            .await
            .status,
        200
    );
    tunnel(&gw, "cache", &t.tcp).await.unwrap();

    let lowered = config(&up.url(), echo, "").replace("max_ttl = \"1h\"", "max_ttl = \"30m\"");
    let lowered = Config::parse(&lowered, gw.dir.path()).unwrap();
    let done = gw.gw.reload(lowered, "test", None, false).await.unwrap();
    // A changed service on port 0 listens anew; the reload says where.
    let at = |name: &str| done.listening[name].parse::<SocketAddr>().unwrap();

    assert_eq!(
        send(at("billing"), "GET", "/", Some(&t.http)).await.status,
        401
    );
    let refused = tunnel(&gw, "cache", &t.tcp).await.unwrap_err();
    assert!(refused.contains("unauthorized"), "{refused}");
    let said = psql(at("orders-db"), &t.pg);
    assert!(said.contains("Keyway refused the token"), "{said}");
    // Refused, not let in and cut a moment later: no session was opened.
    assert_eq!(last_denials(&gw).await, all("ttl_above_max"));
    let allowed_pg = gw
        .audit()
        .await
        .into_iter()
        .filter(|e| {
            e.event.service.as_deref() == Some("orders-db")
                && e.event.decision.as_deref() == Some("allow")
        })
        .count();
    assert_eq!(allowed_pg, 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_during_a_reload_that_removed_its_service_is_refused_as_unknown() {
    let (gw, up, _) = start("").await;
    let t = tokens(&gw).await;
    assert_eq!(
        send(gw.addr("billing"), "GET", "/", Some(&t.http))
            .await
            .status,
        200
    );
    // The HTTP service as its proxy holds it: a connection the replaced proxy
    // accepted is answered by this copy after the reload.
    let billing = gw.gw.config().service("billing").cloned().unwrap();

    // A PostgreSQL client accepted by the listener, asked for its password, still
    // typing it while the reload removes the service.
    let mut pg = TcpStream::connect(gw.addr("orders-db")).await.unwrap();
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", "whoever"), ("database", "test")],
        &mut buf,
    )
    .unwrap();
    pg.write_all(&buf).await.unwrap();
    let (kind, _) = message(&mut pg).await;
    assert_eq!(kind, b'R', "asked for a password");

    // Every service removed.
    let none = format!(
        "admin_listen = \"127.0.0.1:0\"\ntunnel_listen = \"127.0.0.1:0\"\nmax_ttl = \"24h\"\n\
         [services.other]\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\nmax_ttl = \"1h\"\n",
        up.url()
    );
    let none = Config::parse(&none, gw.dir.path()).unwrap();
    gw.gw.reload(none, "test", None, false).await.unwrap();

    // PostgreSQL: the password arrives after the reload.
    buf.clear();
    postgres_protocol::message::frontend::password_message(t.pg.as_bytes(), &mut buf).unwrap();
    pg.write_all(&buf).await.unwrap();
    let (kind, body) = message(&mut pg).await;
    assert_eq!(kind, b'E');
    let said = String::from_utf8_lossy(&body).into_owned();
    assert!(said.contains("28000"), "{said}");

    // The tunnel: a stream opened after the reload names the removed service.
    let refused = tunnel(&gw, "cache", &t.tcp).await.unwrap_err();
    assert!(refused.contains("forbidden"), "{refused}");

    // HTTP: a request on a connection the removed service's proxy accepted.
    let old = HttpProxy::new(gw.gw.proxy_handles(), billing).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(old.serve(Arc::new(listener), None, Stop::new(stop.clone())));
    let got = send(addr, "GET", "/", Some(&t.http)).await;
    assert_eq!(got.status, 403);
    assert_eq!(got.headers["connection"], "close");
    stop.cancel();

    // The tunnel's event names no service: only configured names reach the log.
    let refused = [
        denials(&gw, "request", "billing").await.pop(),
        denials(&gw, "connection.open", "unknown").await.pop(),
        denials(&gw, "connection.open", "orders-db").await.pop(),
    ];
    assert_eq!(refused, all("unknown_service"));
    assert_eq!(
        up.seen().len(),
        1,
        "only the request before the reload went upstream"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tunnel_client_without_a_token_cannot_tell_which_names_exist() {
    let (gw, _, _) = start("").await;
    let junk = "kwat_not-a-token";
    let known = tunnel(&gw, "cache", junk).await.unwrap_err();
    let unknown = tunnel(&gw, "no-such-service", junk).await.unwrap_err();
    assert_eq!(known, unknown);
    let reasons: Vec<_> = gw
        .audit()
        .await
        .into_iter()
        .filter(|e| e.event.kind == "connection.open")
        .filter_map(|e| e.event.reason)
        .collect();
    assert_eq!(reasons, ["malformed_token", "malformed_token"]);
    // With a live token, the name is told: it is not a service.
    let t = tokens(&gw).await;
    let refused = tunnel(&gw, "no-such-service", &t.tcp).await.unwrap_err();
    assert!(refused.contains("forbidden"), "{refused}");
    let last = gw.audit().await.pop().unwrap().event;
    assert_eq!(last.reason.as_deref(), Some("unknown_service"));
    assert_eq!(last.service.as_deref(), Some("unknown"));
    gw.stop().await;
}

/// One PostgreSQL backend message, within 10 s.
async fn message(s: &mut TcpStream) -> (u8, Vec<u8>) {
    tokio::time::timeout(Duration::from_secs(10), async {
        let kind = s.read_u8().await.unwrap();
        let len = s.read_i32().await.unwrap();
        let mut body = vec![0; usize::try_from(len - 4).unwrap()];
        s.read_exact(&mut body).await.unwrap();
        (kind, body)
    })
    .await
    .expect("the gateway answered")
}
