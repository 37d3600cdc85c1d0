//! `keyway report` against a running gateway: a token never used, a service nobody
//! called, and a whole-service token used only to GET under one path.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_report_names_what_to_revoke_narrow_or_close() {
    let (up, _) = upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (admin, api, web) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.join("keyway.toml"),
        format!(
            "data_dir = \"data\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             [services.api]\nprotocol = \"http\"\nlisten = \"127.0.0.1:{api}\"\nupstream = \"http://{up}\"\nmax_ttl = \"1h\"\n\
             [services.web]\nprotocol = \"http\"\nlisten = \"127.0.0.1:{web}\"\nupstream = \"http://{up}\"\nmax_ttl = \"1h\"\n"
        ),
    )
    .unwrap();
    let _gateway = start_gateway(dir, admin);
    let busy = issue(dir, "billing-job", "api");
    let idle = issue(dir, "forgotten", "api");
    // Granted two prefixes, used under one.
    let narrow = ok_stdout(keyway(
        dir,
        &[
            "token",
            "issue",
            "--service",
            "api",
            "--principal",
            "exporter",
            "--path",
            "/invoices",
            "--path",
            "/customers",
            "--methods",
            "GET",
            "--config",
            "keyway.toml",
        ],
        None,
    ));
    let url = format!("http://127.0.0.1:{api}/invoices/1");
    assert_eq!(curl(&url, Some(&busy), "GET"), 200);
    // A window of 4 s: the idle token and the first use are before it, the second
    // use in it (both reports below run well within 4 s of it).
    std::thread::sleep(std::time::Duration::from_millis(4_200));
    assert_eq!(curl(&url, Some(&busy), "GET"), 200);
    assert_eq!(curl(&url, Some(&narrow), "GET"), 200);
    // Last-use times reach the report through the index at once.
    std::thread::sleep(std::time::Duration::from_millis(100));

    let out = keyway(
        dir,
        &[
            "report",
            "--since",
            "4s",
            "--json",
            "--config",
            "keyway.toml",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "findings fail the run");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let unused: Vec<&str> = r["unused_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["principal"].as_str().unwrap())
        .collect();
    assert_eq!(unused, vec!["forgotten"], "{r}");
    let quiet: Vec<&str> = r["quiet_services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["service"].as_str().unwrap())
        .collect();
    assert_eq!(quiet, vec!["web"], "{r}");
    let broad_of = |who: &str| {
        r["broad_grants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["principal"] == who)
            .cloned()
            .unwrap_or_else(|| panic!("no broad grant of {who} in {r}"))
    };
    let narrow_grant = broad_of("exporter");
    assert_eq!(
        narrow_grant["unused_paths"],
        serde_json::json!(["/customers"])
    );
    let broad = broad_of("billing-job");
    assert_eq!(broad["used_methods"], serde_json::json!(["GET"]));
    assert_eq!(broad["used_paths"], serde_json::json!(["/invoices"]));
    for t in [&busy, &idle, &narrow] {
        assert!(!String::from_utf8_lossy(&out.stdout).contains(secret_part(t)));
    }

    let table = keyway(
        dir,
        &["report", "--since", "4s", "--config", "keyway.toml"],
        None,
    );
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("Tokens not used")
            && table.contains("Services with no traffic")
            && table.contains("Grants broader than their use")
            && table.contains("ALL /"),
        "{table}"
    );
}
