//! `keyway validate` and `keyway schema` as CI and an editor run them: every example
//! config shipped in the repository validates; a config with problems gets each named
//! by key or line, never quoting a secret, with exit status 1; warnings pass unless
//! `--deny-warnings`; the schema is JSON Schema that closes every table.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::*;

fn validate(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = keyway(dir, &[&["validate"][..], args].concat(), None);
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn every_example_config_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // Run from a scratch folder: the helper keeps the CLI's stderr beside it.
    let tmp = tempfile::tempdir().unwrap();
    let mut found = 0;
    for dir in ["examples", "bench", "packaging", "."] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "toml")
                && !path.ends_with("Cargo.toml")
                && !path.ends_with("clippy.toml")
            {
                let (code, said) = validate(tmp.path(), &[path.to_str().unwrap()]);
                assert_eq!(code, 0, "{}: {said}", path.display());
                found += 1;
            }
        }
    }
    assert!(found >= 1, "no example config was found to validate");
}

#[test]
fn problems_are_named_by_key_or_line_and_fail_ci() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let secret = "sk_live_51HxYzAbCdEfGh12345678";
    std::fs::write(
        dir.join("typo.toml"),
        "[services.billing]\nprotocol = \"http\"\nlisten = \"127.0.0.1:9001\"\nupstream = \"http://127.0.0.1:8080\"\nmax_ttl = \"1h\"\nalow_cidrs = [\"10.0.0.0/8\"]\n",
    )
    .unwrap();
    let (code, said) = validate(dir, &["typo.toml"]);
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains("services.billing") && said.contains("alow_cidrs"),
        "{said}"
    );

    std::fs::write(
        dir.join("risky.toml"),
        format!(
            "[services.billing]\nprotocol = \"http\"\nlisten = \"127.0.0.1:9001\"\nupstream = \"http://10.0.0.5:8080\"\nallow_cidrs = [\"0.0.0.0/0\"]\n\
             upstream_auth = {{ header = \"X-Api-Key\", secret = \"billing-key\" }}\n# the old key: {secret}\nnote = \"{secret}\"\n"
        ),
    )
    .unwrap();
    let (code, said) = validate(dir, &["risky.toml"]);
    assert_eq!(code, 1, "{said}");
    // `note` is not a key: start-up refuses it; the secret is found regardless.
    assert!(said.contains("error: `services.billing"), "{said}");
    assert!(
        said.contains("line 8") && said.contains("looks like a secret"),
        "{said}"
    );
    assert!(!said.contains(secret), "a secret was quoted: {said}");

    std::fs::write(
        dir.join("warned.toml"),
        "[services.billing]\nprotocol = \"http\"\nlisten = \"127.0.0.1:9001\"\nupstream = \"http://10.0.0.5:8080\"\nmax_ttl = \"1h\"\nallow_cidrs = [\"0.0.0.0/0\"]\n",
    )
    .unwrap();
    let (code, said) = validate(dir, &["warned.toml"]);
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains("warning: `services.billing.allow_cidrs[0]`")
            && said.contains("warning: `services.billing.upstream`: http to 10.0.0.5"),
        "{said}"
    );
    let (code, _) = validate(dir, &["warned.toml", "--deny-warnings"]);
    assert_eq!(code, 1);
    let (_, json) = validate(dir, &["warned.toml", "--json"]);
    for line in json.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["severity"], "warning");
    }

    std::fs::write(
        dir.join("no-ttl.toml"),
        "[services.billing]\nprotocol = \"http\"\nlisten = \"127.0.0.1:9001\"\nupstream = \"http://127.0.0.1:8080\"\n",
    )
    .unwrap();
    let (code, said) = validate(dir, &["no-ttl.toml"]);
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains("error: `services.billing.max_ttl`: is not set"),
        "{said}"
    );
}

#[test]
fn a_real_token_in_the_config_is_an_error_that_names_its_id() {
    // A real token, from the format's own generator (the test links keyway-core).
    let token = keyway_core::IssuedToken::generate(keyway_core::TokenKind::Access);
    let full = secrecy::ExposeSecret::expose_secret(token.secret()).to_owned();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("keyway.toml"),
        format!("# for testing: {full}\n[services.billing]\nprotocol = \"http\"\nlisten = \"127.0.0.1:9001\"\nupstream = \"http://127.0.0.1:8080\"\nmax_ttl = \"1h\"\n"),
    )
    .unwrap();
    let (code, said) = validate(tmp.path(), &[]);
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains("line 1") && said.contains(token.id()),
        "{said}"
    );
    assert!(!said.contains(&full[22..]), "the secret was shown: {said}");
}

#[test]
fn the_schema_closes_every_table() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ok_stdout(keyway(tmp.path(), &["schema"], None));
    let schema: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(schema["additionalProperties"], false, "{out}");
    for key in ["services", "detect", "alerts", "audit", "agents", "max_ttl"] {
        assert!(
            schema["properties"].get(key).is_some(),
            "no `{key}` in {out}"
        );
    }
    // Descriptions come from the code's documentation.
    assert!(out.contains("description"), "{out}");
}
