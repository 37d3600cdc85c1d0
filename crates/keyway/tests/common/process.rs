//! Running programs from a test: the repository's root, a command to its end, a
//! command started with its output in a log file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::KillOnDrop;

/// Starts `cmd` with its stdout and stderr in `<dir>/gateway.log`.
pub fn spawn_logged(cmd: &mut Command, dir: &Path) -> KillOnDrop {
    let log = std::fs::File::create(dir.join("gateway.log")).unwrap();
    cmd.stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .map(KillOnDrop)
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs a command to its end.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Bytes a program printed, as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A CLI run's stdout, trimmed, after checking it succeeded.
pub fn ok_stdout(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
