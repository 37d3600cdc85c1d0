//! TLS listeners and sender-constrained tokens (RFC 8705): a token bound to a client
//! certificate works only over mTLS with that certificate; a stolen token alone is
//! useless. Real TLS with certificates made for the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use keyway_gateway::gateway::CredentialRequest;
use keyway_gateway::IssueRequest;
use secrecy::ExposeSecret;
use support::pki::{status, Pki};
use support::{config, TestGateway, Upstream};

fn tls_service(up: &Upstream, pki: &Pki, require: bool) -> String {
    format!(
        "upstream = \"{}\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\nclient_ca = \"{}\"\nrequire_client_cert = {require}\n",
        up.url(),
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display()
    )
}

async fn bound_token(gw: &TestGateway, service: &str, thumbprint: Option<&str>) -> String {
    let req = IssueRequest {
        service: service.into(),
        principal: "alice".into(),
        ttl: Some("15m".into()),
        cert_thumbprint: thumbprint.map(str::to_owned),
        ..Default::default()
    };
    let (t, _) = gw.gw.issue(&req, "test").await.unwrap();
    t.secret().expose_secret().to_owned()
}

#[tokio::test]
async fn a_token_bound_to_a_certificate_works_only_with_it() {
    let up = Upstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let (alice, mallory) = (pki.client("alice"), pki.client("mallory"));
    let gw = TestGateway::start(&config(&[("billing", &tls_service(&up, &pki, false))])).await;
    let a = gw.addr("billing");
    let bound = bound_token(&gw, "billing", Some(&alice.thumbprint)).await;
    let plain = bound_token(&gw, "billing", None).await;

    assert_eq!(
        status(&pki, a, Some(&alice), "GET", "/x", &bound, "")
            .await
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        status(&pki, a, Some(&mallory), "GET", "/x", &bound, "")
            .await
            .unwrap()
            .0,
        401,
        "another certificate"
    );
    assert_eq!(
        status(&pki, a, None, "GET", "/x", &bound, "")
            .await
            .unwrap()
            .0,
        401,
        "no certificate"
    );
    assert_eq!(
        status(&pki, a, None, "GET", "/x", &plain, "")
            .await
            .unwrap()
            .0,
        200,
        "an unbound token over TLS"
    );
    // Plain HTTP on a TLS listener goes nowhere.
    let r = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        buf
    })
    .await
    .unwrap();
    assert!(!String::from_utf8_lossy(&r).contains("upstream ok"));

    let events = gw.audit().await;
    assert!(events
        .iter()
        .any(|e| e.event.reason.as_deref() == Some("certificate_mismatch")));
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].headers["x-forwarded-proto"], "https");
    gw.stop().await;
}

#[tokio::test]
async fn a_service_can_require_client_certificates() {
    let up = Upstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let alice = pki.client("alice");
    let gw = TestGateway::start(&config(&[("billing", &tls_service(&up, &pki, true))])).await;
    let token = bound_token(&gw, "billing", None).await;
    assert_eq!(
        status(
            &pki,
            gw.addr("billing"),
            Some(&alice),
            "GET",
            "/",
            &token,
            ""
        )
        .await
        .unwrap()
        .0,
        200
    );
    let refused = status(&pki, gw.addr("billing"), None, "GET", "/", &token, "").await;
    assert!(
        refused.is_err(),
        "a connection without a client certificate is refused: {refused:?}"
    );
    // A certificate from another CA is refused too.
    let other = tempfile::tempdir().unwrap();
    let stranger_pki = Pki::new(other.path());
    let stranger = stranger_pki.client("stranger");
    let refused = status(
        &pki,
        gw.addr("billing"),
        Some(&stranger),
        "GET",
        "/",
        &token,
        "",
    )
    .await;
    let why = refused.unwrap_err();
    // The server's certificate check fails (rustls alerts with DecryptError when the
    // chain's signature does not verify against client_ca).
    let alert = ["UnknownCA", "BadCertificate", "DecryptError"]
        .iter()
        .any(|a| why.contains(&format!("AlertReceived({a})")));
    assert!(alert, "refused by the server's certificate check: {why}");
    gw.stop().await;
}

#[tokio::test]
async fn an_exchange_over_mtls_binds_the_access_token_and_a_bound_credential_needs_its_certificate()
{
    let up = Upstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let (bot, mallory) = (pki.client("ci-bot"), pki.client("mallory"));
    let cfg = config(&[("billing", &tls_service(&up, &pki, false))]).replace(
        "token_listen = \"127.0.0.1:0\"",
        &format!(
            "token_listen = \"127.0.0.1:0\"\ntoken_tls = {{ cert = \"{}\", key = \"{}\", client_ca = \"{}\" }}",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display()
        ),
    );
    let gw = TestGateway::start(&cfg).await;
    let req = CredentialRequest {
        principal: "ci-bot".into(),
        services: vec!["billing".into()],
        cert_thumbprint: Some(bot.thumbprint.clone()),
        ..Default::default()
    };
    let (cred, _) = gw.gw.tokens.issue_credential(&req, "test").await.unwrap();
    let cred = cred.secret().expose_secret().to_owned();
    let token_ep = gw.token.unwrap();
    let body = r#"{"service": "billing"}"#;

    let (code, _) = status(
        &pki,
        token_ep,
        Some(&mallory),
        "POST",
        "/v1/token/exchange",
        &cred,
        body,
    )
    .await
    .unwrap();
    assert_eq!(code, 401, "a bound credential with another certificate");
    let (code, _) = status(
        &pki,
        token_ep,
        None,
        "POST",
        "/v1/token/exchange",
        &cred,
        body,
    )
    .await
    .unwrap();
    assert_eq!(code, 401, "a bound credential with no certificate");
    let (code, answer) = status(
        &pki,
        token_ep,
        Some(&bot),
        "POST",
        "/v1/token/exchange",
        &cred,
        body,
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let access = v["access_token"].as_str().unwrap();

    let a = gw.addr("billing");
    assert_eq!(
        status(&pki, a, Some(&bot), "GET", "/x", access, "")
            .await
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        status(&pki, a, Some(&mallory), "GET", "/x", access, "")
            .await
            .unwrap()
            .0,
        401,
        "stolen, without the key"
    );
    assert_eq!(
        status(&pki, a, None, "GET", "/x", access, "")
            .await
            .unwrap()
            .0,
        401
    );
    gw.stop().await;
}

/// certbot renews in place and sends SIGHUP: every TLS listener, the gateway's own
/// (token endpoint, tunnel) as well as a service's, serves the new certificate to new
/// connections, and a connection already open goes on. A renewal that cannot be
/// loaded changes nothing.
#[tokio::test]
async fn a_reload_serves_certificates_renewed_in_place() {
    let up = Upstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let (own_cert, own_key) = (tmp.path().join("own.pem"), tmp.path().join("own.key"));
    std::fs::copy(&pki.server_cert, &own_cert).unwrap();
    std::fs::copy(&pki.server_key, &own_key).unwrap();
    let own = format!(
        "{{ cert = \"{}\", key = \"{}\" }}",
        own_cert.display(),
        own_key.display()
    );
    let text = config(&[("billing", &tls_service(&up, &pki, false))]).replace(
        "token_listen = \"127.0.0.1:0\"",
        &format!(
            "token_listen = \"127.0.0.1:0\"\ntoken_tls = {own}\ntunnel_listen = \"127.0.0.1:0\"\ntunnel_tls = {own}"
        ),
    );
    let gw = TestGateway::start(&text).await;
    let (token_ep, tunnel, billing) = (gw.token.unwrap(), gw.tunnel.unwrap(), gw.addr("billing"));
    let first = pki.served_cert(token_ep).await;
    assert_eq!(pki.served_cert(tunnel).await, first);
    assert_eq!(pki.served_cert(billing).await, first);
    let mut open = pki.connect(token_ep, None).await.unwrap();

    let renewed_own = pki.renew(&own_cert, &own_key);
    let renewed_service = pki.renew(&pki.server_cert, &pki.server_key);
    assert_ne!(renewed_own, first);
    assert_eq!(
        pki.served_cert(token_ep).await,
        first,
        "the files are read when loaded, not at each connection"
    );

    let reload = |text: &str| {
        let config = keyway_core::config::Config::parse(text, gw.dir.path()).unwrap();
        gw.gw.reload(config, "certbot", None, false)
    };
    let outcome = reload(&text).await.unwrap();
    assert!(outcome.applied);
    let changed: Vec<(String, String)> = outcome
        .plan
        .changes
        .iter()
        .map(|c| (c.section.clone(), c.name.clone()))
        .collect();
    for (section, name) in [
        ("setting", "token_tls"),
        ("setting", "tunnel_tls"),
        ("service", "billing"),
    ] {
        assert!(
            changed.contains(&(section.into(), name.into())),
            "{section} {name} in {changed:?}"
        );
    }
    assert!(outcome.plan.needs_restart().is_empty());
    assert_eq!(pki.served_cert(token_ep).await, renewed_own);
    assert_eq!(pki.served_cert(tunnel).await, renewed_own);
    assert_eq!(pki.served_cert(billing).await, renewed_service);

    // The connection opened before the renewal is still served.
    let req = http::Request::builder()
        .method("POST")
        .uri("/v1/token/exchange")
        .header("host", "127.0.0.1")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let resp = open.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 401, "no credential, on the old connection");

    let applied = gw
        .audit()
        .await
        .into_iter()
        .rfind(|e| e.event.kind == "config.applied")
        .unwrap();
    let listed = applied.event.detail["changed"].to_string();
    assert!(
        listed.contains("setting token_tls") && listed.contains("setting tunnel_tls"),
        "{listed}"
    );

    // A renewal that cannot be loaded (a key that does not parse, then none at all):
    // refused, the certificate in force stays.
    std::fs::write(&own_key, "not a key").unwrap();
    let err = reload(&text).await.unwrap_err().to_string();
    assert!(
        err.contains("token_tls") && err.contains("nothing was applied"),
        "{err}"
    );
    std::fs::remove_file(&own_key).unwrap();
    let err = reload(&text).await.unwrap_err().to_string();
    assert!(
        err.contains("token_tls") && err.contains("own.key"),
        "{err}"
    );
    assert_eq!(pki.served_cert(token_ep).await, renewed_own);
    assert_eq!(pki.served_cert(tunnel).await, renewed_own);

    // Mended: the next reload serves it.
    let mended = pki.renew(&own_cert, &own_key);
    assert!(reload(&text).await.unwrap().applied);
    assert_eq!(pki.served_cert(token_ep).await, mended);
    assert_eq!(pki.served_cert(tunnel).await, mended);
    gw.stop().await;
}
