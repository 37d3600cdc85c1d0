//! The client behind trusted proxies, and request bodies that stall: only a peer in
//! `trusted_proxies` is believed about `X-Forwarded-For`, and the address it gives
//! is the one `allow_cidrs`, the audit log and the upstream see; a body that stops
//! coming is cut after `body_timeout` with a 408.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// An upstream that reads each request's body whole, then answers with its length
/// and records the `X-Forwarded-For` it was given.
async fn reading_upstream() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let s = s.clone();
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let xff = format!("{:?}", req.headers().get("x-forwarded-for"));
                s.lock().unwrap().push(xff);
                async move {
                    let body = req.into_body().collect().await;
                    let said = match body {
                        Ok(b) => format!("{} bytes\n", b.to_bytes().len()),
                        Err(_) => "body failed\n".to_owned(),
                    };
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(said))))
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn only_trusted_proxies_are_believed_and_stalled_bodies_are_cut() {
    let (up, seen) = reading_upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (admin, behind, direct, relayed) = (free_port(), free_port(), free_port(), free_port());
    let service = |name: &str, port: u16, extra: &str| {
        format!(
            "[services.{name}]\nprotocol = \"http\"\nlisten = \"127.0.0.1:{port}\"\n\
             upstream = \"http://127.0.0.1:{up}\"\nmax_ttl = \"1h\"\n{extra}\n"
        )
    };
    std::fs::write(
        dir.join("keyway.toml"),
        format!(
            "data_dir = \"data\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             [detect.brute_force]\nthreshold = 3\nwindow = \"60s\"\naction = \"block\"\n{}{}{}",
            service(
                "behind",
                behind,
                "allow_cidrs = [\"198.51.100.0/24\"]\n\
                 trusted_proxies = [\"127.0.0.0/8\"]\nbody_timeout = \"1s\""
            ),
            service("direct", direct, "allow_cidrs = [\"198.51.100.0/24\"]"),
            service("relayed", relayed, "trusted_proxies = [\"127.0.0.0/8\"]"),
        ),
    )
    .unwrap();
    let _gateway = start_gateway(dir, admin);
    let token = |svc: &str| issue(dir, "alice", svc);
    let (t_behind, t_direct, t_relayed) = (token("behind"), token("direct"), token("relayed"));
    let get = |port: u16, token: &str, xff: Option<&str>| {
        let mut args = vec!["-H".to_owned(), format!("Authorization: Bearer {token}")];
        if let Some(x) = xff {
            args.extend(["-H".to_owned(), format!("X-Forwarded-For: {x}")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl_status(&format!("http://127.0.0.1:{port}/invoices"), &args)
    };

    // From a trusted proxy (this host), the hop it reports is the client: inside
    // allow_cidrs, audited and passed on as such; a forged entry left of it is not.
    assert_eq!(get(behind, &t_behind, Some("10.9.9.9, 198.51.100.7")), 200);
    assert_eq!(
        seen.lock().unwrap().last().unwrap(),
        "Some(\"198.51.100.7\")"
    );
    // Without the header, the client is unknown (not the proxy): refused where
    // networks are named.
    assert_eq!(get(behind, &t_behind, None), 403);
    // A service that trusts no proxy takes the socket's address, whatever is claimed.
    assert_eq!(get(direct, &t_direct, Some("198.51.100.7")), 403);
    let sources = store_query(
        dir,
        "select service || ' ' || decision || ' ' || \
         coalesce(source, 'unknown via ' || json_extract(detail, '$.peer')) \
         from audit_events where kind = 'request' order by seq",
    );
    assert_eq!(
        sources.trim(),
        "behind allow 198.51.100.7\nbehind deny unknown via 127.0.0.1\ndirect deny 127.0.0.1"
    );

    // Detectors judge the client too, not the proxy that carries everyone: wrong
    // tokens from an unknown client count against no one, and the client a trusted
    // proxy names is the one blocked.
    for _ in 0..5 {
        assert_eq!(get(relayed, "kwat_wrong", None), 401);
    }
    let blocked = Instant::now();
    loop {
        let status = get(relayed, "kwat_wrong", Some("198.51.100.66"));
        if status == 403 {
            break;
        }
        assert_eq!(status, 401);
        assert!(blocked.elapsed() < Duration::from_secs(10), "not blocked");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(relayed, &t_relayed, Some("198.51.100.66")), 403);
    assert_eq!(get(relayed, &t_relayed, Some("198.51.100.7")), 200);
    assert_eq!(get(relayed, &t_relayed, None), 200);
    let alerted = store_query(
        dir,
        "select source from audit_events where kind = 'detect.alert'",
    );
    assert_eq!(alerted.trim(), "198.51.100.66");

    // A body that stops coming: cut after body_timeout, the upstream's request
    // failed, the client told 408.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", behind)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    write!(
        s,
        "POST /invoices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t_behind}\r\n\
         X-Forwarded-For: 198.51.100.7\r\nContent-Length: 100\r\n\r\n0123456789"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let why = store_query(
        dir,
        "select json_extract(detail, '$.error') from audit_events where kind = 'request' order by seq desc limit 1",
    );
    assert_eq!(why.trim(), "body_stalled");
}
