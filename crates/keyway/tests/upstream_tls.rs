//! TLS from the gateway to its upstreams, against real TLS servers with certificates
//! the test makes: an `https://` upstream verified against a private CA, mutual TLS
//! with a client certificate renewed in place (SIGHUP), a name other than the host
//! verified, a wrong-name and an expired certificate refused with 502 and the reason
//! in the audit log, verification turned off only where the config says (and said
//! loudly); an HTTP listener serving the local CA's certificate (`tls = "local"`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// A TLS server's side with `<stem>.pem`/`.key` from `dir`, asking for a client
/// certificate signed by `client_ca` when one is given.
fn acceptor(dir: &Path, stem: &str, client_ca: Option<&Path>) -> tokio_rustls::TlsAcceptor {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join(format!("{stem}.pem")))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join(format!("{stem}.key"))).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).unwrap() {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key).unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// An HTTPS server on 127.0.0.1:0 ([`acceptor`]), and how many TLS sessions it
/// accepted. Each answer says which client certificate came (`client=<sha256 hex>`
/// or `client=none`); without `keep_alive` it closes its connection, so every
/// request makes a new one.
async fn https_upstream(
    dir: &Path,
    stem: &str,
    client_ca: Option<&Path>,
    keep_alive: bool,
) -> (u16, Arc<AtomicUsize>) {
    let acceptor = acceptor(dir, stem, client_ca);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sessions = Arc::new(AtomicUsize::new(0));
    let counted = sessions.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::Relaxed);
                let client = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map_or("none".to_owned(), |c| hex::encode(Sha256::digest(c)));
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let body = format!("{} {} over tls client={client}\n", req.method(), req.uri());
                    async move { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(keep_alive)
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, sessions)
}

/// A TLS echo server on 127.0.0.1:0 ([`acceptor`]).
async fn tls_echo(dir: &Path, stem: &str) -> u16 {
    let acceptor = acceptor(dir, stem, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let (mut r, mut w) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    port
}

/// The SHA-256 (hex) of the first certificate in `path`.
fn cert_hash(path: &Path) -> String {
    let der = CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    hex::encode(Sha256::digest(der))
}

/// `curl` through the gateway: the status and the body.
fn get(url: &str, token: &str, extra: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap_or(0), body.trim_end().to_owned())
}

/// The `error` of the last request audited for `service`.
fn audited_error(dir: &Path, service: &str) -> String {
    store_query(
        dir,
        &format!(
            "select json_extract(detail, '$.error') from audit_events \
             where kind = 'request' and service = '{service}' order by seq desc limit 1"
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstreams_are_verified_with_their_ca_client_certificate_and_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = TestCa::new("keyway test upstream CA");
    ca.write(&dir.join("upstream-ca.pem"));
    ca.server(dir, "good", &["localhost", "127.0.0.1"], Validity::Now);
    ca.server(dir, "other", &["other.test"], Validity::Now);
    ca.server(dir, "expired", &["localhost"], Validity::Expired);
    let clients = TestCa::new("keyway test client CA");
    clients.write(&dir.join("client-ca.pem"));
    clients.client(dir, "gateway", "keyway gateway");

    let (good, good_sessions) = https_upstream(dir, "good", None, true).await;
    let (mtls, _) = https_upstream(dir, "good", Some(&dir.join("client-ca.pem")), false).await;
    let (other, _) = https_upstream(dir, "other", None, false).await;
    let (expired, _) = https_upstream(dir, "expired", None, false).await;

    let admin = free_port();
    let ports: Vec<u16> = (0..7).map(|_| free_port()).collect();
    let service = |name: &str, port: u16, upstream: String, extra: &str| {
        format!(
            "[services.{name}]\nprotocol = \"http\"\nlisten = \"127.0.0.1:{port}\"\n\
             upstream = \"{upstream}\"\nmax_ttl = \"1h\"\n{extra}\n"
        )
    };
    let ca_key = "upstream_ca = \"upstream-ca.pem\"";
    let config = [
        format!("data_dir = \"data\"\nadmin_listen = \"127.0.0.1:{admin}\"\n"),
        service("good", ports[0], format!("https://localhost:{good}/api"), &format!("{ca_key}\ntls = \"local\"")),
        service(
            "mtls",
            ports[1],
            format!("https://localhost:{mtls}"),
            &format!("{ca_key}\nupstream_client_cert = \"gateway.pem\"\nupstream_client_key = \"gateway.key\""),
        ),
        service(
            "named",
            ports[2],
            format!("https://127.0.0.1:{other}"),
            &format!("{ca_key}\nupstream_server_name = \"other.test\""),
        ),
        service("wrongname", ports[3], format!("https://localhost:{other}"), ca_key),
        service("expired", ports[4], format!("https://localhost:{expired}"), ca_key),
        service(
            "insecure",
            ports[5],
            format!("https://localhost:{expired}"),
            "upstream_insecure_skip_verify = true",
        ),
        // No `upstream_ca`: the system's roots (which this test points at its CA).
        service("system", ports[6], format!("https://localhost:{good}"), ""),
    ]
    .concat();
    std::fs::write(dir.join("keyway.toml"), &config).unwrap();

    // `keyway validate` refuses turned-off verification unless told to accept it,
    // and no longer calls a TLS upstream plaintext.
    let out = keyway(dir, &["validate", "keyway.toml"], None);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("error: `services.insecure.upstream_insecure_skip_verify`: turns certificate verification off"),
        "{said}"
    );
    assert!(!said.contains("plaintext"), "{said}");
    let out = keyway(dir, &["validate", "--allow-insecure", "keyway.toml"], None);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("warning: `services.insecure.upstream_insecure_skip_verify`"),
        "{said}"
    );

    // The system's roots are read where OpenSSL reads them; SSL_CERT_FILE moves them.
    let system_roots = dir.join("upstream-ca.pem");
    let mut gateway = start_gateway_with(
        dir,
        admin,
        &[("SSL_CERT_FILE", system_roots.to_str().unwrap())],
    );
    wait_log(dir, "CERTIFICATE VERIFICATION IS OFF");
    let token = |svc: &str| issue(dir, "alice", svc);

    // The private CA's certificate, verified; the listener's own TLS from the local CA.
    let url = format!("https://localhost:{}/invoices", ports[0]);
    let cacert = dir.join("data/ca.pem");
    let (code, body) = get(
        &url,
        &token("good"),
        &["--cacert", cacert.to_str().unwrap()],
    );
    assert_eq!(
        (code, body.as_str()),
        (200, "GET /api/invoices over tls client=none")
    );
    // Pooled: more requests (each its own curl, its own client connection) ride the
    // one TLS session the gateway keeps open to the upstream.
    let good_token = token("good");
    for _ in 0..4 {
        let (code, _) = get(&url, &good_token, &["--cacert", cacert.to_str().unwrap()]);
        assert_eq!(code, 200);
    }
    assert_eq!(
        good_sessions.load(Ordering::Relaxed),
        1,
        "one upstream TLS session for five requests"
    );

    // Without `upstream_ca`, verified against the system's roots.
    let (code, body) = get(
        &format!("http://127.0.0.1:{}/invoices", ports[6]),
        &token("system"),
        &[],
    );
    assert_eq!(
        (code, body.as_str()),
        (200, "GET /invoices over tls client=none")
    );

    // Mutual TLS: the upstream saw the gateway's client certificate.
    let mtls_url = format!("http://127.0.0.1:{}/", ports[1]);
    let mtls_token = token("mtls");
    let (code, body) = get(&mtls_url, &mtls_token, &[]);
    assert_eq!(code, 200, "{body}");
    let first = cert_hash(&dir.join("gateway.pem"));
    assert!(body.ends_with(&format!("client={first}")), "{body}");

    // A name other than the host, verified as `upstream_server_name` says.
    let (code, body) = get(
        &format!("http://127.0.0.1:{}/", ports[2]),
        &token("named"),
        &[],
    );
    assert_eq!(code, 200, "{body}");

    // Refused: 502, and the audit log says why.
    for (svc, port, reason) in [
        ("wrongname", ports[3], "upstream_certificate_wrong_name"),
        ("expired", ports[4], "upstream_certificate_expired"),
    ] {
        let (code, body) = get(&format!("http://127.0.0.1:{port}/"), &token(svc), &[]);
        assert_eq!((code, body.as_str()), (502, "bad gateway"), "{svc}");
        assert_eq!(audited_error(dir, svc).trim(), reason, "{svc}");
    }

    // Verification off where the config says so: the expired certificate is taken.
    let (code, body) = get(
        &format!("http://127.0.0.1:{}/", ports[5]),
        &token("insecure"),
        &[],
    );
    assert_eq!(code, 200, "{body}");

    // The client certificate renewed in place: SIGHUP, and the next connection
    // shows the new one.
    clients.client(dir, "gateway", "keyway gateway, renewed");
    let renewed = cert_hash(&dir.join("gateway.pem"));
    assert_ne!(first, renewed);
    hangup(&gateway.0.id().to_string());
    wait_log(dir, "upstream certificate files renewed");
    let (code, body) = get(&mtls_url, &mtls_token, &[]);
    assert_eq!(code, 200, "{body}");
    assert!(body.ends_with(&format!("client={renewed}")), "{body}");

    interrupt(&mut gateway.0);
    let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap();
    assert!(!log.contains(&mtls_token), "a token reached the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_upstreams_may_be_wrapped_in_verified_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = TestCa::new("keyway test TCP CA");
    ca.write(&dir.join("ca-upstream.pem"));
    ca.server(dir, "echo", &["localhost"], Validity::Now);
    ca.server(dir, "stale", &["localhost"], Validity::Expired);
    let (echo, stale) = (tls_echo(dir, "echo").await, tls_echo(dir, "stale").await);
    let people = TestCa::new("keyway test people CA");
    people.write(&dir.join("people-ca.pem"));
    people.client(dir, "alice", "alice");
    people.client(dir, "mallory", "mallory");
    let (admin, tunnel) = (free_port(), free_port());
    let service = |name: &str, port: u16| {
        format!(
            "[services.{name}]\nprotocol = \"tcp\"\nupstream = \"localhost:{port}\"\nmax_ttl = \"1h\"\n\
             upstream_tls = \"verify-full\"\nupstream_ca = \"ca-upstream.pem\"\n"
        )
    };
    std::fs::write(
        dir.join("keyway.toml"),
        format!(
            "data_dir = \"data\"\nadmin_listen = \"127.0.0.1:{admin}\"\ntunnel_listen = \"127.0.0.1:{tunnel}\"\n\
             tunnel_client_ca = \"people-ca.pem\"\n{}{}",
            service("echo", echo),
            service("stale", stale)
        ),
    )
    .unwrap();
    let _gateway = start_gateway(dir, admin);

    // The client speaks plain bytes to `keyway connect`; the gateway wraps them.
    let through = connect(dir, "echo", tunnel, &issue(dir, "alice", "echo"));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", through.1)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    std::io::Write::write_all(&mut s, b"ping over tls\n").unwrap();
    let mut got = [0u8; 14];
    std::io::Read::read_exact(&mut s, &mut got).unwrap();
    assert_eq!(&got, b"ping over tls\n");

    // A token bound to alice's certificate: through with it, refused without it or
    // with another's from the same CA.
    let bound = ok_stdout(issue_as(
        dir,
        "alice",
        "echo",
        None,
        &["--bind-cert", "alice.pem"],
    ));
    let with = |cert: Option<&str>| {
        let args = match cert {
            Some(c) => vec![
                "--cert".to_owned(),
                format!("{c}.pem"),
                "--key".to_owned(),
                format!("{c}.key"),
            ],
            None => Vec::new(),
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let through = connect_with(dir, "echo", tunnel, &bound, &args);
        let mut s = std::net::TcpStream::connect(("127.0.0.1", through.1)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let _ = std::io::Write::write_all(&mut s, b"bound\n");
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::Read::take(&mut s, 6), &mut got);
        got
    };
    assert_eq!(with(Some("alice")), b"bound\n");
    assert_eq!(with(None), b"");
    assert_eq!(with(Some("mallory")), b"");
    let reasons = store_query(
        dir,
        "select reason from audit_events where kind = 'connection.open' \
         and service = 'echo' and decision = 'deny' order by seq",
    );
    assert_eq!(
        reasons.trim(),
        "certificate_mismatch\ncertificate_mismatch",
        "{reasons}"
    );

    // An expired certificate: the stream is refused, and the audit log says why.
    let refused = connect(dir, "stale", tunnel, &issue(dir, "alice", "stale"));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", refused.1)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 1];
    let n = std::io::Read::read(&mut s, &mut buf).expect("closed, not timed out");
    assert_eq!(n, 0, "no byte comes from a refused upstream");
    let why = store_query(
        dir,
        "select json_extract(detail, '$.error') from audit_events \
         where kind = 'connection.open' and service = 'stale'",
    );
    assert_eq!(why.trim(), "upstream_certificate_expired");
}
