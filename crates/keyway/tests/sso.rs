//! People sign in with a real OpenID provider that no one here wrote (`oidc-provider`
//! on Node.js, `tests/oidc`), through the browser (this test plays it with curl
//! against the provider's own login and consent forms) and through the device flow;
//! then get exactly what the gateway's policies give them, through `keyway access`,
//! and wait for approvers where a policy says so. The gateway, the CLI, `curl` and
//! `psql` are the real ones.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::oidc;
use common::*;
use serde_json::json;

const CLIENT_SECRET: &str = "oidc-client-secret-canary-5150";

fn accounts() -> serde_json::Value {
    json!({
        "alice": {"password": "pw-alice", "email": "alice@example.com", "groups": ["finance"]},
        "bob":   {"password": "pw-bob",   "email": "bob@example.com",   "groups": ["sre"]},
        "carol": {"password": "pw-carol", "email": "carol@example.com", "groups": ["db-owners"]},
        "dave":  {"password": "pw-dave",  "email": "dave@example.com",  "groups": []},
    })
}

/// A gateway trusting the provider, with one HTTP and one PostgreSQL service and
/// three policies (one needing approval).
struct World {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    token_url: String,
    svc_port: u16,
    pg_port: u16,
    _gateway: KillOnDrop,
    provider: oidc::Provider,
    _ptmp: tempfile::TempDir,
}

async fn world(
    extra: &str,
) -> (
    World,
    std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>,
) {
    require(
        5432,
        "PostgreSQL",
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    );
    let (up, _) = upstream().await;
    let (hook, got) = webhook().await;
    let ptmp = tempfile::tempdir().unwrap();
    let provider = oidc::start(ptmp.path(), CLIENT_SECRET, accounts());
    provider.set_control(json!({ "device_interval": 1 }));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let (admin, token, svc, pg) = (free_port(), free_port(), free_port(), free_port());
    std::fs::write(
        dir.join("keyway.toml"),
        format!(
            r#"data_dir = "data"
admin_listen = "127.0.0.1:{admin}"
token_listen = "127.0.0.1:{token}"

[services.billing]
protocol = "http"
listen = "127.0.0.1:{svc}"
upstream = "http://{up}"
max_ttl = "8h"

[services.orders-db]
protocol = "postgres"
listen = "127.0.0.1:{pg}"
upstream = "127.0.0.1:5432"
database = "test"
max_ttl = "1h"
roles.readwrite = {{ user = "postgres", secret = "pg-rw" }}

[identity.oidc.corp]
issuer = "{issuer}"
client_id = "keyway"
client_secret = "oidc-corp"

[policies.billing-readers]
subjects = ["group:finance", "user:dave@example.com"]
grants = [{{ service = "billing", methods = ["GET", "HEAD"], paths = ["/invoices/"] }}]
max_ttl = "8h"

[policies.orders-db-write]
subjects = ["group:sre"]
grants = [{{ service = "orders-db", role = "readwrite" }}]
max_ttl = "1h"
approval = {{ approvers = ["group:db-owners", "group:sre"], min = 1, request_ttl = "1h" }}

[alerts.webhook]
url = "http://{hook}/hook"
secret = "hook-key"
{extra}"#,
            issuer = provider.issuer
        ),
    )
    .unwrap();
    let gateway = start_gateway(&dir, admin);
    wait_for_port(token);
    for (name, value) in [
        ("oidc-corp", CLIENT_SECRET),
        ("pg-rw", "unused-with-trust"),
        ("hook-key", "hook-signing-key"),
    ] {
        let out = keyway(
            &dir,
            &["secret", "set", name, "--config", "keyway.toml"],
            Some(value),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (
        World {
            _tmp: tmp,
            dir,
            token_url: format!("http://127.0.0.1:{token}"),
            svc_port: svc,
            pg_port: pg,
            _gateway: gateway,
            provider,
            _ptmp: ptmp,
        },
        got,
    )
}

impl World {
    /// A person's own config folder (their `~/.config`).
    fn home(&self, who: &str) -> PathBuf {
        let h = self.dir.join("homes").join(who);
        std::fs::create_dir_all(&h).unwrap();
        h
    }

    fn cmd(&self, who: &str, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(&self.dir)
            .env("XDG_CONFIG_HOME", self.home(who))
            .env("KEYWAY_GATEWAY", &self.token_url)
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// `keyway ARGS` as `who`; stderr kept for the canary.
    fn run(&self, who: &str, args: &[&str]) -> Output {
        let out = self.cmd(who, args).output().unwrap();
        self.keep_stderr(&out.stderr);
        out
    }

    fn keep_stderr(&self, e: &[u8]) {
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("cli.stderr"))
            .unwrap();
        log.write_all(e).unwrap();
    }

    /// `keyway login`, the test playing `who`'s browser.
    fn login(&self, who: &str, password: &str) -> Output {
        let out = oidc::login_in_browser(self.cmd(who, &["login"]), who, password);
        self.keep_stderr(&out.stderr);
        out
    }

    /// `keyway login --device`, the test confirming the code in `who`'s browser.
    fn login_device(&self, who: &str, password: &str) -> Output {
        let out = oidc::login_on_device(self.cmd(who, &["login", "--device"]), who, password);
        self.keep_stderr(&out.stderr);
        out
    }

    fn audit(&self, kind: &str) -> Vec<serde_json::Value> {
        let out = keyway(
            &self.dir,
            &[
                "audit",
                "query",
                "--kind",
                kind,
                "--json",
                "--limit",
                "1000",
                "--config",
                "keyway.toml",
            ],
            None,
        );
        let text = ok_stdout(out);
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

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
    let out = w.run("dave", &["whoami"]);
    assert!(
        stderr(&out).contains("your session with"),
        "{}",
        stderr(&out)
    );
    assert_eq!(curl(&billing("/invoices/7"), Some(&dave), "GET"), 401);

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
    let out = w.run("dave", &["requests", "list"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&id),
        "dave sees nothing to decide"
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
