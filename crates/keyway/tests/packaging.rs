//! Keyway installed the way a team installs everything else: shell completions and
//! man pages generated from the command line itself, the systemd unit checked by
//! systemd's own analyzer (and hardened: its exposure score), and the Debian package
//! built by `scripts/deb`, installed with dpkg into a scratch root, started there,
//! answering.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

#[test]
fn completions_for_each_shell_and_a_clear_refusal() {
    let tmp = tempfile::tempdir().unwrap();
    let bash = ok_stdout(keyway(tmp.path(), &["completions", "bash"], None));
    assert!(bash.contains("complete -F _keyway"), "{}", &bash[..200]);
    for sub in ["gateway", "token", "revoke", "completions"] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    // bash reads it without a syntax error, and then completes `keyway tok`.
    let script = tmp.path().join("keyway.bash");
    std::fs::write(&script, &bash).unwrap();
    let out = run(Command::new("bash").arg("-c").arg(format!(
        "source {}; COMP_WORDS=(keyway tok); COMP_CWORD=1; _keyway keyway tok keyway; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display()
    )));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "token");

    let zsh = ok_stdout(keyway(tmp.path(), &["completions", "zsh"], None));
    assert!(zsh.starts_with("#compdef keyway"), "{}", &zsh[..80]);
    let fish = ok_stdout(keyway(tmp.path(), &["completions", "fish"], None));
    assert!(fish.contains("complete -c keyway"), "{}", &fish[..200]);

    let out = keyway(tmp.path(), &["completions", "tcsh"], None);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("invalid value 'tcsh'"), "{err}");
    assert!(err.contains("bash, elvish, fish, powershell, zsh"), "{err}");
}

#[test]
fn man_pages_for_every_command_that_man_renders() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("man1");
    // A folder that holds another program's page already, as man1 folders do.
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("other.1"), ".TH other 1\n").unwrap();
    let listed = ok_stdout(keyway(tmp.path(), &["man", dir.to_str().unwrap()], None));
    let pages: Vec<&str> = listed.lines().collect();
    for page in [
        "keyway.1",
        "keyway-gateway.1",
        "keyway-token-issue.1",
        "keyway-man.1",
    ] {
        assert!(
            pages.iter().any(|p| p.ends_with(&format!("/{page}"))),
            "{page} not in {listed}"
        );
    }
    assert!(
        !listed.contains("-help"),
        "a page for clap's help: {listed}"
    );
    assert!(!listed.contains("other.1"), "{listed}");
    // Every page written is listed, and every one listed was written.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), pages.len() + 1);
    assert!(pages.iter().all(|p| Path::new(p).is_file()));

    let out = run(Command::new("man")
        .args(["-l", "-P", "cat"])
        .arg(dir.join("keyway-gateway.1"))
        .env("MANWIDTH", "100"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(
        page.contains("keyway-gateway - Run the gateway described by a config file"),
        "{page}"
    );
    assert!(page.contains("SIGHUP applies the file again"), "{page}");
    assert!(page.contains("--config"), "{page}");
}

/// The unit as shipped, with ExecStart pointing at this build's binary (the
/// analyzer checks that the program exists).
fn unit_for_this_build(dir: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(repo_root().join("packaging/keyway.service")).unwrap();
    assert!(shipped.contains("ExecStart=/usr/bin/keyway gateway"));
    let unit = dir.join("keyway.service");
    std::fs::write(&unit, shipped.replace("/usr/bin/keyway", BIN)).unwrap();
    unit
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let tmp = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(tmp.path());
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr).trim(),
        "",
        "systemd-analyze verify complained"
    );

    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit));
    let report = text(&out.stdout);
    let score: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for keyway.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {report}{}", text(&out.stderr)));
    // 0 is fully locked down, 10 fully exposed; systemd calls under 2 "OK".
    assert!(score <= 2.0, "exposure {score}:\n{report}");
    // What an operator checks first, each reported as in force.
    for held in [
        "NoNewPrivileges=",
        "ProtectSystem=",
        "PrivateTmp=",
        "CapabilityBoundingSet=~CAP_SYS_ADMIN",
        "ProtectHome=",
    ] {
        let line = report
            .lines()
            .find(|l| l.contains(held))
            .unwrap_or_else(|| panic!("{held} not in the report:\n{report}"));
        assert!(line.trim_start().starts_with('✓'), "{line}");
    }
    let shipped = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "DynamicUser=yes",
        "ReadWritePaths=/var/lib/keyway",
        "CapabilityBoundingSet=\n",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(shipped.contains(line), "the unit lacks {line:?}");
    }
}

#[test]
fn the_debian_package_installs_starts_and_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let out = run(Command::new(repo_root().join("scripts/deb"))
        .args(["--binary", BIN, "--out"])
        .arg(&out_dir));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deb = PathBuf::from(text(&out.stdout).trim());
    let version = env!("CARGO_PKG_VERSION");
    let file = deb.file_name().unwrap().to_str().unwrap();
    assert!(deb.is_file(), "{deb:?}");
    assert!(
        file.starts_with(&format!("keyway_{version}_")) && file.ends_with(".deb"),
        "{file}"
    );
    assert!(
        out_dir
            .join(format!(
                "{}.debug",
                deb.file_stem().unwrap().to_str().unwrap()
            ))
            .exists(),
        "no debug symbols beside the package"
    );

    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    let info = text(&info.stdout);
    assert!(info.contains("Package: keyway"), "{info}");
    assert!(info.contains(&format!("Version: {version}")), "{info}");
    let contents = text(&run(Command::new("dpkg-deb").arg("--contents").arg(&deb)).stdout);
    for path in [
        "./usr/bin/keyway",
        "./lib/systemd/system/keyway.service",
        "./etc/keyway/keyway.toml",
        "./usr/share/man/man1/keyway.1.gz",
        "./usr/share/man/man1/keyway-gateway.1.gz",
        "./usr/share/bash-completion/completions/keyway",
        "./usr/share/zsh/vendor-completions/_keyway",
        "./usr/share/fish/vendor_completions.d/keyway.fish",
    ] {
        assert!(
            contents.contains(path),
            "{path} not in the package:\n{contents}"
        );
    }

    // Installed with dpkg into a scratch root (its maintainer scripts run too), not
    // into this machine. That root's package database holds no libc6, hence
    // --force-depends; the system's does.
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let root_arg = format!("--root={}", root.display());
    let out = run(Command::new("dpkg")
        .args([
            &root_arg,
            "--force-script-chrootless",
            "--force-not-root",
            "--force-depends",
        ])
        .args(["--log=/dev/null", "-i"])
        .arg(&deb));
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let status = text(&run(Command::new("dpkg").args([&root_arg, "-s", "keyway"])).stdout);
    assert!(status.contains("Status: install ok installed"), "{status}");

    let installed = root.join("usr/bin/keyway");
    let out = run(Command::new(&installed).arg("--version"));
    assert_eq!(text(&out.stdout).trim(), format!("keyway {version}"));
    let config = root.join("etc/keyway/keyway.toml");
    let out = run(Command::new(&installed).arg("validate").arg(&config));
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // The installed config, started by the installed binary. Two values are this
    // test's: the data folder (the package's is /var/lib/keyway) and the admin port.
    let shipped = std::fs::read_to_string(&config).unwrap();
    let admin = free_port();
    let run_dir = tmp.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let ours = shipped
        .replace("data_dir = \"/var/lib/keyway\"", "data_dir = \"data\"")
        .replace("127.0.0.1:7070", &format!("127.0.0.1:{admin}"));
    assert_ne!(ours, shipped);
    assert_eq!(ours.lines().count(), shipped.lines().count());
    std::fs::write(run_dir.join("keyway.toml"), &ours).unwrap();
    let _gateway = start_gateway_of(&installed, &run_dir, admin, &[], &[]);
    assert_eq!(
        curl(&format!("http://127.0.0.1:{admin}/healthz"), None, "GET"),
        200
    );
    // And the installed CLI reaches it with the admin token the gateway made.
    let out = run(Command::new(&installed)
        .args(["token", "list", "--config", "keyway.toml"])
        .current_dir(&run_dir));
    assert!(out.status.success(), "{}", text(&out.stderr));
}
