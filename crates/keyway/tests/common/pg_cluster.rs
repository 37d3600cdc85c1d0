//! A PostgreSQL cluster a test makes itself (initdb, as the `postgres` user, on a
//! loopback port), with passwords asked for over TCP, and TLS when asked.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::free_port;

/// A throwaway cluster: stopped (and removed with its folder) on drop.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

impl Cluster {
    pub fn start() -> Self {
        Self::start_with(|_| Vec::new())
    }

    /// A cluster with TLS on (`ssl = on`), serving a certificate for 127.0.0.1 and
    /// `localhost` that `ca` signed; its log keeps connections and authentications.
    pub fn start_tls(ca: &super::TestCa) -> Self {
        Self::start_with(|dir| {
            ca.server(
                dir,
                "server",
                &["127.0.0.1", "localhost"],
                super::Validity::Now,
            );
            std::fs::set_permissions(
                dir.join("server.key"),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap();
            let d = dir.display();
            vec![
                "ssl=on".into(),
                format!("ssl_cert_file={d}/server.pem"),
                format!("ssl_key_file={d}/server.key"),
                "log_connections=on".into(),
            ]
        })
    }

    /// A cluster started with the `-c` settings `setup` returns; it may write the
    /// files they name into the cluster's folder, which it is given.
    pub fn start_with(setup: impl FnOnce(&Path) -> Vec<String>) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries are needed (apt-get install postgresql)")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .expect("initdb not found under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().unwrap();
        let settings = setup(dir.path());
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            chown.success(),
            "this test runs as root to make a cluster owned by `postgres`"
        );
        let data = dir.path().join("data");
        let as_postgres = |args: &[&str]| {
            let out = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(args)
                .stdout(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let initdb = bin.join("initdb");
        as_postgres(&[
            initdb.to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=md5",
        ]);
        let port = free_port();
        let pg_ctl = bin.join("pg_ctl");
        let mut opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            dir.path().display()
        );
        for s in settings {
            opts.push_str(&format!(" -c {s}"));
        }
        as_postgres(&[
            pg_ctl.to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-o",
            &opts,
            "-l",
            dir.path().join("server.log").to_str().unwrap(),
            "-w",
            "start",
        ]);
        Self { dir, bin, port }
    }

    /// SQL over the cluster's local socket, as the superuser; the rows, unaligned.
    pub fn sql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-h",
                self.dir.path().to_str().unwrap(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-XAtqc", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let _ = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                pg_ctl.to_str().unwrap(),
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "immediate",
                "stop",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
