//! Intrusion detection against a running gateway, with real clients from distinct
//! loopback addresses (curl `--interface 127.0.0.N`): each detector is set off by a
//! real sequence of requests or connections, and the test sees its action as a
//! client would (a blocked source's connections closed, a revoked token refused),
//! the signed alert at a webhook server (which fails its first delivery, so the
//! retry is exercised too), the `detect.alert` events in `keyway audit query`, and
//! the series in `/metrics`. Normal traffic first: it must set off nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use hmac::{Hmac, Mac};
use serde_json::Value;

const HOOK_KEY: &str = "a-webhook-signing-key-only-the-receiver-knows";

/// curl from `source`, with this `Authorization`: the status, or 0 when the
/// connection was closed unanswered.
fn curl_from(source: &str, url: &str, auth: Option<&str>) -> u16 {
    let auth = auth.map(|a| format!("Authorization: {a}"));
    let mut args = vec!["--max-time", "5", "--interface", source];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    curl_status(url, &args)
}

fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alerts(dir: &Path) -> Vec<Value> {
    let out = ok_stdout(keyway(
        dir,
        &[
            "audit",
            "query",
            "--kind",
            "detect.alert",
            "--json",
            "--config",
            "keyway.toml",
        ],
        None,
    ));
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn alert_of<'a>(alerts: &'a [Value], detector: &str) -> Option<&'a Value> {
    alerts.iter().find(|a| a["detail"]["detector"] == detector)
}

/// The value of one series line; a counter not yet counted is absent, which is 0.
fn count(scraped: &str, name: &str) -> f64 {
    series(scraped, name).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn detectors_fire_on_real_attacks_and_stay_quiet_on_normal_traffic() {
    let (up, _) = upstream().await;
    let (hook, delivered) = webhook().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (admin, api, web, tunnel) = (free_port(), free_port(), free_port(), free_port());
    std::fs::write(
        dir.join("keyway.toml"),
        format!(
            r#"data_dir = "data"
admin_listen = "127.0.0.1:{admin}"
tunnel_listen = "127.0.0.1:{tunnel}"

[services.api]
protocol = "http"
listen = "127.0.0.1:{api}"
upstream = "http://{up}"

[services.web]
protocol = "http"
listen = "127.0.0.1:{web}"
upstream = "http://{up}"

[detect]
block_for = "3s"

[detect.brute_force]
threshold = 5
window = "60s"
action = "block"

[detect.token_guessing]
threshold = 4
window = "60s"
action = "block"

[detect.scanning]
threshold = 4
window = "60s"
action = "alert"

[detect.new_network]
action = "revoke"

[detect.concurrent_sources]
window = "10s"
action = "alert"

[detect.rate_spike]
threshold = 20
window = "3s"
factor = 5
action = "revoke"

[alerts.webhook]
url = "http://{hook}/keyway"
secret = "hook-key"
retries = 3
"#
        ),
    )
    .unwrap();
    let _gateway = start_gateway(dir, admin);
    ok_stdout(keyway(
        dir,
        &["secret", "set", "hook-key", "--config", "keyway.toml"],
        Some(HOOK_KEY),
    ));
    let url = |port: u16| format!("http://127.0.0.1:{port}/invoices/1");

    // Normal traffic, of a realistic shape: a service polling with its token, a
    // person mistyping a token once, the operator's CLI and a metrics scrape.
    let before = metrics(dir, admin);
    let normal = issue(dir, "ci", "api");
    for i in 0..25 {
        assert_eq!(
            curl_from("127.0.0.1", &url(api), Some(&format!("Bearer {normal}"))),
            200
        );
        if i == 10 {
            assert_eq!(curl_from("127.0.0.1", &url(api), Some("Bearer typo")), 401);
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    ok_stdout(keyway(
        dir,
        &["token", "list", "--config", "keyway.toml"],
        None,
    ));
    let after = metrics(dir, admin);
    let allowed = r#"keyway_requests_total{service="api",decision="allow"}"#;
    assert_eq!(
        count(&after, allowed) - count(&before, allowed),
        25.0,
        "{after}"
    );
    assert_eq!(
        count(
            &after,
            r#"keyway_denials_total{service="api",reason="malformed_token"}"#
        ),
        1.0,
        "{after}"
    );
    assert!(
        after.contains("keyway_upstream_latency_seconds_bucket{service=\"api\""),
        "{after}"
    );
    let out = r#"keyway_bytes_total{service="api",direction="out"}"#;
    let body = "invoice list\n".len() as f64;
    assert_eq!(
        count(&after, out) - count(&before, out),
        25.0 * body,
        "{after}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        alerts(dir).is_empty(),
        "normal traffic set off {:?}",
        alerts(dir)
    );
    assert!(!metrics(dir, admin).contains("keyway_detector_firings_total{"));

    // Brute force from 127.0.0.2: five failed authentications, then blocked.
    for i in 0..5 {
        let auth = format!("Bearer password{i}");
        assert_eq!(curl_from("127.0.0.2", &url(api), Some(&auth)), 401);
    }
    eventually("127.0.0.2 blocked", || {
        curl_from("127.0.0.2", &url(api), None) == 0
    });
    assert_eq!(
        curl_from("127.0.0.2", &url(web), None),
        0,
        "blocked on every port"
    );
    assert_eq!(
        curl_from("127.0.0.1", &url(api), Some(&format!("Bearer {normal}"))),
        200,
        "other sources are not blocked"
    );
    // The block ends after `block_for`.
    std::thread::sleep(Duration::from_secs(3));
    eventually("127.0.0.2 unblocked", || {
        curl_from("127.0.0.2", &url(api), None) == 401
    });

    // Token guessing from 127.0.0.3: a real token's shape with a changed secret
    // fails its checksum.
    let real = issue(dir, "ci", "api");
    for i in 0..4u8 {
        let mut guess = real.clone().into_bytes();
        let at = guess.len() - 10;
        guess[at] = if guess[at] == b'a' + i {
            b'b' + i
        } else {
            b'a' + i
        };
        let guess = String::from_utf8(guess).unwrap();
        assert_eq!(
            curl_from("127.0.0.3", &url(api), Some(&format!("Bearer {guess}"))),
            401
        );
    }
    eventually("127.0.0.3 blocked", || {
        curl_from("127.0.0.3", &url(api), Some(&format!("Bearer {real}"))) == 0
    });

    // Scanning from 127.0.0.4: bare connections to four gateway ports.
    for port in [admin, api, web, tunnel] {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.4:0".parse().unwrap()).unwrap();
        drop(s.connect(([127, 0, 0, 1], port).into()).await.unwrap());
    }

    // A token first used from 127.0.0.0/24, then from 127.0.1.0/24: revoked.
    let moved = issue(dir, "ci", "api");
    assert_eq!(
        curl_from("127.0.0.1", &url(api), Some(&format!("Bearer {moved}"))),
        200
    );
    // The request that sets it off is allowed; its response may already be cut by
    // the revocation (which ends the token's live responses), so 200 or nothing.
    let code = curl_from("127.0.1.1", &url(api), Some(&format!("Bearer {moved}")));
    assert!(code == 200 || code == 0, "{code}");
    eventually("the moved token revoked", || {
        curl_from("127.0.0.1", &url(api), Some(&format!("Bearer {moved}"))) == 401
    });

    // One token from two sources at once: an alert, and the token still works.
    let shared = issue(dir, "ci", "web");
    assert_eq!(
        curl_from("127.0.0.5", &url(web), Some(&format!("Bearer {shared}"))),
        200
    );
    assert_eq!(
        curl_from("127.0.0.6", &url(web), Some(&format!("Bearer {shared}"))),
        200
    );

    // A token used now and then for two windows, then 20 requests in a few seconds:
    // revoked. (More requests with it once revoked would be failed authentications,
    // and set off `brute_force` too.)
    let burst = issue(dir, "ci", "web");
    for _ in 0..2 {
        assert_eq!(
            curl_from("127.0.0.7", &url(web), Some(&format!("Bearer {burst}"))),
            200
        );
        std::thread::sleep(Duration::from_millis(3_100));
    }
    for _ in 0..19 {
        assert_eq!(
            curl_from("127.0.0.7", &url(web), Some(&format!("Bearer {burst}"))),
            200
        );
    }
    let code = curl_from("127.0.0.7", &url(web), Some(&format!("Bearer {burst}")));
    assert!(code == 200 || code == 0, "{code}");
    eventually("the bursting token revoked", || {
        curl_from("127.0.0.7", &url(web), Some(&format!("Bearer {burst}"))) == 401
    });

    // Every firing is in the audit log, with its action and what it did.
    let mut found = Vec::new();
    eventually("six detectors in the audit log", || {
        found = alerts(dir);
        [
            "brute_force",
            "token_guessing",
            "scanning",
            "new_network",
            "concurrent_sources",
            "rate_spike",
        ]
        .iter()
        .all(|d| alert_of(&found, d).is_some())
    });
    let bf = alert_of(&found, "brute_force").unwrap();
    assert_eq!(bf["source"], "127.0.0.2");
    assert_eq!(bf["detail"]["outcome"], "blocked");
    assert!(bf["detail"]["blocked_until"].is_string());
    assert_eq!(
        alert_of(&found, "token_guessing").unwrap()["source"],
        "127.0.0.3"
    );
    let scan = alert_of(&found, "scanning").unwrap();
    assert_eq!(scan["source"], "127.0.0.4");
    assert_eq!(scan["detail"]["outcome"], "alerted");
    let nn = alert_of(&found, "new_network").unwrap();
    assert_eq!(nn["source"], "127.0.1.1");
    assert_eq!(nn["detail"]["outcome"], "revoked");
    // The moved token was also used from two sources within the window; the shared
    // one is the case here.
    assert!(
        found
            .iter()
            .any(|a| a["detail"]["detector"] == "concurrent_sources" && a["source"] == "127.0.0.6"),
        "{found:?}"
    );
    assert_eq!(
        alert_of(&found, "rate_spike").unwrap()["detail"]["outcome"],
        "revoked"
    );
    // The revocations name the detector.
    let revoked = ok_stdout(keyway(
        dir,
        &[
            "audit",
            "query",
            "--kind",
            "token.revoked",
            "--json",
            "--config",
            "keyway.toml",
        ],
        None,
    ));
    assert!(revoked.contains("detector:new_network"), "{revoked}");
    assert!(revoked.contains("detector:rate_spike"), "{revoked}");

    // The webhook got each alert, signed with the shared key (the first attempt got a
    // 500 and was retried), and no token in any of them.
    eventually("every alert delivered", || {
        delivered.lock().unwrap().len() >= found.len()
    });
    let delivered = delivered.lock().unwrap().clone();
    let mut detectors: Vec<String> = Vec::new();
    for (sig, id, body) in &delivered {
        let (t, v1) = sig
            .strip_prefix("t=")
            .and_then(|s| s.split_once(",v1="))
            .unwrap_or_else(|| panic!("signature header {sig:?}"));
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(HOOK_KEY.as_bytes()).unwrap();
        mac.update(format!("{t}.{body}").as_bytes());
        mac.verify_slice(&hex::decode(v1).unwrap())
            .unwrap_or_else(|_| panic!("bad signature on {body}"));
        assert_eq!(id.len(), 32);
        let v: Value = serde_json::from_str(body).unwrap();
        detectors.push(v["detector"].as_str().unwrap().to_owned());
        for token in [&normal, &real, &moved, &shared, &burst] {
            assert!(
                !body.contains(secret_part(token)),
                "a token secret in {body}"
            );
        }
        assert!(!body.contains(HOOK_KEY));
    }
    detectors.sort();
    detectors.dedup();
    assert_eq!(detectors.len(), 6, "{detectors:?}");

    let m = metrics(dir, admin);
    for (name, want) in [
        (
            r#"keyway_detector_firings_total{detector="brute_force",action="block"}"#,
            1.0,
        ),
        (
            r#"keyway_detector_firings_total{detector="scanning",action="alert"}"#,
            1.0,
        ),
        (
            r#"keyway_detector_firings_total{detector="new_network",action="revoke"}"#,
            1.0,
        ),
        (r#"keyway_alert_webhooks_total{outcome="retried"}"#, 1.0),
    ] {
        assert_eq!(count(&m, name), want, "{name} in\n{m}");
    }
    assert!(count(&m, "keyway_blocked_connections_total") >= 3.0, "{m}");
    assert!(
        count(&m, r#"keyway_alert_webhooks_total{outcome="delivered"}"#) >= 6.0,
        "{m}"
    );

    // The canary: the hook key and the token secrets are nowhere on disk but where
    // they belong (the hook key sealed in the store, so not in plaintext at all).
    for token in [&normal, &real, &moved, &shared, &burst] {
        assert!(files_containing(dir, secret_part(token)).is_empty());
    }
    let found = files_containing(dir, HOOK_KEY);
    assert!(found.is_empty(), "{found:?}");
}
