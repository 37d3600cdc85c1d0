//! The token lifecycle from the shell, as a platform engineer and a CI job use it:
//! client credential → exchange → rotation → revocation by principal → leak scanning
//! (files and git history). Then the canary over every file the run produced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../keyway-gateway/tests/support/pki.rs"]
mod pki;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .status()
        .expect("git must be installed");
    assert!(ok.success(), "git {args:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_exchange_rotation_revocation_and_scanning_from_the_shell() {
    let (up, _) = upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (admin_port, token_port, svc_port) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.join("keyway.toml"),
        format!(
            "data_dir = \"data\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\ntoken_listen = \"127.0.0.1:{token_port}\"\n\
             [services.billing]\nprotocol = \"http\"\nlisten = \"127.0.0.1:{svc_port}\"\nupstream = \"http://{up}\"\nmax_ttl = \"1h\"\n"
        ),
    )
    .unwrap();
    let mut gateway = start_gateway(dir, admin_port);
    wait_for_port(token_port);
    let cfg = ["--config", "keyway.toml"];
    let url = format!("http://127.0.0.1:{svc_port}/invoices/1");

    // A CI job's credential, stored as a workload would keep it.
    let out = keyway(
        dir,
        &[
            &[
                "credential",
                "issue",
                "--principal",
                "ci-bot",
                "--service",
                "billing",
                "--methods",
                "GET",
            ][..],
            &cfg,
        ]
        .concat(),
        None,
    );
    let credential = stdout(&out).trim().to_owned();
    assert!(credential.starts_with("kwcc_"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("issued client credential"));
    let cred_file = dir.join("ci.credential");
    std::fs::write(&cred_file, &credential).unwrap();
    std::fs::set_permissions(&cred_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        curl(&url, Some(&credential), "GET"),
        403,
        "a credential calls nothing itself"
    );

    // Exchange: the access token alone on stdout.
    let gateway_url = format!("http://127.0.0.1:{token_port}");
    let exchange = || {
        let args = [
            "token",
            "exchange",
            "--gateway",
            &gateway_url,
            "--credential-file",
            "ci.credential",
            "--service",
            "billing",
        ];
        let out = keyway(dir, &args, None);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains("refresh after"), "{err}");
        stdout(&out).trim().to_owned()
    };
    let access = exchange();
    assert!(access.starts_with("kwat_"));
    assert_eq!(curl(&url, Some(&access), "GET"), 200);
    assert_eq!(
        curl(&url, Some(&access), "POST"),
        403,
        "the credential's grant carries over"
    );

    // Rotation: a successor on stdout; with no overlap the old one dies at once.
    let access_id = &access[5..21];
    let out = keyway(
        dir,
        &[&["token", "rotate", access_id, "--overlap", "0"][..], &cfg].concat(),
        None,
    );
    let successor = stdout(&out).trim().to_owned();
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("rotated {access_id} -> ")));
    assert_eq!(curl(&url, Some(&access), "GET"), 401);
    assert_eq!(curl(&url, Some(&successor), "GET"), 200);

    // Scanning: a live token and a dead one in a work tree; never the secret printed.
    let tree = tempfile::tempdir().unwrap();
    std::fs::write(
        tree.path().join("deploy.sh"),
        format!("#!/bin/sh\nexport TOKEN={successor}\n"),
    )
    .unwrap();
    std::fs::write(
        tree.path().join("notes.md"),
        format!("old: {access}\nnoise: kwat_{}\n", "A".repeat(65)),
    )
    .unwrap();
    let scan = |extra: &[&str]| {
        let target = tree.path().to_str().unwrap().to_owned();
        let out = keyway(dir, &[&["scan", &target][..], extra, &cfg].concat(), None);
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    let (code, json) = scan(&["--json"]);
    assert_eq!(code, Some(1), "a live token fails the scan");
    let found: serde_json::Value = serde_json::from_str(&json).unwrap();
    let found = found.as_array().unwrap();
    assert_eq!(found.len(), 2, "{json}");
    let live = found
        .iter()
        .find(|f| f["file"].as_str().unwrap().ends_with("deploy.sh"))
        .unwrap();
    assert_eq!(
        (live["line"].as_u64(), live["state"].as_str()),
        (Some(2), Some("active"))
    );
    assert_eq!(live["id"], &successor[5..21]);
    let dead = found
        .iter()
        .find(|f| f["file"].as_str().unwrap().ends_with("notes.md"))
        .unwrap();
    assert_eq!(dead["state"], "expired", "rotated away with no overlap");
    let (code, table) = scan(&["--revoke"]);
    assert_eq!(code, Some(1));
    assert!(table.contains("revoked_now"), "{table}");
    assert_eq!(
        curl(&url, Some(&successor), "GET"),
        401,
        "--revoke revoked it"
    );
    let (code, _) = scan(&[]);
    assert_eq!(code, Some(0), "nothing live is left");

    // History: a token committed then deleted is still found, with its commit.
    let repo = tempfile::tempdir().unwrap();
    let leaked = exchange();
    git(repo.path(), &["init", "-q"]);
    std::fs::write(repo.path().join("ci.env"), format!("A=1\nTOKEN={leaked}\n")).unwrap();
    git(repo.path(), &["add", "ci.env"]);
    git(repo.path(), &["commit", "-qm", "oops"]);
    std::fs::remove_file(repo.path().join("ci.env")).unwrap();
    git(repo.path(), &["commit", "-qam", "remove"]);
    let target = repo.path().to_str().unwrap();
    let out = keyway(
        dir,
        &[&["scan", target, "--git", "--json"][..], &cfg].concat(),
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hit = &found.as_array().unwrap()[0];
    assert_eq!(
        (hit["file"].as_str(), hit["line"].as_u64()),
        (Some("ci.env"), Some(2))
    );
    assert_eq!(hit["commit"].as_str().unwrap().len(), 40);
    assert_eq!(hit["state"], "active");

    // The panic button: everything of ci-bot, credential and tokens alike.
    let out = keyway(
        dir,
        &[&["token", "revoke", "--principal", "ci-bot"][..], &cfg].concat(),
        None,
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token(s) revoked"));
    assert_eq!(curl(&url, Some(&leaked), "GET"), 401);
    let out = keyway(
        dir,
        &[
            "token",
            "exchange",
            "--gateway",
            &gateway_url,
            "--credential-file",
            "ci.credential",
            "--service",
            "billing",
        ],
        None,
    );
    assert!(!out.status.success(), "the credential is revoked too");

    // The canary, over every file this run produced except the credential file the
    // workload keeps on purpose: no secret of any token anywhere.
    assert!(interrupt(&mut gateway).success());
    std::fs::remove_file(&cred_file).unwrap();
    for t in [&credential, &access, &successor, &leaked] {
        let hits = files_containing(dir, &t[22..]);
        assert!(hits.is_empty(), "a token secret was written to {hits:?}");
    }
    let scan_output = format!("{json}{table}");
    for t in [&access, &successor] {
        assert!(
            !scan_output.contains(&t[22..]),
            "scan output holds a secret"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_bound_credential_from_the_shell_with_curl_over_mtls() {
    let (up, _) = upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pki = pki::Pki::new(dir);
    let (bot, other) = (pki.client("ci-bot"), pki.client("other"));
    let (admin_port, token_port, svc_port) = (free_port(), free_port(), free_port());
    let (cert, key, ca) = (
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display(),
    );
    std::fs::write(
        dir.join("keyway.toml"),
        format!(
            "data_dir = \"data\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\ntoken_listen = \"127.0.0.1:{token_port}\"\n\
             token_tls = {{ cert = \"{cert}\", key = \"{key}\", client_ca = \"{ca}\" }}\n\
             [services.billing]\nprotocol = \"http\"\nlisten = \"127.0.0.1:{svc_port}\"\nupstream = \"http://{up}\"\n\
             tls = {{ cert = \"{cert}\", key = \"{key}\" }}\nclient_ca = \"{ca}\"\n"
        ),
    )
    .unwrap();
    let mut gateway = start_gateway(dir, admin_port);
    let cfg = ["--config", "keyway.toml"];
    let bot_cert = bot.cert.to_str().unwrap();
    let out = keyway(
        dir,
        &[
            &[
                "credential",
                "issue",
                "--principal",
                "ci-bot",
                "--service",
                "billing",
                "--bind-cert",
                bot_cert,
            ][..],
            &cfg,
        ]
        .concat(),
        None,
    );
    std::fs::write(dir.join("cred"), stdout(&out).trim()).unwrap();

    let gateway_url = format!("https://127.0.0.1:{token_port}");
    let exchange = |client: &pki::Client| {
        let (c, k) = (
            client.cert.to_str().unwrap().to_owned(),
            client.key.to_str().unwrap().to_owned(),
        );
        let ca = pki.ca.to_str().unwrap().to_owned();
        let args = [
            "token",
            "exchange",
            "--gateway",
            &gateway_url,
            "--credential-file",
            "cred",
            "--service",
            "billing",
            "--ca",
            &ca,
            "--cert",
            &c,
            "--key",
            &k,
        ];
        keyway(dir, &args, None)
    };
    let refused = exchange(&other);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("bound to a client certificate"));
    let access = stdout(&exchange(&bot)).trim().to_owned();

    // curl, with and without the certificate the token is bound to.
    let curl_tls = |client: Option<&pki::Client>| {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            pki.ca.to_str().unwrap(),
        ]);
        c.args(["-H", &format!("Authorization: Bearer {access}")]);
        if let Some(cl) = client {
            c.args([
                "--cert",
                cl.cert.to_str().unwrap(),
                "--key",
                cl.key.to_str().unwrap(),
            ]);
        }
        c.arg(format!("https://127.0.0.1:{svc_port}/invoices/1"));
        String::from_utf8(c.output().unwrap().stdout).unwrap()
    };
    assert_eq!(curl_tls(Some(&bot)), "200");
    assert_eq!(
        curl_tls(Some(&other)),
        "401",
        "stolen token, wrong certificate"
    );
    assert_eq!(curl_tls(None), "401", "stolen token, no certificate");
    assert!(interrupt(&mut gateway).success());
}

/// The admin token a command runs with is revoked only when that is said: `token
/// revoke` refuses it without `--own-token`; `scan --revoke` says it, since a leaked
/// admin token must die even when it is the scan's own.
#[tokio::test(flavor = "multi_thread")]
async fn a_leaked_admin_token_is_revoked_by_the_scan_that_uses_it() {
    let (up, _) = upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (admin, svc) = (free_port(), free_port());
    billing_config(dir, admin, svc, &up.to_string(), "1h", "");
    let _gateway = start_gateway(dir, admin);
    let admin_token = std::fs::read_to_string(dir.join("data/admin.token")).unwrap();
    let admin_token = admin_token.trim();
    let id = &admin_token[5..21];
    let cfg = ["--config", "keyway.toml"];

    let out = keyway(dir, &[&["token", "revoke", id][..], &cfg].concat(), None);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("--own-token"), "{said}");
    assert_eq!(admin_api(dir, admin, "GET", "/v1/status", None).0, 200);

    let tree = tempfile::tempdir().unwrap();
    std::fs::write(
        tree.path().join(".env"),
        format!("KEYWAY_ADMIN_TOKEN={admin_token}\n"),
    )
    .unwrap();
    let target = tree.path().to_str().unwrap();
    let out = keyway(
        dir,
        &[&["scan", target, "--revoke"][..], &cfg].concat(),
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked_now"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("restart the gateway"));
    assert_eq!(admin_api(dir, admin, "GET", "/v1/status", None).0, 401);
}
