//! The container image, checked where no Docker engine runs: hadolint passes the
//! Dockerfile, and its runtime stage is assembled by reading the Dockerfile itself
//! (the final stage's `COPY` lines, `USER`, `HEALTHCHECK`, `CMD`) into a root of the
//! test's own, holding what the distroless base gives (glibc, libgcc, a passwd entry
//! for 65532) and nothing else: no shell. Started there with chroot as user 65532,
//! the gateway answers, and the image's HEALTHCHECK command says it serves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions() -> Vec<String> {
    let file = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in file.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && cur.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => cur.push_str(part),
            None => {
                cur.push_str(line);
                if !cur.trim().is_empty() {
                    out.push(cur.trim().to_owned());
                }
                cur.clear();
            }
        }
    }
    out
}

/// A JSON-array (exec form) argument list.
fn exec_form(s: &str) -> Vec<String> {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not exec form: {s}: {e}"))
}

#[test]
fn hadolint_passes_the_dockerfile() {
    let out = run(Command::new("hadolint").arg(repo_root().join("Dockerfile")));
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout).trim(), "");
}

#[test]
fn the_runtime_stage_runs_as_a_user_with_no_shell_and_its_healthcheck_passes() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test assembles a root and chroots into it: run the suite as root (CI does)"
    );
    let all = instructions();
    let last_from = all.iter().rposition(|i| i.starts_with("FROM ")).unwrap();
    assert!(
        all[last_from].contains("distroless/cc-debian12"),
        "{}",
        all[last_from]
    );
    let stage = &all[last_from..];
    let find = |word: &str| {
        stage
            .iter()
            .find_map(|i| i.strip_prefix(word))
            .unwrap_or_else(|| panic!("no {word} in the final stage"))
            .trim()
            .to_owned()
    };
    assert_eq!(find("USER "), "65532:65532");
    let entrypoint = exec_form(&find("ENTRYPOINT "));
    let cmd = exec_form(&find("CMD "));
    let health = find("HEALTHCHECK ");
    let health = exec_form(&health[health.find("CMD ").unwrap() + 4..]);

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    // What the base image gives: glibc and libgcc, a user 65532, /tmp.
    for lib in [
        "/lib64/ld-linux-x86-64.so.2",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/lib/x86_64-linux-gnu/libgcc_s.so.1",
    ] {
        let to = root.join(&lib[1..]);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nnonroot:x:65532:\n").unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();

    // The stage's own COPY lines: the build stage's binary is this build's, stripped
    // as the build stage strips it; its empty /data becomes the user's data folder.
    let mut copies = 0;
    for i in stage.iter().filter(|i| i.starts_with("COPY ")) {
        let words: Vec<&str> = i.split_whitespace().collect();
        let (src, dst) = (words[words.len() - 2], words[words.len() - 1]);
        let to = root.join(dst.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        match (i.contains("--from=build"), src) {
            (true, "/keyway") => {
                let out = run(Command::new("objcopy")
                    .args(["--strip-debug", "--strip-unneeded", BIN])
                    .arg(&to));
                assert!(out.status.success(), "{}", text(&out.stderr));
            }
            (true, "/data") => {
                std::fs::create_dir_all(&to).unwrap();
                assert!(i.contains("--chown=65532:65532"), "{i}");
                std::os::unix::fs::chown(&to, Some(65532), Some(65532)).unwrap();
            }
            (false, src) => {
                std::fs::copy(repo_root().join(src), &to).unwrap();
            }
            (true, other) => panic!("a COPY this test does not know: {other}"),
        }
        copies += 1;
    }
    assert_eq!(copies, 3);
    for shell in ["bin/sh", "bin/bash", "usr/bin/sh"] {
        assert!(!root.join(shell).exists());
    }

    // The image's config, its admin port moved to a free one (the image's 7070 may be
    // taken on this machine).
    let config = root.join("etc/keyway/keyway.toml");
    let shipped = std::fs::read_to_string(&config).unwrap();
    let admin = free_port();
    let ours = shipped.replace("0.0.0.0:7070", &format!("127.0.0.1:{admin}"));
    assert_ne!(ours, shipped);
    std::fs::write(&config, ours).unwrap();

    let chroot = |args: &[String]| {
        let mut c = Command::new("/usr/sbin/chroot");
        c.arg("--userspec=65532:65532")
            .arg(&root)
            .args(args)
            .env_clear();
        c
    };
    let argv: Vec<String> = entrypoint.iter().chain(&cmd).cloned().collect();
    let _gateway = spawn_logged(&mut chroot(&argv), tmp.path());
    wait_for_port(admin);
    let out = run(&mut chroot(&health));
    assert!(
        out.status.success(),
        "{}{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        std::fs::read_to_string(tmp.path().join("gateway.log")).unwrap()
    );
    assert_eq!(text(&out.stdout).trim(), "200 serving");
    // It wrote its store and keys as user 65532, into the volume's folder only.
    let data = root.join("var/lib/keyway");
    let token = data.join("admin.token");
    assert!(token.exists(), "no admin token in {data:?}");
    let meta = std::fs::metadata(&token).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65532);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

#[test]
fn health_fails_when_nothing_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        tmp.path().join("keyway.toml"),
        format!("data_dir = \"data\"\nadmin_listen = \"127.0.0.1:{port}\"\nmax_ttl = \"1h\"\n"),
    )
    .unwrap();
    let out = keyway(tmp.path(), &["health", "--config", "keyway.toml"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("no answer from http://127.0.0.1:{port}/healthz")),
        "{}",
        text(&out.stderr)
    );
}
