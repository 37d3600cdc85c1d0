//! The registry of live sessions: a tunnel stream and a `psql` session are listed
//! with who, what and from where while they run, and an operator ends one of them by
//! its id: the client sees it end (psql is told why), its end is audited as
//! `terminated`, and it leaves the list. The other session is untouched.
//!
//! The machine's PostgreSQL (127.0.0.1:5432) is the database upstream; `scripts/test`
//! starts it when it is down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::protocols::{psql, start, tokens, tunnel_stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_ends_one_live_session_by_its_id() {
    let (gw, _, _) = start("").await;
    gw.set_secret("kw-ro", "unused with trust authentication")
        .await;
    let t = tokens(&gw).await;
    assert!(gw.gw.sessions.list().is_empty());

    // A tunnel stream, echoing.
    let mut stream = tunnel_stream(&gw, "cache", &t.tcp).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    // A psql session, in a long query.
    let psql = psql(
        gw.addr("orders-db").port(),
        &t.pg,
        &["-XAtqc", "select pg_sleep(30)"],
    )
    .spawn()
    .expect("psql must be installed (apt-get install postgresql-client)");

    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = gw.gw.sessions.list();
        if listed.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed.len(), 2, "both sessions are listed: {listed:?}");
    let tcp = listed.iter().find(|s| s.protocol == "tcp").unwrap();
    let pg = listed.iter().find(|s| s.protocol == "postgres").unwrap();
    assert_eq!(
        (tcp.service.as_str(), tcp.principal.as_str()),
        ("cache", "alice")
    );
    assert_eq!(pg.service, "orders-db");
    assert!(tcp.source.is_loopback());
    assert_ne!(tcp.token_id, pg.token_id);

    // End the psql session: psql is told why; the stream goes on.
    assert!(gw.gw.sessions.end(pg.id));
    let out = tokio::task::spawn_blocking(move || psql.wait_with_output().unwrap())
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains("a Keyway operator ended this session"),
        "{said}"
    );
    stream.write_all(b"pong").await.unwrap();
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong", "the other session is untouched");

    // End the stream: the client sees it close.
    assert!(gw.gw.sessions.end(tcp.id));
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the stream ended")
        .unwrap_or(0);
    assert_eq!(n, 0);

    for _ in 0..100 {
        if gw.gw.sessions.list().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        gw.gw.sessions.list().is_empty(),
        "ended sessions leave the list"
    );
    assert!(
        !gw.gw.sessions.end(tcp.id),
        "an ended session cannot be ended again"
    );
    let ends: Vec<_> = gw
        .audit()
        .await
        .into_iter()
        .filter(|e| e.event.kind == "connection.close")
        .map(|e| {
            (
                e.event.service.unwrap_or_default(),
                e.event.detail["end"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert!(
        ends.contains(&("orders-db".into(), "terminated".into())),
        "{ends:?}"
    );
    assert!(
        ends.contains(&("cache".into(), "terminated".into())),
        "{ends:?}"
    );
    gw.stop().await;
}
