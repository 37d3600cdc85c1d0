//! A stdio MCP server behind a loopback Streamable HTTP endpoint, so that the
//! gateway reaches it as it reaches any MCP server (through an agent, where it runs
//! inside the private network).
//!
//! Each session is one process of the command: `initialize` (a POST without
//! `Mcp-Session-Id`) starts it and names the session; its messages go to the
//! process's stdin, one JSON-RPC message per line, and its answers come back from
//! stdout. A request's POST is answered with its response (JSON); what the process
//! sends on its own (notifications, its requests) goes to the session's GET stream
//! (server-sent events) while one is open, and is dropped otherwise. DELETE ends
//! the session and the process; so does an hour without a request, and the bridge
//! stopping. Sessions are bounded; each line the process writes is bounded; a
//! request waits at most two minutes for its response.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keyway_core::jsonrpc::{self, Message, Read};
use rand::RngCore;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

/// Processes (sessions) running at once.
const MAX_SESSIONS: usize = 32;
/// How long a message may take to be written to the process's input.
const WRITE_WITHIN: Duration = Duration::from_secs(10);
/// How long a request waits for its response.
const ANSWER_WITHIN: Duration = Duration::from_secs(120);
/// A session with no request for this long ends.
const IDLE: Duration = Duration::from_secs(3600);
/// The longest line (one message) read from the process.
const MAX_LINE: usize = 4 * 1024 * 1024;
const SESSION_HEADER: &str = "mcp-session-id";

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A stdio MCP server's command line, and the loopback address it is served on.
#[derive(Debug, Clone)]
pub struct StdioServer {
    pub listen: SocketAddr,
    pub command: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("`{0}` is not ADDR=COMMAND, like `127.0.0.1:8100=python3 server.py`")]
    Spec(String),
    #[error("a stdio MCP server listens on a loopback address only, not {0}")]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// One session: the process, its stdin, the requests waiting for their responses,
/// and the stream its own messages go to.
struct Session {
    child: Child,
    stdin: Arc<tokio::sync::Mutex<ChildStdin>>,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>,
    stream: Arc<Mutex<Option<mpsc::Sender<Value>>>>,
    last_used: Instant,
}

#[derive(Clone)]
struct Bridge {
    command: Arc<Vec<String>>,
    sessions: Arc<tokio::sync::Mutex<HashMap<String, Session>>>,
}

// === impl StdioServer ===

impl StdioServer {
    /// Reads `ADDR=COMMAND ARGS…` (the command split on spaces, no shell).
    pub fn parse(spec: &str) -> Result<Self, StdioError> {
        let bad = || StdioError::Spec(spec.chars().take(80).collect());
        let (addr, command) = spec.split_once('=').ok_or_else(bad)?;
        let listen: SocketAddr = addr.trim().parse().map_err(|_| bad())?;
        if !listen.ip().is_loopback() {
            return Err(StdioError::NotLoopback(listen));
        }
        let command: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
        if command.is_empty() {
            return Err(bad());
        }
        Ok(Self { listen, command })
    }

    /// Serves the command on `listen` until `stop` resolves; every process ends then.
    pub async fn serve(
        self,
        stop: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), StdioError> {
        let listener = TcpListener::bind(self.listen)
            .await
            .map_err(|e| StdioError::Listen(self.listen, e))?;
        tracing::info!(listen = %self.listen, command = %self.command.join(" "), "serving a stdio MCP server over HTTP");
        let bridge = Bridge {
            command: Arc::new(self.command),
            sessions: Arc::default(),
        };
        let reaper = tokio::spawn(bridge.clone().reap());
        tokio::pin!(stop);
        loop {
            let (stream, _) = tokio::select! {
                () = &mut stop => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let bridge = bridge.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let bridge = bridge.clone();
                    async move { Ok::<_, Infallible>(bridge.handle(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
        reaper.abort();
        for (_, mut s) in bridge.sessions.lock().await.drain() {
            let _ = s.child.kill().await;
        }
        Ok(())
    }
}

// === impl Bridge ===

impl Bridge {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        // Only what is on this host, by its address: a browser's page (an `Origin`)
        // or a name that resolves here (DNS rebinding) is refused.
        let host_ok = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<http::uri::Authority>().ok())
            .is_some_and(|a| {
                let host = a.host().trim_start_matches('[').trim_end_matches(']');
                host.eq_ignore_ascii_case("localhost")
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
        if !host_ok || req.headers().contains_key(header::ORIGIN) {
            return error(
                StatusCode::FORBIDDEN,
                -32600,
                "served to this host's processes only",
            );
        }
        let session = req
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match (req.method().clone(), session) {
            (Method::POST, session) => self.post(req, session).await,
            (Method::GET, Some(id)) => self.stream(&id).await,
            (Method::DELETE, Some(id)) if self.end(&id).await => answer(StatusCode::OK, None),
            (Method::DELETE, Some(_)) => answer(StatusCode::NOT_FOUND, None),
            _ => answer(StatusCode::METHOD_NOT_ALLOWED, None),
        }
    }

    async fn post(&self, req: Request<Incoming>, session: Option<String>) -> Response<Body> {
        let limits = jsonrpc::Limits::default();
        let Ok(Ok(body)) = tokio::time::timeout(
            Duration::from_secs(60),
            Limited::new(req.into_body(), limits.max_bytes).collect(),
        )
        .await
        else {
            return error(
                StatusCode::BAD_REQUEST,
                -32600,
                "the message did not arrive whole",
            );
        };
        let msg = match jsonrpc::read(&body.to_bytes(), &limits) {
            Ok(Read::One(m)) => m,
            Ok(Read::Batch(_)) => return error(StatusCode::BAD_REQUEST, -32600, "no batches"),
            Err(e) => return error(StatusCode::BAD_REQUEST, e.code(), &e.to_string()),
        };
        let id = match session {
            Some(id) => id,
            None if msg.method() == Some("initialize") => match self.start().await {
                Ok(id) => id,
                Err(resp) => return resp,
            },
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    -32600,
                    "no session: initialize first",
                )
            }
        };
        // The map is held only to find the session: a process slow to read its
        // input holds up its own session, never the others.
        let (stdin, pending) = {
            let mut sessions = self.sessions.lock().await;
            let Some(s) = sessions.get_mut(&id) else {
                return error(StatusCode::NOT_FOUND, -32001, "session not found");
            };
            s.last_used = Instant::now();
            (s.stdin.clone(), s.pending.clone())
        };
        let key = match &msg {
            Message::Request { id, .. } => Some(id.to_string()),
            _ => None,
        };
        let waiting = key.as_ref().map(|k| {
            let (tx, rx) = oneshot::channel();
            pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(k.clone(), tx);
            rx
        });
        let mut line = msg.to_value().to_string();
        line.push('\n');
        let written = tokio::time::timeout(WRITE_WITHIN, async {
            stdin.lock().await.write_all(line.as_bytes()).await
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            self.end(&id).await;
            return error(
                StatusCode::NOT_FOUND,
                -32001,
                "the server's process does not read its input; its session ended",
            );
        }
        let Some(rx) = waiting else {
            return answer(StatusCode::ACCEPTED, Some(&id));
        };
        let answered = tokio::time::timeout(ANSWER_WITHIN, rx).await;
        if let (Err(_), Some(k)) = (&answered, &key) {
            pending.lock().unwrap_or_else(|p| p.into_inner()).remove(k);
        }
        match answered {
            Ok(Ok(v)) => {
                let mut resp = answer(StatusCode::OK, Some(&id));
                *resp.body_mut() = full(v.to_string());
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                resp
            }
            _ => error(
                StatusCode::GATEWAY_TIMEOUT,
                -32001,
                "the server did not answer",
            ),
        }
    }

    /// Ends session `id` and its process; whether there was one.
    async fn end(&self, id: &str) -> bool {
        let ended = self.sessions.lock().await.remove(id);
        match ended {
            Some(mut s) => {
                let _ = s.child.kill().await;
                true
            }
            None => false,
        }
    }

    /// Starts a process for a new session: its id, or the answer refusing it.
    async fn start(&self) -> Result<String, Response<Body>> {
        let mut sessions = self.sessions.lock().await;
        if sessions.len() >= MAX_SESSIONS {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                -32000,
                "too many sessions",
            ));
        }
        let mut child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                tracing::error!(command = %self.command[0], error = %e, "the stdio MCP server did not start");
                error(StatusCode::BAD_GATEWAY, -32000, "the server could not be started")
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(error(
                StatusCode::BAD_GATEWAY,
                -32000,
                "the server could not be started",
            ));
        };
        let mut raw = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut raw);
        let id = hex::encode(raw);
        let pending: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>> = Arc::default();
        let stream: Arc<Mutex<Option<mpsc::Sender<Value>>>> = Arc::default();
        tokio::spawn(read_out(stdout, pending.clone(), stream.clone()));
        sessions.insert(
            id.clone(),
            Session {
                child,
                stdin: Arc::new(tokio::sync::Mutex::new(stdin)),
                pending,
                stream,
                last_used: Instant::now(),
            },
        );
        Ok(id)
    }

    /// The session's stream of what the process sends on its own.
    async fn stream(&self, id: &str) -> Response<Body> {
        let (tx, rx) = mpsc::channel::<Value>(64);
        {
            let sessions = self.sessions.lock().await;
            let Some(s) = sessions.get(id) else {
                return error(StatusCode::NOT_FOUND, -32001, "session not found");
            };
            *s.stream.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        }
        let events = Events(rx).boxed_unsync();
        let mut resp = Response::new(events);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        resp
    }

    /// Ends the sessions idle for longer than [`IDLE`].
    async fn reap(self) {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let mut sessions = self.sessions.lock().await;
            let idle: Vec<String> = sessions
                .iter()
                .filter(|(_, s)| s.last_used.elapsed() > IDLE)
                .map(|(id, _)| id.clone())
                .collect();
            for id in idle {
                if let Some(mut s) = sessions.remove(&id) {
                    let _ = s.child.kill().await;
                }
            }
        }
    }
}

/// Reads the process's messages, one per line: a response goes to the request
/// waiting for it, anything else to the session's stream.
async fn read_out(
    stdout: tokio::process::ChildStdout,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>,
    stream: Arc<Mutex<Option<mpsc::Sender<Value>>>>,
) {
    let mut lines = BufReader::new(stdout);
    let mut line = Vec::new();
    let limits = jsonrpc::Limits {
        max_bytes: MAX_LINE,
        ..jsonrpc::Limits::default()
    };
    loop {
        line.clear();
        let mut bounded = (&mut lines).take(MAX_LINE as u64 + 1);
        let ended = match bounded.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => true,
            Ok(_) if line.len() > MAX_LINE => {
                tracing::warn!(
                    "the stdio MCP server wrote a line past the bound; its session ends"
                );
                true
            }
            Ok(_) => false,
        };
        if ended {
            // Whatever waits for an answer learns now that none will come.
            pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
            return;
        }
        let msg = match jsonrpc::read(line.trim_ascii(), &limits) {
            Ok(Read::One(m)) => m,
            _ => {
                tracing::debug!("the stdio MCP server wrote a line that is not JSON-RPC; dropped");
                continue;
            }
        };
        if let Message::Response { id, .. } = &msg {
            let waiter = pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id.to_string());
            if let Some(w) = waiter {
                let _ = w.send(msg.to_value());
                continue;
            }
        }
        let tx = stream.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(tx) = tx {
            let _ = tx.try_send(msg.to_value());
        }
    }
}

/// The body of a session's stream: each message the process sends on its own, as
/// a server-sent event.
struct Events(mpsc::Receiver<Value>);

impl hyper::body::Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| {
            m.map(|v| {
                let ev = keyway_core::sse::Event {
                    event: Some("message".into()),
                    data: Some(v.to_string()),
                    ..Default::default()
                };
                Ok(Frame::data(Bytes::from(keyway_core::sse::write(&ev))))
            })
        })
    }
}

fn full(s: String) -> Body {
    Full::new(Bytes::from(s)).boxed_unsync()
}

/// An answer with no body, naming the session when there is one.
fn answer(status: StatusCode, session: Option<&str>) -> Response<Body> {
    let mut resp = Response::new(full(String::new()));
    *resp.status_mut() = status;
    if let Some(v) = session.and_then(|s| http::HeaderValue::from_str(s).ok()) {
        resp.headers_mut().insert(SESSION_HEADER, v);
    }
    resp
}

fn error(status: StatusCode, code: i64, why: &str) -> Response<Body> {
    let mut resp = Response::new(full(
        jsonrpc::error_response(&Value::Null, code, why).to_string(),
    ));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
