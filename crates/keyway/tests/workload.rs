//! A CI job's exchange, end to end: a JWT issuer of the test's own (an EC key, a
//! discovery document and a JWKS served on loopback), a real gateway process with a
//! policy, `keyway token exchange --id-token-file` as a CI job runs it, `curl` with
//! the token it prints; then the canary: the JWT is in no file the run produced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// Serves `/.well-known/openid-configuration` and `/jwks` for one key, on a thread.
fn issuer(jwk: serde_json::Value) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let discovery = serde_json::json!({ "issuer": url, "jwks_uri": format!("{url}/jwks") });
    let jwks = serde_json::json!({ "keys": [jwk] });
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 2048];
            let n = s.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            let body = if head.starts_with("GET /jwks ") {
                jwks.to_string()
            } else {
                discovery.to_string()
            };
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn canary_a_ci_job_exchanges_its_jwt_and_the_jwt_is_written_nowhere() {
    let (up, _) = upstream().await;
    let key = rcgen::KeyPair::generate().unwrap();
    let raw = key.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let iss = issuer(serde_json::json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "ci-1",
        "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
    }));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (admin_port, token_port, svc_port) = (free_port(), free_port(), free_port());
    let config = format!(
        r#"data_dir = "data"
admin_listen = "127.0.0.1:{admin_port}"
token_listen = "127.0.0.1:{token_port}"

[services.billing]
protocol = "http"
listen = "127.0.0.1:{svc_port}"
upstream = "http://{up}"
max_ttl = "1h"

[identity.workload.ci]
issuer = "{iss}"
audience = "keyway"

[policies.deploy-from-ci]
subjects = ["workload:ci:repo:acme/billing:ref:refs/heads/main"]
grants = [{{ service = "billing", methods = ["POST"], paths = ["/deploys/"] }}]
max_ttl = "15m"
"#
    );
    std::fs::write(dir.join("keyway.toml"), config).unwrap();
    let out = keyway(dir, &["validate", "keyway.toml"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut gateway = start_gateway(dir, admin_port);

    // The job's JWT, outside the gateway's folder (the canary searches that).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": iss, "aud": "keyway", "sub": "repo:acme/billing:ref:refs/heads/main",
        "iat": now, "nbf": now, "exp": now + 300, "jti": "run-4711-attempt-1",
    });
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ci-1".into());
    let jwt = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_ec_der(&key.serialize_der()),
    )
    .unwrap();
    let job = tempfile::tempdir().unwrap();
    let jwt_file = job.path().join("id-token");
    std::fs::write(&jwt_file, &jwt).unwrap();
    let gateway_url = format!("http://127.0.0.1:{token_port}");
    let args = [
        "token",
        "exchange",
        "--gateway",
        &gateway_url,
        "--id-token-file",
        jwt_file.to_str().unwrap(),
        "--service",
        "billing",
    ];
    let out = keyway(dir, &args, None);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    assert!(said.contains("policy deploy-from-ci"), "{said}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let base = format!("http://127.0.0.1:{svc_port}");
    assert_eq!(
        curl(&format!("{base}/deploys/1"), Some(&token), "POST"),
        200
    );
    assert_eq!(curl(&format!("{base}/deploys/1"), Some(&token), "GET"), 403);

    // The same JWT again (a replay): refused, and the job is told plainly.
    let out = keyway(dir, &args, None);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("the subject token was refused"), "{said}");

    // `token list` shows the policy the token came through.
    let out = keyway(dir, &["token", "list", "--config", "keyway.toml"], None);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("workload:ci:repo:acme/billing")
            && listed.contains("(policy deploy-from-ci)"),
        "{listed}"
    );

    // The canary: neither the JWT's signature nor its claims, anywhere.
    let signature = jwt.rsplit('.').next().unwrap();
    let payload = jwt.split('.').nth(1).unwrap();
    let check = |when: &str| {
        for needle in [signature, payload, secret_part(&token)] {
            let hits = files_containing(dir, needle);
            assert!(hits.is_empty(), "{when}: a secret was written to {hits:?}");
        }
    };
    check("running");
    let status = interrupt(&mut gateway);
    assert!(status.success(), "the gateway exited with {status}");
    check("stopped");
    let audit = store_query(
        dir,
        "select kind, decision, reason, principal from audit_events where kind = 'token.exchange' order by seq",
    );
    assert!(
        audit.contains("token.exchange|allow||workload:ci:repo:acme/billing")
            && audit.contains("token.exchange|deny|replayed|"),
        "{audit}"
    );

    // The policy narrowed while the gateway was down: at start, the token it no
    // longer allows is revoked, as `apply` would have.
    let text = std::fs::read_to_string(dir.join("keyway.toml")).unwrap();
    std::fs::write(
        dir.join("keyway.toml"),
        text.replace("paths = [\"/deploys/\"]", "paths = [\"/deploys/prod/\"]"),
    )
    .unwrap();
    let mut gateway = start_gateway(dir, admin_port);
    assert_eq!(
        curl(&format!("{base}/deploys/prod/1"), Some(&token), "POST"),
        401
    );
    // The JWT stays spent across the restart: the store keeps it until it expires.
    let out = keyway(dir, &args, None);
    assert!(
        !out.status.success(),
        "a JWT was taken twice across a restart"
    );
    let status = interrupt(&mut gateway);
    assert!(status.success(), "the gateway exited with {status}");
    let revoked = store_query(
        dir,
        "select reason from audit_events where kind = 'token.revoked' order by seq",
    );
    assert_eq!(revoked.trim(), "policy_changed");
    let replays = store_query(
        dir,
        "select count(*) from audit_events where kind = 'token.exchange' and reason = 'replayed'",
    );
    assert_eq!(replays.trim(), "2");
}
