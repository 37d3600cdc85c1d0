//! TCP services through `keyway connect` and the gateway's tunnel, with real servers
//! and clients: `redis-cli` to the machine's Redis, `mysql` to its MariaDB, a large
//! transfer checked byte for byte (with half-close), and revocation ending an idle
//! connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// An echo server on 127.0.0.1:0 that echoes until the client half-closes, then
/// finishes its side.
fn echo_server() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_services_through_keyway_connect() {
    require(
        6379,
        "Redis",
        "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save ''",
    );
    require(
        3306,
        "MariaDB",
        "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
    );
    let echo = echo_server();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (admin_port, tunnel_port) = (free_port(), free_port());
    std::fs::write(
        dir.join("keyway.toml"),
        format!(
            "data_dir = \"data\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\ntunnel_listen = \"127.0.0.1:{tunnel_port}\"\n\
             [services.cache]\nprotocol = \"tcp\"\nupstream = \"127.0.0.1:6379\"\nmax_ttl = \"1h\"\n\
             [services.db]\nprotocol = \"tcp\"\nupstream = \"127.0.0.1:3306\"\nmax_ttl = \"1h\"\n\
             [services.echo]\nprotocol = \"tcp\"\nupstream = \"127.0.0.1:{echo}\"\nmax_ttl = \"1h\"\n"
        ),
    )
    .unwrap();
    let mut gateway = start_gateway(dir, admin_port);
    wait_for_port(tunnel_port);
    assert!(
        dir.join("data/ca.pem").exists(),
        "the local CA's certificate is written for clients"
    );
    let issue = |service: &str| {
        let out = keyway(
            dir,
            &[
                "token",
                "issue",
                "--service",
                service,
                "--principal",
                "dev",
                "--ttl",
                "30m",
                "--config",
                "keyway.toml",
            ],
            None,
        );
        ok_stdout(out)
    };

    // redis-cli PING through the tunnel.
    let cache_token = issue("cache");
    let cache = connect(dir, "cache", tunnel_port, &cache_token);
    let out = Command::new("redis-cli")
        .args(["-p", &cache.1.to_string(), "PING"])
        .output()
        .expect("redis-cli");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "PONG");

    // And on a Unix socket only this user may open (mode 0600), not clobbering one
    // that exists.
    let sock = dir.join("cache.sock");
    let mut unix = connect_command(dir, "cache", tunnel_port, &cache_token)
        .arg("--unix")
        .arg(&sock)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(unix.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), sock.display().to_string());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let out = Command::new("redis-cli")
        .arg("-s")
        .arg(&sock)
        .arg("PING")
        .output()
        .expect("redis-cli");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "PONG");
    let again = connect_command(dir, "cache", tunnel_port, &cache_token)
        .arg("--unix")
        .arg(&sock)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    drop(unix);

    // mysql -e 'select 1' through the tunnel.
    let db = connect(dir, "db", tunnel_port, &issue("db"));
    let out = Command::new("mysql")
        .args([
            "-h",
            "127.0.0.1",
            "-P",
            &db.1.to_string(),
            "-u",
            "root",
            "--batch",
            "--skip-column-names",
            "-e",
            "select 1",
        ])
        .output()
        .expect("mysql");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A large transfer, byte for byte, with half-close: the client shuts its write
    // side and still reads everything back.
    let echo_conn = connect(dir, "echo", tunnel_port, &issue("echo"));
    let data: Vec<u8> = (0..32 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut s = TcpStream::connect(("127.0.0.1", echo_conn.1)).unwrap();
    let mut reader = s.try_clone().unwrap();
    let expected = data.clone();
    let read = std::thread::spawn(move || {
        let mut back = Vec::with_capacity(expected.len());
        reader.read_to_end(&mut back).unwrap();
        back == expected
    });
    s.write_all(&data).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(read.join().unwrap(), "the echo came back byte for byte");

    // A token for another service opens nothing.
    let wrong = connect(dir, "db", tunnel_port, &cache_token);
    let mut s = TcpStream::connect(("127.0.0.1", wrong.1)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        s.read(&mut buf).unwrap_or(0),
        0,
        "no byte of the database reaches a wrong token"
    );

    // Revocation ends an idle, open connection.
    let mut idle = TcpStream::connect(("127.0.0.1", cache.1)).unwrap();
    idle.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut buf = [0u8; 7];
    idle.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+PONG\r\n");
    // Monitoring sees the open session, the connections and the 32 MiB echoed.
    let m = metrics(dir, admin_port);
    let value = |name: &str| series(&m, name).unwrap_or_else(|| panic!("no {name} in\n{m}"));
    assert_eq!(value(r#"keyway_active_sessions{service="cache"}"#), 1.0);
    assert!(value(r#"keyway_connections_total{service="cache",decision="allow"}"#) >= 2.0);
    assert!(value(r#"keyway_connections_total{service="db",decision="deny"}"#) >= 1.0);
    assert_eq!(
        value(r#"keyway_bytes_total{service="echo",direction="in"}"#),
        (32 * 1024 * 1024) as f64
    );
    assert_eq!(
        value(r#"keyway_bytes_total{service="echo",direction="out"}"#),
        (32 * 1024 * 1024) as f64
    );
    let id = &cache_token[5..21];
    let out = keyway(
        dir,
        &["token", "revoke", id, "--config", "keyway.toml"],
        None,
    );
    assert!(out.status.success());
    let revoked = Instant::now();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = idle.read(&mut buf).unwrap_or(0);
    let took = revoked.elapsed();
    assert_eq!(n, 0, "the connection ended");
    eprintln!("idle connection ended {took:?} after the revoke command returned");
    assert!(took <= Duration::from_millis(50), "ended after {took:?}");

    // Stopping the gateway ends an open stream, and its end is in the audit log; a
    // connection that never says hello does not hold the stop up.
    let mut open = TcpStream::connect(("127.0.0.1", echo_conn.1)).unwrap();
    open.write_all(b"still here").unwrap();
    let mut back = [0u8; 10];
    open.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still here");
    let mut silent = TcpStream::connect(("127.0.0.1", tunnel_port)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let stopping = Instant::now();
    assert!(interrupt(&mut gateway).success());
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let read = open.read(&mut back);
    assert!(matches!(read, Ok(0)), "the stream ended: {read:?}");
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let read = silent.read(&mut back);
    assert!(
        matches!(read, Ok(0)),
        "the silent connection was closed: {read:?}"
    );
    let ends = store_query(
        dir,
        "select json_extract(detail, '$.end'), json_extract(detail, '$.bytes_in'), json_extract(detail, '$.bytes_out') \
         from audit_events where kind = 'connection.close' and service = 'echo' order by seq",
    );
    let mib32 = 32 * 1024 * 1024;
    assert_eq!(
        ends.lines().collect::<Vec<_>>(),
        [
            format!("closed|{mib32}|{mib32}"),
            "shutdown|10|10".to_owned()
        ],
        "the echo service's streams: the 32 MiB one, then the one open at shutdown"
    );
    let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap();
    assert!(
        !log.contains(&cache_token[22..]),
        "the token reached the log"
    );
}
