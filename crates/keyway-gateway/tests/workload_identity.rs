//! Workload identity against a JWT issuer of the test's own: an EC key pair, a
//! discovery document and a JWKS served on loopback, JWTs signed as a CI system signs
//! them. A policy decides what a verified workload gets; every refusal answers the
//! client the same and names its reason in the audit log; a rotated key is picked
//! up; a narrowed policy ends the tokens and live sessions it no longer allows.
//!
//! The machine's PostgreSQL (127.0.0.1:5432) is the database upstream; `scripts/test`
//! starts it when it is down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keyway_core::config::Config;
use keyway_core::Clock;
use serde_json::{json, Value};
use support::{send, send_with, TestGateway, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SUBJECT: &str = "repo:acme/billing:ref:refs/heads/main";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// One signing key: its private half, and its public half as a JWK.
struct Key {
    kid: String,
    pair: rcgen::KeyPair,
}

impl Key {
    fn new(kid: &str) -> Self {
        Self {
            kid: kid.into(),
            pair: rcgen::KeyPair::generate().unwrap(),
        }
    }

    fn jwk(&self) -> Value {
        let raw = self.pair.public_key_raw();
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        })
    }

    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        let key = EncodingKey::from_ec_der(&self.pair.serialize_der());
        jsonwebtoken::encode(&h, claims, &key).unwrap()
    }
}

/// An OpenID issuer on loopback: discovery and a key set the test can change.
struct Issuer {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
}

impl Issuer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let keys: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (u, k) = (url.clone(), keys.clone());
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || {
                    let u = u.clone();
                    async move { Json(json!({ "issuer": u, "jwks_uri": format!("{u}/jwks") })) }
                }),
            )
            .route(
                "/jwks",
                get(move || {
                    let k = k.clone();
                    async move { Json(json!({ "keys": *k.lock().unwrap() })) }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, keys }
    }

    fn publish(&self, keys: &[&Key]) {
        *self.keys.lock().unwrap() = keys.iter().map(|k| k.jwk()).collect();
    }
}

/// The gateway's config: three services, the issuer, and policies (`extra`).
fn config(up: &Upstream, echo: SocketAddr, issuer: &str, policies: &str) -> String {
    format!(
        "admin_listen = \"127.0.0.1:0\"\ntoken_listen = \"127.0.0.1:0\"\ntunnel_listen = \"127.0.0.1:0\"\nmax_ttl = \"24h\"\n\
         [services.billing]\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\nmax_ttl = \"1h\"\n\
         [services.cache]\nprotocol = \"tcp\"\nupstream = \"{echo}\"\nmax_ttl = \"1h\"\n\
         [services.orders-db]\nprotocol = \"postgres\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:5432\"\n\
         database = \"test\"\nmax_ttl = \"1h\"\nroles.readonly = {{ user = \"root\", secret = \"kw-ro\" }}\n\
         [identity.workload.ci]\nissuer = \"{issuer}\"\naudience = \"keyway\"\n\
         {policies}",
        up.url()
    )
}

const POLICIES: &str = "\
[policies.deploy-from-ci]
subjects = [\"workload:ci:repo:acme/billing:ref:refs/heads/main\"]
grants = [
  { service = \"billing\", methods = [\"POST\"], paths = [\"/deploys/\"] },
  { service = \"cache\" },
  { service = \"orders-db\", role = \"readonly\" },
]
max_ttl = \"15m\"
";

/// n - s, for P-256's group order n: the other signature that verifies.
fn p256_negate(s: &[u8]) -> [u8; 32] {
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = N[i] as i16 - s[i] as i16 - borrow;
        borrow = (d < 0) as i16;
        if d < 0 {
            d += 256;
        }
        out[i] = d as u8;
    }
    out
}

/// Claims as the issuer makes them, at the gateway's `now` (ms), with a fresh `jti`.
fn claims(issuer: &str, now: i64) -> Value {
    let s = now / 1000;
    json!({
        "iss": issuer, "aud": "keyway", "sub": SUBJECT,
        "iat": s, "nbf": s, "exp": s + 300,
        "jti": format!("{}", rand::random::<u64>()),
    })
}

async fn exchange(gw: &TestGateway, body: Value) -> support::Got {
    send_with(
        gw.token.unwrap(),
        "POST",
        "/v1/token/exchange",
        None,
        &[("content-type", "application/json")],
        Bytes::from(body.to_string()),
    )
    .await
}

fn asking(jwt: &str, service: &str) -> Value {
    json!({
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": jwt,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "service": service,
    })
}

/// Puts `text` in force, as `keyway apply` does.
async fn apply(gw: &TestGateway, text: &str) {
    let new = Config::parse(text, gw.dir.path()).unwrap();
    let outcome = gw.gw.reload(new, "test", None, false).await.unwrap();
    assert!(outcome.applied);
}

/// The newest `token.exchange` event.
async fn last_exchange(gw: &TestGateway) -> keyway_store::AuditEvent {
    gw.audit()
        .await
        .into_iter()
        .rev()
        .find(|e| e.event.kind == "token.exchange")
        .unwrap()
        .event
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workload_jwt_is_exchanged_by_policy_and_every_bad_one_is_refused() {
    let up = Upstream::start().await;
    let echo = support::protocols::echo().await;
    let issuer = Issuer::start().await;
    let first = Key::new("k1");
    issuer.publish(&[&first]);
    let gw = TestGateway::start(&config(&up, echo, &issuer.url, POLICIES)).await;
    let now = gw.clock.now_ms();

    // By policy: the policy's grant, no longer than its max_ttl, its origin recorded.
    let jwt = first.sign(&claims(&issuer.url, now));
    let got = exchange(&gw, asking(&jwt, "billing")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    let answer: Value = serde_json::from_str(&got.body).unwrap();
    assert_eq!(answer["policy"], "deploy-from-ci");
    assert_eq!(answer["subject"], format!("workload:ci:{SUBJECT}"));
    assert_eq!(answer["expires_in"], 15 * 60, "the policy's max_ttl");
    let token = answer["access_token"].as_str().unwrap().to_owned();
    let a = gw.addr("billing");
    assert_eq!(
        send(a, "POST", "/deploys/42", Some(&token)).await.status,
        200
    );
    assert_eq!(
        send(a, "GET", "/invoices/1", Some(&token)).await.status,
        StatusCode::FORBIDDEN,
        "never broader than the policy's grant"
    );
    let record = gw.gw.tokens.token(answer["id"].as_str().unwrap()).unwrap();
    let origin = record.record.origin.clone().unwrap();
    assert_eq!(
        (origin.policy.as_str(), origin.issuer.as_str()),
        ("deploy-from-ci", issuer.url.as_str())
    );
    let ev = last_exchange(&gw).await;
    assert_eq!(ev.decision.as_deref(), Some("allow"));
    assert_eq!(ev.detail["origin"]["policy"], "deploy-from-ci");

    // Form-encoded, as RFC 8693 writes it, works the same.
    let form = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token={}\
         &subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&service=cache",
        first.sign(&claims(&issuer.url, now))
    );
    let got = send_with(
        gw.token.unwrap(),
        "POST",
        "/v1/token/exchange",
        None,
        &[("content-type", "application/x-www-form-urlencoded")],
        Bytes::from(form),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);

    // A malformed exchange says what a good one holds.
    let fresh = first.sign(&claims(&issuer.url, now));
    let mut untyped = asking(&fresh, "billing");
    untyped
        .as_object_mut()
        .unwrap()
        .remove("subject_token_type");
    let mut other_grant = asking(&fresh, "billing");
    other_grant["grant_type"] = json!("client_credentials");
    for (body, code) in [
        (untyped, "invalid_request"),
        (other_grant, "unsupported_grant_type"),
    ] {
        let got = exchange(&gw, body).await;
        assert_eq!(got.status, StatusCode::BAD_REQUEST);
        let answer: Value = serde_json::from_str(&got.body).unwrap();
        assert_eq!(answer["error"], code, "{}", got.body);
    }

    // Each bad JWT: the same answer to the client, its own reason in the log.
    let stranger = Key::new("k1");
    let mut cases: Vec<(&str, String)> = Vec::new();
    let mut c = claims(&issuer.url, now);
    c["aud"] = json!("someone-else");
    cases.push(("wrong_audience", first.sign(&c)));
    let mut c = claims(&issuer.url, now);
    c["exp"] = json!(now / 1000 - 600);
    cases.push(("expired", first.sign(&c)));
    let mut c = claims(&issuer.url, now);
    c["nbf"] = json!(now / 1000 + 600);
    cases.push(("not_yet_valid", first.sign(&c)));
    let mut c = claims(&issuer.url, now);
    c["iat"] = json!(now / 1000 + 600);
    cases.push(("issued_in_future", first.sign(&c)));
    let unknown = Key::new("k-unknown");
    cases.push(("unknown_key", unknown.sign(&claims(&issuer.url, now))));
    // The same `kid`, another key: a forgery.
    cases.push(("bad_signature", stranger.sign(&claims(&issuer.url, now))));
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims(&issuer.url, now).to_string().as_bytes())
    );
    cases.push(("algorithm_not_allowed", none));
    // HS256 keyed with the issuer's public key, which anyone can read in the JWKS.
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("k1".into());
    let hs = jsonwebtoken::encode(
        &h,
        &claims(&issuer.url, now),
        &EncodingKey::from_secret(first.pair.public_key_raw()),
    )
    .unwrap();
    cases.push(("algorithm_not_allowed", hs));
    cases.push(("replayed", jwt.clone()));
    let mut c = claims(&issuer.url, now);
    c["sub"] = json!("repo:mallory/fork:ref:refs/heads/main");
    cases.push(("no_policy", first.sign(&c)));
    let mut c = claims(&issuer.url, now);
    c["iss"] = json!("https://issuer.example");
    cases.push(("unknown_issuer", first.sign(&c)));
    for (reason, jwt) in &cases {
        let got = exchange(&gw, asking(jwt, "billing")).await;
        assert_eq!(
            got.status,
            StatusCode::BAD_REQUEST,
            "{reason}: {}",
            got.body
        );
        let body: Value = serde_json::from_str(&got.body).unwrap();
        assert_eq!(
            (body["error"].as_str(), body["error_description"].as_str()),
            (Some("invalid_grant"), Some("the subject token was refused")),
            "{reason}: the client learns nothing more"
        );
        let ev = last_exchange(&gw).await;
        assert_eq!(
            (ev.decision.as_deref(), ev.reason.as_deref()),
            (Some("deny"), Some(*reason)),
            "{ev:?}"
        );
    }
    // A service the policy does not grant: refused the same way.
    let got = exchange(&gw, asking(&first.sign(&claims(&issuer.url, now)), "nope")).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        last_exchange(&gw).await.reason.as_deref(),
        Some("no_policy")
    );

    // A JWT without `jti` is taken by its signed part: the same JWT with its ECDSA
    // signature rewritten to (r, n - s), which still verifies, is a replay too.
    let mut c = claims(&issuer.url, now);
    c.as_object_mut().unwrap().remove("jti");
    let plain = first.sign(&c);
    let got = exchange(&gw, asking(&plain, "billing")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    let (signed, sig) = plain.rsplit_once('.').unwrap();
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .unwrap();
    let flipped = format!(
        "{signed}.{}",
        b64(&[&sig[..32], &p256_negate(&sig[32..])].concat())
    );
    let got = exchange(&gw, asking(&flipped, "billing")).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST, "{}", got.body);
    assert_eq!(last_exchange(&gw).await.reason.as_deref(), Some("replayed"));

    // The issuer rotates its key: a JWT with the new `kid` makes the gateway fetch
    // the set again.
    let second = Key::new("k2");
    issuer.publish(&[&second]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let got = exchange(
        &gw,
        asking(&second.sign(&claims(&issuer.url, now)), "billing"),
    )
    .await;
    assert_eq!(
        got.status,
        StatusCode::OK,
        "the rotated key is picked up: {}",
        got.body
    );

    // No JWT reaches the audit log or the store.
    let all = serde_json::to_string(&gw.audit().await).unwrap();
    for (_, jwt) in &cases {
        let signature = jwt.rsplit('.').next().unwrap();
        assert!(signature.is_empty() || !all.contains(signature));
        assert!(!all.contains(jwt.split('.').nth(1).unwrap()));
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_issuer_that_is_down_fails_closed() {
    let up = Upstream::start().await;
    let echo = support::protocols::echo().await;
    // A port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let gw = TestGateway::start(&config(&up, echo, &dead, POLICIES)).await;
    let key = Key::new("k1");
    let jwt = key.sign(&claims(&dead, gw.clock.now_ms()));
    let got = exchange(&gw, asking(&jwt, "billing")).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{}", got.body);
    assert!(got.body.contains("identity provider"), "{}", got.body);
    assert_eq!(
        last_exchange(&gw).await.reason.as_deref(),
        Some("issuer_unreachable")
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn narrowing_a_policy_ends_the_tokens_and_sessions_it_no_longer_allows() {
    assert!(
        tokio::net::TcpStream::connect("127.0.0.1:5432")
            .await
            .is_ok(),
        "PostgreSQL is not listening on 127.0.0.1:5432; scripts/test starts it"
    );
    let up = Upstream::start().await;
    let echo = support::protocols::echo().await;
    let issuer = Issuer::start().await;
    let key = Key::new("k1");
    issuer.publish(&[&key]);
    let gw = TestGateway::start(&config(&up, echo, &issuer.url, POLICIES)).await;
    gw.set_secret("kw-ro", "unused with trust authentication")
        .await;
    let now = gw.clock.now_ms();
    let mut tokens = std::collections::HashMap::new();
    let mut ids = std::collections::HashMap::new();
    for service in ["billing", "cache", "orders-db"] {
        let got = exchange(&gw, asking(&key.sign(&claims(&issuer.url, now)), service)).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.body);
        let answer: Value = serde_json::from_str(&got.body).unwrap();
        tokens.insert(service, answer["access_token"].as_str().unwrap().to_owned());
        ids.insert(service, answer["id"].as_str().unwrap().to_owned());
    }

    // A tunnel stream and a psql session, live.
    let mut stream = support::protocols::tunnel_stream(&gw, "cache", &tokens["cache"])
        .await
        .unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    let psql = support::protocols::psql(
        gw.addr("orders-db").port(),
        &tokens["orders-db"],
        &["-XAtqc", "select pg_sleep(30)"],
    )
    .spawn()
    .expect("psql must be installed (apt-get install postgresql-client)");
    for _ in 0..100 {
        if gw.gw.sessions.list().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.gw.sessions.list().len(), 2);
    // And an HTTP response streaming through the billing grant.
    let mut conn = support::Conn::open(gw.addr("billing")).await;
    let resp = conn
        .request(
            "POST",
            "/deploys/stream",
            Some(&tokens["billing"]),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut download = resp.into_body();
    assert!(download
        .frame()
        .await
        .unwrap()
        .unwrap()
        .data_ref()
        .is_some());

    // Broadened, with a shorter max_ttl: every token it gave still fits, none ends,
    // and each now expires within the new max_ttl of its issue.
    let broadened = POLICIES
        .replace("methods = [\"POST\"]", "methods = [\"GET\", \"POST\"]")
        .replace("max_ttl = \"15m\"", "max_ttl = \"5m\"");
    let text = config(&up, echo, &issuer.url, &broadened);
    apply(&gw, &text).await;
    let revoked = |events: &[keyway_store::StoredEvent]| {
        events
            .iter()
            .filter(|e| e.event.kind == "token.revoked")
            .count()
    };
    let events = gw.audit().await;
    assert_eq!(revoked(&events), 0, "a broader policy ends nothing");
    let shortened = events
        .iter()
        .filter(|e| e.event.kind == "token.shortened")
        .count();
    assert_eq!(shortened, 3);
    for id in ids.values() {
        let e = gw.gw.tokens.token(id).unwrap();
        assert!(e.expires_at() - e.record.created_at <= 5 * 60 * 1000);
    }

    // A rotated token stays the policy's.
    let billing_id = ids["billing"].clone();
    let (successor, record, _) = gw
        .gw
        .tokens
        .rotate(&billing_id, Duration::from_secs(300), "test")
        .await
        .unwrap();
    assert_eq!(
        record.origin.as_ref().map(|o| o.policy.as_str()),
        Some("deploy-from-ci")
    );
    assert!(record.expires_at - record.created_at <= 5 * 60 * 1000);
    let successor = secrecy::ExposeSecret::expose_secret(successor.secret()).to_owned();

    // The policy keeps only billing, and narrower.
    let narrowed = "\
[policies.deploy-from-ci]
subjects = [\"workload:ci:repo:acme/billing:ref:refs/heads/main\"]
grants = [{ service = \"billing\", methods = [\"POST\"], paths = [\"/deploys/prod/\"] }]
max_ttl = \"15m\"
";
    let text = config(&up, echo, &issuer.url, narrowed);
    apply(&gw, &text).await;

    let cut = tokio::time::timeout(Duration::from_secs(5), async {
        // Chunks keep coming until the response is cut.
        while let Some(Ok(_)) = download.frame().await {}
    })
    .await;
    assert!(
        cut.is_ok(),
        "the HTTP stream went on after its policy narrowed"
    );
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the tunnel stream ended")
        .unwrap_or(0);
    assert_eq!(n, 0, "the tunnel stream is closed");
    let out = tokio::task::spawn_blocking(move || psql.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(!out.status.success(), "psql's session was ended");
    assert_eq!(
        send(
            gw.addr("billing"),
            "POST",
            "/deploys/prod/1",
            Some(&tokens["billing"])
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED,
        "a token whose grant the policy no longer gives is revoked"
    );
    assert_eq!(
        send(
            gw.addr("billing"),
            "POST",
            "/deploys/prod/1",
            Some(&successor)
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED,
        "the rotated successor ends with its policy too"
    );
    let revoked: Vec<_> = gw
        .audit()
        .await
        .into_iter()
        .filter(|e| e.event.kind == "token.revoked")
        .collect();
    assert_eq!(revoked.len(), 4, "{revoked:?}");
    assert!(revoked
        .iter()
        .all(|e| e.event.reason.as_deref() == Some("policy_changed")));
    // The narrowed policy still gives what it says.
    let got = exchange(&gw, asking(&key.sign(&claims(&issuer.url, now)), "billing")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    let answer: Value = serde_json::from_str(&got.body).unwrap();
    let last = answer["access_token"].as_str().unwrap().to_owned();

    // The issuer repointed (say, after its keys leaked): what it vouched for ends.
    let other = Issuer::start().await;
    other.publish(&[&key]);
    let text = config(&up, echo, &other.url, narrowed);
    apply(&gw, &text).await;
    assert_eq!(
        send(gw.addr("billing"), "POST", "/deploys/prod/1", Some(&last))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    gw.stop().await;
}
