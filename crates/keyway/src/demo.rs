//! `keyway demo`: the gateway on its embedded default, in front of a small demo API.
//!
//! It writes a real config file into its folder (so the CLI can be pointed at it),
//! starts a demo upstream that only answers when the gateway injects its API key,
//! issues a token scoped to `GET /invoices/`, and prints the `curl` lines to try.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keyway_core::SystemClock;
use keyway_gateway::{Gateway, IssueRequest, Listeners};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::serve;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The demo's folder: its config, SQLite store and keys.
    #[arg(long, default_value = "keyway-demo")]
    dir: PathBuf,
    /// Port of the demo service on the gateway (another is picked if it is taken).
    #[arg(long, default_value_t = 9001)]
    port: u16,
    /// Port of the admin API (another is picked if it is taken).
    #[arg(long, default_value_t = 7070)]
    admin_port: u16,
}

pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)?;

    let api_key = SecretString::from(random_key());
    let upstream = TcpListener::bind("127.0.0.1:0").await?;
    let upstream_addr = upstream.local_addr()?;
    let shutdown = CancellationToken::new();
    tokio::spawn(demo_upstream(upstream, api_key.clone(), shutdown.clone()));

    let service = bind_preferred(args.port).await?;
    let admin = bind_preferred(args.admin_port).await?;
    let service_addr = service.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let config_path = dir.join("keyway.toml");
    let config_text = format!(
        r#"# Written by `keyway demo`; rewritten on every start.
data_dir = "keyway-data"
admin_listen = "{admin_addr}"
max_ttl = "24h"

[services.billing]
protocol = "http"
listen = "{service_addr}"
upstream = "http://{upstream_addr}"
max_ttl = "1h"
allow_cidrs = ["127.0.0.0/8", "::1/128"]
rate_limit = "50/s"
upstream_auth = {{ header = "X-Api-Key", secret = "billing-key" }}
"#
    );
    std::fs::write(&config_path, config_text).context("writing the demo config")?;
    let config = serve::load_config(&config_path)?;
    let listeners = Listeners {
        admin,
        token: None,
        tunnel: None,
        tls: Default::default(),
        services: [("billing".to_owned(), service)].into(),
        local_ca: None,
        upstream_tls: Default::default(),
    };
    let gw = Arc::new(Gateway::open(config, Arc::new(SystemClock)).await?);
    gw.set_secret("billing-key", &api_key, "demo").await?;
    let (token, record) = gw
        .issue(
            &IssueRequest {
                service: "billing".into(),
                principal: "demo-user".into(),
                ttl: Some("15m".into()),
                methods: vec!["GET".into()],
                paths: vec!["/invoices/".into()],
                cert_thumbprint: None,
                role: None,
                ..Default::default()
            },
            "demo",
        )
        .await?;

    let base = format!("http://{service_addr}");
    // Shown as the user named it, so the printed lines read naturally.
    let cfg = args.dir.join("keyway.toml");
    let cfg = cfg.display();
    println!(
        r#"Keyway demo is running. Ctrl-C stops it.

  service `billing`  {base}  ->  demo upstream http://{upstream_addr}
  admin API          http://{admin_addr}  (credential: {data}/admin.token)

A token for `demo-user`, allowed GET under /invoices/ for 15 minutes (id {id}):

TOKEN={token}

Try it in another shell (paste the TOKEN line first):

  # 200: the gateway checks the token, injects the upstream's API key, forwards
  curl -s -H "Authorization: Bearer $TOKEN" {base}/invoices/

  # 403: outside the token's scope
  curl -s -i -H "Authorization: Bearer $TOKEN" {base}/admin/

  # 401: no token
  curl -s -i {base}/invoices/

Then see the tokens and revoke this one:

  cargo run --release -- token list --config {cfg}
  cargo run --release -- token revoke {id} --config {cfg}
"#,
        data = args.dir.join("keyway-data").display(),
        id = record.id,
        token = token.secret().expose_secret(),
    );

    tokio::spawn(serve::stop_on_signal(shutdown.clone()));
    keyway_gateway::run(gw, listeners, shutdown).await;
    println!(
        "Keyway demo stopped; audit log flushed to {}",
        args.dir.join("keyway-data/keyway.db").display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn bind_preferred(port: u16) -> Result<TcpListener> {
    match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => Ok(l),
        Err(_) => Ok(TcpListener::bind("127.0.0.1:0").await?),
    }
}

fn random_key() -> String {
    use rand::Rng;
    rand::rngs::OsRng
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// The demo's internal API: answers only requests that carry its API key, which only
/// the gateway knows.
async fn demo_upstream(listener: TcpListener, api_key: SecretString, shutdown: CancellationToken) {
    let key = Arc::new(api_key);
    loop {
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let key = key.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let key = key.clone();
            async move { Ok::<_, Infallible>(demo_answer(&req, &key)) }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn demo_answer(req: &Request<Incoming>, key: &SecretString) -> Response<Full<Bytes>> {
    let presented = req.headers().get("x-api-key").map(|v| v.as_bytes());
    let ok = presented.is_some_and(|p| {
        use subtle::ConstantTimeEq;
        p.ct_eq(key.expose_secret().as_bytes()).into()
    });
    let (status, body) = if !ok {
        (
            StatusCode::UNAUTHORIZED,
            "{\"error\": \"the demo API wants its API key\"}\n".to_owned(),
        )
    } else if req.uri().path().starts_with("/invoices/") {
        let body = serde_json::json!({
            "invoices": [
                { "id": 41, "customer": "Acme", "amount": "1200.00" },
                { "id": 42, "customer": "Globex", "amount": "310.50" },
            ],
            "path": req.uri().path(),
            "client_token_forwarded": req.headers().contains_key("authorization"),
        });
        (StatusCode::OK, format!("{body}\n"))
    } else {
        (StatusCode::OK, "{\"area\": \"admin\"}\n".to_owned())
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
