//! Client credentials and the token endpoint: a workload trades its credential for a
//! short-lived access token, over real HTTP, against a running gateway.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use keyway_core::Clock;
use keyway_gateway::gateway::CredentialRequest;
use secrecy::ExposeSecret;
use support::{config, send, send_with, TestGateway, Upstream};

fn svc(upstream: &Upstream, extra: &str) -> String {
    format!("upstream = \"{}\"\n{extra}", upstream.url())
}

async fn credential(
    gw: &TestGateway,
    services: &[&str],
    cidrs: &[&str],
    max_age: Option<&str>,
) -> (String, String) {
    let req = CredentialRequest {
        principal: "ci-bot".into(),
        services: services.iter().map(|s| s.to_string()).collect(),
        methods: vec!["GET".into()],
        paths: vec!["/invoices/".into()],
        cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
        max_age: max_age.map(str::to_owned),
        cert_thumbprint: None,
    };
    let (t, r) = gw.gw.tokens.issue_credential(&req, "test").await.unwrap();
    (t.secret().expose_secret().to_owned(), r.id)
}

async fn exchange(gw: &TestGateway, credential: &str, body: &str) -> support::Got {
    send_with(
        gw.token.unwrap(),
        "POST",
        "/v1/token/exchange",
        Some(credential),
        &[],
        Bytes::from(body.to_owned()),
    )
    .await
}

#[tokio::test]
async fn a_credential_is_exchanged_for_a_short_lived_access_token() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[
        ("billing", &svc(&up, "")),
        ("orders", &svc(&up, "max_ttl = \"5m\"")),
    ]))
    .await;
    let (cred, cred_id) = credential(&gw, &["billing", "orders"], &[], None).await;

    let r = exchange(&gw, &cred, r#"{"service": "billing"}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.headers["cache-control"], "no-store");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 15 * 60, "15 minutes by default");
    assert!(v["refresh_after"].as_str().unwrap() < v["expires_at"].as_str().unwrap());
    let access = v["access_token"].as_str().unwrap();
    assert!(access.starts_with("kwat_"));

    // The access token carries the credential's grant, and its principal.
    let a = gw.addr("billing");
    assert_eq!(
        send(a, "GET", "/invoices/1", Some(access)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(a, "POST", "/invoices/1", Some(access)).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(gw.addr("orders"), "GET", "/invoices/1", Some(access))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let id = v["id"].as_str().unwrap();
    let entry = gw.gw.tokens.token(id).unwrap();
    assert_eq!(entry.record.principal, "ci-bot");
    assert_eq!(entry.record.parent_id.as_deref(), Some(cred_id.as_str()));

    // Never above the service's maximum.
    let r = exchange(&gw, &cred, r#"{"service": "orders", "ttl": "1h"}"#).await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["expires_in"], 5 * 60);

    // The credential calls nothing itself.
    assert_eq!(
        send(a, "GET", "/invoices/1", Some(&cred)).await.status,
        StatusCode::FORBIDDEN
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_token_endpoint_refuses_what_the_credential_does_not_allow() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[
        ("billing", &svc(&up, "")),
        ("orders", &svc(&up, "")),
    ]))
    .await;
    let (cred, _) = credential(&gw, &["billing"], &[], None).await;
    let (elsewhere, _) = credential(&gw, &["billing"], &["10.0.0.0/8"], None).await;
    let (access, _, _) = gw.issue("billing", &[], &[], "15m").await;

    let r = exchange(&gw, &cred, r#"{"service": "orders"}"#).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("access_denied"));
    assert_eq!(
        exchange(&gw, &elsewhere, r#"{"service": "billing"}"#)
            .await
            .status,
        StatusCode::FORBIDDEN,
        "CIDR-bound"
    );
    assert_eq!(
        exchange(&gw, &access, r#"{"service": "billing"}"#)
            .await
            .status,
        StatusCode::UNAUTHORIZED,
        "an access token is no credential"
    );
    assert_eq!(
        exchange(&gw, "kwcc_nonsense", r#"{"service": "billing"}"#)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let r = send_with(
        gw.token.unwrap(),
        "POST",
        "/v1/token/exchange",
        None,
        &[],
        Bytes::from("{}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Two Authorization headers, the credential in either: refused, told why, and
    // audited as a malformed credential; on the people's routes of the same listener
    // too (`whoami` checks its session first).
    let malformed = |events: &[keyway_store::StoredEvent]| {
        events
            .iter()
            .filter(|e| e.event.reason.as_deref() == Some("malformed_token"))
            .count()
    };
    let before = malformed(&gw.audit().await);
    let twice = |path: &'static str, method: &'static str, first: String, second: String| {
        let addr = gw.token.unwrap();
        async move {
            send_with(
                addr,
                method,
                path,
                Some(&first),
                &[("authorization", &format!("Bearer {second}"))],
                Bytes::from(r#"{"service": "billing"}"#),
            )
            .await
        }
    };
    for r in [
        twice("/v1/token/exchange", "POST", cred.clone(), cred.clone()).await,
        twice(
            "/v1/token/exchange",
            "POST",
            cred.clone(),
            "kwcc_nonsense".into(),
        )
        .await,
        twice("/v1/whoami", "GET", access.clone(), access.clone()).await,
    ] {
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
        assert!(r.body.contains("invalid_request"), "{}", r.body);
        assert!(r.body.contains("one Authorization header"), "{}", r.body);
        assert!(!r.body.contains("access_token"), "{}", r.body);
    }
    assert_eq!(malformed(&gw.audit().await), before + 3);
    assert_eq!(
        exchange(&gw, &cred, "not json").await.status,
        StatusCode::BAD_REQUEST
    );
    // The token endpoint is not the admin API, and the admin API is not a token endpoint.
    assert_eq!(
        send(
            gw.token.unwrap(),
            "GET",
            "/v1/tokens",
            Some(&gw.admin_token())
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );

    let events = gw.audit().await;
    let reasons: Vec<_> = events
        .iter()
        .filter(|e| e.event.kind == "token.exchange")
        .filter_map(|e| e.event.reason.clone())
        .collect();
    assert!(
        reasons.contains(&"service_not_granted".to_owned()),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"source_not_allowed".to_owned()),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"wrong_token_kind".to_owned()),
        "{reasons:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn revoking_a_credential_revokes_what_was_obtained_with_it() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[("billing", &svc(&up, ""))])).await;
    let (cred, cred_id) = credential(&gw, &["billing"], &[], None).await;
    let r = exchange(&gw, &cred, r#"{"service": "billing"}"#).await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let access = v["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        send(gw.addr("billing"), "GET", "/invoices/1", Some(&access))
            .await
            .status,
        StatusCode::OK
    );

    gw.gw.revoke(&cred_id, "test", None).await.unwrap();
    assert_eq!(
        send(gw.addr("billing"), "GET", "/invoices/1", Some(&access))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        exchange(&gw, &cred, r#"{"service": "billing"}"#)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    gw.stop().await;
}

#[tokio::test]
async fn credentials_warn_near_their_max_age_and_are_refused_after() {
    let up = Upstream::start().await;
    let cfg = config(&[("billing", &svc(&up, ""))]).replace(
        "max_ttl = \"24h\"",
        "max_ttl = \"24h\"\ncredential_max_age = \"90d\"",
    );
    let gw = TestGateway::start(&cfg).await;
    let over = gw
        .gw
        .tokens
        .issue_credential(
            &CredentialRequest {
                principal: "x".into(),
                services: vec!["billing".into()],
                max_age: Some("91d".into()),
                ..Default::default()
            },
            "test",
        )
        .await
        .unwrap_err();
    assert!(
        over.to_string()
            .contains("above the policy's credential_max_age"),
        "{over}"
    );

    let (cred, cred_id) = credential(&gw, &["billing"], &[], Some("30d")).await;
    let start = gw.clock.now_ms();
    let day = 24 * 3600 * 1000;
    gw.clock.set(start + 10 * day);
    let r = exchange(&gw, &cred, r#"{"service": "billing"}"#).await;
    assert!(!r.body.contains("warning"), "{}", r.body);
    gw.clock.set(start + 20 * day);
    let r = exchange(&gw, &cred, r#"{"service": "billing"}"#).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("\"warning\""), "{}", r.body);
    gw.clock.set(start + 30 * day);
    assert_eq!(
        exchange(&gw, &cred, r#"{"service": "billing"}"#)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    let metrics = |gw: &TestGateway| {
        let admin = gw.admin_token();
        let addr = gw.admin;
        async move { send(addr, "GET", "/metrics", Some(&admin)).await.body }
    };
    gw.clock.set(start + 20 * day);
    let m = metrics(&gw).await;
    assert!(m.contains("\nkeyway_credentials_near_max_age 1\n"), "{m}");
    gw.clock.set(start + 10 * day);
    assert!(metrics(&gw)
        .await
        .contains("\nkeyway_credentials_near_max_age 0\n"));
    gw.clock.set(start + 30 * day);
    let events = gw.audit().await;
    assert!(events
        .iter()
        .any(|e| e.event.kind == "credential.near_max_age"
            && e.event.token_id.as_deref() == Some(cred_id.as_str())));
    tokio::time::sleep(Duration::from_millis(10)).await;
    gw.stop().await;
}

/// Sends a request from a chosen loopback source address (127.0.0.0/8 is all local).
async fn status_from(source: &str, addr: std::net::SocketAddr, token: &str) -> u16 {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let stream = sock.connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("/invoices/1")
        .header("host", "x")
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    sender.send_request(req).await.unwrap().status().as_u16()
}

#[tokio::test]
async fn tokens_from_a_credential_stay_within_it() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[
        ("billing", &svc(&up, "")),
        ("orders", &svc(&up, "")),
    ]))
    .await;

    // Per-service grants, and source networks that follow the access tokens.
    let req = CredentialRequest {
        principal: "ci-bot".into(),
        services: vec!["billing:GET:/invoices/".into(), "orders".into()],
        methods: vec!["HEAD".into()],
        cidrs: vec!["127.0.0.1/32".into()],
        max_age: Some("10m".into()),
        ..Default::default()
    };
    let (cred, cred_rec) = gw.gw.tokens.issue_credential(&req, "test").await.unwrap();
    let cred = cred.secret().expose_secret().to_owned();
    let scope = cred_rec.scope.unwrap();
    assert_eq!(scope.grant("billing").unwrap().methods, ["GET"]);
    assert_eq!(scope.grant("billing").unwrap().paths, ["/invoices/"]);
    assert_eq!(scope.grant("orders").unwrap().methods, ["HEAD"]);

    let r = exchange(&gw, &cred, r#"{"service": "billing", "ttl": "1h"}"#).await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        v["expires_in"],
        10 * 60,
        "never longer than the credential lives"
    );
    let access = v["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        status_from("127.0.0.1", gw.addr("billing"), &access).await,
        200
    );
    assert_eq!(
        status_from("127.0.0.2", gw.addr("billing"), &access).await,
        403,
        "the credential's CIDRs follow its tokens"
    );

    // Rotation keeps the lineage: revoking the credential takes the successor too.
    let id = v["id"].as_str().unwrap();
    let (successor, _, _) = gw
        .gw
        .tokens
        .rotate(id, Duration::from_secs(60), "test")
        .await
        .unwrap();
    let successor = successor.secret().expose_secret().to_owned();
    assert_eq!(
        status_from("127.0.0.1", gw.addr("billing"), &successor).await,
        200
    );
    gw.gw.revoke(&cred_rec.id, "test", None).await.unwrap();
    assert_eq!(
        status_from("127.0.0.1", gw.addr("billing"), &successor).await,
        401
    );
    assert_eq!(
        status_from("127.0.0.1", gw.addr("billing"), &access).await,
        401
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_token_in_the_url_of_the_admin_api_or_token_endpoint_is_refused_and_revoked() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[("billing", &svc(&up, ""))])).await;
    let (cred, cred_id) = credential(&gw, &["billing"], &[], None).await;
    let r = send_with(
        gw.token.unwrap(),
        "POST",
        &format!("/v1/token/exchange?c={cred}"),
        Some(&cred),
        &[],
        Bytes::from(r#"{"service": "billing"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(gw.gw.tokens.token(&cred_id).unwrap().revoked());

    let (access, access_id, _) = gw.issue("billing", &[], &[], "15m").await;
    let r = send(
        gw.admin,
        "GET",
        &format!("/v1/tokens?t={access}"),
        Some(&gw.admin_token()),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(gw.gw.tokens.token(&access_id).unwrap().revoked());
    gw.stop().await;
}

#[tokio::test]
async fn a_client_credential_rotates_with_overlap() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&[("billing", &svc(&up, ""))])).await;
    let (old, old_id) = credential(&gw, &["billing"], &[], Some("30d")).await;
    let start = gw.clock.now_ms();
    let (new, new_rec, until) = gw
        .gw
        .tokens
        .rotate(&old_id, Duration::from_secs(300), "test")
        .await
        .unwrap();
    let new = new.secret().expose_secret().to_owned();
    assert!(new.starts_with("kwcc_"));
    assert_eq!(new_rec.principal, "ci-bot");
    assert_eq!(
        new_rec.scope,
        gw.gw.tokens.token(&old_id).unwrap().record.scope,
        "same scope"
    );
    assert_eq!(until, start + 300_000);

    let body = r#"{"service": "billing"}"#;
    assert_eq!(
        exchange(&gw, &old, body).await.status,
        StatusCode::OK,
        "within the overlap"
    );
    gw.clock.set(until);
    assert_eq!(
        exchange(&gw, &old, body).await.status,
        StatusCode::UNAUTHORIZED,
        "after it"
    );
    assert_eq!(exchange(&gw, &new, body).await.status, StatusCode::OK);
    gw.stop().await;
}
