//! The audit log through the CLI: `keyway audit query` with filters and paging,
//! `keyway audit export` as JSON lines, and the keyed hash chain: `keyway audit
//! verify` finds it intact after real traffic, and names the first event when the
//! SQLite file is edited directly: an event altered, an event deleted, two events
//! swapped, the newest events removed (caught by the signed checkpoint); and with a
//! retention set, old events pruned to a signed anchor the chain still verifies from.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// `<tmp>/run` with a `keyway.toml` for one HTTP service in front of `up`, plus
/// `extra` (an `[audit]` table): the folder, the admin port and the service's port.
fn run(tmp: &Path, up: std::net::SocketAddr, extra: &str) -> (std::path::PathBuf, u16, u16) {
    let dir = tmp.join("run");
    std::fs::create_dir(&dir).unwrap();
    let (admin_port, svc_port) = (free_port(), free_port());
    std::fs::write(
        dir.join("keyway.toml"),
        format!(
            "data_dir = \"data\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n{extra}\
             [services.billing]\nprotocol = \"http\"\nlisten = \"127.0.0.1:{svc_port}\"\nupstream = \"http://{up}\"\nmax_ttl = \"1h\"\n"
        ),
    )
    .unwrap();
    (dir, admin_port, svc_port)
}

/// A copy of the whole run (config, data) with `sql` applied to its store.
fn tampered(from: &Path, to: &Path, sql: &str) {
    let status = Command::new("cp")
        .args(["-a"])
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
    store_query(to, sql);
}

#[tokio::test(flavor = "multi_thread")]
async fn editing_the_store_breaks_the_chain_where_it_was_edited() {
    let (up, _) = upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let (dir, admin_port, svc_port) = run(tmp.path(), up, "");
    let dir = &dir;
    let mut gateway = start_gateway(dir, admin_port);
    let token = issue(dir, "p", "billing");
    let url = format!("http://127.0.0.1:{svc_port}/invoices/1");
    for _ in 0..3 {
        assert_eq!(curl(&url, Some(&token), "GET"), 200);
        assert_eq!(curl(&url, None, "GET"), 401);
    }
    // Query with a filter (the writer is asynchronous: wait for the denials).
    let cfg = ["--config", "keyway.toml"];
    let query = |args: &[&str]| {
        ok_stdout(keyway(
            dir,
            &[&["audit", "query"][..], args, &cfg].concat(),
            None,
        ))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let denied = loop {
        let denied = query(&["--decision", "deny", "--json"]);
        if denied.lines().count() >= 3 || std::time::Instant::now() > deadline {
            break denied;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let denied: Vec<serde_json::Value> = denied
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(denied.len(), 3, "{denied:?}");
    assert!(denied
        .iter()
        .all(|e| e["decision"] == "deny" && e["reason"] == "no_token"));
    // The config the gateway started with is an event, with the file's hash.
    let applied = query(&["--kind", "config.applied", "--json"]);
    let text = std::fs::read(dir.join("keyway.toml")).unwrap();
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&text));
    assert!(
        applied.contains(&hash) && applied.contains("billing"),
        "{applied}"
    );
    let table = query(&["--principal", "p", "--kind", "token.issued"]);
    assert!(
        table.starts_with("SEQ") && table.contains("token.issued"),
        "{table}"
    );
    let page = keyway(
        dir,
        &[&["audit", "query", "--limit", "2"][..], &cfg].concat(),
        None,
    );
    assert!(String::from_utf8_lossy(&page.stderr).contains("more: --after"));
    assert_eq!(
        String::from_utf8_lossy(&page.stdout).lines().count(),
        3,
        "a header and 2 rows"
    );
    // Export: every event since an hour ago, as JSON lines, never a token secret.
    let export = ok_stdout(keyway(
        dir,
        &[&["audit", "export", "--since", "1h"][..], &cfg].concat(),
        None,
    ));
    assert!(export.lines().count() >= 8, "{export}");
    assert!(export
        .lines()
        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
    assert!(!export.contains(secret_part(&token)));
    let bad = keyway(
        dir,
        &[&["audit", "query", "--since", "yesterday-ish"][..], &cfg].concat(),
        None,
    );
    assert!(!bad.status.success());

    assert!(interrupt(&mut gateway).success());

    let out = audit_verify(dir, None);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("audit log intact"), "{said}");
    let count: i64 = store_query(dir, "select count(*) from audit_events")
        .trim()
        .parse()
        .unwrap();
    assert!(count >= 8, "{count} events");
    assert!(said.contains(&format!("{count} events")), "{said}");

    // The gateway signed a checkpoint of the head when it stopped: removing the
    // newest events is caught too.
    assert!(said.contains("signed checkpoints match"), "{said}");
    let newest = format!("event {count}");
    let cases = [
        (
            "truncated",
            "delete from audit_events where seq >= (select max(seq) - 1 from audit_events)",
            newest.as_str(),
            "a checkpoint names it",
        ),
        (
            "checkpoint forged",
            "update audit_checkpoints set seq = seq - 1",
            "(checkpoint)",
            "altered",
        ),
        ("altered", "update audit_events set reason = 'nothing to see' where seq = 4", "event 4", "altered"),
        ("deleted", "delete from audit_events where seq = 5", "event 6", "deleted"),
        (
            "reordered",
            "update audit_events set seq = -1 where seq = 3; update audit_events set seq = 3 where seq = 4; \
             update audit_events set seq = 4 where seq = -1",
            "event 3",
            "moved out of its place",
        ),
    ];
    for (name, sql, at, what) in cases {
        let copy = tmp.path().join(name);
        tampered(dir, &copy, sql);
        let out = audit_verify(&copy, None);
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{name}: {said}");
        assert!(
            said.contains("BROKEN") && said.contains(at) && said.contains(what),
            "{name}: {said}"
        );
    }

    // Whoever removes the newest events and their checkpoint too leaves a chain
    // that holds; the newest event's hash, kept outside (the gateway logs each
    // checkpoint; verify prints it), still catches it.
    let head = said
        .lines()
        .find_map(|l| l.strip_prefix("newest event: "))
        .expect("verify prints the newest event")
        .replacen(' ', ":", 1);
    let copy = tmp.path().join("truncated-quietly");
    tampered(
        dir,
        &copy,
        "delete from audit_events where seq = (select max(seq) from audit_events); \
         delete from audit_checkpoints where seq = (select max(seq) from audit_checkpoints)",
    );
    assert!(
        audit_verify(&copy, None).status.success(),
        "the chain left holds"
    );
    let out = audit_verify(&copy, Some(&head));
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("a checkpoint names it"), "{said}");

    // Without the pepper the chain cannot be checked (nor re-linked by whoever edits
    // the database alone).
    std::fs::remove_file(dir.join("data/pepper.key")).unwrap();
    assert!(!audit_verify(dir, None).status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_prunes_to_a_signed_anchor_that_still_verifies() {
    let (up, _) = upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let audit = "[audit]\nretention = \"3s\"\ncheckpoint_every = \"1s\"\n";
    let (dir, admin_port, svc_port) = run(tmp.path(), up, audit);
    let dir = &dir;
    let mut gateway = start_gateway(dir, admin_port);
    let token = issue(dir, "p", "billing");
    let url = format!("http://127.0.0.1:{svc_port}/invoices/1");
    let oldest = |table: &str| -> i64 {
        store_query(dir, &format!("select coalesce(min(seq), 0) from {table}"))
            .trim()
            .parse()
            .unwrap()
    };
    // Traffic for a while longer than the retention: the first events go.
    let started = std::time::Instant::now();
    while oldest("audit_events") <= 1 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "nothing was pruned"
        );
        assert_eq!(curl(&url, Some(&token), "GET"), 200);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(curl(&url, Some(&token), "GET"), 200);
    assert!(interrupt(&mut gateway).success());

    let first = oldest("audit_events");
    let anchor = oldest("audit_checkpoints");
    assert_eq!(
        anchor,
        first - 1,
        "the oldest checkpoint anchors the first event left"
    );
    let out = audit_verify(dir, None);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("events up to {anchor} were pruned by retention")),
        "{said}"
    );
    // The pruning is itself audited.
    let pruned = store_query(
        dir,
        "select detail from audit_events where kind = 'audit.pruned'",
    );
    assert!(pruned.contains("through_seq"), "{pruned}");

    // Deleting more old events, up to a later checkpoint, is not retention: only
    // the checkpoint retention signed as its anchor may start the chain.
    let copy = tmp.path().join("pruned-by-hand");
    tampered(
        dir,
        &copy,
        "delete from audit_events where seq <= (select seq from audit_checkpoints order by seq limit 1 offset 1); \
         delete from audit_checkpoints where seq < (select seq from audit_checkpoints order by seq limit 1 offset 1)",
    );
    let out = audit_verify(&copy, None);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("BROKEN"), "{said}");

    // Without its anchor, the chain left is missing its start.
    let copy = tmp.path().join("no-anchor");
    tampered(
        dir,
        &copy,
        &format!("delete from audit_checkpoints where seq = {anchor}"),
    );
    let out = audit_verify(&copy, None);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!("event {first}")) && said.contains("deleted"),
        "{said}"
    );
}
