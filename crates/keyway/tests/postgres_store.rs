//! Gateways on a shared PostgreSQL store (the machine's server, a fresh database for
//! the test): two replicas with the same keys, each with its own audit chain; a
//! token issued or revoked through one is in force through the other within a
//! second; one replica's name runs once; `keyway audit verify` walks every chain.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

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
