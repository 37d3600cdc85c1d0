//! Finding and calling the admin API.
//!
//! Where it is and which credential to use comes from, in order: `--admin-url` (or
//! `KEYWAY_ADMIN_URL`) with `KEYWAY_ADMIN_TOKEN` or `--admin-token-file`; or a config
//! file (`--config`, `KEYWAY_CONFIG`, else `./keyway.toml`): its `admin_listen`, and
//! the credential in `<data_dir>/admin.token` (or `KEYWAY_ADMIN_TOKEN`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keyway_core::config::Config;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The gateway's config file; its `admin_listen` and `data_dir` locate the admin
    /// API and its credential.
    #[arg(long, short, env = "KEYWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// The admin API's URL, e.g. `http://127.0.0.1:7070` (with `KEYWAY_ADMIN_TOKEN`).
    #[arg(long, env = "KEYWAY_ADMIN_URL")]
    pub admin_url: Option<String>,
    /// A file holding the admin token (instead of `KEYWAY_ADMIN_TOKEN`).
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
}

pub struct AdminClient {
    base: String,
    token: SecretString,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// The most an admin API answer may be.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

impl AdminClient {
    pub fn resolve(a: &AdminArgs) -> Result<Self> {
        let env_token = std::env::var("KEYWAY_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        let (base, token) = if let Some(url) = &a.admin_url {
            let token = match (&a.admin_token_file, env_token) {
                (Some(f), _) => read_token(f)?,
                (None, Some(t)) => SecretString::from(t),
                (None, None) => bail!("--admin-url needs an admin token: set KEYWAY_ADMIN_TOKEN or pass --admin-token-file"),
            };
            (url.trim_end_matches('/').to_owned(), token)
        } else {
            let path = a
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from("keyway.toml"));
            if a.config.is_none() && !path.exists() {
                bail!(
                    "no gateway to talk to: pass --config keyway.toml (the gateway's config), \
                     or --admin-url with KEYWAY_ADMIN_TOKEN"
                );
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let dir = path.parent().map(PathBuf::from).unwrap_or_default();
            let config =
                Config::parse(&text, &dir).map_err(|e| anyhow!("{}:\n{e}", path.display()))?;
            let mut addr = config.admin_listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            let token = match (&a.admin_token_file, env_token) {
                (Some(f), _) => read_token(f)?,
                (None, Some(t)) => SecretString::from(t),
                (None, None) => read_token(&config.data_dir.join("admin.token"))?,
            };
            (format!("http://{addr}"), token)
        };
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            base,
            token,
            client,
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let body = self.call(Method::GET, path, Bytes::new()).await?;
        serde_json::from_slice(&body).context("the admin API answered with something unexpected")
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        json: &serde_json::Value,
    ) -> Result<T> {
        let body = self
            .call(Method::POST, path, Bytes::from(json.to_string()))
            .await?;
        serde_json::from_slice(&body).context("the admin API answered with something unexpected")
    }

    pub async fn put_raw(&self, path: &str, body: &[u8]) -> Result<()> {
        self.call(Method::PUT, path, Bytes::copy_from_slice(body))
            .await?;
        Ok(())
    }

    async fn call(&self, method: Method, path: &str, body: Bytes) -> Result<Bytes> {
        let url = format!("{}{path}", self.base);
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.token.expose_secret()),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .context("building the admin request")?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .map_err(|_| anyhow!("the admin API at {} did not answer within 30s", self.base))?
            .map_err(|e| {
                anyhow!(
                    "cannot reach the admin API at {} ({e}); is the gateway running?",
                    self.base
                )
            })?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| anyhow!("reading the admin API's answer: {e}"))?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        let msg = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| status.to_string());
        if status == StatusCode::UNAUTHORIZED {
            bail!("the admin API refused the admin token (is it the one in <data_dir>/admin.token of this gateway?)");
        }
        bail!("{msg}")
    }
}

/// Trades a client credential at the token endpoint `base`; the JSON answer.
pub async fn exchange(
    base: &str,
    credential: &SecretString,
    body: &serde_json::Value,
) -> Result<serde_json::Value> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let url = format!("{}/v1/token/exchange", base.trim_end_matches('/'));
    let req = Request::builder()
        .method(Method::POST)
        .uri(&url)
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", credential.expose_secret()),
        )
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .with_context(|| format!("`{base}` is not a URL like http://127.0.0.1:7071"))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| anyhow!("the token endpoint at {base} did not answer within 30s"))?
        .map_err(|e| anyhow!("cannot reach the token endpoint at {base} ({e})"))?;
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), 1024 * 1024)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the token endpoint's answer: {e}"))?
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| anyhow!("the token endpoint answered {status} with something unexpected"))?;
    if !status.is_success() {
        let msg = v["error_description"].as_str().unwrap_or("refused");
        bail!("the token endpoint refused: {msg} ({status})");
    }
    Ok(v)
}

/// Reads a token (admin token, client credential) from a file, trimmed.
pub fn read_token(path: &std::path::Path) -> Result<SecretString> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading the admin token from {} (the gateway writes it on first start)",
            path.display()
        )
    })?;
    Ok(SecretString::from(text.trim().to_owned()))
}

/// Percent-encodes a value for one URL path segment.
pub fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
