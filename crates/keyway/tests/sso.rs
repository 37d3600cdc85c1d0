//! People sign in with a real OpenID provider that no one here wrote (`oidc-provider`
//! on Node.js, `tests/oidc`), through the browser (this test plays it with curl
//! against the provider's own login and consent forms) and through the device flow;
//! then get exactly what the gateway's policies give them, through `keyway access`,
//! and wait for approvers where a policy says so. The gateway, the CLI, `curl` and
//! `psql` are the real ones.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

use common::sso::{accounts, stderr, world, CLIENT_SECRET};

#[tokio::test(flavor = "multi_thread")]
async fn people_sign_in_and_get_exactly_what_their_policies_give() {
    let (w, _) = world("").await;
    let billing = |path: &str| format!("http://127.0.0.1:{}{path}", w.svc_port);

    // Alice signs in through the browser; the session is hers alone (0600).
    let out = w.login("alice", "pw-alice");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("as alice@example.com (corp, groups: finance)"),
        "{}",
        stderr(&out)
    );
    let sessions = w.home("alice").join("keyway/sessions.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sessions).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let who = ok_stdout(w.run("alice", &["whoami"]));
    assert!(
        who.contains("alice@example.com") && who.contains("finance"),
        "{who}"
    );
    assert!(
        who.contains("billing-readers") && who.contains("methods GET, HEAD, paths /invoices/"),
        "{who}"
    );

    // Exactly the policy's grant: GET under /invoices/, nothing else.
    let out = w.run(
        "alice",
        &["access", "billing", "--ttl", "30m", "--reason", "month end"],
    );
    let token = ok_stdout(out);
    assert!(token.starts_with("kwat_"), "{token}");
    assert_eq!(curl(&billing("/invoices/7"), Some(&token), "GET"), 200);
    assert_eq!(curl(&billing("/invoices/7"), Some(&token), "POST"), 403);
    assert_eq!(curl(&billing("/admin"), Some(&token), "GET"), 403);

    // Broader than the policy, or a service no policy gives her: refused, saying why.
    let out = w.run("alice", &["access", "billing", "--methods", "POST"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("more of `billing` than your policies give: policy `billing-readers` gives methods GET, HEAD, paths /invoices/"),
        "{}",
        stderr(&out)
    );
    let out = w.run("alice", &["access", "orders-db"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "no policy gives you `orders-db`; policy `orders-db-write` gives it to group:sre (approved by group:db-owners, group:sre)"
        ),
        "{}",
        stderr(&out)
    );
    // A narrower ask is fine.
    let narrow = ok_stdout(w.run(
        "alice",
        &[
            "access",
            "billing",
            "--methods",
            "HEAD",
            "--path",
            "/invoices/2026/",
        ],
    ));
    assert_eq!(curl(&billing("/invoices/7"), Some(&narrow), "GET"), 403);

    // Group membership changes at the provider take effect at the next login: the
    // device flow this time, as from an SSH session.
    let mut a = accounts();
    a["alice"]["groups"] = json!(["sre"]);
    w.provider.set_accounts(a);
    let still = ok_stdout(w.run("alice", &["whoami"]));
    assert!(
        still.contains("finance"),
        "the old session keeps its groups: {still}"
    );
    let out = w.login_device("alice", "pw-alice");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("groups: sre"), "{}", stderr(&out));
    let out = w.run("alice", &["access", "billing"]);
    assert!(!out.status.success(), "no longer in finance");
    let out = w.run("alice", &["access", "orders-db"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "sre's policy files a request: {}",
        stderr(&out)
    );

    // A wrong password never signs in.
    let out = w.login("dave", "wrong");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("access_denied"), "{}", stderr(&out));

    // A tampered or expired ID token is refused by the gateway, and the audit log says
    // why; the person is told only that the sign-in was refused.
    w.provider.set_control(json!({ "tamper_id_token": true }));
    let out = w.login("dave", "pw-dave");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the sign-in was refused"),
        "{}",
        stderr(&out)
    );
    assert!(!w.home("dave").join("keyway/sessions.json").exists());
    w.provider.set_control(json!({ "clock_offset_s": -7200 }));
    let out = w.login("dave", "pw-dave");
    assert!(!out.status.success());
    w.provider.set_control(json!({}));
    let out = w.login("dave", "pw-dave");
    assert!(out.status.success(), "{}", stderr(&out));
    let logins = w.audit("login");
    let reasons: Vec<&str> = logins.iter().filter_map(|e| e["reason"].as_str()).collect();
    assert!(reasons.contains(&"bad_signature"), "{logins:?}");
    assert!(reasons.contains(&"expired"), "{logins:?}");
    assert_eq!(
        logins.iter().filter(|e| e["decision"] == "allow").count(),
        3,
        "{logins:?}"
    );
    let issued = w.audit("token.issued");
    assert!(
        issued
            .iter()
            .any(|e| e["detail"]["origin"]["policy"] == "billing-readers"
                && e["principal"] == "user:alice@example.com"
                && e["detail"]["origin"]["groups"] == json!(["finance"])),
        "{issued:?}"
    );

    // Narrowing the policy by `apply` ends the tokens it no longer allows: finance is
    // no longer named, so Dave keeps billing and Alice's token from her first
    // session (when she was in finance) stops at once.
    assert_eq!(curl(&billing("/invoices/7"), Some(&token), "GET"), 200);
    let dave = ok_stdout(w.run("dave", &["access", "billing"]));
    let text = std::fs::read_to_string(w.dir.join("keyway.toml")).unwrap();
    std::fs::write(
        w.dir.join("v2.toml"),
        text.replace(
            r#"subjects = ["group:finance", "user:dave@example.com"]"#,
            r#"subjects = ["user:dave@example.com"]"#,
        ),
    )
    .unwrap();
    let out = keyway(
        &w.dir,
        &["apply", "v2.toml", "--config", "keyway.toml"],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(curl(&billing("/invoices/7"), Some(&token), "GET"), 401);
    assert_eq!(curl(&billing("/invoices/7"), Some(&dave), "GET"), 200);

    // The session is a Keyway token, kept only in the person's own file.
    let saved: serde_json::Value = serde_json::from_slice(
        &std::fs::read(w.home("alice").join("keyway/sessions.json")).unwrap(),
    )
    .unwrap();
    let session = saved[&w.token_url]["session_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(session.starts_with("kwse_"), "{session}");
    let found = files_containing(&w.dir, secret_part(&session));
    assert_eq!(found, vec![w.home("alice").join("keyway/sessions.json")]);

    // The sign-in endpoints refuse a redirect off this machine, a wrong `state`, and a
    // second try with the same sign-in.
    let post = |path: &str, body: serde_json::Value| -> (u16, serde_json::Value) {
        let out = Command::new("curl")
            .args([
                "-s",
                "-w",
                "\n%{http_code}",
                "-H",
                "content-type: application/json",
                "-d",
            ])
            .arg(body.to_string())
            .arg(format!("{}{path}", w.token_url))
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, status) = text.rsplit_once('\n').unwrap();
        (status.parse().unwrap(), serde_json::from_str(body).unwrap())
    };
    let (status, v) = post(
        "/v1/login/start",
        json!({ "redirect_uri": "http://evil.example:5555/cb" }),
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("must go to this machine"),
        "{v}"
    );
    let (status, v) = post(
        "/v1/login/start",
        json!({ "redirect_uri": "http://127.0.0.1:5555/callback" }),
    );
    assert_eq!(status, 200, "{v}");
    let login_id = v["login_id"].as_str().unwrap().to_owned();
    let (status, v) = post(
        "/v1/login/finish",
        json!({ "login_id": login_id, "code": "x", "state": "forged" }),
    );
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_request")),
        "{v}"
    );
    let (status, v) = post(
        "/v1/login/finish",
        json!({ "login_id": login_id, "code": "x", "state": "forged" }),
    );
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("no sign-in under way"),
        "{status} {v}"
    );

    // Signing out ends the session and every token obtained through it.
    let out = w.run("dave", &["logout"]);
    assert!(stderr(&out).contains("signed out of"), "{}", stderr(&out));
    assert_eq!(curl(&billing("/invoices/7"), Some(&dave), "GET"), 401);
    let out = w.run("dave", &["whoami"]);
    assert!(stderr(&out).contains("not signed in"), "{}", stderr(&out));
    let revoked = w.audit("token.revoked");
    let reasons: Vec<&str> = revoked
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"logout") && reasons.contains(&"session_ended"),
        "{reasons:?}"
    );

    // Repointing the provider ends the sessions it vouched for.
    let text = std::fs::read_to_string(w.dir.join("v2.toml")).unwrap();
    std::fs::write(
        w.dir.join("v3.toml"),
        text.replace(&w.provider.issuer, "http://127.0.0.1:9"),
    )
    .unwrap();
    let out = keyway(
        &w.dir,
        &["apply", "v3.toml", "--config", "keyway.toml"],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = w.run("alice", &["whoami"]);
    assert!(
        stderr(&out).contains("your session with"),
        "{}",
        stderr(&out)
    );

    // The canary: no provider token, ID token or client secret in any file the
    // gateway or the CLI wrote (the store, the audit log, the logs, the sessions).
    let tokens = w.provider.issued();
    assert!(
        tokens.len() >= 5,
        "the provider issued tokens: {}",
        tokens.len()
    );
    for t in tokens.iter().map(String::as_str).chain([CLIENT_SECRET]) {
        let found = files_containing(&w.dir, t);
        assert!(
            found.is_empty(),
            "a provider secret was written to {found:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_access_request_waits_for_an_approver_and_ends_early_when_revoked() {
    let (w, hook) = world(
        "[policies.quick]\nsubjects = [\"group:sre\"]\ngrants = [{ service = \"billing\" }]\n\
         approval = { approvers = [\"group:db-owners\"], request_ttl = \"2s\" }\n",
    )
    .await;
    for (who, pw) in [
        ("bob", "pw-bob"),
        ("carol", "pw-carol"),
        ("dave", "pw-dave"),
    ] {
        let out = w.login(who, pw);
        assert!(out.status.success(), "{who}: {}", stderr(&out));
    }
    // Bob asks, and waits.
    let waiting = w
        .cmd(
            "bob",
            &[
                "access",
                "orders-db",
                "--ttl",
                "20m",
                "--reason",
                "INC-42 fix",
                "--wait",
            ],
        )
        .spawn()
        .unwrap();
    let id = {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let out = w.run("carol", &["requests", "list"]);
            let text = ok_stdout(out);
            if let Some(l) = text
                .lines()
                .find(|l| l.contains("user:bob@example.com") && l.contains("pending"))
            {
                assert!(l.contains("INC-42 fix") && l.contains("0/1"), "{text}");
                break l.split_whitespace().next().unwrap().to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no request listed: {text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    // Not his own, not someone who is no approver.
    let out = w.run("bob", &["requests", "approve", &id]);
    assert!(
        stderr(&out).contains("cannot approve your own request"),
        "{}",
        stderr(&out)
    );
    let out = w.run("dave", &["requests", "approve", &id]);
    assert!(
        stderr(&out).contains("not among the approvers of policy `orders-db-write`"),
        "{}",
        stderr(&out)
    );
    let listed = ok_stdout(w.run("dave", &["requests", "list"]));
    assert!(
        !listed.contains(&id),
        "dave sees nothing to decide: {listed}"
    );
    // Carol approves: Bob's `--wait` prints the token, and psql takes it.
    let out = w.run(
        "carol",
        &["requests", "approve", &id, "--reason", "ok for INC-42"],
    );
    assert!(stderr(&out).contains("approved"), "{}", stderr(&out));
    let out = waiting.wait_with_output().unwrap();
    w.keep_stderr(&out.stderr);
    let token = ok_stdout(out);
    assert!(token.starts_with("kwat_"));
    let q = psql(w.pg_port, &token, "SELECT current_user");
    assert_eq!(
        String::from_utf8_lossy(&q.stdout).trim(),
        "postgres",
        "{}",
        String::from_utf8_lossy(&q.stderr)
    );
    // Collected once only.
    let out = w.run("bob", &["requests", "collect", &id]);
    assert!(
        stderr(&out).contains("already collected"),
        "{}",
        stderr(&out)
    );
    // Revoked early by the approver: the token stops working at once.
    let out = w.run("carol", &["requests", "revoke", &id]);
    assert!(
        stderr(&out).contains("1 token(s) revoked"),
        "{}",
        stderr(&out)
    );
    let q = psql(w.pg_port, &token, "SELECT 1");
    assert!(!q.status.success());

    // A request that expires cannot be approved.
    let out = w.run("bob", &["access", "billing"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let late = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let out = w.run("carol", &["requests", "approve", &late]);
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));

    // Every step is in the audit log, and the webhook heard of each new request
    // (signed).
    let kinds = ["access.requested", "access.approved"];
    for k in kinds {
        assert!(!w.audit(k).is_empty(), "{k}");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let got = hook.lock().unwrap().clone();
        let requested: Vec<_> = got
            .iter()
            .filter(|(_, _, b)| b.contains("access.requested"))
            .collect();
        if requested.len() == 2 {
            assert!(requested
                .iter()
                .all(|(sig, _, b)| sig.starts_with("t=") && b.contains("\"request\":\"req_")));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "webhook: {got:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let refused: Vec<_> = w
        .audit("access.approved")
        .into_iter()
        .filter(|e| e["decision"] == "deny")
        .collect();
    let reasons: Vec<&str> = refused
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"self_approval")
            && reasons.contains(&"not_approver")
            && reasons.contains(&"request_expired"),
        "{reasons:?}"
    );
}
