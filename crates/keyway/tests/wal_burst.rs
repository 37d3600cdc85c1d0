//! The write-ahead log stays bounded: a burst of 100,000 token issues over the admin
//! API (16 clients at once, kept-alive connections), after which `keyway.db-wal` is
//! back under a few tens of MB within seconds, with the gateway still running, and
//! `/metrics` says how large it is (`keyway_store_wal_bytes`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use common::*;

/// Token issues in the burst.
const ISSUES: u64 = 100_000;
/// Clients issuing at once.
const CLIENTS: u64 = 16;
/// What the log may weigh once the burst is over (a few tens of MB).
const SETTLED_WAL_BYTES: u64 = 32 * 1024 * 1024;

fn wal_bytes(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("data/keyway.db-wal")).map_or(0, |m| m.len())
}

/// One client: a kept-alive connection, `n` issues one after another.
async fn issuer(port: u16, token: Arc<String>, n: u64, done: Arc<AtomicU64>) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let body = Bytes::from_static(
        br#"{"service":"billing","principal":"burst","ttl":"1h","methods":["GET"]}"#,
    );
    for _ in 0..n {
        let req = http::Request::post("/v1/tokens")
            .header("host", "127.0.0.1")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
            .await
            .expect("an issue answered within 30 s")
            .unwrap();
        let status = resp.status();
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&got));
        done.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_shrinks_back_after_a_burst_of_100_000_token_issues() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (admin_port, svc_port) = (free_port(), free_port());
    billing_config(dir, admin_port, svc_port, "127.0.0.1:9", "2h", "");
    let mut gateway = start_gateway_with(dir, admin_port, &[("KEYWAY_LOG", "info")]);
    let token = Arc::new(
        std::fs::read_to_string(dir.join("data/admin.token"))
            .unwrap()
            .trim()
            .to_owned(),
    );

    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(issuer(
                admin_port,
                token.clone(),
                ISSUES / CLIENTS,
                done.clone(),
            ))
        })
        .collect();
    let mut peak = 0;
    // Bounded, not timed (its speed is the benchmark's): the burst must keep going,
    // and end within five minutes on a loaded machine.
    let (mut last, mut moved) = (0, Instant::now());
    while !clients.iter().all(|c| c.is_finished()) {
        peak = peak.max(wal_bytes(dir));
        let now = done.load(Ordering::Relaxed);
        if now > last {
            (last, moved) = (now, Instant::now());
        }
        assert!(
            moved.elapsed() < Duration::from_secs(30)
                && started.elapsed() < Duration::from_secs(300),
            "the burst stalled: {now} issued in {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in clients {
        c.await.unwrap();
    }
    let took = started.elapsed();
    let issued = done.load(Ordering::Relaxed);
    assert_eq!(issued, ISSUES / CLIENTS * CLIENTS);
    let db = std::fs::metadata(dir.join("data/keyway.db")).unwrap().len();
    eprintln!(
        "{issued} issues in {took:.1?} ({:.0}/s); WAL at most {} MB during the burst, {} MB at its end; keyway.db {} MB",
        issued as f64 / took.as_secs_f64(),
        peak >> 20,
        wal_bytes(dir) >> 20,
        db >> 20,
    );

    // Within seconds, without a restart, the log is small again.
    let settle = Instant::now();
    while wal_bytes(dir) > SETTLED_WAL_BYTES {
        assert!(
            settle.elapsed() < Duration::from_secs(10),
            "keyway.db-wal still {} MB 10 s after the burst",
            wal_bytes(dir) >> 20
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "WAL {} MB {:.1?} after the burst",
        wal_bytes(dir) >> 20,
        settle.elapsed()
    );

    // The metric says what the file is.
    let scraped = metrics(dir, admin_port);
    let line = scraped
        .lines()
        .find(|l| l.starts_with("keyway_store_wal_bytes "))
        .unwrap_or_else(|| panic!("no keyway_store_wal_bytes in\n{scraped}"));
    let said: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(said <= SETTLED_WAL_BYTES as f64, "{line}");
    let _ = &mut gateway;
}
