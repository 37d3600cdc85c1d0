//! The gateway's PostgreSQL listener against a cluster this test makes itself (initdb,
//! as the `postgres` user, on a loopback port) that asks for real passwords:
//! SCRAM-SHA-256 or md5 as each role's stored password says, `psql` logging in as
//! either with its Keyway token and never knowing the password; `sslmode=verify-full`
//! to the gateway; statements of the extended protocol audited; a session ended at its
//! token's expiry, and its running query cancelled upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn psql(port: u16, token: &str) -> (String, String) {
    psql_with(port, token, "sslmode=disable", "select current_user")
}

/// `psql` through the gateway: `conn` adds to the connection string.
fn psql_with(port: u16, token: &str, conn: &str, sql: &str) -> (String, String) {
    let out = psql_command(port, token, conn, sql).output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

fn psql_command(port: u16, token: &str, conn: &str, sql: &str) -> Command {
    let mut cmd = Command::new("psql");
    cmd.arg(format!(
        "host=127.0.0.1 port={port} user=x dbname=postgres connect_timeout=10 {conn}"
    ))
    .args(["-XAtqc", sql])
    .env("PGPASSWORD", token);
    cmd
}

/// A CA, and a certificate for 127.0.0.1 that it signed: `ca.pem`, `server.pem`,
/// `server.key` in `dir`.
fn write_pki(dir: &Path) {
    let ca = TestCa::new("keyway test CA");
    ca.write(&dir.join("ca.pem"));
    ca.server(dir, "server", &["127.0.0.1"], Validity::Now);
}

/// How many queries containing `marker` the cluster is running, after waiting up to
/// `limit` for them to stop.
fn running_after(cluster: &Cluster, marker: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let running = cluster.sql(&format!(
            "select count(*) from pg_stat_activity where query like '%{marker}%' \
             and state = 'active' and pid <> pg_backend_pid()"
        ));
        if running == "0" || Instant::now() > deadline {
            return running;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_logs_in_with_scram_and_md5_over_tls_and_ends_expired_sessions() {
    let cluster = Cluster::start();
    cluster.sql(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE kw_scram LOGIN PASSWORD 'scram-pass-canary-81'; \
         SET password_encryption = 'md5'; CREATE ROLE kw_md5 LOGIN PASSWORD 'md5-pass-canary-82';",
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir: &Path = tmp.path();
    write_pki(dir);
    let (admin_port, pg_port) = (free_port(), free_port());
    std::fs::write(
        dir.join("keyway.toml"),
        format!(
            "data_dir = \"data\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\
             [services.db]\nprotocol = \"postgres\"\nlisten = \"127.0.0.1:{pg_port}\"\nupstream = \"127.0.0.1:{}\"\n\
             database = \"postgres\"\nmax_ttl = \"1h\"\n\
             tls = {{ cert = \"server.pem\", key = \"server.key\" }}\n\
             roles.scram = {{ user = \"kw_scram\", secret = \"scram\" }}\nroles.md5 = {{ user = \"kw_md5\", secret = \"md5\" }}\n\
             roles.wrong = {{ user = \"kw_scram\", secret = \"wrong\" }}\n",
            cluster.port
        ),
    )
    .unwrap();
    let mut gateway = start_gateway(dir, admin_port);
    let cfg = ["--config", "keyway.toml"];
    for (name, value) in [
        ("scram", "scram-pass-canary-81"),
        ("md5", "md5-pass-canary-82"),
        ("wrong", "not-the-password"),
    ] {
        assert!(keyway(
            dir,
            &[&["secret", "set", name][..], &cfg].concat(),
            Some(value)
        )
        .status
        .success());
    }
    let issue_for = |role: &str, ttl: &str| {
        let out = keyway(
            dir,
            &[
                &[
                    "token",
                    "issue",
                    "--service",
                    "db",
                    "--principal",
                    "p",
                    "--role",
                    role,
                    "--ttl",
                    ttl,
                ][..],
                &cfg,
            ]
            .concat(),
            None,
        );
        ok_stdout(out)
    };
    let issue = |role: &str| issue_for(role, "10m");
    assert_eq!(
        psql(pg_port, &issue("scram")).0,
        "kw_scram",
        "SCRAM-SHA-256"
    );
    assert_eq!(psql(pg_port, &issue("md5")).0, "kw_md5", "md5");
    let (out, err) = psql(pg_port, &issue("wrong"));
    assert!(out.is_empty());
    assert!(err.contains("the database refused Keyway's login"), "{err}");
    assert!(!err.contains("not-the-password"));

    // TLS to the gateway, the certificate checked against its CA and address.
    let scram = issue("scram");
    let ca = dir.join("ca.pem");
    let (who, err) = psql_with(
        pg_port,
        &scram,
        &format!("sslmode=verify-full sslrootcert={}", ca.display()),
        "select current_user",
    );
    assert_eq!(who, "kw_scram", "{err}");
    // libpq 17+ offers ALPN `postgresql`; the gateway agrees to it.
    let hello = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{pg_port}")])
        .args(["-starttls", "postgres", "-alpn", "postgresql"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    let hello = String::from_utf8_lossy(&hello.stdout);
    assert!(hello.contains("ALPN protocol: postgresql"), "{hello}");

    // The extended query protocol (Parse/Bind/Execute): its statements are audited.
    std::fs::write(
        dir.join("probe.sql"),
        "select 40 + 2 as kw_extended_probe;\n",
    )
    .unwrap();
    let bench = Command::new("pgbench")
        .args(["-n", "-t", "1", "-M", "extended", "-f"])
        .arg(dir.join("probe.sql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg_port.to_string(),
            "-U",
            "x",
            "postgres",
        ])
        .env("PGPASSWORD", &scram)
        .env("PGSSLMODE", "disable")
        .output()
        .expect("pgbench (postgresql-client)");
    assert!(
        bench.status.success(),
        "{}",
        String::from_utf8_lossy(&bench.stderr)
    );

    // A client that stops reading a large result (the gateway's writes to it block)
    // is still cut at revocation, and its query stopped upstream.
    let stalled = issue("scram");
    let reader = psql_command(
        pg_port,
        &stalled,
        "sslmode=disable",
        // A cross join streams rows at once (generate_series would compute first).
        "select repeat('x', 1000) as kw_stall_probe from pg_class a, pg_class b, pg_class c",
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .map(KillOnDrop)
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while running_after(&cluster, "kw_stall_probe", Duration::ZERO) != "1" {
        assert!(Instant::now() < deadline, "the large query never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let pid = reader.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        cluster.sql(
            "select wait_event from pg_stat_activity where query like '%kw_stall_probe%' \
             and pid <> pg_backend_pid()"
        ),
        "ClientWrite",
        "the upstream is blocked on the stalled client"
    );
    ok_stdout(keyway(
        dir,
        &[&["token", "revoke", &stalled[5..21]][..], &cfg].concat(),
        None,
    ));
    assert_eq!(
        running_after(&cluster, "kw_stall_probe", Duration::from_secs(3)),
        "0",
        "a stalled client kept its session after revocation"
    );
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    drop(reader);

    // Expiry ends a session at the token's expiry, and the query it was running
    // stops upstream too.
    let short = issue_for("scram", "3s");
    let sleeper = psql_command(pg_port, &short, "sslmode=disable", "select pg_sleep(30)")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let issued = Instant::now();
    let out = sleeper.wait_with_output().unwrap();
    let took = issued.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the Keyway token expired"), "{err}");
    assert!(
        took > Duration::from_secs(2) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(
        running_after(&cluster, "pg_sleep(30)", Duration::from_secs(2)),
        "0",
        "the upstream query was left running"
    );
    assert!(interrupt(&mut gateway).success());
    let audit = store_query(
        dir,
        "select kind, detail from audit_events where kind in ('db.statement', 'connection.open')",
    );
    assert!(audit.contains("kw_extended_probe"), "{audit}");
    assert!(audit.contains("\"tls\":true"), "{audit}");
    for secret in [
        "scram-pass-canary-81",
        "md5-pass-canary-82",
        secret_part(&scram),
        secret_part(&short),
    ] {
        let hits = files_containing(dir, secret);
        assert!(hits.is_empty(), "a secret was written to {hits:?}");
    }
}

/// A PostgreSQL service with no `tls` serves TLS from the gateway's local CA:
/// `sslmode=require` works with no setup, and `verify-full` with the data folder's
/// `ca.pem`, by name and by address; a plaintext client on loopback still works.
#[tokio::test(flavor = "multi_thread")]
async fn tls_is_on_by_default_from_the_local_ca() {
    let world = billing_and_orders_db().await;
    let (dir, pg) = (world.dir.as_path(), world.pg);
    let token = ok_stdout(issue_as(dir, "alice", "orders-db", Some("readonly"), &[]));
    let ca = dir.join("data/ca.pem");
    let cases = [
        "sslmode=require".to_owned(),
        format!("sslmode=verify-full sslrootcert={}", ca.display()),
        format!(
            "sslmode=verify-full sslrootcert={} host=localhost",
            ca.display()
        ),
    ];
    for conn in &cases {
        let conn = &format!("{conn} dbname=test");
        let (info, err) = psql_with(pg, &token, conn, "\\conninfo");
        assert!(info.contains("SSL connection"), "{conn}: {info} {err}");
        let (who, err) = psql_with(pg, &token, conn, "select current_user");
        assert_eq!(who, "kw_ro", "{conn}: {err}");
        // psycopg, as a new user's Python would connect.
        let out = Command::new("python3")
            .args([
                "-c",
                "import psycopg, sys; c = psycopg.connect(sys.argv[1]); \
                 print(c.execute('select current_user').fetchone()[0], c.info.pgconn.ssl_in_use)",
                &format!("host=127.0.0.1 port={pg} user=alice {conn}"),
            ])
            .env("PGPASSWORD", &token)
            .output()
            .expect("python3 with psycopg (scripts/test installs tests/requirements.txt)");
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            said.trim(),
            "kw_ro True",
            "{conn}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // PostgreSQL 17's direct TLS, as `sslnegotiation=direct` makes it (this
    // machine's psql is older): a whole session, and a ClientHello without ALPN
    // `postgresql` closed.
    let who = direct_tls_query(pg, &ca, &token, true).await;
    assert_eq!(who.as_deref(), Some("kw_ro"));
    assert_eq!(direct_tls_query(pg, &ca, &token, false).await, None);
    let (info, err) = psql_with(pg, &token, "sslmode=disable dbname=test", "\\conninfo");
    assert!(
        info.contains("connected") && !info.contains("SSL"),
        "{info} {err}"
    );
}

/// Over direct TLS (no `SSLRequest`), with or without ALPN `postgresql`: logs in with
/// `token` and runs `select current_user`; `None` when the gateway closes first.
async fn direct_tls_query(port: u16, ca: &Path, token: &str, alpn: bool) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if alpn {
        config.alpn_protocols = vec![b"postgresql".to_vec()];
    }
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()?;
    let msg = |kind: Option<u8>, body: &[u8]| {
        let mut m = kind.map(|k| vec![k]).unwrap_or_default();
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    };
    let startup = msg(
        None,
        b"\x00\x03\x00\x00user\x00x\x00database\x00test\x00\x00",
    );
    tls.write_all(&startup).await.ok()?;
    // Each message: kind, length, body; until `want`, with the rows' first column.
    async fn until<S: tokio::io::AsyncRead + Unpin>(s: &mut S, want: u8) -> Option<Vec<String>> {
        let mut cols = Vec::new();
        loop {
            let kind = s.read_u8().await.ok()?;
            let len = s.read_i32().await.ok()? as usize;
            let mut body = vec![0u8; len - 4];
            s.read_exact(&mut body).await.ok()?;
            match kind {
                b'E' => return None,
                b'D' => {
                    let n = i32::from_be_bytes(body[2..6].try_into().ok()?) as usize;
                    cols.push(String::from_utf8_lossy(&body[6..6 + n]).into_owned());
                }
                k if k == want => return Some(cols),
                _ => {}
            }
        }
    }
    until(&mut tls, b'R').await?;
    let mut password = token.as_bytes().to_vec();
    password.push(0);
    tls.write_all(&msg(Some(b'p'), &password)).await.ok()?;
    until(&mut tls, b'Z').await?;
    tls.write_all(&msg(Some(b'Q'), b"select current_user\x00"))
        .await
        .ok()?;
    until(&mut tls, b'Z').await?.into_iter().next()
}
