//! TLS from the gateway to PostgreSQL upstreams, against a cluster the test starts
//! with `ssl = on`, a test CA and password logins (SCRAM and md5): verified TLS with
//! SCRAM-SHA-256-PLUS, TLS unverified, a CA that did not sign the server's
//! certificate, a server that refuses TLS (not a byte more in plaintext), and weak
//! logins (md5) refused on a path beyond this host (through an agent) unless the
//! service names them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

/// A server on 127.0.0.1:0 that answers PostgreSQL's `SSLRequest` with `N` (no
/// TLS here), and reports how many bytes came after it before the connection
/// closed.
fn refuses_tls() -> (u16, std::sync::mpsc::Receiver<usize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut request = [0u8; 8];
            std::io::Read::read_exact(&mut s, &mut request).unwrap();
            std::io::Write::write_all(&mut s, b"N").unwrap();
            let mut rest = Vec::new();
            let _ = std::io::Read::read_to_end(&mut s, &mut rest);
            let _ = tx.send(rest.len());
        }
    });
    (port, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn databases_over_verified_tls_log_in_with_channel_binding() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = TestCa::new("keyway test database CA");
    ca.write(&dir.join("db-ca.pem"));
    TestCa::new("some other CA").write(&dir.join("other-ca.pem"));
    let cluster = Cluster::start_tls(&ca);
    cluster.sql("CREATE DATABASE test");
    cluster.sql(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE kw_tls LOGIN PASSWORD 'tls-pass-canary-91'; \
         SET password_encryption = 'md5'; CREATE ROLE kw_tls_md5 LOGIN PASSWORD 'md5-pass-canary-92';",
    );
    let (no_tls, after_no) = refuses_tls();
    let (admin, tunnel) = (free_port(), free_port());
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let service = |name: &str, port: u16, extra: &str| {
        let upstream = match name {
            "no-tls" => format!("127.0.0.1:{no_tls}"),
            _ => format!("127.0.0.1:{}", cluster.port),
        };
        format!(
            "[services.{name}]\nprotocol = \"postgres\"\nlisten = \"127.0.0.1:{port}\"\n\
             upstream = \"{upstream}\"\ndatabase = \"test\"\nmax_ttl = \"1h\"\n\
             roles.app = {{ user = \"kw_tls\", secret = \"tls\" }}\n\
             roles.legacy = {{ user = \"kw_tls_md5\", secret = \"md5\" }}\n{extra}\n"
        )
    };
    let config = [
        format!(
            "data_dir = \"data\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             tunnel_listen = \"127.0.0.1:{tunnel}\"\n\
             [agents.inside]\nservices = [\"far\", \"far-named\"]\n"
        ),
        service(
            "db",
            ports[0],
            "upstream_tls = \"verify-full\"\nupstream_ca = \"db-ca.pem\"",
        ),
        service("unverified", ports[1], "upstream_tls = \"require\""),
        service(
            "wrong-ca",
            ports[2],
            "upstream_tls = \"verify-full\"\nupstream_ca = \"other-ca.pem\"",
        ),
        service(
            "no-tls",
            ports[3],
            "upstream_tls = \"verify-full\"\nupstream_ca = \"db-ca.pem\"",
        ),
        // Beyond this host (through an agent), in plaintext: md5 only where named.
        service("far", ports[4], "via = \"inside\""),
        service(
            "far-named",
            ports[5],
            "via = \"inside\"\nallow_weak_upstream_auth = [\"md5\"]",
        ),
    ]
    .concat();
    std::fs::write(dir.join("keyway.toml"), &config).unwrap();
    let _gateway = start_gateway(dir, admin);
    for (name, value) in [("tls", "tls-pass-canary-91"), ("md5", "md5-pass-canary-92")] {
        let out = keyway(
            dir,
            &["secret", "set", name, "--config", "keyway.toml"],
            Some(value),
        );
        assert!(out.status.success());
    }
    let token = |svc: &str, role: &str| ok_stdout(issue_as(dir, "alice", svc, Some(role), &[]));
    let run = |port: u16, token: &str, sql: &str| {
        let out = psql(port, token, sql);
        (
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // Verified TLS, and the server's own view of the session: encrypted.
    let (rows, err) = run(
        ports[0],
        &token("db", "app"),
        "select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()",
    );
    assert_eq!(rows, "kw_tls|t", "{err}");
    // SCRAM with channel binding: the server took a proof bound to its certificate.
    let how = store_query(
        dir,
        "select json_extract(detail, '$.upstream_auth') || ' ' || json_extract(detail, '$.upstream_tls') \
         from audit_events where kind = 'connection.open' and service = 'db' and decision = 'allow'",
    );
    assert_eq!(how.trim(), "SCRAM-SHA-256-PLUS 1");
    let server_log = cluster.log();
    assert!(
        server_log.contains(
            "connection authorized: user=kw_tls database=test application_name=psql SSL enabled"
        ),
        "{server_log}"
    );
    // md5 over verified TLS: the server is who it says, so it goes.
    let (rows, err) = run(ports[0], &token("db", "legacy"), "select current_user");
    assert_eq!(rows, "kw_tls_md5", "{err}");

    // Encrypted but not verified: SCRAM still binds to the certificate it was
    // shown. (md5 goes too, the database being on this host; beyond it, only where
    // `allow_weak_upstream_auth` names it: the login's unit tests.)
    let (rows, err) = run(ports[1], &token("unverified", "app"), "select current_user");
    assert_eq!(rows, "kw_tls", "{err}");
    let how = store_query(
        dir,
        "select json_extract(detail, '$.upstream_auth') from audit_events \
         where kind = 'connection.open' and service = 'unverified' and decision = 'allow'",
    );
    assert_eq!(how.trim(), "SCRAM-SHA-256-PLUS");

    // A database whose certificate the configured CA did not sign: no login.
    let (rows, err) = run(ports[2], &token("wrong-ca", "app"), "select 1");
    assert_eq!(rows, "");
    assert!(err.contains("upstream_certificate_untrusted"), "{err}");
    // A server that answers "no TLS": no login, and not one more byte in plaintext.
    let (rows, err) = run(ports[3], &token("no-tls", "app"), "select 1");
    assert_eq!(rows, "");
    assert!(err.contains("upstream_tls_refused"), "{err}");
    let after = after_no.recv_timeout(std::time::Duration::from_secs(10));
    assert_eq!(
        after.unwrap(),
        0,
        "bytes went on after the server said no TLS"
    );

    // Through an agent, in plaintext: SCRAM goes (it gives nothing away), md5 is
    // refused before a byte of the password is sent, unless the service names it.
    let dial = format!("127.0.0.1:{}", cluster.port);
    let _agent = start_agent(dir, "inside", tunnel, &["--allow-upstream", &dial], &[]);
    let (rows, err) = run(ports[4], &token("far", "app"), "select current_user");
    assert_eq!(rows, "kw_tls", "{err}");
    let (rows, err) = run(ports[4], &token("far", "legacy"), "select current_user");
    assert_eq!(rows, "");
    assert!(err.contains("refused Keyway's login"), "{err}");
    let (rows, err) = run(
        ports[5],
        &token("far-named", "legacy"),
        "select current_user",
    );
    assert_eq!(rows, "kw_tls_md5", "{err}");
    let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap();
    assert!(
        log.contains("the database asks for `md5`, which would cross an unverified path"),
        "{log}"
    );
    // The server logged in the md5 role twice (over verified TLS, and where named).
    let server_log = cluster.log();
    assert_eq!(
        server_log
            .matches("connection authorized: user=kw_tls_md5")
            .count(),
        2,
        "{server_log}"
    );

    for secret in ["tls-pass-canary-91", "md5-pass-canary-92"] {
        assert!(!log.contains(secret), "a database password reached the log");
    }
}
