//! `keyway audit ports` against listeners this test opens on loopback: one declared
//! and open (expected), one open and undeclared, one declared and closed (stale), and
//! the same scan "from outside", where a declared upstream that answers is exposed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

#[test]
fn open_ports_are_set_against_the_declared_upstreams() {
    // Both stay listening (the kernel completes connections nobody accepts).
    let open_declared = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open_undeclared = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let declared = open_declared.local_addr().unwrap().port();
    let undeclared = open_undeclared.local_addr().unwrap().port();
    let stale = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("keyway.toml"),
        format!(
            "[services.api]\nprotocol = \"http\"\nlisten = \"127.0.0.1:{}\"\nupstream = \"http://127.0.0.1:{declared}\"\nmax_ttl = \"1h\"\n\
             [services.old]\nprotocol = \"http\"\nlisten = \"127.0.0.1:{}\"\nupstream = \"http://127.0.0.1:{stale}\"\nmax_ttl = \"1h\"\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let ports = format!("{declared},{undeclared},{stale}");
    let scan = |extra: &[&str]| {
        let out = keyway(
            dir,
            &[&["audit", "ports", "--json", "--ports", &ports][..], extra].concat(),
            None,
        );
        let found: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (out.status.code(), found)
    };
    let state_of = |found: &[serde_json::Value], port: u16| {
        found
            .iter()
            .find(|f| f["port"] == port)
            .map(|f| f["state"].as_str().unwrap().to_owned())
    };

    // The hosts default to the declared upstreams' (127.0.0.1 here).
    let (code, found) = scan(&[]);
    assert_eq!(code, Some(1), "findings fail the run: {found:?}");
    assert_eq!(state_of(&found, declared).as_deref(), Some("expected"));
    assert_eq!(state_of(&found, undeclared).as_deref(), Some("undeclared"));
    assert_eq!(state_of(&found, stale).as_deref(), Some("stale"));
    let old = found.iter().find(|f| f["port"] == stale).unwrap();
    assert_eq!(old["service"], "old");

    // From outside the private network, an upstream that answers is exposed.
    let (code, found) = scan(&["--from-outside", "--hosts", "127.0.0.1"]);
    assert_eq!(code, Some(1));
    assert_eq!(state_of(&found, declared).as_deref(), Some("exposed"));
    assert_eq!(state_of(&found, stale), None);

    // Only what is declared and open: nothing to report.
    let out = keyway(
        dir,
        &[
            "audit",
            "ports",
            "--ports",
            &declared.to_string(),
            "--hosts",
            "127.0.0.1/32",
        ],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("STATE") && table.contains("expected"),
        "{table}"
    );

    let bad = keyway(dir, &["audit", "ports", "--ports", "9-8"], None);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a port or a range"));
}
