//! A token's life at the HTTP gateway: the lifetime it may be issued with, expiry to
//! the millisecond, revocation (one token, in bulk, and of a live response stream),
//! rotation with its overlap, listing the unused, and a restart that keeps tokens
//! and secrets. A real gateway on port 0 with a real SQLite store and a manual
//! clock, in front of a real HTTP server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use keyway_core::Clock;
use support::{config, send, send_with, svc, Conn, TestGateway, Upstream, JSON};

/// Two `Authorization` headers, even both with the same valid token: which one a hop
/// behind would read is not the gateway's to guess, so neither is tried.
#[tokio::test]
async fn two_authorization_headers_are_a_malformed_credential() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[("billing", &svc(&up, ""))])).await;
    let (token, _, _) = gw.issue("billing", &[], &[], "15m").await;
    let both = format!("Bearer {token}");
    let headers = [("authorization", both.as_str())];
    let a = gw.addr("billing");
    let got = send_with(a, "GET", "/", Some(&token), &headers, Bytes::new()).await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
    assert!(up.seen().is_empty(), "nothing reached the upstream");
    let events = gw.audit().await;
    let reasons: Vec<_> = events
        .iter()
        .filter_map(|e| e.event.reason.as_deref())
        .collect();
    assert_eq!(reasons, ["malformed_token"]);
    assert_eq!(
        send(a, "GET", "/", Some(&token)).await.status,
        StatusCode::OK
    );
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
    assert_eq!(reopened.secrets.names(), ["k"]);
    let id = keyway_core::PresentedToken::parse(&token)
        .unwrap()
        .id()
        .to_owned();
    assert!(reopened.tokens.token(&id).is_some());
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
        &[JSON],
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
        .tokens
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
        .tokens
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
            &[JSON],
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
