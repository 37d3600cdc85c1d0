//! The HTTP gateway, as a client and an upstream see it: a real gateway on port 0 with
//! a real SQLite store, in front of a real HTTP server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use keyway_core::Clock;
use support::{config, send, send_with, Conn, TestGateway, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn svc(upstream: &Upstream, extra: &str) -> String {
    format!("upstream = \"{}\"\n{extra}", upstream.url())
}

#[tokio::test]
async fn a_token_works_only_on_its_own_service() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[
        ("billing", &svc(&up, "")),
        ("orders", &svc(&up, "")),
    ]))
    .await;
    let (token, _, _) = gw.issue("billing", &[], &[], "15m").await;

    let ok = send(gw.addr("billing"), "GET", "/invoices/1", Some(&token)).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body, "upstream ok /invoices/1");

    let other = send(gw.addr("orders"), "GET", "/invoices/1", Some(&token)).await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    assert_eq!(other.body, "forbidden\n");

    let none = send(gw.addr("billing"), "GET", "/", None).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.headers["www-authenticate"], "Bearer realm=\"keyway\"");
    assert_eq!(none.body, "unauthorized\n");

    for bad in [
        "nonsense",
        "kwat_short",
        &token[..token.len() - 1],
        &format!(
            "{}{}",
            &token[..token.len() - 1],
            if token.ends_with('x') { 'y' } else { 'x' }
        ),
    ] {
        let r = send(gw.addr("billing"), "GET", "/", Some(bad)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{bad}");
    }
    let r = send_with(
        gw.addr("billing"),
        "GET",
        "/",
        None,
        &[("authorization", &format!("Basic {token}"))],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // The admin credential is a token too, but not for services.
    let admin = send(gw.addr("billing"), "GET", "/", Some(&gw.admin_token())).await;
    assert_eq!(admin.status, StatusCode::FORBIDDEN);

    assert_eq!(
        up.seen().len(),
        1,
        "only the allowed request reached the upstream"
    );
    gw.stop().await;
}

#[tokio::test]
async fn method_and_path_outside_the_grant_are_refused_after_normalisation() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[("billing", &svc(&up, ""))])).await;
    let (token, _, _) = gw
        .issue("billing", &["GET", "HEAD"], &["/invoices/"], "15m")
        .await;
    let t = Some(token.as_str());
    let a = gw.addr("billing");

    let cases = [
        ("GET", "/invoices/1", 200),
        ("HEAD", "/invoices/1", 200),
        ("GET", "//invoices//2", 200),
        ("GET", "/invoices/./3", 200),
        ("GET", "/%69nvoices/4", 200),
        ("GET", "/invoices/5?x=1&y=%2F", 200),
        ("POST", "/invoices/1", 403),
        ("DELETE", "/invoices/1", 403),
        ("GET", "/invoices", 403),
        ("GET", "/admin/", 403),
        ("GET", "/invoices/../admin/", 403),
        ("GET", "/invoices/%2e%2e/admin/", 403),
        ("GET", "/invoices/%2E%2E/admin/", 403),
        ("GET", "/invoices/.%2e/admin/", 403),
        ("GET", "/invoices/..%2fadmin/", 400),
        ("GET", "/invoices/%2fadmin", 400),
        ("GET", "/invoices/%5c..%5cadmin", 400),
        ("GET", "/invoices/..;/admin/", 400),
        ("GET", "/invoices/../../etc/passwd", 400),
    ];
    for (method, path, want) in cases {
        let r = send(a, method, path, t).await;
        assert_eq!(r.status.as_u16(), want, "{method} {path}");
    }
    // The upstream saw exactly the allowed requests, with normalised paths.
    let seen: Vec<String> = up
        .seen()
        .iter()
        .map(|s| format!("{} {}", s.method, s.uri))
        .collect();
    assert_eq!(
        seen,
        [
            "GET /invoices/1",
            "HEAD /invoices/1",
            "GET /invoices/2",
            "GET /invoices/3",
            "GET /invoices/4",
            "GET /invoices/5?x=1&y=%2F",
        ]
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_unrestricted_grant_passes_encoded_slashes_through() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[("billing", &svc(&up, ""))])).await;
    let (token, _, _) = gw.issue("billing", &[], &[], "15m").await;
    let r = send(gw.addr("billing"), "GET", "/projects/a%2fb", Some(&token)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.seen()[0].uri, "/projects/a%2Fb");
    gw.stop().await;
}

#[tokio::test]
async fn expiry_is_exact() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[("billing", &svc(&up, ""))])).await;
    let (token, _, expires_at) = gw.issue("billing", &[], &[], "10m").await;
    let a = gw.addr("billing");

    gw.clock.set(expires_at - 1);
    assert_eq!(
        send(a, "GET", "/", Some(&token)).await.status,
        StatusCode::OK,
        "valid 1 ms before expires_at"
    );
    gw.clock.set(expires_at);
    assert_eq!(
        send(a, "GET", "/", Some(&token)).await.status,
        StatusCode::UNAUTHORIZED,
        "refused at expires_at"
    );

    let events = gw.audit().await;
    let last = events
        .iter()
        .rev()
        .find(|e| e.event.kind == "request")
        .unwrap();
    assert_eq!(last.event.reason.as_deref(), Some("expired"));
    gw.stop().await;
}

#[tokio::test]
async fn ttl_above_the_maximum_is_refused_at_issue() {
    let up = Upstream::start().await;
    let cfg =
        config(&[("billing", &svc(&up, ""))]).replace("max_ttl = \"24h\"", "max_ttl = \"2h\"");
    let gw = TestGateway::start(&cfg).await;
    let issue = |ttl: &str| {
        let req = keyway_gateway::IssueRequest {
            service: "billing".into(),
            principal: "alice".into(),
            ttl: Some(ttl.into()),
            ..Default::default()
        };
        let gw = gw.gw.clone();
        async move {
            gw.issue(&req, "test")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };
    assert_eq!(
        issue("2h").await.unwrap_err(),
        "requested TTL of 2h is above the maximum of 1h for service `billing` (services.billing.max_ttl)"
    );
    assert!(issue("1h").await.is_ok());
    assert!(issue("0s").await.unwrap_err().contains("zero"));
    assert!(issue("never").await.unwrap_err().contains("not a duration"));
    assert!(issue("100y")
        .await
        .unwrap_err()
        .contains("longer than 10 years"));
    assert!(issue("90m")
        .await
        .unwrap_err()
        .contains("above the maximum"));
    gw.stop().await;
}

#[tokio::test]
async fn revocation_takes_effect_on_the_next_request_of_a_kept_alive_connection() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[("billing", &svc(&up, ""))])).await;
    let (token, id, _) = gw.issue("billing", &[], &[], "15m").await;
    let mut conn = Conn::open(gw.addr("billing")).await;
    let first = conn
        .send("GET", "/a", Some(&token), &[], Bytes::new())
        .await;
    assert_eq!(first.status, StatusCode::OK);

    // Through the admin API, as the CLI does.
    let admin = send_with(
        gw.admin,
        "POST",
        &format!("/v1/tokens/{id}/revoke"),
        Some(&gw.admin_token()),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(admin.status, StatusCode::OK, "{}", admin.body);
    assert!(
        admin.body.contains("\"state\":\"revoked\""),
        "{}",
        admin.body
    );

    let second = conn
        .send("GET", "/b", Some(&token), &[], Bytes::new())
        .await;
    assert_eq!(second.status, StatusCode::UNAUTHORIZED);
    assert_eq!(up.seen().len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn revoking_a_token_cuts_its_live_response_stream() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[("billing", &svc(&up, ""))])).await;
    let (token, id, _) = gw.issue("billing", &[], &[], "15m").await;
    let mut conn = Conn::open(gw.addr("billing")).await;
    let resp = conn
        .request("GET", "/stream", Some(&token), &[], Bytes::new())
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    use http_body_util::BodyExt;
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some());

    gw.gw.revoke(&id, "test", None).await.unwrap();
    let cut = tokio::time::timeout(Duration::from_secs(2), async {
        // Frames keep coming until the stream is cut (an error) or ends.
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
    assert!(cut.is_ok(), "the stream went on after revocation");
    gw.stop().await;
}

#[tokio::test]
async fn the_client_token_never_reaches_the_upstream_and_the_credential_does() {
    let up = Upstream::start().await;
    let extra = "upstream_auth = { header = \"X-Api-Key\", secret = \"billing-key\" }";
    let gw = TestGateway::start(&config(&[("billing", &svc(&up, extra))])).await;
    let (token, _, _) = gw.issue("billing", &[], &[], "15m").await;

    // Not set yet: refused, nothing forwarded.
    let r = send(gw.addr("billing"), "GET", "/", Some(&token)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(up.seen().is_empty());

    gw.set_secret("billing-key", "upstream-api-key-value").await;
    let r = send_with(
        gw.addr("billing"),
        "GET",
        "/",
        Some(&token),
        &[
            ("x-api-key", "client-forged"),
            ("proxy-authorization", "Basic x"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.body.contains("upstream-api-key-value"));
    let seen = &up.seen()[0];
    assert_eq!(seen.headers["x-api-key"], "upstream-api-key-value");
    assert_eq!(seen.headers.get_all("x-api-key").iter().count(), 1);
    assert!(seen.headers.get("authorization").is_none());
    assert!(seen.headers.get("proxy-authorization").is_none());
    let all: String = seen
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {v:?}\n"))
        .collect();
    assert!(
        !all.contains(&token[22..]),
        "the token reached the upstream: {all}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn sources_outside_allow_cidrs_are_refused() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[
        ("billing", &svc(&up, "allow_cidrs = [\"10.0.0.0/8\"]")),
        ("local", &svc(&up, "allow_cidrs = [\"127.0.0.0/8\"]")),
    ]))
    .await;
    let (b, _, _) = gw.issue("billing", &[], &[], "15m").await;
    let (l, _, _) = gw.issue("local", &[], &[], "15m").await;
    assert_eq!(
        send(gw.addr("billing"), "GET", "/", Some(&b)).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(gw.addr("local"), "GET", "/", Some(&l)).await.status,
        StatusCode::OK
    );
    let events = gw.audit().await;
    assert!(events
        .iter()
        .any(|e| e.event.reason.as_deref() == Some("source_not_allowed")
            && e.event.source.as_deref() == Some("127.0.0.1")));
    gw.stop().await;
}

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

#[tokio::test]
async fn denials_are_generic_and_their_reasons_are_audited() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[("billing", &svc(&up, ""))])).await;
    let (token, id, _) = gw.issue("billing", &["GET"], &["/invoices/"], "15m").await;
    let a = gw.addr("billing");
    let r1 = send(a, "DELETE", "/invoices/1", Some(&token)).await;
    let r2 = send(a, "GET", "/admin", Some(&token)).await;
    assert_eq!(
        (r1.body.as_str(), r2.body.as_str()),
        ("forbidden\n", "forbidden\n"),
        "same body, whatever the reason"
    );
    send(a, "GET", "/invoices/1", None).await;

    let events = gw.audit().await;
    let denials: Vec<_> = events
        .iter()
        .filter(|e| e.event.decision.as_deref() == Some("deny"))
        .collect();
    let reasons: Vec<_> = denials
        .iter()
        .map(|e| e.event.reason.clone().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["method_not_granted", "path_not_granted", "no_token"]
    );
    let d = &denials[0].event;
    assert_eq!(d.principal.as_deref(), Some("alice"));
    assert_eq!(d.service.as_deref(), Some("billing"));
    assert_eq!(d.token_id.as_deref(), Some(id.as_str()));
    assert_eq!(d.source.as_deref(), Some("127.0.0.1"));
    assert_eq!(d.detail["method"], "DELETE");
    assert_eq!(d.detail["status"], 403);
    assert!(d.at > 0);
    gw.stop().await;
}

#[tokio::test]
async fn bodies_stream_both_ways_and_hop_by_hop_headers_are_removed() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[("billing", &svc(&up, ""))])).await;
    let (token, _, _) = gw.issue("billing", &[], &[], "15m").await;
    let big = Bytes::from(vec![b'x'; 5 * 1024 * 1024]);
    let r = send_with(
        gw.addr("billing"),
        "POST",
        "/echo",
        Some(&token),
        &[
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "must not pass"),
            ("keep-alive", "timeout=5"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "evil.example"),
            ("x-real-ip", "10.0.0.1"),
            ("forwarded", "for=6.6.6.6"),
            ("x-http-method-override", "DELETE"),
            ("x-original-url", "/admin"),
            ("x-end-to-end", "passes"),
        ],
        big.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), big.len());
    let seen = &up.seen()[0];
    assert_eq!(seen.body_len, big.len());
    assert!(seen.headers.get("x-hop").is_none());
    assert!(seen.headers.get("keep-alive").is_none());
    for claim in [
        "forwarded",
        "x-forwarded-host",
        "x-real-ip",
        "x-http-method-override",
        "x-original-url",
    ] {
        assert!(
            seen.headers.get(claim).is_none(),
            "{claim} reached the upstream"
        );
    }
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-end-to-end"], "passes");
    assert_eq!(seen.headers["host"], up.addr.to_string());
    gw.stop().await;
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[("billing", &svc(&up, ""))])).await;
    let (token, _, _) = gw.issue("billing", &[], &[], "15m").await;
    for i in 0..20 {
        // A new client connection each time: the upstream side is what is pooled.
        let r = send(gw.addr("billing"), "GET", &format!("/{i}"), Some(&token)).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let conns = up.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        conns <= 2,
        "20 sequential requests used {conns} upstream connections"
    );
    gw.stop().await;
}

#[tokio::test]
async fn upstream_down_is_502_and_upstream_slow_is_504() {
    let up = Upstream::start().await;
    // A port that was free a moment ago: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = TestGateway::start(&config(&[
        ("down", &format!("upstream = \"http://{dead}\"")),
        ("slow", &svc(&up, "upstream_timeout = \"300ms\"")),
    ]))
    .await;
    let (d, _, _) = gw.issue("down", &[], &[], "15m").await;
    let (s, _, _) = gw.issue("slow", &[], &[], "15m").await;
    let r = send(gw.addr("down"), "GET", "/", Some(&d)).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.body, "bad gateway\n");
    let started = std::time::Instant::now();
    let r = send(gw.addr("slow"), "GET", "/slow", Some(&s)).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(2));
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
async fn a_token_in_a_url_is_refused_and_revoked() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[(
        "billing",
        &svc(&up, "allow_cidrs = [\"10.0.0.0/8\"]"),
    )]))
    .await;
    let a = gw.addr("billing");
    let mut leaks = Vec::new();
    for shape in ["query", "path", "encoded"] {
        let (token, id, _) = gw.issue("billing", &[], &[], "15m").await;
        let url = match shape {
            "query" => format!("/x?access_token={token}"),
            "path" => format!("/tokens/x{token}"),
            _ => format!("/x?t={}", token.replace('_', "%5F")),
        };
        // Even from a source outside allow_cidrs, and even without the token in the
        // Authorization header: the token is public now.
        let r = send(a, "GET", &url, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{shape}");
        assert!(
            gw.gw.token(&id).unwrap().revoked(),
            "{shape}: revoked at once"
        );
        leaks.push((token, id));
    }
    let events = gw.audit().await;
    for (token, id) in &leaks {
        assert!(
            events.iter().any(|e| e.event.kind == "token.revoked"
                && e.event.reason.as_deref() == Some("exposed_in_url")
                && e.event.token_id.as_deref() == Some(id.as_str())),
            "{id}"
        );
        let all =
            serde_json::to_string(&events.iter().map(|e| &e.event).collect::<Vec<_>>()).unwrap();
        assert!(
            !all.contains(&token[22..]),
            "the audit log holds a leaked token"
        );
    }
    assert!(up.seen().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn trace_is_refused_so_the_injected_credential_cannot_be_echoed() {
    let up = Upstream::start().await;
    let extra = "upstream_auth = { header = \"X-Api-Key\", secret = \"k\" }";
    let gw = TestGateway::start(&config(&[("billing", &svc(&up, extra))])).await;
    gw.set_secret("k", "value").await;
    let (token, _, _) = gw.issue("billing", &[], &[], "15m").await;
    for m in ["TRACE", "TRACK"] {
        assert_eq!(
            send(gw.addr("billing"), m, "/", Some(&token)).await.status,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
    assert!(up.seen().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn expiry_ends_a_live_stream() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[("billing", &svc(&up, ""))])).await;
    let (token, _, _) = gw.issue("billing", &[], &[], "1s").await;
    let mut conn = Conn::open(gw.addr("billing")).await;
    let resp = conn
        .request("GET", "/stream", Some(&token), &[], Bytes::new())
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let started = std::time::Instant::now();
    let mut body = resp.into_body();
    use http_body_util::BodyExt;
    let mut frames = 0;
    let ended = tokio::time::timeout(Duration::from_secs(4), async {
        while let Some(Ok(_)) = body.frame().await {
            frames += 1;
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its token");
    assert!(frames > 5, "the stream ran until expiry ({frames} frames)");
    assert!(started.elapsed() < Duration::from_millis(1500));
    gw.stop().await;
}

#[tokio::test]
async fn the_admin_api_needs_the_admin_token_even_on_loopback() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[("billing", &svc(&up, ""))])).await;
    let (access, _, _) = gw.issue("billing", &[], &[], "15m").await;
    for token in [None, Some("kwad_nonsense"), Some(access.as_str())] {
        let r = send(gw.admin, "GET", "/v1/tokens", token).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{token:?}");
    }
    let r = send(gw.admin, "GET", "/v1/tokens", Some(&gw.admin_token())).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("\"principal\":\"alice\""));
    assert!(!r.body.contains(&access[22..]), "a listing shows no secret");
    let perms = std::fs::metadata(gw.data_dir().join("admin.token")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(perms.permissions().mode() & 0o777, 0o600);
    gw.stop().await;
}

#[tokio::test]
async fn a_restart_keeps_tokens_and_secrets_and_refuses_a_wrong_pepper() {
    let up = Upstream::start().await;
    let extra = "upstream_auth = { header = \"X-Api-Key\", secret = \"k\" }";
    let cfg = config(&[("billing", &svc(&up, extra))]);
    let gw = TestGateway::start(&cfg).await;
    let (token, _, _) = gw.issue("billing", &[], &[], "15m").await;
    gw.set_secret("k", "v1").await;
    let dir = gw.dir.path().to_owned();
    let keep = tempfile::tempdir().unwrap();
    let TestGateway {
        gw: g, shutdown, ..
    } = gw;
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(g);
    // Copy the data folder aside, to reopen it.
    let copy = keep.path().join("d");
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(dir.join("keyway-data")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let cfg2 = format!("data_dir = \"{}\"\n{cfg}", copy.display());
    let config = keyway_core::config::Config::parse(&cfg2, keep.path()).unwrap();
    let clock = std::sync::Arc::new(keyway_core::SystemClock);
    let reopened = keyway_gateway::Gateway::open(config.clone(), clock.clone())
        .await
        .unwrap();
    assert_eq!(reopened.secret_names(), ["k"]);
    let id = keyway_core::PresentedToken::parse(&token)
        .unwrap()
        .id()
        .to_owned();
    assert!(reopened.token(&id).is_some());
    drop(reopened);

    std::fs::write(copy.join("pepper.key"), "00".repeat(32)).unwrap();
    let err = keyway_gateway::Gateway::open(config, clock)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("pepper does not match"), "{err}");
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

#[tokio::test]
async fn rotation_gives_a_successor_and_the_old_token_dies_after_the_overlap() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[("billing", &svc(&up, ""))])).await;
    let (old, old_id, _) = gw.issue("billing", &["GET"], &["/invoices/"], "30m").await;
    let a = gw.addr("billing");
    let start = gw.clock.now_ms();

    let r = send_with(
        gw.admin,
        "POST",
        &format!("/v1/tokens/{old_id}/rotate"),
        Some(&gw.admin_token()),
        &[],
        Bytes::from(r#"{"overlap": "5m"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let new = body["token"].as_str().unwrap().to_owned();
    let new_id = body["info"]["id"].as_str().unwrap().to_owned();
    assert_eq!(body["info"]["principal"], "alice");
    assert_eq!(body["info"]["methods"], serde_json::json!(["GET"]));
    assert_eq!(body["info"]["paths"], serde_json::json!(["/invoices/"]));

    assert_eq!(
        send(a, "GET", "/invoices/1", Some(&new)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(a, "GET", "/admin", Some(&new)).await.status,
        StatusCode::FORBIDDEN,
        "same grant"
    );
    gw.clock.set(start + 5 * 60 * 1000 - 1);
    assert_eq!(
        send(a, "GET", "/invoices/1", Some(&old)).await.status,
        StatusCode::OK,
        "within the overlap"
    );
    gw.clock.set(start + 5 * 60 * 1000);
    assert_eq!(
        send(a, "GET", "/invoices/1", Some(&old)).await.status,
        StatusCode::UNAUTHORIZED,
        "after it"
    );
    assert_eq!(
        send(a, "GET", "/invoices/1", Some(&new)).await.status,
        StatusCode::OK
    );

    let events = gw.audit().await;
    let rotated = events
        .iter()
        .find(|e| e.event.kind == "token.rotated")
        .unwrap();
    assert_eq!(rotated.event.token_id.as_deref(), Some(old_id.as_str()));
    assert_eq!(rotated.event.detail["successor"], new_id.as_str());
    let issued = events
        .iter()
        .find(|e| {
            e.event.kind == "token.issued" && e.event.token_id.as_deref() == Some(new_id.as_str())
        })
        .unwrap();
    assert!(
        issued.event.detail["parent"].is_null(),
        "issued directly, so no credential lineage"
    );

    // A revoked token cannot be rotated into a live one.
    gw.gw.revoke(&new_id, "test", None).await.unwrap();
    let e = gw
        .gw
        .rotate(&new_id, Duration::from_secs(60), "test")
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("revoked or expired"), "{e}");
    gw.stop().await;
}

#[tokio::test]
async fn the_overlap_end_cuts_the_old_tokens_live_stream() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[("billing", &svc(&up, ""))])).await;
    let (old, old_id, _) = gw.issue("billing", &[], &[], "30m").await;
    let mut conn = Conn::open(gw.addr("billing")).await;
    let resp = conn
        .request("GET", "/stream", Some(&old), &[], Bytes::new())
        .await;
    let mut body = resp.into_body();
    use http_body_util::BodyExt;
    assert!(body.frame().await.unwrap().is_ok());
    let started = std::time::Instant::now();
    gw.gw
        .rotate(&old_id, Duration::from_millis(300), "test")
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
    assert!(ended.is_ok(), "the old token's stream outlived the overlap");
    assert!(started.elapsed() >= Duration::from_millis(250));
    gw.stop().await;
}

#[tokio::test]
async fn bulk_revocation_by_principal_service_and_issue_time() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[
        ("billing", &svc(&up, "")),
        ("orders", &svc(&up, "")),
    ]))
    .await;
    let mint = |service: &'static str, principal: &'static str| {
        let gw = gw.gw.clone();
        async move {
            let req = keyway_gateway::IssueRequest {
                service: service.into(),
                principal: principal.into(),
                ttl: Some("1h".into()),
                ..Default::default()
            };
            let (t, r) = gw.issue(&req, "test").await.unwrap();
            (
                secrecy::ExposeSecret::expose_secret(t.secret()).to_owned(),
                r.id,
            )
        }
    };
    let early = mint("orders", "carol").await;
    gw.clock.advance(Duration::from_secs(60));
    let cutoff = keyway_core::clock::format_ms(gw.clock.now_ms());
    gw.clock.advance(Duration::from_secs(60));
    let alice_b = mint("billing", "alice").await;
    let alice_o = mint("orders", "alice").await;
    let bob_b = mint("billing", "bob").await;
    let dave_o = mint("orders", "dave").await;

    let admin_token = gw.admin_token();
    let revoke = |body: String| {
        send_with(
            gw.admin,
            "POST",
            "/v1/tokens/revoke",
            Some(&admin_token),
            &[],
            Bytes::from(body),
        )
    };
    let ids = |body: &str| {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let mut ids: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let r = revoke(r#"{"principal": "alice"}"#.into()).await;
    assert_eq!(
        ids(&r.body),
        sorted(vec![alice_b.1.clone(), alice_o.1.clone()])
    );
    let r = revoke(r#"{"service": "billing"}"#.into()).await;
    assert_eq!(ids(&r.body), vec![bob_b.1.clone()]);
    let r = revoke(format!(r#"{{"issued_before": "{cutoff}"}}"#)).await;
    assert_eq!(ids(&r.body), vec![early.1.clone()]);
    let r = revoke("{}".into()).await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "no filter is not 'everything'"
    );

    for (token, service, want) in [
        (&alice_b.0, "billing", 401),
        (&alice_o.0, "orders", 401),
        (&bob_b.0, "billing", 401),
        (&early.0, "orders", 401),
        (&dave_o.0, "orders", 200),
    ] {
        assert_eq!(
            send(gw.addr(service), "GET", "/", Some(token))
                .await
                .status
                .as_u16(),
            want
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn tokens_unused_for_a_while_can_be_listed() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[("billing", &svc(&up, ""))])).await;
    let (used, used_id, _) = gw.issue("billing", &[], &[], "1h").await;
    let (_idle, idle_id, _) = gw.issue("billing", &[], &[], "1h").await;
    gw.clock.advance(Duration::from_secs(10 * 60));
    assert_eq!(
        send(gw.addr("billing"), "GET", "/", Some(&used))
            .await
            .status,
        StatusCode::OK
    );
    gw.clock.advance(Duration::from_secs(10 * 60));
    let r = send(
        gw.admin,
        "GET",
        "/v1/tokens?unused=15m",
        Some(&gw.admin_token()),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [idle_id.as_str()]);
    let r = send(gw.admin, "GET", "/v1/tokens", Some(&gw.admin_token())).await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let used = v
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == used_id.as_str())
        .unwrap();
    assert!(used["last_used_at"].is_string());
    gw.stop().await;
}

#[tokio::test]
async fn revoking_tokens_found_in_urls_can_be_turned_off() {
    let up = Upstream::start().await;
    let cfg = config(&[("billing", &svc(&up, ""))]).replace(
        "max_ttl = \"24h\"",
        "max_ttl = \"24h\"\nrevoke_tokens_in_urls = false",
    );
    let gw = TestGateway::start(&cfg).await;
    let (token, id, _) = gw.issue("billing", &[], &[], "15m").await;
    let r = send(
        gw.addr("billing"),
        "GET",
        &format!("/x?access_token={token}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "still refused");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!gw.gw.token(&id).unwrap().revoked());
    assert_eq!(
        send(gw.addr("billing"), "GET", "/x", Some(&token))
            .await
            .status,
        StatusCode::OK
    );
    gw.stop().await;
}
