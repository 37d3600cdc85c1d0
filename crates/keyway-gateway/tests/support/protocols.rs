//! A gateway with one service of each protocol (HTTP in front of a test upstream, TCP
//! in front of an echo server, PostgreSQL in front of the machine's server), a
//! token for each, and the tunnel's own client.

use std::net::SocketAddr;

use keyway_gateway::IssueRequest;
use secrecy::ExposeSecret;
use tokio::net::{TcpListener, TcpStream};

use super::{TestGateway, Upstream};

/// The three services, on port 0, each with `extra` lines. A reload sends the same
/// text changed: a listener whose address is unchanged is kept.
pub fn config(up: &str, echo: SocketAddr, extra: &str) -> String {
    format!(
        "admin_listen = \"127.0.0.1:0\"\ntunnel_listen = \"127.0.0.1:0\"\nmax_ttl = \"24h\"\n\
         [services.billing]\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{up}\"\nmax_ttl = \"1h\"\n{extra}\n\
         [services.cache]\nprotocol = \"tcp\"\nupstream = \"{echo}\"\nmax_ttl = \"1h\"\n{extra}\n\
         [services.orders-db]\nprotocol = \"postgres\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:5432\"\n\
         database = \"test\"\nmax_ttl = \"1h\"\nroles.readonly = {{ user = \"root\", secret = \"kw-ro\" }}\n{extra}\n"
    )
}

/// `psql` to the gateway's PostgreSQL listener on `port`, the token as its password,
/// in plaintext (loopback), with its output piped; `args` follow (`-XAtqc …`).
pub fn psql(port: u16, token: &str, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new("psql");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "whoever",
        "-d",
        "test",
    ])
    .args(args)
    .env("PGPASSWORD", token)
    .env("PGSSLMODE", "disable")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    c
}

/// A TCP upstream that echoes.
pub async fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

pub struct Tokens {
    pub http: String,
    pub tcp: String,
    pub pg: String,
}

pub async fn tokens(gw: &TestGateway) -> Tokens {
    let issue = |service: &str, role: Option<&str>| IssueRequest {
        service: service.into(),
        principal: "alice".into(),
        ttl: Some("1h".into()),
        role: role.map(str::to_owned),
        ..IssueRequest::default()
    };
    let mut out = Vec::new();
    for req in [
        issue("billing", None),
        issue("cache", None),
        issue("orders-db", Some("readonly")),
    ] {
        let (t, _) = gw.gw.issue(&req, "test").await.unwrap();
        out.push(t.secret().expose_secret().to_owned());
    }
    let pg = out.pop().unwrap();
    let tcp = out.pop().unwrap();
    let http = out.pop().unwrap();
    Tokens { http, tcp, pg }
}

pub async fn start(extra: &str) -> (TestGateway, Upstream, SocketAddr) {
    assert!(
        TcpStream::connect("127.0.0.1:5432").await.is_ok(),
        "PostgreSQL is not listening on 127.0.0.1:5432; start it with: \
         pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start (scripts/test does)"
    );
    let up = Upstream::start().await;
    let echo = echo().await;
    let gw = TestGateway::start(&config(&up.url(), echo, extra)).await;
    (gw, up, echo)
}

/// Opens a tunnel stream to `service`; the gateway's refusal as the client reads it.
pub async fn tunnel(gw: &TestGateway, service: &str, token: &str) -> Result<(), String> {
    tunnel_stream(gw, service, token).await.map(drop)
}

/// A tunnel stream to `service`, open, as `keyway connect` holds it.
pub async fn tunnel_stream(
    gw: &TestGateway,
    service: &str,
    token: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tls = keyway_gateway::tls::client_config(&gw.data_dir().join("ca.pem"), None).unwrap();
    let addr = gw.tunnel.unwrap().to_string();
    keyway_gateway::tunnel::open(&addr, "localhost", tls, service, token).await
}
