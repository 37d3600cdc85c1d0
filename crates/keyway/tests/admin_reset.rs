//! The way back from a revoked admin token: sent once in a URL, it is revoked; the
//! CLI then says how to get a new one; `keyway admin reset` refuses while the gateway
//! runs, and with it stopped revokes the admin tokens, writes a new one (0600) and
//! audits it; started again, the new token works and the old one is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

fn admin_token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("data/admin.token"))
        .unwrap()
        .trim()
        .to_owned()
}

/// The admin API's answer to `token` on `/v1/tokens`.
fn admin_status(admin_port: u16, token: &str) -> u16 {
    curl(
        &format!("http://127.0.0.1:{admin_port}/v1/tokens"),
        Some(token),
        "GET",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_admin_token_is_reset_with_the_gateway_stopped() {
    let (up, _) = upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (admin_port, svc_port) = (free_port(), free_port());
    billing_config(dir, admin_port, svc_port, &up.to_string(), "1h", "");
    let cfg = ["--config", "keyway.toml"];
    let mut gateway = start_gateway(dir, admin_port);
    let token = issue(dir, "p", "billing");
    let old = admin_token(dir);
    assert_eq!(admin_status(admin_port, &old), 200);

    // Sent once in a URL: revoked at once.
    let leak = format!("http://127.0.0.1:{svc_port}/invoices/1?token={old}");
    assert_eq!(curl(&leak, None, "GET"), 401);
    assert_eq!(admin_status(admin_port, &old), 401);
    let out = keyway(dir, &[&["token", "list"][..], &cfg].concat(), None);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        said.contains("revoked") && said.contains("keyway admin reset"),
        "{said}"
    );

    // Not while the gateway runs.
    let out = keyway(dir, &[&["admin", "reset"][..], &cfg].concat(), None);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(said.contains("is the gateway running"), "{said}");
    assert_eq!(admin_token(dir), old);
    // Nor beside it on another port: the data folder's lock.
    let moved = std::fs::read_to_string(dir.join("keyway.toml"))
        .unwrap()
        .replace(&admin_port.to_string(), &free_port().to_string());
    std::fs::write(dir.join("other.toml"), moved).unwrap();
    let out = keyway(dir, &["admin", "reset", "--config", "other.toml"], None);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        said.contains(&format!("(pid {})", gateway.id())) && said.contains("keyway.lock"),
        "{said}"
    );
    assert_eq!(admin_token(dir), old);

    assert!(interrupt(&mut gateway).success());
    let out = keyway(dir, &[&["admin", "reset"][..], &cfg].concat(), None);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    assert!(said.contains("revoked 0 admin tokens"), "{said}");
    let new = admin_token(dir);
    assert_ne!(new, old);
    let mode = std::fs::metadata(dir.join("data/admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let mut gateway = start_gateway(dir, admin_port);
    let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap();
    assert!(
        !log.contains("wrote a new admin credential"),
        "the reset's token is live: the start keeps it"
    );
    assert_eq!(admin_status(admin_port, &new), 200);
    assert_eq!(admin_status(admin_port, &old), 401);
    assert_eq!(
        curl(
            &format!("http://127.0.0.1:{svc_port}/invoices/1"),
            Some(&token),
            "GET"
        ),
        200,
        "the other tokens are as they were"
    );
    let out = ok_stdout(keyway(
        dir,
        &[
            &["audit", "query", "--kind", "admin.reset", "--json"][..],
            &cfg,
        ]
        .concat(),
        None,
    ));
    let ev: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(ev["principal"], "(admin reset)");

    // A live admin token lost (the file deleted): the reset revokes it too.
    assert!(interrupt(&mut gateway).success());
    std::fs::remove_file(dir.join("data/admin.token")).unwrap();
    let out = keyway(dir, &[&["admin", "reset"][..], &cfg].concat(), None);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(said.contains("revoked 1 admin token ("), "{said}");
    let _gateway = start_gateway(dir, admin_port);
    assert_eq!(admin_status(admin_port, &admin_token(dir)), 200);
    assert_eq!(admin_status(admin_port, &new), 401);
    assert!(ok_stdout(audit_verify(dir, None)).contains("intact"));
}
