//! A gateway on port 0 with a real SQLite store in a temporary folder, a real upstream
//! HTTP server that records what reaches it, and a plain HTTP client.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod pki;

pub mod protocols;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keyway_core::config::Config;
use keyway_core::{Clock, ManualClock, SystemClock};
use keyway_gateway::{Gateway, IssueRequest, Listeners};
use keyway_store::{AuditQuery, StoredEvent};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body_len: usize,
}

/// A real HTTP server on 127.0.0.1:0.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
}

impl Upstream {
    /// Routes: `/slow` answers after 3 s; `/stream` (and any path ending in it)
    /// sends a chunk every 20 ms for 10 s; `/echo` returns the request body; anything else `upstream ok <path>`.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (s, c) = (seen.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let s = s.clone();
                    async move { Ok::<_, Infallible>(answer(req, s).await) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            connections,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(req: Request<Incoming>, seen: Arc<Mutex<Vec<Seen>>>) -> Response<TestBody> {
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body_len: bytes.len(),
    });
    match parts.uri.path() {
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Response::new(Full::new(Bytes::from("slow")).boxed())
        }
        p if p == "/stream" || p.ends_with("/stream") => {
            let stream = async_stream(Duration::from_millis(20), 500);
            Response::new(stream.boxed())
        }
        "/echo" => Response::new(Full::new(bytes).boxed()),
        "/sse" => {
            let mut r = Response::new(sse(Duration::from_millis(500)).boxed());
            r.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("text/event-stream"),
            );
            r
        }
        "/download" => Response::new(download().boxed()),
        p => Response::new(Full::new(Bytes::from(format!("upstream ok {p}"))).boxed()),
    }
}

fn async_stream(every: Duration, n: usize) -> ChannelBody {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for i in 0..n {
            if tx.send(Bytes::from(format!("chunk {i}\n"))).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
    ChannelBody(rx)
}

/// Server-sent events, one every `every`, for at most a minute.
fn sse(every: Duration) -> ChannelBody {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for i in 0..(60_000 / every.as_millis().max(1) as usize) {
            if tx
                .send(Bytes::from(format!("event: tick\ndata: {i}\n\n")))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
    ChannelBody(rx)
}

/// A large download (at most 1 GiB), sent as fast as the reader takes it.
fn download() -> ChannelBody {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'd'; 64 * 1024]);
        for _ in 0..16 * 1024 {
            if tx.send(chunk.clone()).await.is_err() {
                return;
            }
        }
    });
    ChannelBody(rx)
}

/// A WebSocket echo server on 127.0.0.1:0 that records the request headers it saw.
pub async fn websocket_echo() -> (SocketAddr, Arc<Mutex<Vec<HeaderMap>>>) {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let s = s.clone();
            tokio::spawn(async move {
                #[allow(clippy::result_large_err)] // tungstenite's callback signature
                let record = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                              resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                    s.lock().unwrap().push(req.headers().clone());
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A response body fed by a channel: a real long-lived stream.
pub struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// A running gateway.
pub struct TestGateway {
    pub gw: Arc<Gateway>,
    pub clock: Arc<ManualClock>,
    pub admin: SocketAddr,
    /// The token endpoint, when the config has `token_listen`.
    pub token: Option<SocketAddr>,
    /// The tunnel listener, when the config has `tunnel_listen`.
    pub tunnel: Option<SocketAddr>,
    pub services: std::collections::BTreeMap<String, SocketAddr>,
    pub dir: tempfile::TempDir,
    pub shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl TestGateway {
    /// Starts a gateway from `config` (TOML, with `listen = "127.0.0.1:0"` ports).
    pub async fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(config, dir.path()).unwrap();
        let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
        let listeners = Listeners::bind(&config).await.unwrap();
        let admin = listeners.admin_addr().unwrap();
        let token = listeners.token_addr();
        let tunnel = listeners.tunnel_addr();
        let services = config
            .services
            .keys()
            .filter_map(|n| Some((n.clone(), listeners.service_addr(n)?)))
            .collect();
        let gw = Arc::new(Gateway::open(config, clock.clone()).await.unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(keyway_gateway::run(gw.clone(), listeners, shutdown.clone()));
        Self {
            gw,
            clock,
            admin,
            token,
            tunnel,
            services,
            dir,
            shutdown,
            task,
        }
    }

    pub fn addr(&self, service: &str) -> SocketAddr {
        self.services[service]
    }

    pub fn data_dir(&self) -> PathBuf {
        self.gw.config().data_dir.clone()
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Issues a token in process; returns (token, id, expires_at).
    pub async fn issue(
        &self,
        service: &str,
        methods: &[&str],
        paths: &[&str],
        ttl: &str,
    ) -> (String, String, i64) {
        let req = IssueRequest {
            service: service.into(),
            principal: "alice".into(),
            ttl: Some(ttl.into()),
            methods: methods.iter().map(|s| s.to_string()).collect(),
            paths: paths.iter().map(|s| s.to_string()).collect(),
            cert_thumbprint: None,
            role: None,
            ..Default::default()
        };
        let (t, r) = self.gw.issue(&req, "test").await.unwrap();
        (t.secret().expose_secret().to_owned(), r.id, r.expires_at)
    }

    pub async fn set_secret(&self, name: &str, value: &str) {
        self.gw
            .set_secret(name, &SecretString::from(value), "test")
            .await
            .unwrap();
    }

    /// Every audit event written so far (waits for the writer to catch up).
    pub async fn audit(&self) -> Vec<StoredEvent> {
        for _ in 0..100 {
            let stats = self.gw.audit.stats();
            let queued = self.gw.audit.queued();
            if queued == 0 && stats.written.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.gw
            .store
            .audit_events(&AuditQuery {
                after_seq: 0,
                limit: 10_000,
                ..AuditQuery::default()
            })
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

/// The header every write to the admin API with a body carries.
pub const JSON: (&str, &str) = ("content-type", "application/json");

/// A response as a client sees it.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// Sends one request on a new connection.
pub async fn send(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Got {
    send_with(addr, method, path, token, &[], Bytes::new()).await
}

pub async fn send_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Got {
    let mut conn = Conn::open(addr).await;
    conn.send(method, path, token, headers, body).await
}

/// One keep-alive client connection.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self { sender, addr }
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Got {
        let resp = self.request(method, path, token, headers, body).await;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Got {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Response<Incoming> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.sender.ready().await.unwrap();
        self.sender
            .send_request(b.body(Full::new(body)).unwrap())
            .await
            .unwrap()
    }
}

/// One service's lines for [`config`]: `upstream` as its upstream, then `extra`.
pub fn svc(upstream: &Upstream, extra: &str) -> String {
    format!("upstream = \"{}\"\n{extra}", upstream.url())
}

/// A config with one or more HTTP services in front of `upstream`, on port 0.
pub fn config(services: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "admin_listen = \"127.0.0.1:0\"\ntoken_listen = \"127.0.0.1:0\"\nmax_ttl = \"24h\"\n",
    );
    for (name, extra) in services {
        let max_ttl = if extra.contains("max_ttl") {
            ""
        } else {
            "max_ttl = \"1h\"\n"
        };
        s.push_str(&format!(
            "\n[services.{name}]\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\n{max_ttl}{extra}\n"
        ));
    }
    s
}
