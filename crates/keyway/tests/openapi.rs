//! The admin API's contract: the OpenAPI document the gateway serves is the one
//! committed in `docs/` (and the one `keyway openapi` prints); every call refuses a
//! missing or wrong token; and schemathesis, a property-based API fuzzer, finds no
//! 5xx and no answer the document does not describe, against a real gateway with a
//! real admin token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::*;

/// A gateway with an HTTP service and an agent (so enrollment has something to
/// enroll), its admin API on the port returned.
async fn gateway(dir: &std::path::Path) -> (KillOnDrop, u16) {
    let (up, _) = upstream().await;
    let (admin, tunnel, svc) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.join("keyway.toml"),
        format!(
            "data_dir = \"data\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             tunnel_listen = \"127.0.0.1:{tunnel}\"\n\
             [services.billing]\nprotocol = \"http\"\nlisten = \"127.0.0.1:{svc}\"\n\
             upstream = \"http://{up}\"\nmax_ttl = \"1h\"\n\
             [agents.dc1]\nservices = []\n"
        ),
    )
    .unwrap();
    (start_gateway_logging(dir, admin, "info", &[]), admin)
}

fn committed() -> String {
    std::fs::read_to_string(repo_root().join("docs/openapi.json")).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_committed_document_is_the_one_served_and_every_call_needs_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_gateway, admin) = gateway(dir).await;
    let committed = committed();
    let regenerate = "docs/openapi.json differs from the code's document: \
                      run `keyway openapi > docs/openapi.json` and commit it";

    let (status, served) = admin_api(dir, admin, "GET", "/v1/openapi.json", None);
    assert_eq!(status, 200, "{served}");
    assert!(served == committed, "{regenerate}");
    let printed = ok_stdout(keyway(dir, &["openapi"], None));
    assert!(printed == committed.trim_end(), "{regenerate}");

    let doc: serde_json::Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // Every operation but /healthz refuses a request with no token, a malformed one
    // and a live token of another kind (an access token), with 401 and a JSON error;
    // the document says so.
    let access = issue(dir, "alice", "billing");
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let url = format!(
                "http://127.0.0.1:{admin}{}",
                path.replace("{", "x").replace("}", "")
            );
            if path == "/healthz" {
                assert_eq!(curl(&url, None, "GET"), 200);
                continue;
            }
            assert!(
                op["responses"]["401"].is_object(),
                "{method} {path} documents its 401"
            );
            let method = method.to_uppercase();
            let tokens = [
                None,
                Some("kw_adm_AAAAAAAAAAAAAAAA.wrong"),
                Some(access.as_str()),
            ];
            for (i, token) in tokens.into_iter().enumerate() {
                let mut args = vec![
                    "-X",
                    method.as_str(),
                    "-H",
                    "Content-Type: application/json",
                ];
                let auth = token.map(|t| format!("Authorization: Bearer {t}"));
                if let Some(a) = &auth {
                    args.extend(["-H", a.as_str()]);
                }
                let out = ok_stdout(run(Command::new("curl")
                    .args(["-s", "-w", "\n%{http_code}"])
                    .args(&args)
                    .args(["--data", "{}", &url])));
                assert!(
                    out.ends_with("\n401") && out.starts_with("{\"error\":"),
                    "{method} {path} with token #{i} (none, malformed, an access token): {out}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 22, "only {checked} operations in the document");
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_document() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_gateway, admin) = gateway(dir).await;
    let committed = committed();
    let doc: serde_json::Value = serde_json::from_str(&committed).unwrap();
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    let token = std::fs::read_to_string(dir.join("data/admin.token")).unwrap();
    let path = repo_root().join("docs/openapi.json");

    // Every check but one: `positive_data_acceptance` wants every request the schema
    // allows accepted, and the document cannot say what only the gateway knows (a
    // service that exists, a duration it parses, a config that validates); those are
    // refused with 400 or 404, as documented. Run by the Python that scripts/test
    // installed it for, whatever PATH holds. Returns what it printed.
    let schemathesis = |only: &[&str]| {
        let out = run(Command::new("python3")
            .args(["-m", "schemathesis.cli", "run"])
            .arg(&path)
            .arg("--url")
            .arg(format!("http://127.0.0.1:{admin}"))
            .arg("-H")
            .arg(format!("Authorization: Bearer {}", token.trim()))
            .args(["--checks", "all"])
            .args(["--exclude-checks", "positive_data_acceptance"])
            .args(["--max-examples", "60", "--workers", "2", "--no-color"])
            .args(only)
            .current_dir(dir));
        let said = text(&out.stdout);
        assert!(
            out.status.success(),
            "schemathesis failed:\n{said}\n{}",
            text(&out.stderr)
        );
        // Nothing found, not even a warning that the token stopped working.
        assert!(!said.contains("failed"), "{said}");
        said
    };
    // The run must keep the token it runs with. Its stateful phase would find that
    // token's id in `GET /v1/tokens` and could revoke it with `own_token` (which
    // lifecycle.rs tests), turning the rest of the run into 401s. So that one
    // operation runs on its own without the stateful phase (its ids then are made
    // up: 404), and every other operation runs in every phase.
    let said = schemathesis(&["--exclude-operation-id", "revoke_token"]);
    assert!(
        said.contains(&format!("Tested: {}", operations - 1)),
        "{said}"
    );
    let said = schemathesis(&[
        "--include-operation-id",
        "revoke_token",
        "--phases",
        "examples,coverage,fuzzing",
    ]);
    assert!(said.contains("Tested: 1"), "{said}");

    // The token it used is still good, and the gateway still serves.
    let (status, body) = admin_api(dir, admin, "GET", "/v1/status", None);
    assert_eq!(status, 200, "{body}");
    // Its probes without a token were refused, and audited.
    let (status, denied) = admin_api(
        dir,
        admin,
        "GET",
        "/v1/audit?kind=admin.denied&limit=1",
        None,
    );
    assert_eq!(status, 200);
    assert!(denied.contains("admin.denied"), "{denied}");
}
