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
    /// Where the token came from, for the hint when it is refused.
    token_from: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// The most an admin API answer may be.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

impl AdminClient {
    pub fn resolve(a: &AdminArgs) -> Result<Self> {
        let env_token = std::env::var("KEYWAY_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        let env_from = || "KEYWAY_ADMIN_TOKEN".to_owned();
        let file_from = |f: &std::path::Path| f.display().to_string();
        let (base, (token, token_from)) = if let Some(url) = &a.admin_url {
            let token = match (&a.admin_token_file, env_token) {
                (Some(f), _) => (read_token(f)?, file_from(f)),
                (None, Some(t)) => (SecretString::from(t), env_from()),
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
            let (config, addr) = admin_address(&path)?;
            let token = match (&a.admin_token_file, env_token) {
                (Some(f), _) => (read_token(f)?, file_from(f)),
                (None, Some(t)) => (SecretString::from(t), env_from()),
                (None, None) => {
                    let f = config.data_dir.join("admin.token");
                    let token = read_token(&f).context(
                        "the gateway writes data_dir/admin.token on its first start; is this its config?",
                    )?;
                    (token, file_from(&f))
                }
            };
            (format!("http://{addr}"), token)
        };
        let client = plain_client(Duration::from_secs(5));
        Ok(Self {
            base,
            token,
            token_from,
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
            bail!(
                "the admin API refused the admin token from {}: it is not this gateway's, or it \
                 was revoked (an admin token sent in a URL is revoked at once). For a new one, \
                 stop the gateway and run `keyway admin reset --config <its keyway.toml>`",
                self.token_from
            );
        }
        bail!("{msg}")
    }
}

/// An HTTP client for the admin API (plain HTTP: it listens on the gateway's host),
/// giving up on a connection after `connect_timeout`.
fn plain_client(connect_timeout: Duration) -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    Client::builder(TokioExecutor::new()).build(connector)
}

/// A gateway's config, and the address its admin API answers on from this host.
fn admin_address(path: &std::path::Path) -> Result<(Config, std::net::SocketAddr)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config = Config::parse(&text, &crate::serve::config_dir(path))
        .map_err(|e| anyhow!("{}:\n{e}", path.display()))?;
    let mut addr = config.admin_listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok((config, addr))
}

/// `keyway health`: the gateway's `/healthz`, needing no token and no shell (a
/// container's HEALTHCHECK, a script). Prints its answer; exit status 0 only while
/// the gateway serves (200), 1 when it drains, lags the shared store or is out of
/// reach.
pub async fn health(config: &std::path::Path) -> Result<std::process::ExitCode> {
    let (_, addr) = admin_address(config)?;
    let url = format!("http://{addr}/healthz");
    let client = plain_client(Duration::from_secs(2));
    let req = Request::get(&url)
        .body(Full::new(Bytes::new()))
        .context("building the health request")?;
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        let resp = client.request(req).await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), 4096)
            .collect()
            .await
            .map_err(|e| anyhow!("{e}"))?
            .to_bytes();
        anyhow::Ok((status, body))
    })
    .await;
    match answer {
        Ok(Ok((status, body))) => {
            let text = String::from_utf8_lossy(&body);
            println!("{} {}", status.as_u16(), text.trim());
            Ok(if status == StatusCode::OK {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            })
        }
        Ok(Err(e)) => {
            eprintln!("error: no answer from {url}: {e}");
            Ok(std::process::ExitCode::FAILURE)
        }
        Err(_) => {
            eprintln!("error: {url} did not answer within 5 s");
            Ok(std::process::ExitCode::FAILURE)
        }
    }
}

/// How to reach the token endpoint over TLS.
#[derive(Debug, Default, Args)]
pub struct TlsArgs {
    /// The CA that signed the token endpoint's certificate (for `https://`).
    #[arg(long, value_name = "CA.pem")]
    pub ca: Option<PathBuf>,
    /// A client certificate to present (mTLS), with `--key`.
    #[arg(long, value_name = "CERT.pem", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key.
    #[arg(long, value_name = "KEY.pem", requires = "cert")]
    pub key: Option<PathBuf>,
}

/// Trades a client credential at the token endpoint `base` (`http://` or `https://`,
/// with mTLS when a client certificate is given); the JSON answer.
pub async fn exchange(
    base: &str,
    tls: &TlsArgs,
    credential: Option<&SecretString>,
    body: &serde_json::Value,
) -> Result<serde_json::Value> {
    let (status, v) = token_endpoint(
        base,
        tls,
        credential,
        Method::POST,
        "/v1/token/exchange",
        Some(body),
    )
    .await?;
    if !status.is_success() {
        bail!("the token endpoint refused: {} ({status})", refusal(&v));
    }
    Ok(v)
}

/// What a refusal from the token endpoint says.
pub fn refusal(v: &serde_json::Value) -> &str {
    v["error_description"].as_str().unwrap_or("refused")
}

/// Calls the token endpoint `base` (`http://` or `https://`, with mTLS when a client
/// certificate is given) with a Bearer token when given: the status and the JSON
/// answer, whatever the status.
pub async fn token_endpoint(
    base: &str,
    tls: &TlsArgs,
    bearer: Option<&SecretString>,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(StatusCode, serde_json::Value)> {
    let uri: http::Uri = format!("{}{path}", base.trim_end_matches('/'))
        .parse()
        .map_err(|_| anyhow!("`{base}` is not a URL like http://127.0.0.1:7071"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => bail!("`{base}` must start with http:// or https://"),
    };
    let host = uri
        .host()
        .ok_or_else(|| anyhow!("`{base}` has no host"))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let mut req = Request::builder()
        .method(method)
        .uri(uri.path())
        .header(header::HOST, format!("{host}:{port}"));
    if let Some(c) = bearer {
        req = req.header(
            header::AUTHORIZATION,
            format!("Bearer {}", c.expose_secret()),
        );
    }
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    let req = req
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .context("building the request to the token endpoint")?;
    let call = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| anyhow!("cannot reach the token endpoint at {base} ({e})"))?;
        if https {
            let connector = tokio_rustls::TlsConnector::from(tls_client_config(tls)?);
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| anyhow!("`{host}` is not a valid TLS server name"))?;
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|e| anyhow!("TLS with the token endpoint failed: {e}"))?;
            send_one(stream, req).await
        } else {
            if tls.cert.is_some() {
                bail!("a client certificate needs an https:// token endpoint");
            }
            send_one(tcp, req).await
        }
    };
    let (status, bytes) = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .map_err(|_| anyhow!("the token endpoint at {base} did not answer within 30s"))??;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| anyhow!("the token endpoint answered {status} with something unexpected"))?;
    Ok((status, v))
}

async fn send_one<IO>(io: IO, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes)>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| anyhow!("HTTP with the token endpoint failed: {e}"))?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| anyhow!("the token endpoint did not answer ({e})"))?;
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), 1024 * 1024)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the token endpoint's answer: {e}"))?
        .to_bytes();
    Ok((status, bytes))
}

fn tls_client_config(tls: &TlsArgs) -> Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let ca = tls.ca.as_ref().ok_or_else(|| {
        anyhow!("an https:// token endpoint needs --ca (the CA of its certificate)")
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for c in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots
            .add(c.with_context(|| format!("reading {}", ca.display()))?)
            .with_context(|| format!("{} holds an unusable CA certificate", ca.display()))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("reading {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("reading {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading {}", key.display()))?;
            builder.with_client_auth_cert(certs, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(std::sync::Arc::new(config))
}

/// Reads a token (admin token, client credential) from a file, trimmed.
pub fn read_token(path: &std::path::Path) -> Result<SecretString> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("reading a token from {}", path.display()))?,
    );
    let token = text.trim();
    if token.is_empty() || token.chars().any(char::is_whitespace) {
        bail!("{} must hold one token and nothing else", path.display());
    }
    Ok(SecretString::from(token.to_owned()))
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
