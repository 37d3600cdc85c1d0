//! Gateways on a shared PostgreSQL store (the machine's server, a fresh database for
//! the test): two replicas with the same keys, each with its own audit chain; a
//! token issued or revoked through one is in force through the other within a
//! second; one replica's name runs once; `keyway audit verify` walks every chain.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// A TCP relay to PostgreSQL on loopback that the test can cut (every connection
/// closed, the port shut) and restore on the same port.
struct Relay {
    port: u16,
    tasks: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    async fn start(port: u16) -> Self {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = l.local_addr().unwrap().port();
        let tasks = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut c, _)) = l.accept().await {
                conns.spawn(async move {
                    if let Ok(mut pg) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut c, &mut pg).await;
                    }
                });
            }
        });
        Self {
            port,
            tasks: Some(tasks),
        }
    }

    /// Closes the port and every connection through it.
    fn cut(&mut self) {
        if let Some(t) = self.tasks.take() {
            t.abort();
        }
    }
}

/// `/healthz` of the admin API on `port`.
fn healthz(port: u16) -> u16 {
    curl_status(&format!("http://127.0.0.1:{port}/healthz"), &[])
}

/// A replica's folder and config on `db`.
fn replica(dir: &Path, name: &str, db: &str, admin: u16, svc: u16, upstream: &str) {
    billing_config(
        dir,
        admin,
        svc,
        upstream,
        "1h",
        &format!("store = \"postgres://postgres@127.0.0.1:5432/{db}\"\nreplica = \"{name}\"\n"),
    );
    // `billing_config` writes the service last: the top-level keys go first.
    let text = std::fs::read_to_string(dir.join("keyway.toml")).unwrap();
    let (top, rest) = text.split_once("[services.billing]").unwrap();
    let (service, extra) = rest.split_once("max_ttl = \"1h\"\n").unwrap();
    std::fs::write(
        dir.join("keyway.toml"),
        format!("{extra}{top}[services.billing]{service}max_ttl = \"1h\"\n"),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_one_store_and_keep_a_chain_each() {
    require(
        5432,
        "PostgreSQL",
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    );
    let db = format!("keyway_e2e_{}", std::process::id());
    psql_admin_on(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
    psql_admin_on("postgres", &format!("CREATE DATABASE {db}"));
    let (up, _) = upstream().await;
    let (t1, t2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (d1, d2) = (t1.path(), t2.path());
    let (a1, s1, a2, s2) = (free_port(), free_port(), free_port(), free_port());
    replica(d1, "gw-1", &db, a1, s1, &up.to_string());
    replica(d2, "gw-2", &db, a2, s2, &up.to_string());

    // The first replica makes the keys; the second is given the same ones.
    let gw1 = start_gateway(d1, a1);
    std::fs::create_dir_all(d2.join("data")).unwrap();
    for key in ["pepper.key", "master.key"] {
        std::fs::copy(d1.join("data").join(key), d2.join("data").join(key)).unwrap();
    }
    let token = issue(d1, "alice", "billing");
    let url = |port: u16| format!("http://127.0.0.1:{port}/invoices/1");
    assert_eq!(curl(&url(s1), Some(&token), "GET"), 200);

    // The second replica reads the token from the shared store.
    let mut gw2 = start_gateway(d2, a2);
    assert_eq!(curl(&url(s2), Some(&token), "GET"), 200);

    // A replica's name runs once: a second gw-1 would fork its chain.
    let t3 = tempfile::tempdir().unwrap();
    let d3 = t3.path();
    replica(d3, "gw-1", &db, free_port(), free_port(), &up.to_string());
    std::fs::create_dir_all(d3.join("data")).unwrap();
    for key in ["pepper.key", "master.key"] {
        std::fs::copy(d1.join("data").join(key), d3.join("data").join(key)).unwrap();
    }
    let out = Command::new(BIN)
        .args(["gateway", "--config", "keyway.toml"])
        .current_dir(d3)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("replica `gw-1` is already running"), "{err}");

    // Issued through the first after the second started: the second follows the
    // store and takes it within a second.
    let later = issue(d1, "bob", "billing");
    let until = |what: &str, want: u16, token: &str| {
        let started = std::time::Instant::now();
        while curl(&url(s2), Some(token), "GET") != want {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(3),
                "{what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        started.elapsed()
    };
    until(
        "the second replica takes a token issued through the first",
        200,
        &later,
    );

    // Revoked through the first: refused through the second within a second.
    let id = &token[5..21];
    let out = keyway(
        d1,
        &["token", "revoke", id, "--config", "keyway.toml"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = until(
        "the second replica refuses a token revoked through the first",
        401,
        &token,
    );
    eprintln!(
        "revocation reached the other replica in {} ms",
        took.as_millis()
    );
    assert_eq!(curl(&url(s1), Some(&token), "GET"), 401);
    assert_eq!(curl(&url(s2), Some(&later), "GET"), 200, "only that one");

    // A restarted replica reads what it missed from the store.
    interrupt(&mut gw2);
    let _gw2 = start_gateway(d2, a2);
    assert_eq!(curl(&url(s2), Some(&token), "GET"), 401);

    // Both beat; `cluster status` lists them, serving and caught up.
    assert_eq!((healthz(a1), healthz(a2)), (200, 200));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let status = loop {
        let out = keyway(d1, &["cluster", "status", "--config", "keyway.toml"], None);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && text.contains("gw-1") && text.contains("gw-2") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(
        status.lines().filter(|l| l.contains(" serving ")).count() == 2,
        "{status}"
    );

    // Each replica wrote its own chain; verification walks both, beside them.
    let out = audit_verify(d1, None);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("intact"), "{text}");
    let replicas = psql_admin_on(&db, "SELECT COUNT(DISTINCT replica) FROM audit_events");
    assert_eq!(replicas, "2", "both replicas wrote events");

    drop(gw1);
    drop(_gw2);
    psql_admin_on(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_cut_off_from_the_store_refuses_then_serves_again_and_drains_on_sigterm() {
    require(
        5432,
        "PostgreSQL",
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    );
    let db = format!("keyway_e2e_cut_{}", std::process::id());
    psql_admin_on(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
    psql_admin_on("postgres", &format!("CREATE DATABASE {db}"));
    let (up, _) = upstream().await;
    let mut relay = Relay::start(0).await;
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let (admin, svc) = (free_port(), free_port());
    billing_config(d, admin, svc, &up.to_string(), "1h", "");
    let text = std::fs::read_to_string(d.join("keyway.toml")).unwrap();
    std::fs::write(
        d.join("keyway.toml"),
        format!(
            "store = \"postgres://postgres@127.0.0.1:{}/{db}\"\nreplica = \"gw-cut\"\nstore_max_lag = \"1s\"\ndrain_grace = \"2s\"\n{text}",
            relay.port
        ),
    )
    .unwrap();
    let mut gw = start_gateway(d, admin);
    let token = issue(d, "alice", "billing");
    let url = format!("http://127.0.0.1:{svc}/invoices/1");
    assert_eq!(curl(&url, Some(&token), "GET"), 200);

    // The store goes away: after `store_max_lag` the replica refuses (it could no
    // longer hear of a revocation) and says so on /healthz.
    relay.cut();
    let started = std::time::Instant::now();
    while healthz(admin) != 503 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "still healthy"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "not before store_max_lag"
    );
    // Refused at once (an answer already waiting on its event waits for the store;
    // curl gives up on those after 2 s, and the next one is refused).
    let auth = format!("Authorization: Bearer {token}");
    let started = std::time::Instant::now();
    while curl_status(&url, &["--max-time", "2", "-H", &auth]) != 503 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "not refused"
        );
    }
    // Back: it catches up and serves again by itself.
    let relay2 = Relay::start(relay.port).await;
    let started = std::time::Instant::now();
    while curl(&url, Some(&token), "GET") != 200 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "did not recover"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(healthz(admin), 200);
    let log = std::fs::read_to_string(d.join("gateway.log")).unwrap();
    assert!(
        log.contains("behind the shared store")
            && log.contains("caught up")
            && log.contains("name was held again"),
        "{log}"
    );

    // SIGTERM: /healthz turns 503 at once, requests are still served for the
    // grace, then the gateway stops.
    Command::new("kill")
        .args(["-TERM", &gw.id().to_string()])
        .status()
        .unwrap();
    let started = std::time::Instant::now();
    while healthz(admin) != 503 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "not draining"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        curl(&url, Some(&token), "GET"),
        200,
        "still served while draining"
    );
    let status = wait_exit(
        &mut gw,
        std::time::Duration::from_secs(15),
        "the gateway did not stop",
    );
    assert!(status.success());
    drop(relay2);
    psql_admin_on(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
}
