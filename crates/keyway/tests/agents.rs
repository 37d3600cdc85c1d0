//! Agents, end to end with real processes and real servers: `keyway agent enroll`,
//! `keyway agent run` dialing out to the gateway's tunnel, and HTTP (curl), TCP
//! (redis-cli) and PostgreSQL (psql, a query cancelled with Ctrl-C) services reached
//! only through it; the agent's allow_upstreams refusing what it does not list; a
//! replayed enrollment refused; the agent surviving a gateway restart; two instances
//! sharing the load, one dying; the certificate renewed over the tunnel; `keyway
//! agent revoke` cutting a live connection and refusing the agent after.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn agents(dir: &Path) -> serde_json::Value {
    let out = keyway(
        dir,
        &["agent", "list", "--json", "--config", "keyway.toml"],
        None,
    );
    serde_json::from_str(&ok_stdout(out)).unwrap()
}

/// Waits until agent `eu` is in `state`; its status then.
fn wait_for_agent(dir: &Path, state: &str, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let list = agents(dir);
        let eu = list[0].clone();
        if eu["state"] == state {
            return eu;
        }
        assert!(
            Instant::now() < deadline,
            "agent never became {state}: {eu}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_agent(dir: &Path, tunnel: u16, data: &str, token_file: &str, allow: &[&str]) -> KillOnDrop {
    let log = std::fs::File::create(dir.join(format!("{data}.log"))).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["agent", "run", "--gateway", &format!("127.0.0.1:{tunnel}")])
        .args(["--enroll-token-file", token_file, "--data-dir", data])
        .args(["--log", "debug"]);
    for a in allow {
        cmd.args(["--allow-upstream", a]);
    }
    cmd.current_dir(dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .map(KillOnDrop)
        .unwrap()
}

/// `keyway agent run` that must stop at enrollment: its output.
fn enroll_once(dir: &Path, tunnel: u16, token_file: &str, data: &str) -> Output {
    Command::new(BIN)
        .args(["agent", "run", "--gateway", &format!("127.0.0.1:{tunnel}")])
        .args(["--enroll-token-file", token_file, "--data-dir", data])
        .args(["--allow-upstream", "127.0.0.1:6379"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn assert_pong(port: u16) {
    let out = redis(port, &["PING"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "PONG",
        "{out:?}"
    );
}

fn redis(port: u16, args: &[&str]) -> Output {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (apt-get install redis-tools)")
}

fn audit(dir: &Path, kind: &str) -> String {
    store_query(
        dir,
        &format!(
            "select decision, reason, principal, detail from audit_events where kind = '{kind}'"
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn services_through_an_agent_that_dials_out() {
    require(6379, "Redis", "redis-server --daemonize yes");
    require(5432, "PostgreSQL", "pg_ctlcluster 15 main start");
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc"])
        .arg("DO $$ BEGIN CREATE ROLE kw_agent_ro LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (admin_port, tunnel_port, pg_port, http_port) =
        (free_port(), free_port(), free_port(), free_port());
    let (api, seen) = upstream().await;
    std::fs::write(
        dir.join("keyway.toml"),
        format!(
            "data_dir = \"data\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\ntunnel_listen = \"127.0.0.1:{tunnel_port}\"\n\
             agent_cert_ttl = \"12s\"\n\
             [agents.eu]\nservices = [\"cache\", \"orders-db\", \"blocked\", \"billing\"]\n\
             [services.billing]\nprotocol = \"http\"\nlisten = \"127.0.0.1:{http_port}\"\nupstream = \"http://{api}\"\nvia = \"eu\"\nmax_ttl = \"1h\"\n\
             [services.cache]\nprotocol = \"tcp\"\nupstream = \"127.0.0.1:6379\"\nvia = \"eu\"\nmax_ttl = \"1h\"\n\
             [services.blocked]\nprotocol = \"tcp\"\nupstream = \"127.0.0.1:3306\"\nvia = \"eu\"\nmax_ttl = \"1h\"\n\
             [services.orders-db]\nprotocol = \"postgres\"\nlisten = \"127.0.0.1:{pg_port}\"\nupstream = \"127.0.0.1:5432\"\n\
             database = \"test\"\nvia = \"eu\"\nmax_ttl = \"1h\"\nroles.readonly = {{ user = \"kw_agent_ro\", secret = \"ro\" }}\n"
        ),
    )
    .unwrap();
    let mut gateway = start_gateway(dir, admin_port);
    wait_for_port(tunnel_port);
    let cfg = ["--config", "keyway.toml"];
    ok_stdout(keyway(
        dir,
        &[&["secret", "set", "ro"][..], &cfg].concat(),
        Some("agent-ro-password-canary-91"),
    ));
    assert_eq!(
        wait_for_agent(dir, "disconnected", Duration::ZERO)["connections"],
        0
    );

    // Enrollment: a one-use token that pins the gateway's CA.
    let enrollment = ok_stdout(keyway(
        dir,
        &[&["agent", "enroll", "eu"][..], &cfg].concat(),
        None,
    ));
    let (enroll_token, pin) = enrollment.rsplit_once('.').unwrap();
    assert!(enroll_token.starts_with("kwae_"));
    assert_eq!(pin.len(), 64);
    std::fs::write(dir.join("enroll.tok"), &enrollment).unwrap();
    let api_addr = api.to_string();
    let _agent = run_agent(
        dir,
        tunnel_port,
        "agent1",
        "enroll.tok",
        &["127.0.0.1:6379", "127.0.0.1:5432", &api_addr],
    );
    let eu = wait_for_agent(dir, "connected", Duration::from_secs(15));
    assert_eq!(eu["version"], env!("CARGO_PKG_VERSION"));
    assert!(eu["last_heartbeat"].is_string(), "{eu}");
    let key_mode = std::fs::metadata(dir.join("agent1/agent.pem")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_mode.permissions()) & 0o777,
        0o600,
        "the agent's key is its own"
    );

    // A TCP service through the agent: redis-cli via keyway connect.
    let token = |service: &str, role: Option<&str>| {
        ok_stdout(issue_as(dir, "dev", service, role, &["--ttl", "30m"]))
    };
    // An HTTP service through the agent: the gateway's pool dials through it.
    let billing_token = token("billing", None);
    let url = format!("http://127.0.0.1:{http_port}/invoices/7");
    assert_eq!(curl(&url, Some(&billing_token), "GET"), 200);
    assert_eq!(curl(&url, None, "GET"), 401);
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.starts_with("GET /invoices/7")));

    let cache_token = token("cache", None);
    let cache = connect(dir, "cache", tunnel_port, &cache_token);
    assert_pong(cache.1);

    // PostgreSQL through the agent: the gateway's listener, the agent's dial.
    let db_token = token("orders-db", Some("readonly"));
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={pg_port} user=x dbname=test sslmode=disable"
        ))
        .args(["-XAtqc", "select current_user"])
        .env("PGPASSWORD", &db_token)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "kw_agent_ro",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Ctrl-C cancels a running query through the agent too: the cancel request is a
    // connection of its own, written, closed and dropped without an answer, and
    // its bytes must still reach the database.
    let mut sleeper = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={pg_port} user=x dbname=test sslmode=disable"
        ))
        .args(["-XAtqc", "select pg_sleep(30)"])
        .env("PGPASSWORD", &db_token)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupted once the query runs on the server (a SIGINT before would be lost).
    let running = Instant::now();
    loop {
        let active = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-XAtqc"])
            .arg("select count(*) from pg_stat_activity where state = 'active' and query = 'select pg_sleep(30)'")
            .output()
            .unwrap();
        if String::from_utf8_lossy(&active.stdout).trim() != "0" {
            break;
        }
        if running.elapsed() > Duration::from_secs(10) {
            let _ = sleeper.kill();
            panic!("the query never ran through the agent");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let interrupted = Instant::now();
    Command::new("kill")
        .args(["-INT", &sleeper.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sleeper.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = sleeper.kill();
            panic!("the cancelled psql did not end: the cancel request was lost");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(interrupted.elapsed() < Duration::from_secs(5));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut sleeper.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("canceling statement due to user request"),
        "{err}"
    );

    // The agent limits the gateway: an upstream it does not list is refused, and
    // both sides say so.
    let blocked = connect(dir, "blocked", tunnel_port, &token("blocked", None));
    let out = Command::new("mysql")
        .args([
            "-h",
            "127.0.0.1",
            "-P",
            &blocked.1.to_string(),
            "-u",
            "root",
        ])
        .args(["--connect-timeout=5", "-e", "select 1"])
        .output()
        .expect("mysql (apt-get install mariadb-client)");
    assert!(
        !out.status.success(),
        "MariaDB was reached through the agent"
    );
    let agent_log = std::fs::read_to_string(dir.join("agent1.log")).unwrap();
    assert!(agent_log.contains("agent.upstream_refused"), "{agent_log}");
    assert!(
        audit(dir, "connection.open").contains("allow_upstreams"),
        "the gateway's audit names the refusal"
    );

    // A replayed enrollment token is refused, and audited.
    let replay = enroll_once(dir, tunnel_port, "enroll.tok", "agent2");
    assert!(!replay.status.success());
    assert!(
        String::from_utf8_lossy(&replay.stderr).contains("enrollment refused"),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(!dir.join("agent2/agent.pem").exists());
    // An agent must say what it may dial.
    let unbounded = Command::new(BIN)
        .args([
            "agent",
            "run",
            "--gateway",
            "127.0.0.1:1",
            "--data-dir",
            "agent2",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(!unbounded.status.success());
    assert!(String::from_utf8_lossy(&unbounded.stderr).contains("--allow-upstream"));

    // The agent survives a gateway restart; the gateway's stop is in the log as
    // the agent's disconnection.
    assert!(interrupt(&mut gateway).success());
    let end = store_query(
        dir,
        "select json_extract(detail, '$.end') from audit_events where kind = 'agent.disconnect' order by seq desc limit 1",
    );
    assert_eq!(end.trim(), "shutdown");
    let mut gateway = start_gateway(dir, admin_port);
    wait_for_agent(dir, "connected", Duration::from_secs(15));
    assert_pong(cache.1);

    // A second instance of the agent shares the load: consecutive streams alternate.
    let second = ok_stdout(keyway(
        dir,
        &[&["agent", "enroll", "eu"][..], &cfg].concat(),
        None,
    ));
    std::fs::write(dir.join("enroll2.tok"), &second).unwrap();
    let mut agent3 = run_agent(
        dir,
        tunnel_port,
        "agent3",
        "enroll2.tok",
        &["127.0.0.1:6379"],
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while wait_for_agent(dir, "connected", Duration::ZERO)["connections"] != 2 {
        assert!(
            Instant::now() < deadline,
            "the second instance never connected"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let blpop = |queue: &str| {
        Command::new("redis-cli")
            .args(["-p", &cache.1.to_string(), "BLPOP", queue, "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(KillOnDrop)
            .unwrap()
    };
    let mut waiting = [blpop("kw-agent-q1"), blpop("kw-agent-q2")];
    std::thread::sleep(Duration::from_millis(800));
    assert!(waiting.iter_mut().all(|w| w.try_wait().unwrap().is_none()));
    let log3 = std::fs::read_to_string(dir.join("agent3.log")).unwrap();
    assert!(
        log3.contains("stream opened"),
        "the second instance carried nothing"
    );
    // One instance dies: the stream through it fails, the other keeps waiting, and
    // new streams go to the instance left.
    agent3.kill().unwrap();
    let died = Instant::now();
    loop {
        let ended = waiting
            .iter_mut()
            .map(|w| w.try_wait().unwrap().is_some())
            .filter(|&done| done)
            .count();
        if ended == 1 {
            break;
        }
        assert!(
            ended == 0 && died.elapsed() < Duration::from_secs(5),
            "{ended} streams ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "the stream through the dead instance failed after {:?}",
        died.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while wait_for_agent(dir, "connected", Duration::ZERO)["connections"] != 1 {
        assert!(Instant::now() < deadline, "the dead instance stayed listed");
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..3 {
        assert_pong(cache.1);
    }
    drop(waiting);

    // Monitoring sees it too.
    let metrics = metrics(dir, admin_port);
    assert!(
        metrics.contains("keyway_agent_connections{agent=\"eu\"} 1"),
        "{metrics}"
    );

    // The certificate (12 s here) is renewed over the tunnel at two thirds of its life.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(dir.join("agent1.log"))
        .unwrap()
        .contains("certificate renewed")
    {
        assert!(Instant::now() < deadline, "the certificate was not renewed");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(audit(dir, "agent.renew").contains("allow||eu"));

    // Revoking the agent cuts its live connections at once and refuses it after;
    // an enrollment token made before the revocation dies with it.
    let stale = ok_stdout(keyway(
        dir,
        &[&["agent", "enroll", "eu"][..], &cfg].concat(),
        None,
    ));
    std::fs::write(dir.join("stale.tok"), &stale).unwrap();
    let mut idle = Command::new("redis-cli")
        .args(["-p", &cache.1.to_string(), "BLPOP", "kw-agent-queue", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(idle.try_wait().unwrap().is_none(), "BLPOP should wait");
    ok_stdout(keyway(
        dir,
        &[&["agent", "revoke", "eu"][..], &cfg].concat(),
        None,
    ));
    let revoked = Instant::now();
    while idle.try_wait().unwrap().is_none() {
        assert!(
            revoked.elapsed() < Duration::from_secs(2),
            "the live connection outlived the agent's revocation"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "the idle redis-cli ended {:?} after the revoke command returned",
        revoked.elapsed()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        wait_for_agent(dir, "revoked", Duration::ZERO)["connections"],
        0
    );
    let out = redis(cache.1, &["PING"]);
    assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), "PONG");
    let refusals = audit(dir, "agent.connect");
    assert!(refusals.contains("deny|agent_revoked|eu"), "{refusals}");
    let enrollments = audit(dir, "agent.enroll");
    assert!(enrollments.contains("allow||eu"), "{enrollments}");
    assert!(enrollments.contains("deny|revoked|eu"), "{enrollments}");
    let late = enroll_once(dir, tunnel_port, "stale.tok", "agent4");
    assert!(
        String::from_utf8_lossy(&late.stderr).contains("enrollment refused"),
        "a token from before the revocation enrolled the agent again"
    );

    // Enrolling again (after the revocation's second) lets it back.
    std::thread::sleep(Duration::from_millis(1100));
    let fresh = ok_stdout(keyway(
        dir,
        &[&["agent", "enroll", "eu"][..], &cfg].concat(),
        None,
    ));
    std::fs::write(dir.join("fresh.tok"), &fresh).unwrap();
    let _back = run_agent(dir, tunnel_port, "agent5", "fresh.tok", &["127.0.0.1:6379"]);
    wait_for_agent(dir, "connected", Duration::from_secs(15));
    assert_pong(cache.1);

    assert!(interrupt(&mut gateway).success());
    for secret in [
        secret_part(&billing_token),
        secret_part(&cache_token),
        secret_part(&db_token),
        secret_part(enroll_token),
        "agent-ro-password-canary-91",
    ] {
        let hits = files_containing(dir, secret);
        let hits: Vec<_> = hits.iter().filter(|p| !p.ends_with("enroll.tok")).collect();
        assert!(hits.is_empty(), "a secret was written to {hits:?}");
    }
}
