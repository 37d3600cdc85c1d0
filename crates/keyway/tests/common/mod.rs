//! Helpers of the binary's end-to-end tests: a real upstream, free ports, running the
//! CLI, curl, Ctrl-C, and the canary's file search; `pg`: psql, through the gateway
//! and directly.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;
pub mod mcp;
pub mod oidc;
mod pg;
mod pg_cluster;
mod pki;
mod process;
pub mod sso;

pub use pg::*;
#[allow(unused_imports)]
pub use pg_cluster::Cluster;
#[allow(unused_imports)]
pub use pki::{TestCa, Validity};
pub use process::*;

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

pub const BIN: &str = env!("CARGO_BIN_EXE_keyway");

/// A real upstream that records the `X-Api-Key` and `Authorization` it receives.
pub async fn upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let s = s.clone();
            let svc = service_fn(move |req: http::Request<Incoming>| {
                let h = req.headers();
                let line = format!(
                    "{} {} key={:?} auth={:?}",
                    req.method(),
                    req.uri(),
                    h.get("x-api-key"),
                    h.get("authorization")
                );
                s.lock().unwrap().push(line);
                async move {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                        "invoice list\n",
                    ))))
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// A webhook receiver: records (signature header, alert id, body); the first POST
/// gets a 500.
pub async fn webhook() -> (SocketAddr, Arc<Mutex<Vec<(String, String, String)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let attempts = Arc::new(Mutex::new(0u32));
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (g, attempts) = (g.clone(), attempts.clone());
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (g, attempts) = (g.clone(), attempts.clone());
                async move {
                    let header = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let (sig, id) = (header("x-keyway-signature"), header("x-keyway-alert-id"));
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let first = {
                        let mut n = attempts.lock().unwrap();
                        *n += 1;
                        *n == 1
                    };
                    let status = if first {
                        500
                    } else {
                        g.lock().unwrap().push((
                            sig,
                            id,
                            String::from_utf8_lossy(&body).into_owned(),
                        ));
                        200
                    };
                    let mut resp = http::Response::new(Full::new(Bytes::new()));
                    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    Ok::<_, Infallible>(resp)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

/// A port for a gateway process to bind. Ports come from a counter, so two tests of
/// this process never get the same one (binding port 0 and dropping it lets the next
/// bind(0) return the same port), and each is checked free before it is handed out.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 2_000) as u16 * 10;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::SeqCst) % 20_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the CLI; its stderr is also appended to `<dir>/cli.stderr` for the canary.
pub fn keyway(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("KEYWAY_ADMIN_TOKEN")
        .env_remove("KEYWAY_ADMIN_URL")
        .env_remove("KEYWAY_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("cli.stderr"))
        .unwrap();
    log.write_all(&out.stderr).unwrap();
    out
}

/// `curl`'s status code for a request to the gateway.
pub fn curl(url: &str, token: Option<&str>, method: &str) -> u16 {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec!["-X", method];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    curl_status(url, &args)
}

/// `curl`'s status code for `url` with `args` added: 0 when the connection was closed
/// unanswered, or nothing came within 60 s (curl's reason then goes to the test's
/// output).
pub fn curl_status(url: &str, args: &[&str]) -> u16 {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "60",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("curl must be installed (apt-get install curl)");
    let code = String::from_utf8_lossy(&out.stdout)
        .parse()
        .expect("curl prints a status code");
    if code == 0 {
        eprintln!(
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    code
}

pub fn interrupt(child: &mut Child) -> std::process::ExitStatus {
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    wait_exit(
        child,
        Duration::from_secs(20),
        "the gateway did not stop on Ctrl-C",
    )
}

/// Waits for `child` to exit, failing with `otherwise` after `within`.
pub fn wait_exit(child: &mut Child, within: Duration, otherwise: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "{otherwise}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The newest event of the store in `dir`, as `SEQ:HASH` (what `--expect` takes).
pub fn chain_head(dir: &Path) -> String {
    let out = ok_stdout(audit_verify(dir, None));
    out.lines()
        .find_map(|l| l.strip_prefix("newest event: "))
        .unwrap_or_else(|| panic!("no head in {out}"))
        .replacen(' ', ":", 1)
}

/// `keyway audit verify` on the store of `dir`, with `--expect SEQ:HASH` when given.
pub fn audit_verify(dir: &Path, expect: Option<&str>) -> Output {
    let mut args = vec!["audit", "verify", "--config", "keyway.toml"];
    if let Some(e) = expect {
        args.extend(["--expect", e]);
    }
    keyway(dir, &args, None)
}

/// What `sqlite3` answers to `query` on the store in `<dir>/data`: one row a line,
/// columns between `|`.
pub fn store_query(dir: &Path, query: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(dir.join("data/keyway.db"))
        .arg(query)
        .output()
        .expect("sqlite3 (apt-get install sqlite3)");
    assert!(
        out.status.success(),
        "sqlite3 `{query}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    hits.push(p);
                }
            }
        }
    }
    hits
}

/// The part of a token after its public id: what must never be written anywhere.
pub fn secret_part(token: &str) -> &str {
    &token[22..]
}

/// A child process killed when dropped, so a failing assertion does not leave a
/// gateway running (and holding the test harness's output pipe open).
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Writes `keyway.toml` in `dir`: data in `data/`, the admin API on `admin`, and one
/// HTTP service, `billing`, on `svc` in front of `upstream` (`host:port`) with
/// `max_ttl`; `extra` goes at the end.
pub fn billing_config(
    dir: &Path,
    admin: u16,
    svc: u16,
    upstream: &str,
    max_ttl: &str,
    extra: &str,
) {
    std::fs::write(
        dir.join("keyway.toml"),
        format!(
            "data_dir = \"data\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             [services.billing]\nprotocol = \"http\"\nlisten = \"127.0.0.1:{svc}\"\n\
             upstream = \"http://{upstream}\"\nmax_ttl = \"{max_ttl}\"\n{extra}"
        ),
    )
    .unwrap();
}

/// `keyway gateway --config keyway.toml --log trace` in `dir`, its output in
/// `gateway.log` there (the canary searches it), once the admin API answers.
pub fn start_gateway(dir: &Path, admin_port: u16) -> KillOnDrop {
    start_gateway_with(dir, admin_port, &[])
}

/// [`start_gateway`] with `env` set for the gateway.
pub fn start_gateway_with(dir: &Path, admin_port: u16, env: &[(&str, &str)]) -> KillOnDrop {
    start_gateway_logging(dir, admin_port, "trace", env)
}

/// [`start_gateway_with`] at log level `level` (under load, a trace log would be what
/// the test measures).
pub fn start_gateway_logging(
    dir: &Path,
    admin_port: u16,
    level: &str,
    env: &[(&str, &str)],
) -> KillOnDrop {
    start_gateway_of(Path::new(BIN), dir, admin_port, &["--log", level], env)
}

/// `<bin> gateway --config keyway.toml <args>` in `dir` (an installed binary, say),
/// its output in `gateway.log` there, once the admin API answers.
pub fn start_gateway_of(
    bin: &Path,
    dir: &Path,
    admin_port: u16,
    args: &[&str],
    env: &[(&str, &str)],
) -> KillOnDrop {
    let gateway = spawn_logged(
        Command::new(bin)
            .args(["gateway", "--config", "keyway.toml"])
            .args(args)
            .envs(env.iter().copied())
            .current_dir(dir),
        dir,
    );
    wait_for_port(admin_port);
    gateway
}

/// `/metrics` of the gateway whose data is in `<dir>/data`, scraped with curl.
pub fn metrics(dir: &Path, admin_port: u16) -> String {
    let (status, body) = admin_api(dir, admin_port, "GET", "/metrics", None);
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of one series line of a `/metrics` scrape, like
/// `keyway_requests_total{decision="allow",service="api"}`; `None` when absent.
pub fn series(scraped: &str, name: &str) -> Option<f64> {
    scraped
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A call to the admin API of the gateway whose data is in `<dir>/data`, with curl
/// and its admin token: the status and the body.
pub fn admin_api(
    dir: &Path,
    admin_port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let token = std::fs::read_to_string(dir.join("data/admin.token")).unwrap();
    let mut curl = Command::new("curl");
    curl.args(["-s", "-X", method, "-w", "\n%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {}", token.trim()));
    if body.is_some() {
        curl.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
        ]);
    }
    let mut child = curl
        .arg(format!("http://127.0.0.1:{admin_port}{path}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl must be installed (apt-get install curl)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(body.unwrap_or("").as_bytes()).unwrap();
    drop(stdin);
    let out = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    let (text, status) = out.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap(), text.to_owned())
}

/// `keyway token issue` for `service`, with `keyway.toml` in `dir`: the token.
pub fn issue(dir: &Path, principal: &str, service: &str) -> String {
    ok_stdout(issue_as(dir, principal, service, None, &[]))
}

/// `keyway token issue` for `service` as `principal`, with `--role` when given and
/// `extra` arguments, with `keyway.toml` in `dir`.
pub fn issue_as(
    dir: &Path,
    principal: &str,
    service: &str,
    role: Option<&str>,
    extra: &[&str],
) -> Output {
    let mut args = vec![
        "token",
        "issue",
        "--service",
        service,
        "--principal",
        principal,
    ];
    if let Some(r) = role {
        args.extend(["--role", r]);
    }
    args.extend(extra);
    args.extend(["--config", "keyway.toml"]);
    keyway(dir, &args, None)
}

/// Refuses to run against a server that is not there, saying how to start it.
pub fn require(port: u16, what: &str, start: &str) {
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "{what} is not listening on 127.0.0.1:{port}; start it with: {start} (scripts/test does)"
    );
}

/// A running `keyway connect`, and the local port it listens on.
pub struct Connect(pub KillOnDrop, pub u16);

/// `keyway connect SERVICE` in `dir` to the tunnel on `tunnel`, with the token in
/// KEYWAY_TOKEN, not yet run.
pub fn connect_command(dir: &std::path::Path, service: &str, tunnel: u16, token: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["connect", service, "--gateway"])
        .arg(format!("127.0.0.1:{tunnel}"))
        .args(["--ca", "data/ca.pem"])
        .env("KEYWAY_TOKEN", token)
        .current_dir(dir);
    cmd
}

/// `keyway connect SERVICE` with the token in KEYWAY_TOKEN; its local port.
pub fn connect(dir: &std::path::Path, service: &str, tunnel: u16, token: &str) -> Connect {
    connect_with(dir, service, tunnel, token, &[])
}

/// [`connect`] with `extra` arguments (`--cert`, …).
pub fn connect_with(
    dir: &std::path::Path,
    service: &str,
    tunnel: u16,
    token: &str,
    extra: &[&str],
) -> Connect {
    let mut child = connect_command(dir, service, tunnel, token)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().rsplit_once(':').unwrap().1.parse().unwrap();
    Connect(KillOnDrop(child), port)
}

/// Sends SIGHUP to the process `pid`: the gateway reloads its config file.
pub fn hangup(pid: &str) {
    let kill = Command::new("kill").args(["-HUP", pid]).status().unwrap();
    assert!(kill.success());
}

/// Waits (up to 10 s) for `needle` in the gateway's log.
pub fn wait_log(dir: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap();
        if log.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no `{needle}` in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `keyway agent run` as `name` with `args` and `env` besides, enrolled with the
/// gateway in `dir` whose tunnel is on `tunnel` (its log in `<dir>/agent.log`);
/// returned once the gateway lists it connected.
pub fn start_agent(
    dir: &Path,
    name: &str,
    tunnel: u16,
    args: &[&str],
    env: &[(&str, String)],
) -> KillOnDrop {
    let cfg = ["--config", "keyway.toml"];
    let enrollment = ok_stdout(keyway(
        dir,
        &[&["agent", "enroll", name][..], &cfg].concat(),
        None,
    ));
    std::fs::write(dir.join("enroll.tok"), &enrollment).unwrap();
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let agent = Command::new(BIN)
        .args(["agent", "run", "--gateway", &format!("127.0.0.1:{tunnel}")])
        .args(["--enroll-token-file", "enroll.tok", "--data-dir", "agent"])
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let list = ok_stdout(keyway(
            dir,
            &[&["agent", "list", "--json"][..], &cfg].concat(),
            None,
        ));
        if list.contains("\"connected\"") {
            return agent;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never connected: {list}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
