//! The HTTP gateway's request contract, as a client and an upstream see it: which
//! requests pass (token, service, grant after path normalisation, source), how a
//! refusal looks and is audited, tokens leaked in URLs, and what reaches the upstream
//! (the injected credential, never the client's token; bodies; hop-by-hop headers;
//! pooled connections; 502 and 504), and kept-alive connections across a reload. A
//! real gateway on port 0 with a real SQLite store, in front of a real HTTP server.
//!
//! A token's life (expiry, revocation, rotation) is in `http_tokens.rs`; what the
//! gateway refuses to hold (header size, framing, slow and idle connections, rate
//! limits) in `http_limits.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use keyway_core::config::Config;
use support::{config, send, send_with, svc, Conn, TestGateway, Upstream};

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
            gw.gw.tokens.token(&id).unwrap().revoked(),
            "{shape}: revoked at once"
        );
        leaks.push((token, id));
    }
    // The refusal's own event is committed before the answer; the revocation is
    // written beside it, in a task of its own.
    let revoked = |events: &[keyway_store::StoredEvent], id: &str| {
        events.iter().any(|e| {
            e.event.kind == "token.revoked"
                && e.event.reason.as_deref() == Some("exposed_in_url")
                && e.event.token_id.as_deref() == Some(id)
        })
    };
    let mut events = gw.audit().await;
    for _ in 0..50 {
        if leaks.iter().all(|(_, id)| revoked(&events, id)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        events = gw.audit().await;
    }
    for (token, id) in &leaks {
        assert!(revoked(&events, id), "no revocation event for {id}");
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
async fn admin_writes_must_say_their_body_is_json() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[("billing", &svc(&up, ""))])).await;
    let admin = gw.admin_token();
    let issue = r#"{"service": "billing", "principal": "bob", "ttl": "5m"}"#;
    let post = |token: Option<String>, headers: &'static [(&'static str, &'static str)]| {
        let addr = gw.admin;
        async move {
            send_with(
                addr,
                "POST",
                "/v1/tokens",
                token.as_deref(),
                headers,
                Bytes::from(issue),
            )
            .await
        }
    };
    for headers in [&[][..], &[("content-type", "text/plain")][..]] {
        let r = post(Some(admin.clone()), headers).await;
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{headers:?}");
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert!(
            v["error"].as_str().unwrap().contains("application/json"),
            "{}",
            r.body
        );
    }
    // The admin token is checked first: without it, 401 whatever the type.
    let r = post(None, &[("content-type", "text/plain")]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send_with(
        gw.admin,
        "PUT",
        "/v1/secrets/k",
        Some(&admin),
        &[("content-type", "application/x-www-form-urlencoded")],
        Bytes::from(r#"{"value": "v"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(gw.gw.secrets.names().is_empty());
    // JSON with a charset is JSON; a write with no body needs no type.
    let r = post(
        Some(admin.clone()),
        &[("content-type", "Application/JSON; charset=utf-8")],
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = send(
        gw.admin,
        "POST",
        &format!("/v1/tokens/{id}/revoke"),
        Some(&admin),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
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
    assert!(!gw.gw.tokens.token(&id).unwrap().revoked());
    assert_eq!(
        send(gw.addr("billing"), "GET", "/x", Some(&token))
            .await
            .status,
        StatusCode::OK
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_answers_kept_alive_connections_by_the_new_config_then_closes_them() {
    let up = Upstream::start().await;
    let text = config(&[("billing", &svc(&up, ""))]);
    let gw = TestGateway::start(&text).await;
    let (token, _, _) = gw.issue("billing", &[], &[], "45m").await;
    let with_max_ttl = |ttl: &str| {
        let text = text.replace("max_ttl = \"1h\"", &format!("max_ttl = \"{ttl}\""));
        Config::parse(&text, gw.dir.path()).unwrap()
    };
    async fn get(c: &mut Conn, token: &str) -> support::Got {
        c.send("GET", "/x", Some(token), &[], Bytes::new()).await
    }
    // Two kept-alive connections, each answered before the reloads.
    let mut a = Conn::open(gw.addr("billing")).await;
    let mut b = Conn::open(gw.addr("billing")).await;
    for c in [&mut a, &mut b] {
        let got = get(c, &token).await;
        assert_eq!(got.status, StatusCode::OK);
        assert!(!got.headers.contains_key("connection"));
    }

    // Widened: `a`'s next request is served (by the new proxy), and its answer
    // closes `a` cleanly.
    gw.gw
        .reload(with_max_ttl("2h"), "test", None, false)
        .await
        .unwrap();
    let got = get(&mut a, &token).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.headers["connection"], "close");

    // Narrowed below the token's 45 minutes: `b`, accepted two proxies ago, is
    // answered by the policy in force (a refusal by policy, not by the swap).
    let done = gw
        .gw
        .reload(with_max_ttl("30m"), "test", None, false)
        .await
        .unwrap();
    let got = get(&mut b, &token).await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
    assert_eq!(got.headers["connection"], "close");
    let at = done.listening["billing"].parse().unwrap();
    assert_eq!(
        send(at, "GET", "/x", Some(&token)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let reasons: Vec<_> = gw
        .audit()
        .await
        .into_iter()
        .filter(|e| e.event.kind == "request")
        .map(|e| e.event.reason.unwrap_or_default())
        .collect();
    assert_eq!(reasons, ["", "", "", "ttl_above_max", "ttl_above_max"]);
    gw.stop().await;
}
