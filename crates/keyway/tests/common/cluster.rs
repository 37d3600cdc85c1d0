//! A cluster for the tests: gateways on one fresh PostgreSQL database behind
//! HAProxy (Debian's), an upstream that can stream, and a paced load that records
//! every answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::*;

/// A database made for one test, dropped after it.
pub struct FreshDb(pub String);

impl FreshDb {
    pub fn new(tag: &str) -> Self {
        require(
            5432,
            "PostgreSQL",
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
        );
        let name = format!("keyway_{tag}_{}", std::process::id());
        psql_admin_on(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        );
        psql_admin_on("postgres", &format!("CREATE DATABASE {name}"));
        Self(name)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.0)
    }

    /// `sql` on this database: its rows, unaligned.
    pub fn query(&self, sql: &str) -> String {
        psql_admin_on(&self.0, sql)
    }
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-Xqc",
            ])
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0))
            .output();
    }
}

/// A body that sends `tick\n` every 100 ms until the reader goes away.
struct Ticks(tokio::time::Interval);

impl hyper::body::Body for Ticks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_tick(cx)
            .map(|_| Some(Ok(Frame::data(Bytes::from_static(b"tick\n")))))
    }
}

/// An upstream answering `ok\n`, and on `/stream` a body that never ends.
pub async fn streaming_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = service_fn(|req: http::Request<Incoming>| async move {
                let body = if req.uri().path() == "/stream" {
                    Either::Right(Ticks(tokio::time::interval(Duration::from_millis(100))))
                } else {
                    Either::Left(Full::new(Bytes::from_static(b"ok\n")))
                };
                Ok::<_, Infallible>(http::Response::new(body))
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// One gateway of the cluster: its folder, ports and process.
pub struct Replica {
    pub name: String,
    pub dir: PathBuf,
    pub admin: u16,
    pub tunnel: u16,
    /// Its ports for the services, by name.
    pub ports: Vec<(String, u16)>,
    pub process: Option<KillOnDrop>,
}

impl Replica {
    pub fn port(&self, service: &str) -> u16 {
        self.ports.iter().find(|(s, _)| s == service).unwrap().1
    }

    /// Its own settings (folder, store, name, admin API, tunnel) before `shared`.
    pub fn write_config(&self, store: &str, shared: &str) {
        std::fs::write(
            self.dir.join("keyway.toml"),
            format!(
                "data_dir = \"data\"\nstore = \"{store}\"\nreplica = \"{}\"\n\
                 admin_listen = \"127.0.0.1:{}\"\ntunnel_listen = \"127.0.0.1:{}\"\n{shared}",
                self.name, self.admin, self.tunnel
            ),
        )
        .unwrap();
    }

    /// Starts it and waits until `/healthz` answers 200.
    pub fn start(&mut self) {
        self.process = Some(start_gateway_logging(&self.dir, self.admin, "info", &[]));
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.healthz() != 200 {
            assert!(
                Instant::now() < deadline,
                "{} never became healthy",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn healthz(&self) -> u16 {
        curl_status(&format!("http://127.0.0.1:{}/healthz", self.admin), &[])
    }

    /// `kill -9`: no drain, nothing flushed.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.0.kill().unwrap();
            p.0.wait().unwrap();
        }
    }

    /// SIGTERM, and waits for it to have drained and exited.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            let pid = p.0.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            let status = wait_exit(&mut p.0, Duration::from_secs(30), "a drained replica exits");
            assert!(status.success(), "{}: {status}", self.name);
        }
    }

    /// The CLI run in its folder, against its admin API.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        keyway(
            &self.dir,
            &[args, &["--config", "keyway.toml"]].concat(),
            stdin,
        )
    }
}

/// Copies the keys every replica shares (pepper, master key, tunnel CA) from the
/// first replica's folder to `to`, and the admin credential the first one made (the
/// store has one already, so the others make none) for the CLI run there.
pub fn share_keys(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("data")).unwrap();
    for key in [
        "pepper.key",
        "master.key",
        "ca.pem",
        "ca.key",
        "admin.token",
    ] {
        std::fs::copy(from.join("data").join(key), to.join("data").join(key)).unwrap();
    }
}

/// HAProxy in front of the replicas: for each `(frontend port, service)`, a backend
/// of every replica's port for it, checked on the replica's `/healthz` every 200 ms.
/// Answers say which replica served them (`X-Served-By`).
pub fn haproxy(dir: &Path, frontends: &[(u16, &str)], replicas: &[&Replica]) -> KillOnDrop {
    assert!(
        Command::new("haproxy").arg("-v").output().is_ok(),
        "HAProxy is not installed; apt-get install haproxy (scripts/test does)"
    );
    let mut cfg = String::from(
        "global\n  maxconn 4000\n\
         defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
         \x20 retries 3\n  option redispatch 1\n  retry-on all-retryable-errors\n",
    );
    for (port, service) in frontends {
        cfg += &format!(
            "frontend f_{service}\n  bind 127.0.0.1:{port}\n  default_backend b_{service}\n\
             backend b_{service}\n  balance roundrobin\n  option httpchk GET /healthz\n\
             \x20 http-check expect status 200\n  http-response set-header X-Served-By %s\n\
             \x20 default-server inter 200ms fall 2 rise 2\n"
        );
        for r in replicas {
            cfg += &format!(
                "  server {} 127.0.0.1:{} check port {}\n",
                r.name,
                r.port(service),
                r.admin
            );
        }
    }
    std::fs::write(dir.join("haproxy.cfg"), cfg).unwrap();
    let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(dir.join("haproxy.cfg"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    for (port, _) in frontends {
        wait_for_port(*port);
    }
    child
}

/// Every answer of a paced load: when it was sent (from the load's start) and its
/// status (0: no answer).
pub type Answers = Vec<(Duration, u16)>;

/// Sends GET `path` with `token` to `addr` from `workers` kept-alive connections,
/// each paced at `per_worker` requests a second, until `stop`.
pub async fn paced_load(
    addr: SocketAddr,
    path: &'static str,
    token: String,
    workers: usize,
    per_worker: u32,
    stop: Arc<AtomicBool>,
) -> Answers {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (token, stop) = (token.clone(), stop.clone());
        tasks.spawn(async move {
            let mut answers = Answers::new();
            let mut pace = tokio::time::interval(Duration::from_secs(1) / per_worker);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sender = None;
            while !stop.load(Ordering::Relaxed) {
                pace.tick().await;
                let sent = started.elapsed();
                if sender.is_none() {
                    sender = connect_to(addr).await;
                }
                let Some(s) = sender.as_mut() else {
                    answers.push((sent, 0));
                    continue;
                };
                let req = http::Request::get(path)
                    .header(http::header::HOST, addr.to_string())
                    .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let answered = tokio::time::timeout(Duration::from_secs(10), async {
                    s.ready().await?;
                    let resp = s.send_request(req).await?;
                    let status = resp.status().as_u16();
                    resp.into_body().collect().await?;
                    Ok::<_, hyper::Error>(status)
                })
                .await;
                match answered {
                    Ok(Ok(status)) => answers.push((sent, status)),
                    _ => {
                        answers.push((sent, 0));
                        sender = None;
                    }
                }
            }
            answers
        });
    }
    let mut all = Answers::new();
    while let Some(a) = tasks.join_next().await {
        all.extend(a.unwrap());
    }
    all.sort();
    all
}

async fn connect_to(
    addr: SocketAddr,
) -> Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// A person at r's console, played with curl and a cookie jar.
pub struct ConsoleClient {
    base: String,
    jar: std::path::PathBuf,
}

impl ConsoleClient {
    /// Signed in with the admin token.
    pub fn sign_in(r: &Replica, dir: &std::path::Path) -> Self {
        let c = Self {
            base: format!("http://127.0.0.1:{}", r.admin),
            jar: dir.join(format!("console-{}.jar", r.name)),
        };
        let token = std::fs::read_to_string(r.dir.join("data/admin.token")).unwrap();
        assert_eq!(c.post("/ui/login", &[("token", token.trim())]), 303);
        c
    }

    fn curl(&self, path: &str) -> Command {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "--max-time", "10", "-b"])
            .arg(&self.jar)
            .arg("-c")
            .arg(&self.jar)
            .arg(format!("{}{path}", self.base));
        cmd
    }

    pub fn get(&self, path: &str) -> String {
        String::from_utf8(self.curl(path).output().unwrap().stdout).unwrap()
    }

    /// The status of a form posted to `path`.
    pub fn post(&self, path: &str, form: &[(&str, &str)]) -> u16 {
        let mut cmd = self.curl(path);
        cmd.args(["-o", "/dev/null", "-w", "%{http_code}"]);
        for (k, v) in form {
            cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        let out = cmd.output().unwrap();
        String::from_utf8(out.stdout).unwrap().parse().unwrap()
    }
}
