//! The SSO tests' world: a real OpenID provider ([`super::oidc`]), a gateway
//! trusting it with one HTTP and one PostgreSQL service and three policies (one
//! needing approval), a webhook, and the CLI run as each person (their own
//! `~/.config`).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::json;

use super::oidc;
use super::*;

pub const CLIENT_SECRET: &str = "oidc-client-secret-canary-5150";

pub fn accounts() -> serde_json::Value {
    json!({
        "alice": {"password": "pw-alice", "email": "alice@example.com", "groups": ["finance"]},
        "bob":   {"password": "pw-bob",   "email": "bob@example.com",   "groups": ["sre"]},
        "carol": {"password": "pw-carol", "email": "carol@example.com", "groups": ["db-owners"]},
        "dave":  {"password": "pw-dave",  "email": "dave@example.com",  "groups": []},
    })
}

/// A gateway trusting the provider, with one HTTP and one PostgreSQL service and
/// three policies (one needing approval).
pub struct World {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub token_url: String,
    pub svc_port: u16,
    pub admin_port: u16,
    pub pg_port: u16,
    _gateway: KillOnDrop,
    pub provider: oidc::Provider,
    _ptmp: tempfile::TempDir,
}

pub async fn world(
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
            admin_port: admin,
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
    pub fn home(&self, who: &str) -> PathBuf {
        let h = self.dir.join("homes").join(who);
        std::fs::create_dir_all(&h).unwrap();
        h
    }

    pub fn cmd(&self, who: &str, args: &[&str]) -> Command {
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
    pub fn run(&self, who: &str, args: &[&str]) -> Output {
        let out = self.cmd(who, args).output().unwrap();
        self.keep_stderr(&out.stderr);
        out
    }

    pub fn keep_stderr(&self, e: &[u8]) {
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("cli.stderr"))
            .unwrap();
        log.write_all(e).unwrap();
    }

    /// `keyway login`, the test playing `who`'s browser.
    pub fn login(&self, who: &str, password: &str) -> Output {
        let out = oidc::login_in_browser(self.cmd(who, &["login"]), who, password);
        self.keep_stderr(&out.stderr);
        out
    }

    /// `keyway login --device`, the test confirming the code in `who`'s browser.
    pub fn login_device(&self, who: &str, password: &str) -> Output {
        let out = oidc::login_on_device(self.cmd(who, &["login", "--device"]), who, password);
        self.keep_stderr(&out.stderr);
        out
    }

    pub fn audit(&self, kind: &str) -> Vec<serde_json::Value> {
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

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
