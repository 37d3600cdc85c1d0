//! PostgreSQL through the gateway, with the machine's real server and real `psql`:
//! the Keyway token as the password, the grant's role as the upstream user, read-only
//! enforced by the database role, a readable refusal for a wrong token, statements in
//! the audit log, Ctrl-C cancel through the gateway, revocation ending a running
//! query, and many sessions at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        String::from_utf8_lossy(&o.stderr).trim().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_through_the_gateway() {
    assert!(
        std::net::TcpStream::connect("127.0.0.1:5432").is_ok(),
        "PostgreSQL is not listening on 127.0.0.1:5432; start it with: \
         pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start (scripts/test does)"
    );
    psql_admin(
        "DO $$ BEGIN CREATE ROLE kw_ro LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
         DO $$ BEGIN CREATE ROLE kw_rw LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
         CREATE TABLE IF NOT EXISTS kw_items (id serial PRIMARY KEY, name text); \
         GRANT SELECT ON kw_items TO kw_ro; GRANT ALL ON kw_items TO kw_rw; \
         GRANT USAGE ON SEQUENCE kw_items_id_seq TO kw_rw; GRANT EXECUTE ON FUNCTION pg_sleep(double precision) TO kw_ro;",
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (admin_port, pg_port) = (free_port(), free_port());
    std::fs::write(
        dir.join("keyway.toml"),
        format!(
            "data_dir = \"data\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\
             [services.orders-db]\nprotocol = \"postgres\"\nlisten = \"127.0.0.1:{pg_port}\"\nupstream = \"127.0.0.1:5432\"\n\
             database = \"test\"\nmax_ttl = \"1h\"\n\
             roles.readonly = {{ user = \"kw_ro\", secret = \"kw-ro\" }}\nroles.readwrite = {{ user = \"kw_rw\", secret = \"kw-rw\" }}\n"
        ),
    )
    .unwrap();
    let mut gateway = start_gateway(dir, admin_port);
    let cfg = ["--config", "keyway.toml"];
    for (name, value) in [
        ("kw-ro", "ro-password-canary-71"),
        ("kw-rw", "rw-password-canary-72"),
    ] {
        let out = keyway(
            dir,
            &[&["secret", "set", name][..], &cfg].concat(),
            Some(value),
        );
        assert!(out.status.success());
    }
    let issue = |role: &str| {
        let args = [
            &[
                "token",
                "issue",
                "--service",
                "orders-db",
                "--principal",
                "alice",
                "--role",
                role,
            ][..],
            &cfg,
        ]
        .concat();
        let out = keyway(dir, &args, None);
        ok_stdout(out)
    };
    // A database token needs a role.
    let out = keyway(
        dir,
        &[
            &[
                "token",
                "issue",
                "--service",
                "orders-db",
                "--principal",
                "a",
            ][..],
            &cfg,
        ]
        .concat(),
        None,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --role"));

    let ro = issue("readonly");
    let rw = issue("readwrite");
    let (who, err) = text(&psql(pg_port, &ro, "select current_user"));
    assert_eq!(who, "kw_ro", "{err}");
    let (_, err) = text(&psql(
        pg_port,
        &ro,
        "insert into kw_items (name) values ('x')",
    ));
    assert!(
        err.contains("permission denied"),
        "read-only is the role's: {err}"
    );
    let (n, err) = text(&psql(
        pg_port,
        &rw,
        "insert into kw_items (name) values ('through keyway') returning current_user",
    ));
    assert_eq!(n, "kw_rw", "{err}");

    // A wrong token: a readable refusal.
    // The last character changed to one it is not (a fixed `x` equals it 1 time in 62).
    let last = if ro.ends_with('x') { 'y' } else { 'x' };
    let (_, err) = text(&psql(pg_port, &format!("{}{last}", &ro[..70]), "select 1"));
    assert!(
        err.contains("password authentication failed") && err.contains("Keyway"),
        "{err}"
    );

    // Many sessions at once.
    let many: Vec<_> = (0..20)
        .map(|i| {
            let ro = ro.clone();
            std::thread::spawn(move || text(&psql(pg_port, &ro, &format!("select {i} + 1"))).0)
        })
        .collect();
    let sums: Vec<String> = many.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        sums,
        (0..20).map(|i| (i + 1).to_string()).collect::<Vec<_>>()
    );

    // Ctrl-C cancels the running query through the gateway.
    let sleeper = |token: &str| {
        Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg_port.to_string(),
                "-U",
                "x",
                "-d",
                "test",
                "-XAtqc",
                "select pg_sleep(30)",
            ])
            .env("PGPASSWORD", token)
            .env("PGSSLMODE", "disable")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut child = sleeper(&ro);
    std::thread::sleep(Duration::from_millis(800));
    let started = Instant::now();
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = wait(&mut child, Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("canceling statement due to user request"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // Revocation ends a running query's session.
    let mut child = sleeper(&ro);
    std::thread::sleep(Duration::from_millis(800));
    let out = keyway(
        dir,
        &[&["token", "revoke", &ro[5..21]][..], &cfg].concat(),
        None,
    );
    assert!(out.status.success());
    let revoked = Instant::now();
    let out = wait(&mut child, Duration::from_secs(10));
    let took = revoked.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("the Keyway token was revoked"), "{err}");
    eprintln!("psql ended {took:?} after the revoke command returned");
    assert!(took < Duration::from_secs(1), "{took:?}");

    // Stopping the gateway ends a running query's session with a goodbye, stops the
    // query upstream, and audits the session's end; a client that has not logged in
    // is told why and does not hold the stop up.
    let running = |n: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let count = psql_admin(
                "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'",
            );
            if count == n {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut child = sleeper(&rw);
    assert!(running("1"), "the query never started upstream");
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", pg_port)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let stopping = Instant::now();
    assert!(interrupt(&mut gateway).success());
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    let out = wait(&mut child, Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("terminating connection: the Keyway gateway is shutting down"),
        "{err}"
    );
    assert!(running("0"), "the upstream query was left running");
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut told = Vec::new();
    let _ = silent.read_to_end(&mut told);
    let told = String::from_utf8_lossy(&told);
    assert!(
        told.starts_with('E') && told.contains("57P03") && told.contains("shutting down"),
        "{told:?}"
    );
    let end = store_query(
        dir,
        &format!(
            "select json_extract(detail, '$.end') from audit_events where kind = 'connection.close' and token_id = '{}' order by seq desc limit 1",
            &rw[5..21]
        ),
    );
    assert_eq!(end.trim(), "shutdown");
    // Statements are audited; the token and the database passwords are nowhere.
    let audit = store_query(
        dir,
        "select detail from audit_events where kind = 'db.statement'",
    );
    assert!(
        audit.contains("select current_user") && audit.contains("\"role\":\"readonly\""),
        "{audit}"
    );
    for secret in [
        &ro[22..],
        &rw[22..],
        "ro-password-canary-71",
        "rw-password-canary-72",
    ] {
        let hits = files_containing(dir, secret);
        assert!(hits.is_empty(), "a secret was written to {hits:?}");
    }
}

fn wait(child: &mut std::process::Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "psql did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut out = Output {
        status: child.wait().unwrap(),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut out.stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut out.stderr)
        .unwrap();
    out
}
