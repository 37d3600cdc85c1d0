//! The store's files as an operator finds them after a crash, a bad disk or a wrong
//! command: `keyway gateway` refuses a store that is missing, empty or damaged while
//! the keys and the admin credential show there was one, says what it found, writes
//! no new admin credential and changes no file; `--init` starts over on purpose and
//! keeps the old files aside; a graceful stop leaves everything in `keyway.db`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// `<tmp>/<name>` with a `keyway.toml` for one HTTP service in front of `up`: the
/// folder, the admin port and the service's URL.
fn run_dir(tmp: &Path, name: &str, up: std::net::SocketAddr) -> (PathBuf, u16, String) {
    let dir = tmp.join(name);
    std::fs::create_dir(&dir).unwrap();
    let (admin_port, svc_port) = (free_port(), free_port());
    billing_config(&dir, admin_port, svc_port, &up.to_string(), "1h", "");
    (
        dir,
        admin_port,
        format!("http://127.0.0.1:{svc_port}/invoices/1"),
    )
}

/// A gateway serving from `<tmp>/run`, with a token that has made five requests:
/// the folder, the admin port, the service's URL, the gateway, the token.
fn serving(tmp: &Path, up: std::net::SocketAddr) -> (PathBuf, u16, String, KillOnDrop, String) {
    let (dir, admin_port, url) = run_dir(tmp, "run", up);
    let gateway = start_gateway(&dir, admin_port);
    let token = issue(&dir, "p", "billing");
    for _ in 0..5 {
        assert_eq!(curl(&url, Some(&token), "GET"), 200);
    }
    (dir, admin_port, url, gateway, token)
}

/// A copy of the whole folder (config and data) at `to`.
fn copy_dir(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Every file under `<dir>/data` and its bytes, the lock file aside.
fn data_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir.join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.ends_with("keyway.lock"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// `keyway gateway` in `dir`, expected to stop on its own within 30 s.
fn gateway_exits(dir: &Path, extra: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(["gateway", "--config", "keyway.toml"])
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    let status = wait_exit(
        &mut child,
        Duration::from_secs(30),
        "the gateway started on a store it should have refused",
    );
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Starts the gateway on a damaged copy and checks the refusal: non-zero, the
/// sentence for what was found, the two ways on, and not a byte changed.
fn assert_refused(dir: &Path, found: &str) -> String {
    let before = data_files(dir);
    let out = gateway_exits(dir, &[]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{said}");
    for words in ["refusing to start", found, "restore a backup", "--init"] {
        assert!(said.contains(words), "`{words}` not in:\n{said}");
    }
    assert!(!said.contains("wrote a new admin credential"), "{said}");
    assert_eq!(data_files(dir), before, "the data folder changed:\n{said}");
    said
}

/// Flips a byte in the page of the log's middle frame (4 KiB pages).
fn damage_log_frame(dir: &Path) {
    let wal = dir.join("data/keyway.db-wal");
    let mut bytes = std::fs::read(&wal).unwrap();
    let frame = 24 + 4096;
    let frames = (bytes.len() - 32) / frame;
    assert!(frames > 4, "a log of {frames} frames");
    bytes[32 + frames / 2 * frame + 24 + 100] ^= 0xff;
    std::fs::write(&wal, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_store_is_refused_with_what_was_found_and_nothing_changed() {
    let (up, _) = upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let (dir, admin_port, url, mut gateway, token) = serving(tmp.path(), up);
    let head = chain_head(&dir);
    // A crash: everything since the start is in the log, none of it in keyway.db.
    gateway.kill().unwrap();
    gateway.wait().unwrap();
    assert!(
        std::fs::metadata(dir.join("data/keyway.db-wal"))
            .unwrap()
            .len()
            > 0
    );
    let case = |name: &str| {
        let to = tmp.path().join(name);
        copy_dir(&dir, &to);
        to
    };

    // keyway.db deleted (and its log with it): only the keys and admin.token are left.
    let missing = case("missing");
    for f in ["keyway.db", "keyway.db-wal", "keyway.db-shm"] {
        std::fs::remove_file(missing.join("data").join(f)).unwrap();
    }
    let said = assert_refused(&missing, "keyway.db is missing");
    assert!(said.contains("pepper.key"), "{said}");

    // keyway.db truncated to nothing, its log kept (SQLite would delete the log).
    let empty = case("empty");
    std::fs::write(empty.join("data/keyway.db"), b"").unwrap();
    assert_refused(&empty, "is empty (0 bytes) beside its write-ahead log");

    // A damaged frame in the log: SQLite would drop it and every frame after it.
    let torn = case("damaged-log");
    damage_log_frame(&torn);
    assert_refused(&torn, "fails its checksum");

    // Garbage where the database was.
    let garbage = case("garbage");
    let len = std::fs::metadata(garbage.join("data/keyway.db"))
        .unwrap()
        .len();
    let noise: Vec<u8> = (0..len).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(garbage.join("data/keyway.db"), noise).unwrap();
    assert_refused(&garbage, "is not a SQLite database");

    // The way the refusal offers without a backup for the damaged log: SQLite keeps
    // what precedes the damage; the chain head kept before catches what went.
    let out = Command::new("sqlite3")
        .arg(torn.join("data/keyway.db"))
        .arg("PRAGMA wal_checkpoint(TRUNCATE)")
        .output()
        .expect("sqlite3 (apt-get install sqlite3)");
    assert!(out.status.success());
    let out = audit_verify(&torn, Some(&head));
    assert_eq!(
        out.status.code(),
        Some(1),
        "the events after the damage are gone, and --expect says so: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // --init starts over on purpose: a new store and admin credential, the old
    // files moved aside whole, the old token unknown.
    let old_admin = std::fs::read(empty.join("data/admin.token")).unwrap();
    let wal = std::fs::read(empty.join("data/keyway.db-wal")).unwrap();
    // The copy listens where the original did, which is stopped.
    let log = std::fs::File::create(empty.join("gateway.log")).unwrap();
    let mut again = Command::new(BIN)
        .args(["gateway", "--config", "keyway.toml", "--init"])
        .current_dir(&empty)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    wait_for_port(admin_port);
    assert_ne!(
        std::fs::read(empty.join("data/admin.token")).unwrap(),
        old_admin
    );
    let aside: Vec<PathBuf> = std::fs::read_dir(empty.join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("damaged-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(aside[0].join("keyway.db-wal")).unwrap(), wal);
    assert_eq!(curl(&url, Some(&token), "GET"), 401, "a new, empty store");
    assert!(interrupt(&mut again).success());
    let said = String::from_utf8_lossy(&gateway_exits(&empty, &["--init"]).stderr).into_owned();
    assert!(said.contains("opens and checks fine"), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_damaged_inside_the_database_fails_the_check_at_start() {
    let (up, _) = upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let (dir, admin_port, _) = run_dir(tmp.path(), "run", up);
    let mut gateway = start_gateway(&dir, admin_port);
    for _ in 0..40 {
        let body = r#"{"service":"billing","principal":"p","ttl":"1h"}"#;
        let (status, _) = admin_api(&dir, admin_port, "POST", "/v1/tokens", Some(body));
        assert_eq!(status, 201);
    }
    assert!(interrupt(&mut gateway).success());
    // Everything in keyway.db, whatever the stop did with the log.
    store_query(&dir, "PRAGMA wal_checkpoint(TRUNCATE)");
    let db = dir.join("data/keyway.db");
    let mut bytes = std::fs::read(&db).unwrap();
    let n = bytes.len();
    assert!(n >= 8 * 4096, "a database of {n} bytes");
    bytes[n / 4..n / 2].fill(0x55);
    std::fs::write(&db, bytes).unwrap();
    assert_refused(&dir, "cannot be used");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_graceful_stop_leaves_everything_in_keyway_db() {
    let (up, _) = upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let (dir, admin_port, url, mut gateway, token) = serving(tmp.path(), up);
    assert!(
        std::fs::metadata(dir.join("data/keyway.db-wal"))
            .unwrap()
            .len()
            > 0
    );
    assert!(interrupt(&mut gateway).success());
    let wal = std::fs::metadata(dir.join("data/keyway.db-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the log is folded into the database at stop");

    // keyway.db alone, beside the keys, is the whole store.
    let alone = tmp.path().join("alone");
    std::fs::create_dir_all(alone.join("data")).unwrap();
    std::fs::copy(dir.join("keyway.toml"), alone.join("keyway.toml")).unwrap();
    for f in ["keyway.db", "pepper.key", "master.key", "admin.token"] {
        std::fs::copy(dir.join("data").join(f), alone.join("data").join(f)).unwrap();
    }
    let requests = store_query(
        &alone,
        "SELECT count(*) FROM audit_events WHERE kind = 'request'",
    );
    assert_eq!(requests.trim(), "5");
    let _gateway = start_gateway(&alone, admin_port);
    assert_eq!(curl(&url, Some(&token), "GET"), 200);
    assert!(ok_stdout(audit_verify(&alone, None)).contains("intact"));
}
