//! `keyway backup` while the gateway serves requests and issues tokens, then a
//! restore as the README says: the copy over `keyway.db` with the same keys. The
//! tokens of the copy work, the audit log is intact and holds the head the backup
//! printed; a head from after the backup is caught as missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_taken_under_load_restores_with_its_tokens_and_its_chain_head() {
    let (up, _) = upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (admin_port, svc_port) = (free_port(), free_port());
    billing_config(dir, admin_port, svc_port, &up.to_string(), "1h", "");
    let url = format!("http://127.0.0.1:{svc_port}/invoices/1");
    let mut gateway = start_gateway(dir, admin_port);
    let before = issue(dir, "before", "billing");

    // Load while the copy is taken: requests, and tokens issued over the admin API.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..2)
        .map(|i| {
            let (stop, served, url, token) =
                (stop.clone(), served.clone(), url.clone(), before.clone());
            let dir = dir.to_path_buf();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if i == 0 {
                        assert_eq!(curl(&url, Some(&token), "GET"), 200);
                    } else {
                        let body = r#"{"service":"billing","principal":"load","ttl":"1h"}"#;
                        let (status, _) =
                            admin_api(&dir, admin_port, "POST", "/v1/tokens", Some(body));
                        assert_eq!(status, 201);
                    }
                    served.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    while served.load(Ordering::Relaxed) < 20 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = keyway(
        dir,
        &["backup", "--config", "keyway.toml", "--out", "backup.db"],
        None,
    );
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    let head = ok_stdout(out);
    let during = served.load(Ordering::Relaxed);
    std::thread::sleep(std::time::Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.join().unwrap();
    }
    assert!(
        served.load(Ordering::Relaxed) > during,
        "the load went on after the copy"
    );
    assert_eq!(head.lines().count(), 1, "stdout is the head alone: {head}");
    assert!(
        head.split_once(':')
            .is_some_and(|(seq, hash)| seq.parse::<i64>().is_ok() && hash.len() == 64),
        "{head}"
    );
    assert!(
        said.contains("intact") && said.contains(&format!("--expect {head}")),
        "{said}"
    );
    let mode = std::fs::metadata(dir.join("backup.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Never over a file, never to a stream.
    let copy = std::fs::read(dir.join("backup.db")).unwrap();
    let again = keyway(
        dir,
        &["backup", "--config", "keyway.toml", "--out", "backup.db"],
        None,
    );
    assert!(!again.status.success());
    assert_eq!(std::fs::read(dir.join("backup.db")).unwrap(), copy);
    let stream = keyway(
        dir,
        &["backup", "--config", "keyway.toml", "--out", "-"],
        None,
    );
    assert!(!stream.status.success());
    assert!(String::from_utf8_lossy(&stream.stderr).contains("not a stream"));

    // After the backup: a token, and events, the copy does not have.
    let after = issue(dir, "after", "billing");
    assert_eq!(curl(&url, Some(&after), "GET"), 200);
    let later_head = chain_head(dir);
    assert!(interrupt(&mut gateway).success());

    // Restore: the copy over keyway.db (no log beside it), the same keys.
    for f in ["keyway.db-wal", "keyway.db-shm"] {
        let _ = std::fs::remove_file(dir.join("data").join(f));
    }
    std::fs::copy(dir.join("backup.db"), dir.join("data/keyway.db")).unwrap();
    let _gateway = start_gateway(dir, admin_port);
    assert_eq!(curl(&url, Some(&before), "GET"), 200);
    assert_eq!(
        curl(&url, Some(&after), "GET"),
        401,
        "issued after the copy"
    );
    let out = audit_verify(dir, Some(&head));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact"));
    // The head kept from the live store is what catches the events the copy lacks.
    let out = audit_verify(dir, Some(&later_head));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
