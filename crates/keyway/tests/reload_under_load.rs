//! A reload loses no request. Eight clients send requests back to back on kept-alive
//! connections to an HTTP service while ten SIGHUPs each change the service's
//! `max_ttl` (so each restarts its proxy on the same port). Every request is answered
//! 200, none is refused for the swap (before, some were a 503 `reloading`), and a
//! connection closes only after an answer that said `Connection: close` (before, some
//! were closed under a request on its way); the client then opens another.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use common::*;

const CLIENTS: usize = 8;
const RELOADS: usize = 10;

/// What one client saw.
#[derive(Debug, Default)]
struct Tally {
    /// Answered 200.
    ok: u64,
    /// Answered with another status.
    refused: Vec<u16>,
    /// Sent and never answered: the connection closed under it (or 10 s passed).
    cut: u64,
    /// Connections closed between requests without a `Connection: close` first.
    dropped: u64,
    /// Connections closed after an answer that said `Connection: close`.
    closed_cleanly: u64,
}

/// Requests to `addr` with `token`, one after another on a kept-alive connection,
/// until `stop`; a new connection after each closed one.
async fn client(addr: SocketAddr, token: String, stop: Arc<AtomicBool>) -> Tally {
    let mut t = Tally::default();
    let auth = format!("Bearer {token}");
    'connection: while !stop.load(Ordering::Relaxed) {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("the service's port accepts connections during a reload");
        stream.set_nodelay(true).unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        while !stop.load(Ordering::Relaxed) {
            if sender.ready().await.is_err() {
                t.dropped += 1;
                continue 'connection;
            }
            let req = http::Request::get("/invoices")
                .header(http::header::HOST, addr.to_string())
                .header(http::header::AUTHORIZATION, &auth)
                .body(Empty::<Bytes>::new())
                .unwrap();
            let answered = tokio::time::timeout(Duration::from_secs(10), async {
                let resp = sender.send_request(req).await?;
                let status = resp.status().as_u16();
                let close = resp
                    .headers()
                    .get(http::header::CONNECTION)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                resp.into_body().collect().await?;
                Ok::<_, hyper::Error>((status, close))
            })
            .await;
            let Ok(Ok((status, close))) = answered else {
                t.cut += 1;
                continue 'connection;
            };
            if status == 200 {
                t.ok += 1;
            } else {
                t.refused.push(status);
            }
            if close {
                t.closed_cleanly += 1;
                continue 'connection;
            }
        }
    }
    t
}

/// The test's config, the service's `max_ttl` set to `ttl`.
fn config(admin: u16, tunnel: u16, api: u16, upstream: SocketAddr, ttl: &str) -> String {
    format!(
        r#"data_dir = "data"
admin_listen = "127.0.0.1:{admin}"
tunnel_listen = "127.0.0.1:{tunnel}"
max_ttl = "24h"

[services.api]
protocol = "http"
listen = "127.0.0.1:{api}"
upstream = "http://{upstream}"
max_ttl = "{ttl}"
"#
    )
}

/// How many times the gateway's log says a SIGHUP applied a config.
fn applied(dir: &std::path::Path) -> usize {
    let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap();
    log.matches("SIGHUP: config applied").count()
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_reloads_under_load_refuse_and_cut_no_request() {
    let started = Instant::now();
    let (upstream, _) = upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (admin, tunnel, api) = (free_port(), free_port(), free_port());
    let write = |ttl: &str| {
        let text = config(admin, tunnel, api, upstream, ttl);
        std::fs::write(dir.join("keyway.toml"), text).unwrap();
    };
    write("1h");
    let gateway = start_gateway_logging(dir, admin, "info", &[]);
    let token = issue(dir, "alice", "api");
    let addr: SocketAddr = ([127, 0, 0, 1], api).into();
    assert_eq!(
        curl(&format!("http://{addr}/invoices"), Some(&token), "GET"),
        200
    );

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client(addr, token.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Ten reloads, each changing the service (its `max_ttl`, 1h ⇄ 2h), each waited
    // for in the log, a moment of load between them.
    let pid = gateway.0.id().to_string();
    for i in 0..RELOADS {
        write(if i % 2 == 0 { "2h" } else { "1h" });
        let hup = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(hup.success());
        let deadline = Instant::now() + Duration::from_secs(5);
        while applied(dir) <= i {
            assert!(Instant::now() < deadline, "reload {} not applied", i + 1);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut all = Tally::default();
    for c in clients {
        let t = c.await.unwrap();
        all.ok += t.ok;
        all.refused.extend(t.refused);
        all.cut += t.cut;
        all.dropped += t.dropped;
        all.closed_cleanly += t.closed_cleanly;
    }
    let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap();
    let changed = log.matches("~ service api").count();
    println!(
        "{} requests, {RELOADS} reloads ({changed} changed the service), {} refused, {} cut, \
         {} connections dropped between requests, {} closed after `Connection: close`, in {:?}",
        all.ok + all.refused.len() as u64 + all.cut,
        all.refused.len(),
        all.cut,
        all.dropped,
        all.closed_cleanly,
        started.elapsed()
    );
    assert_eq!(changed, RELOADS, "each reload changes the service:\n{log}");
    assert!(all.refused.is_empty(), "refused: {:?}", all.refused);
    assert_eq!(all.cut, 0, "requests cut mid-way");
    assert_eq!(
        all.dropped, 0,
        "connections closed without `Connection: close`"
    );
    // The reloads met live connections, which were handed over and closed cleanly.
    assert!(all.closed_cleanly >= RELOADS as u64, "{all:?}");
    assert!(all.ok > 1_000, "too little load to say anything: {all:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    drop(gateway);
}
