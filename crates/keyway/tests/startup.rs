//! What `keyway gateway` does about its host at start, as an operator sees it in the
//! process and its log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// A gateway config with one HTTP service, its data in `data`.
fn write_config(dir: &Path, admin: u16) {
    billing_config(dir, admin, free_port(), "127.0.0.1:9", "1h", "");
}

/// `keyway gateway` started by `sh -c` with `prelude` first (to set limits), its log
/// in `gateway.log`, once the admin API accepts.
fn start_with_shell(dir: &Path, admin: u16, prelude: &str) -> KillOnDrop {
    let log = std::fs::File::create(dir.join("gateway.log")).unwrap();
    let child = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{prelude} || exit 97; exec {BIN} gateway --config keyway.toml"
        ))
        .current_dir(dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    wait_for_port(admin);
    child
}

#[test]
fn the_gateway_raises_its_open_files_limit_and_says_when_it_is_too_low() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let admin = free_port();
    write_config(dir, admin);
    // A soft limit of 1,024 under a hard one of 4,096: raised to 4,096, still below
    // what the listeners may hold.
    let gateway = start_with_shell(dir, admin, "ulimit -Sn 1024 && ulimit -Hn 4096");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gateway.id())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(open_files, ["4096", "4096"], "{limits}");
    let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap();
    assert!(
        log.contains("the open-files limit is below what the listeners may hold")
            && log.contains("limit=4096"),
        "{log}"
    );
}

#[test]
fn a_data_folder_others_could_write_is_closed_and_reported() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let admin = free_port();
    write_config(dir, admin);
    std::fs::create_dir(dir.join("data")).unwrap();
    std::fs::set_permissions(dir.join("data"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let _gateway = start_gateway(dir, admin);
    let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap();
    assert!(
        log.contains("the data folder was writable by group or others") && log.contains("0777"),
        "{log}"
    );
    let mode = std::fs::metadata(dir.join("data"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn a_key_file_others_can_read_stops_the_start() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let admin = free_port();
    write_config(dir, admin);
    // A first start makes the keys (0600); then one is opened to the group.
    let mut gateway = start_gateway(dir, admin);
    interrupt(&mut gateway);
    let key = dir.join("data/master.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = Command::new(BIN)
        .args(["gateway", "--config", "keyway.toml"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let shown = key.canonicalize().unwrap();
    assert!(
        err.contains(&format!("chmod 600 {}", shown.display())) && err.contains("0640"),
        "{err}"
    );
    // Closed again, it starts.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let _gateway = start_gateway(dir, admin);
}

/// The gateway's log with `env` set (and KEYWAY_LOG unset unless given) and `args`
/// added, once it has served an admin call.
fn log_with(env: &[(&str, &str)], args: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let admin = free_port();
    write_config(dir, admin);
    let mut gateway = spawn_logged(
        Command::new(BIN)
            .args(["gateway", "--config", "keyway.toml"])
            .args(args)
            .env_remove("KEYWAY_LOG")
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .current_dir(dir),
        dir,
    );
    wait_for_port(admin);
    let (status, _) = admin_api(dir, admin, "GET", "/v1/status", None);
    assert_eq!(status, 200);
    interrupt(&mut gateway);
    std::fs::read_to_string(dir.join("gateway.log")).unwrap()
}

#[test]
fn rust_log_is_honoured_when_keyway_log_and_log_are_not_given() {
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("RUST_LOG"), "{help}");

    let listening = "admin API listening";
    let quiet = log_with(&[("RUST_LOG", "warn")], &[]);
    assert!(!quiet.contains(" INFO "), "RUST_LOG=warn: {quiet}");
    let loud = log_with(&[("RUST_LOG", "debug")], &[]);
    assert!(loud.contains(" DEBUG "), "RUST_LOG=debug: {loud}");
    // KEYWAY_LOG, and --log, come first.
    let keyway_log = log_with(&[("RUST_LOG", "warn"), ("KEYWAY_LOG", "info")], &[]);
    assert!(
        keyway_log.contains(listening),
        "KEYWAY_LOG=info: {keyway_log}"
    );
    let flag = log_with(&[("RUST_LOG", "warn")], &["--log", "info"]);
    assert!(flag.contains(listening), "--log info: {flag}");
    // Neither: info.
    let default = log_with(&[], &[]);
    assert!(
        default.contains(listening) && !default.contains(" DEBUG "),
        "{default}"
    );
}
