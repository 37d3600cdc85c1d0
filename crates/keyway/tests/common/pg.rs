//! PostgreSQL in the end-to-end tests: `psql` through the gateway, a gateway with a
//! database service ready to use, and `psql` directly on the machine's server.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use super::*;

/// `psql` through the gateway on `port` as `user` on `test`, with `token` as the
/// password, running `sql` (plaintext on loopback, a 10 s connect timeout).
fn psql_through(port: u16, user: &str, token: &str, sql: &str) -> Command {
    let mut cmd = Command::new("psql");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user])
        .args(["-d", "test", "-XAtqc", sql])
        .env("PGPASSWORD", token)
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "10");
    cmd
}

/// A `psql` session through the gateway on `port` with `token`, as `alice` on `test`,
/// running `SELECT pg_sleep(60)`: live until something ends it; its stderr is piped.
pub fn sleeping_psql(port: u16, token: &str) -> KillOnDrop {
    psql_through(port, "alice", token, "SELECT pg_sleep(60)")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map(KillOnDrop)
        .unwrap()
}

/// `psql` through the gateway with `token` as the password.
pub fn psql(port: u16, token: &str, sql: &str) -> Output {
    psql_through(port, "whoever", token, sql).output().unwrap()
}

/// A gateway in a fresh folder with `billing` (HTTP, on a test upstream) and
/// `orders-db` (PostgreSQL `test`, role `readonly` as `kw_ro`, who may run
/// `pg_sleep`), the role made in PostgreSQL and its secret set.
pub struct OrdersDb {
    pub dir: PathBuf,
    pub admin: u16,
    pub svc: u16,
    pub pg: u16,
    _gateway: KillOnDrop,
    _tmp: tempfile::TempDir,
}

pub async fn billing_and_orders_db() -> OrdersDb {
    require(
        5432,
        "PostgreSQL",
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    );
    psql_admin(
        "DO $$ BEGIN CREATE ROLE kw_ro LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
         GRANT EXECUTE ON FUNCTION pg_sleep(double precision) TO kw_ro;",
    );
    let (up, _) = upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let (admin, svc, pg) = (free_port(), free_port(), free_port());
    billing_config(
        &dir,
        admin,
        svc,
        &up.to_string(),
        "1h",
        &format!(
            "\n[services.orders-db]\nprotocol = \"postgres\"\nlisten = \"127.0.0.1:{pg}\"\n\
             upstream = \"127.0.0.1:5432\"\ndatabase = \"test\"\nmax_ttl = \"1h\"\n\
             roles.readonly = {{ user = \"kw_ro\", secret = \"kw-ro\" }}\n"
        ),
    );
    let gateway = start_gateway(&dir, admin);
    let out = keyway(
        &dir,
        &["secret", "set", "kw-ro", "--config", "keyway.toml"],
        Some("unused"),
    );
    assert!(out.status.success());
    OrdersDb {
        dir,
        admin,
        svc,
        pg,
        _gateway: gateway,
        _tmp: tmp,
    }
}

/// `sql` run directly on the machine's PostgreSQL database `test` as `postgres`; its
/// rows, unaligned.
pub fn psql_admin(sql: &str) -> String {
    psql_admin_on("test", sql)
}

/// [`psql_admin`] on database `db`.
pub fn psql_admin_on(db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            db,
            "-v",
            "ON_ERROR_STOP=1",
            "-XAtqc",
            sql,
        ])
        .output()
        .expect("psql must be installed (apt-get install postgresql-client)");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
