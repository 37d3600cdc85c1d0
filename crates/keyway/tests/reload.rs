//! Configuration as code against a running gateway with live connections:
//! `keyway plan` shows the change and changes nothing; `keyway apply` applies it
//! whole, audited with the file's hash and the admin; SIGHUP applies the gateway's
//! own file. Asserted with real clients: which sessions survive (an unchanged TCP
//! service's Redis connection, a database session whose role stays) and which end
//! (a removed role's `psql`, a session whose source a narrowed `allow_cidrs` drops), a
//! removed service's port closed, an added one serving, and refusals that leave the
//! running config as it was.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

/// An open `psql` session through the gateway, fed statements one at a time.
struct LivePsql {
    child: KillOnDrop,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    errors: mpsc::Receiver<String>,
}

impl LivePsql {
    fn open(port: u16, token: &str) -> Self {
        let mut child = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", "whoever", "-d", "test", "-XAtq"])
            .env("PGPASSWORD", token)
            .env("PGSSLMODE", "disable")
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql must be installed (apt-get install postgresql-client)");
        let stdin = child.stdin.take();
        let pipe = |r: Box<dyn Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            rx
        };
        let lines = pipe(Box::new(child.stdout.take().unwrap()));
        let errors = pipe(Box::new(child.stderr.take().unwrap()));
        let mut s = Self {
            child: KillOnDrop(child),
            stdin,
            lines,
            errors,
        };
        assert_eq!(s.query("select 'open'").as_deref(), Some("open"));
        s
    }

    /// The first line of the answer, or None when none came within 10 s.
    fn query(&mut self, sql: &str) -> Option<String> {
        let stdin = self.stdin.as_mut()?;
        if writeln!(stdin, "{sql};")
            .and_then(|()| stdin.flush())
            .is_err()
        {
            return None;
        }
        self.lines.recv_timeout(Duration::from_secs(10)).ok()
    }

    /// Starts a 30 s query, Ctrl-C's psql, and returns what psql said within 10 s.
    fn interrupt_sleep(&mut self) -> String {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "select pg_sleep(30);").unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(800));
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success());
        // "Cancel request sent", then the server's answer.
        let mut said = String::new();
        while let Ok(line) = self.errors.recv_timeout(Duration::from_secs(10)) {
            said.push_str(&line);
            said.push('\n');
            if line.contains("ERROR") {
                break;
            }
        }
        said
    }

    /// Everything psql said on stderr, once it has exited (within 10 s).
    fn ended(&mut self) -> String {
        drop(self.stdin.take());
        let mut said = Vec::new();
        // Until psql closes stderr: it has exited and everything it said was read.
        while let Ok(line) = self.errors.recv_timeout(Duration::from_secs(10)) {
            said.push(line);
        }
        said.join("\n")
    }
}

/// A Redis connection through `keyway connect SERVICE`, kept open, answering PING.
fn live_redis(dir: &Path, service: &str, tunnel: u16) -> (Connect, TcpStream) {
    let through = connect(dir, service, tunnel, &token(dir, service, None));
    let mut redis = TcpStream::connect(("127.0.0.1", through.1)).unwrap();
    redis
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(redis_ping(&mut redis));
    (through, redis)
}

/// Sends PING on `s`; whether PONG came back.
fn redis_ping(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 7];
    s.write_all(b"*1\r\n$4\r\nPING\r\n").is_ok()
        && s.read_exact(&mut buf).is_ok()
        && &buf == b"+PONG\r\n"
}

struct Ports {
    admin: u16,
    tunnel: u16,
    api: u16,
    old: u16,
    db: u16,
    new: u16,
}

/// The config of this test: `db_roles` and `db_cidrs` are the database service's
/// role lines and `allow_cidrs`, `extra` any more services.
fn config(p: &Ports, upstream: &str, db_roles: &str, db_cidrs: &str, extra: &str) -> String {
    format!(
        r#"data_dir = "data"
admin_listen = "127.0.0.1:{admin}"
tunnel_listen = "127.0.0.1:{tunnel}"
max_ttl = "1h"

[services.api]
protocol = "http"
listen = "127.0.0.1:{api}"
upstream = "http://{upstream}"
max_ttl = "1h"

[services.db]
protocol = "postgres"
listen = "127.0.0.1:{db}"
upstream = "127.0.0.1:5432"
database = "test"
max_ttl = "1h"
allow_cidrs = {db_cidrs}
{db_roles}

[services.cache]
protocol = "tcp"
upstream = "127.0.0.1:6379"
max_ttl = "1h"
{extra}"#,
        admin = p.admin,
        tunnel = p.tunnel,
        api = p.api,
        db = p.db,
    )
}

const BOTH_ROLES: &str = "roles.readonly = { user = \"kw_ro\", secret = \"kw-ro\" }\n\
                          roles.readwrite = { user = \"kw_rw\", secret = \"kw-rw\" }";
const READONLY: &str = "roles.readonly = { user = \"kw_ro\", secret = \"kw-ro\" }";

fn run(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = keyway(dir, args, None);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn token(dir: &Path, service: &str, role: Option<&str>) -> String {
    ok_stdout(issue_as(dir, "alice", service, role, &[]))
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_apply_and_sighup_with_live_connections() {
    require(
        5432,
        "PostgreSQL",
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    );
    require(6379, "Redis", "redis-server --daemonize yes");
    let roles = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc"])
        .arg(
            "DO $$ BEGIN CREATE ROLE kw_ro LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
             DO $$ BEGIN CREATE ROLE kw_rw LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;",
        )
        .status()
        .unwrap();
    assert!(roles.success());
    let (upstream, _) = upstream().await;
    let upstream = upstream.to_string();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let p = Ports {
        admin: free_port(),
        tunnel: free_port(),
        api: free_port(),
        old: free_port(),
        db: free_port(),
        new: free_port(),
    };
    let old_service = format!(
        "\n[services.old]\nprotocol = \"http\"\nlisten = \"127.0.0.1:{}\"\nupstream = \"http://{upstream}\"\nmax_ttl = \"1h\"\n",
        p.old
    );
    let new_service = old_service
        .replace("services.old", "services.new")
        .replace(&format!(":{}\"", p.old), &format!(":{}\"", p.new));
    // A TCP service that v2 removes, with a live connection.
    let old_cache = "\n[services.oldcache]\nprotocol = \"tcp\"\nupstream = \"127.0.0.1:6379\"\nmax_ttl = \"1h\"\n";
    let v1 = config(
        &p,
        &upstream,
        BOTH_ROLES,
        "[\"127.0.0.0/8\"]",
        &format!("{old_service}{old_cache}"),
    );
    std::fs::write(dir.join("keyway.toml"), &v1).unwrap();
    // One worker: the current-thread runtime a one-CPU host gets, under every
    // protocol, a reload and a SIGHUP (the other tests run the multi-thread one).
    let mut gateway = start_gateway_with(dir, p.admin, &[("TOKIO_WORKER_THREADS", "1")]);
    wait_log(dir, "scheduler=\"current_thread\"");
    for name in ["kw-ro", "kw-rw"] {
        let set = ["secret", "set", name, "--config", "keyway.toml"];
        assert!(keyway(dir, &set, Some("unused-with-trust-auth"))
            .status
            .success());
    }

    // Live connections: a Redis session, two database sessions, and HTTP.
    let (_cache, mut redis) = live_redis(dir, "cache", p.tunnel);
    let (_doomed, mut doomed_redis) = live_redis(dir, "oldcache", p.tunnel);
    let mut reader = LivePsql::open(p.db, &token(dir, "db", Some("readonly")));
    let mut writer = LivePsql::open(p.db, &token(dir, "db", Some("readwrite")));
    let api_token = token(dir, "api", None);
    let old_token = token(dir, "old", None);
    let api = format!("http://127.0.0.1:{}/invoices", p.api);
    let old = format!("http://127.0.0.1:{}/invoices", p.old);
    assert_eq!(curl(&api, Some(&api_token), "GET"), 200);
    assert_eq!(curl(&old, Some(&old_token), "GET"), 200);

    // v2: `old` removed, `new` added, the database narrowed to one role, a detector
    // tightened.
    let v2 = config(
        &p,
        &upstream,
        READONLY,
        "[\"127.0.0.0/8\"]",
        &format!("{new_service}\n[detect.brute_force]\nthreshold = 3\n"),
    );
    std::fs::write(dir.join("v2.toml"), &v2).unwrap();
    let (ok, plan, err) = run(dir, &["plan", "v2.toml", "--config", "keyway.toml"]);
    assert!(ok, "{err}");
    println!("{plan}");
    for expected in [
        "- service old\n",
        "- service oldcache\n",
        "~ service db\n      - roles.readwrite.secret = \"kw-rw\"\n      - roles.readwrite.user = \"kw_rw\"\n",
        "+ service new\n",
        "~ [detect]\n      + brute_force.threshold = 3\n",
        "Plan: 1 to add, 2 to change, 2 to remove.",
        "To apply it: keyway apply v2.toml",
    ] {
        assert!(plan.contains(expected), "`{expected}` is not in the plan:\n{plan}");
    }
    assert!(
        !plan.contains("service api"),
        "an unchanged service is in the plan"
    );
    // A plan changes nothing.
    assert_eq!(curl(&old, Some(&old_token), "GET"), 200);
    assert_eq!(writer.query("select 'still'").as_deref(), Some("still"));

    let (ok, applied, err) = run(dir, &["apply", "v2.toml", "--config", "keyway.toml"]);
    assert!(ok, "{err}");
    println!("{applied}");
    assert!(
        applied.contains(&format!("  new  127.0.0.1:{}", p.new)),
        "{applied}"
    );
    assert!(!applied.contains("  old  "), "{applied}");

    // Survivors: the unchanged TCP service's connection, the database session whose
    // role stays, HTTP on the unchanged service.
    assert!(
        redis_ping(&mut redis),
        "the Redis connection of an unchanged service ended"
    );
    assert_eq!(
        reader.query("select 'reader lives'").as_deref(),
        Some("reader lives")
    );
    assert_eq!(curl(&api, Some(&api_token), "GET"), 200);
    // Ended: the removed role's session, told why; the removed service's port.
    assert_eq!(writer.query("select 'writer lives'"), None);
    let why = writer.ended();
    assert!(
        why.contains("no longer fits it (role_removed)"),
        "psql said: {why}"
    );
    assert_eq!(
        curl(&old, Some(&old_token), "GET"),
        0,
        "the removed service's port still answers"
    );
    assert!(TcpStream::connect(("127.0.0.1", p.old)).is_err());
    // The removed TCP service's live connection ended.
    assert!(
        !redis_ping(&mut doomed_redis),
        "a removed service's connection lives on"
    );
    // The changed database service takes new sessions on the same port (its new
    // proxy), and Ctrl-C, sent to the new proxy, still cancels a query of a session
    // the old one started.
    let mut again = LivePsql::open(p.db, &token(dir, "db", Some("readonly")));
    assert_eq!(
        again.query("select 'new proxy'").as_deref(),
        Some("new proxy")
    );
    let said = reader.interrupt_sleep();
    assert!(
        said.contains("canceling statement due to user request"),
        "psql said: {said}"
    );
    // (A script-mode psql exits after Ctrl-C; the SIGHUP below uses `again`.)
    // Added: serves at once, with a token for it.
    let new = format!("http://127.0.0.1:{}/invoices", p.new);
    assert_eq!(curl(&new, Some(&token(dir, "new", None)), "GET"), 200);
    // The removed role cannot log in again.
    let refused = issue_as(dir, "alice", "db", Some("readwrite"), &[]);
    assert!(
        !refused.status.success(),
        "a token for a role the config no longer has was issued"
    );

    // The change is in the audit log, with the file's hash and the admin.
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(v2.as_bytes()));
    let (ok, events, err) = run(
        dir,
        &[
            "audit",
            "query",
            "--kind",
            "config.applied",
            "--json",
            "--config",
            "keyway.toml",
        ],
    );
    assert!(ok, "{err}");
    let applied_event = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["detail"]["sha256"] == hash.as_str())
        .unwrap_or_else(|| panic!("no config.applied with {hash}:\n{events}"));
    assert_eq!(applied_event["principal"], "admin");
    assert!(applied_event["token_id"].is_string());
    assert_eq!(applied_event["detail"]["removed"][0], "service old");
    assert_eq!(applied_event["detail"]["added"][0], "service new");

    // Planning the config in force: nothing to do.
    let (ok, plan, err) = run(dir, &["plan", "v2.toml", "--config", "keyway.toml"]);
    assert!(ok && plan.contains("No changes"), "{plan}");
    assert!(!err.contains("relative paths"), "{err}");
    // The same file from another folder: its `data_dir = "data"` is still the
    // gateway's (from another folder it would be a restart-only change), and the
    // CLI says whose folder relative paths are taken from.
    std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
    std::fs::write(dir.join("elsewhere/v2.toml"), &v2).unwrap();
    let (ok, plan, err) = run(
        dir,
        &["plan", "elsewhere/v2.toml", "--config", "keyway.toml"],
    );
    assert!(ok && plan.contains("No changes"), "{plan}\n{err}");
    let gateway_dir = dir.canonicalize().unwrap();
    assert!(
        err.contains(&format!(
            "takes the relative paths in elsewhere/v2.toml from its own config's folder, {}, not from {}",
            gateway_dir.display(),
            gateway_dir.join("elsewhere").display()
        )),
        "{err}"
    );
    // A comment added: nothing restarts, but the file in force is the new one, and
    // that is audited.
    let commented = format!("# reviewed in PR 1234\n{v2}");
    std::fs::write(dir.join("v2c.toml"), &commented).unwrap();
    let (ok, out, err) = run(dir, &["apply", "v2c.toml", "--config", "keyway.toml"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("recorded as applied, nothing restarted"),
        "{out}"
    );
    assert!(redis_ping(&mut redis));
    let v2c_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(commented.as_bytes()));
    let (_, current) = admin_api(dir, p.admin, "GET", "/v1/config", None);
    assert!(current.contains(&v2c_hash), "{current}");
    let v2 = commented;
    let hash = v2c_hash;

    // Refused whole: a change only a restart can make, and a config with a secret
    // in it. The running config stays (the added service still serves).
    let v3 = format!("token_listen = \"127.0.0.1:{}\"\n{v2}", free_port());
    std::fs::write(dir.join("v3.toml"), &v3).unwrap();
    let (ok, _, err) = run(dir, &["apply", "v3.toml", "--config", "keyway.toml"]);
    assert!(!ok);
    assert!(
        err.contains("only a restart can change token_listen; nothing was applied"),
        "{err}"
    );
    let leaked = v2.replace(
        "max_ttl = \"1h\"\n\n[services.api]",
        "max_ttl = \"1h\"\n# api key sk_live_9fK2xQ7mZp4LwR8tYv3NcB6hJd1\n[services.api]",
    );
    std::fs::write(dir.join("v4.toml"), &leaked).unwrap();
    let (ok, _, err) = run(dir, &["apply", "v4.toml", "--config", "keyway.toml"]);
    assert!(!ok);
    assert!(err.contains("looks like a secret"), "{err}");
    // The gateway checks too, whoever calls it.
    let body = serde_json::json!({ "config": leaked }).to_string();
    let (status, answer) = admin_api(dir, p.admin, "POST", "/v1/config/apply", Some(&body));
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("does not pass `keyway validate`"),
        "{answer}"
    );
    assert!(
        !answer.contains("9fK2xQ7mZp4LwR8tYv3NcB6hJd1"),
        "the secret is in the answer: {answer}"
    );
    let (_, current) = admin_api(dir, p.admin, "GET", "/v1/config", None);
    let current: serde_json::Value = serde_json::from_str(&current).unwrap();
    assert_eq!(
        current["sha256"],
        hash.as_str(),
        "a refused config is in force"
    );
    assert_eq!(curl(&new, Some(&token(dir, "new", None)), "GET"), 200);

    // SIGHUP: the gateway's own file, edited to leave loopback out of the database's
    // sources. The reader's session ends; the Redis connection does not.
    let v5 = v2.replace("[\"127.0.0.0/8\"]", "[\"10.0.0.0/8\"]").replace(
        "[services.api]\n",
        "[services.api]\nrate_limit = \"100/s\"\n",
    );
    std::fs::write(dir.join("keyway.toml"), &v5).unwrap();
    let pid = gateway.id().to_string();
    hangup(&pid);
    wait_log(dir, "SIGHUP: config applied");
    assert_eq!(again.query("select 'again lives'"), None);
    let why = again.ended();
    assert!(why.contains("(source_not_allowed)"), "psql said: {why}");
    assert!(
        redis_ping(&mut redis),
        "SIGHUP ended an unchanged service's connection"
    );
    // The changed HTTP service answers through its new proxy, on the same port.
    assert_eq!(curl(&api, Some(&api_token), "GET"), 200);
    // A broken file on SIGHUP is refused and logged; the gateway keeps serving.
    std::fs::write(dir.join("keyway.toml"), "this is = not [toml").unwrap();
    hangup(&pid);
    wait_log(dir, "SIGHUP: reload refused, the running config stays");
    assert_eq!(curl(&api, Some(&api_token), "GET"), 200);
    assert!(redis_ping(&mut redis));

    std::fs::write(dir.join("keyway.toml"), &v5).unwrap();
    assert!(interrupt(&mut gateway).success());
}
