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
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not ports"));
}

/// `[audit.ports]`: the gateway runs the audit on its own; an undeclared open port is
/// a `ports.audit` event, a metric and an alert at the webhook.
#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_runs_the_port_audit_on_a_schedule() {
    let (hook, delivered) = webhook().await;
    let open_declared = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open_undeclared = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let declared = open_declared.local_addr().unwrap().port();
    let undeclared = open_undeclared.local_addr().unwrap().port();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let admin = free_port();
    std::fs::write(
        dir.join("keyway.toml"),
        format!(
            "data_dir = \"data\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             [audit.ports]\nevery = \"1s\"\nhosts = [\"127.0.0.1\"]\nports = \"{undeclared}\"\n\
             [alerts.webhook]\nurl = \"http://{hook}/keyway\"\nsecret = \"hook-key\"\n\
             [services.api]\nprotocol = \"http\"\nlisten = \"127.0.0.1:{}\"\nupstream = \"http://127.0.0.1:{declared}\"\nmax_ttl = \"1h\"\n",
            free_port()
        ),
    )
    .unwrap();
    let _gateway = start_gateway(dir, admin);
    ok_stdout(keyway(
        dir,
        &["secret", "set", "hook-key", "--config", "keyway.toml"],
        Some("a-key-for-the-port-audit-webhook"),
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let alert = loop {
        let got = delivered.lock().unwrap().clone();
        if let Some((_, _, body)) = got.into_iter().find(|(_, _, b)| b.contains("ports.audit")) {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "no port audit alert");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let alert: serde_json::Value = serde_json::from_str(&alert).unwrap();
    let findings = alert["findings"].as_array().unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f["port"] == undeclared && f["state"] == "undeclared"),
        "{alert}"
    );
    assert!(
        !findings
            .iter()
            .any(|f| f["port"] == declared && f["state"] != "expected"),
        "{alert}"
    );
    let events = ok_stdout(keyway(
        dir,
        &[
            "audit",
            "query",
            "--kind",
            "ports.audit",
            "--json",
            "--config",
            "keyway.toml",
        ],
        None,
    ));
    assert!(events.contains("undeclared"), "{events}");
    let m = metrics(dir, admin);
    assert!(
        m.contains("keyway_port_audit_findings{state=\"undeclared\"} 1"),
        "{m}"
    );
}
