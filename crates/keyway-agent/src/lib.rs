//! The Keyway agent: it runs inside a private network, dials out to the gateway's
//! tunnel listener, and carries the connections of the services assigned to it, so
//! the network opens no inbound port.
//!
//! - **Enrollment** (first start): the enrollment token (from `keyway agent enroll`)
//!   carries the SHA-256 pin of the gateway's CA, so the agent needs no CA file and
//!   cannot be pointed at an impostor. The agent makes its own key (it never leaves
//!   `agent.pem`, mode 0600), sends a certificate request with the token, and keeps
//!   the certificate the gateway signs beside the key. Later connections use it (mTLS).
//! - **Serving**: one TLS connection; the agent says which agent it is, then serves
//!   HTTP/2 on the connection it dialled: `CONNECT host:port` opens a stream to an
//!   upstream (refused unless `allow_upstreams` lists it; an empty list needs an
//!   explicit `allow_any_upstream`),
//!   `GET /health` answers the gateway's heartbeat.
//! - **Staying up**: on any loss it reconnects with jittered exponential backoff
//!   (reset after a stable session), so it survives gateway restarts; it renews its
//!   certificate when two thirds of its life have passed.
//! - **Several gateways**: it keeps a tunnel to every address of every gateway it is
//!   given (replicas on one shared store), see `gateways.rs`.
//!
//! It does not link the gateway or its store.

#![forbid(unsafe_code)]

use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keyway_core::tunnel::{self, AgentHello, Enroll, Hello, Renew, Reply};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The name in the tunnel certificate agents verify (the gateway's `AGENT_SERVER_NAME`).
const GATEWAY_NAME: &str = "gateway.keyway";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// A session that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(60);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

mod gateways;
pub mod stdio;
mod upstreams;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The gateways' tunnel listeners, each `host:port`; a name may resolve to
    /// several addresses. The agent keeps a tunnel to every one.
    pub gateways: Vec<String>,
    /// Holds the key, the certificate and the gateway's CA (mode 0700).
    pub data_dir: PathBuf,
    /// The enrollment token file, needed on the first start only.
    pub enroll_token_file: Option<PathBuf>,
    /// The upstreams (`host:port`) the agent will ever dial.
    pub allow_upstreams: Vec<String>,
    /// Dial whatever the gateway asks (only when `allow_upstreams` is empty).
    pub allow_any_upstream: bool,
    /// Stdio MCP servers the agent runs, each served on its loopback address (which
    /// the agent may then dial).
    pub mcp_stdio: Vec<stdio::StdioServer>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Setup(String),
    #[error("the gateway refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Io(String),
}

/// Stops the agent when it turns `true`.
pub type Shutdown = tokio::sync::watch::Receiver<bool>;

fn setup<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> AgentError + '_ {
    move |e| AgentError::Setup(format!("{what}: {e}"))
}

/// The agent's files. Its certificate and key share one file (mode 0600), replaced
/// in one rename, so they always match.
#[derive(Clone)]
struct Files {
    identity: PathBuf,
    ca: PathBuf,
}

impl Files {
    fn in_dir(dir: &Path) -> Self {
        Self {
            identity: dir.join("agent.pem"),
            ca: dir.join("gateway-ca.der"),
        }
    }

    fn save_identity(&self, cert_pem: &str, key: &rcgen::KeyPair) -> Result<(), AgentError> {
        let both = format!("{cert_pem}\n{}", key.serialize_pem());
        write_private(&self.identity, both.as_bytes())
    }
}

/// Runs the agent until `shutdown` turns true: enrolls if it has no certificate,
/// then serves, reconnecting as needed. Returns early only for what retrying cannot
/// fix (no enrollment token, a refused enrollment).
pub async fn run(mut opts: Options, shutdown: Shutdown) -> Result<(), AgentError> {
    for server in std::mem::take(&mut opts.mcp_stdio) {
        if !opts.allow_any_upstream {
            opts.allow_upstreams.push(server.listen.to_string());
        }
        let mut stop = shutdown.clone();
        let listen = server.listen;
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = server.serve(stopped).await {
                tracing::error!(%listen, error = %e, "a stdio MCP server could not be served");
            }
        });
    }
    if opts.allow_upstreams.is_empty() && !opts.allow_any_upstream {
        return Err(AgentError::Setup(
            "name the upstreams this agent may dial (--allow-upstream HOST:PORT, repeated), \
             or pass --allow-any-upstream to trust the gateway with every address it can reach"
                .into(),
        ));
    }
    if opts.gateways.is_empty() {
        return Err(AgentError::Setup(
            "name the gateway: --gateway HOST:PORT".into(),
        ));
    }
    if let Some(g) = opts.gateways.iter().find(|g| !g.contains(':')) {
        return Err(AgentError::Setup(format!(
            "--gateway is HOST:PORT (the gateway's tunnel_listen), not `{g}`"
        )));
    }
    if !opts.data_dir.exists() {
        std::fs::create_dir_all(&opts.data_dir).map_err(setup("creating the data folder"))?;
        std::fs::set_permissions(&opts.data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(setup("securing the data folder"))?;
    }
    let files = Files::in_dir(&opts.data_dir);
    if !files.identity.exists() {
        let path = opts.enroll_token_file.as_ref().ok_or_else(|| {
            AgentError::Setup(
                "not enrolled yet: pass --enroll-token-file (from `keyway agent enroll NAME`)"
                    .into(),
            )
        })?;
        let text = std::fs::read_to_string(path).map_err(setup("reading the enrollment token"))?;
        enroll(&opts, &files, text.trim()).await?;
    }
    gateways::keep_all(Arc::new(opts), files, shutdown).await;
    Ok(())
}

/// `d` give or take a quarter.
fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::Rng::gen_range(&mut rand::thread_rng(), 0.75..1.25);
    d.mul_f64(f)
}

/// The first start: trade the enrollment token (which pins the gateway's CA) for a
/// certificate of a key made here.
async fn enroll(opts: &Options, files: &Files, enrollment: &str) -> Result<(), AgentError> {
    let (token, pin) = enrollment.rsplit_once('.').ok_or_else(|| {
        AgentError::Setup(
            "the enrollment token file does not hold `TOKEN.PIN` from `keyway agent enroll`".into(),
        )
    })?;
    let pin: [u8; 32] = hex::decode(pin)
        .ok()
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| {
            AgentError::Setup("the enrollment token's CA pin is not 64 hex digits".into())
        })?;
    let provider = Arc::new(tunnel::crypto_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(setup("TLS"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa { pin, provider }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"keyway-tunnel".to_vec()];
    let config = Arc::new(config);
    // Any one gateway will do: the token is spent in the store they share.
    let (addrs, failed) = gateways::resolve(&opts.gateways).await;
    let mut tls = None;
    let mut why = failed;
    for addr in addrs {
        match connect(&addr.to_string(), config.clone()).await {
            Ok(t) => {
                tls = Some(t);
                break;
            }
            Err(e) => why.push(e.to_string()),
        }
    }
    let mut tls = tls.ok_or_else(|| {
        AgentError::Io(format!(
            "cannot enroll: no gateway answered ({})",
            why.join("; ")
        ))
    })?;
    // The CA that matched the pin, kept for every later connection.
    let ca = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.iter().find(|c| Sha256::digest(c.as_ref())[..] == pin))
        .cloned()
        .ok_or_else(|| AgentError::Setup("the gateway sent no CA matching the pin".into()))?;
    let key = rcgen::KeyPair::generate().map_err(setup("making a key"))?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|p| p.serialize_request(&key))
        .and_then(|r| r.pem())
        .map_err(setup("making a certificate request"))?;
    let hello = Hello::Enroll(Enroll {
        token: token.to_owned(),
        csr_pem: csr,
    });
    let reply = exchange(&mut tls, &hello).await?;
    let cert = reply
        .cert_pem
        .ok_or_else(|| AgentError::Refused("no certificate".into()))?;
    std::fs::write(&files.ca, ca.as_ref()).map_err(setup("saving the gateway's CA"))?;
    files.save_identity(&cert, &key)?;
    tracing::info!(agent = agent_name(files).unwrap_or_default(), "enrolled");
    Ok(())
}

/// Sends the first frame, reads the reply; a refusal is an error.
async fn exchange(tls: &mut TlsStream<TcpStream>, hello: &Hello) -> Result<Reply, AgentError> {
    tls.write_all(&tunnel::encode(hello))
        .await
        .map_err(|e| AgentError::Io(format!("sending to the gateway: {e}")))?;
    let reply: Reply = tokio::time::timeout(CONNECT_TIMEOUT, tunnel::read_frame::<Reply, _>(tls))
        .await
        .map_err(|_| AgentError::Io("the gateway did not answer".into()))?
        .map_err(|e| match e {
            tunnel::FrameError::Closed => {
                AgentError::Io("the gateway closed the connection".into())
            }
            e => AgentError::Io(e.to_string()),
        })?;
    if !reply.ok {
        return Err(AgentError::Refused(reply.error.unwrap_or_default()));
    }
    Ok(reply)
}

async fn connect(
    gateway: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, AgentError> {
    if !gateway.contains(':') {
        return Err(AgentError::Setup("--gateway is HOST:PORT".into()));
    }
    // The CA is pinned, so the gateway's certificate is checked for one fixed name,
    // whatever address (DNS name, NAT, 0.0.0.0 bind) the agent dials.
    let name = ServerName::try_from(GATEWAY_NAME).map_err(setup("the gateway's name"))?;
    tokio::time::timeout(CONNECT_TIMEOUT, async {
        let tcp = TcpStream::connect(gateway)
            .await
            .map_err(|e| AgentError::Io(format!("cannot reach the gateway at {gateway}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| AgentError::Io(format!("TLS with the gateway failed: {e}")))
    })
    .await
    .map_err(|_| AgentError::Io(format!("the gateway at {gateway} did not answer in time")))?
}

/// The TLS configuration of an enrolled agent: the pinned CA, its own certificate.
fn enrolled_config(files: &Files) -> Result<Arc<rustls::ClientConfig>, AgentError> {
    let ca = std::fs::read(&files.ca).map_err(setup("reading the gateway's CA"))?;
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca))
        .map_err(setup("the gateway's CA"))?;
    // Read once: a renewal through another tunnel replaces the file whole, and two
    // reads could straddle it (a certificate with the other key).
    let pem = std::fs::read(&files.identity).map_err(setup("reading the certificate"))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(setup("reading the certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(setup("reading the key"))?;
    let provider = Arc::new(tunnel::crypto_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(setup("TLS"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(setup("the certificate and key"))?;
    config.alpn_protocols = vec![b"keyway-tunnel".to_vec()];
    Ok(Arc::new(config))
}

/// The agent's name and its certificate's validity (Unix seconds), from the
/// certificate.
fn cert_facts(files: &Files) -> Option<(String, i64, i64)> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let der = CertificateDer::from_pem_file(&files.identity).ok()?;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let name = san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(d) => d.strip_suffix(".agents.keyway").map(str::to_owned),
        _ => None,
    })?;
    let v = cert.validity();
    Some((name, v.not_before.timestamp(), v.not_after.timestamp()))
}

fn agent_name(files: &Files) -> Option<String> {
    cert_facts(files).map(|f| f.0)
}

/// How long until the certificate is due for renewal (two thirds of its life).
fn renewal_due_in(files: &Files) -> Option<Duration> {
    let (_, from, until) = cert_facts(files)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let due = from + (until - from) * 2 / 3;
    Some(Duration::from_secs(due.saturating_sub(now).max(0) as u64))
}

/// Renews the certificate through `gateway` once two thirds of its life have
/// passed; one tunnel at a time (`renewing`), the others find it renewed.
async fn renew_if_due(
    gateway: &str,
    files: &Files,
    renewing: &tokio::sync::Mutex<()>,
) -> Result<(), AgentError> {
    let _one = renewing.lock().await;
    let Some(due_in) = renewal_due_in(files) else {
        return Err(AgentError::Setup("the certificate cannot be read".into()));
    };
    if !due_in.is_zero() {
        return Ok(());
    }
    let mut tls = connect(gateway, enrolled_config(files)?).await?;
    let key = rcgen::KeyPair::generate().map_err(setup("making a key"))?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|p| p.serialize_request(&key))
        .and_then(|r| r.pem())
        .map_err(setup("making a certificate request"))?;
    let reply = exchange(&mut tls, &Hello::Renew(Renew { csr_pem: csr })).await?;
    let cert = reply
        .cert_pem
        .ok_or_else(|| AgentError::Refused("no certificate".into()))?;
    files.save_identity(&cert, &key)?;
    tracing::info!("certificate renewed");
    Ok(())
}

/// One tunnel session: connect, say who we are, serve HTTP/2 until it ends.
async fn session(
    opts: &Options,
    files: &Files,
    renewing: &tokio::sync::Mutex<()>,
    gateway: &str,
    mut shutdown: Shutdown,
) -> Result<(), AgentError> {
    let agent = agent_name(files)
        .ok_or_else(|| AgentError::Setup("the certificate names no agent".into()))?;
    let mut tls = connect(gateway, enrolled_config(files)?).await?;
    exchange(
        &mut tls,
        &Hello::Agent(AgentHello {
            agent: agent.clone(),
            version: VERSION.to_owned(),
        }),
    )
    .await?;
    tracing::info!(agent, gateway, "connected; serving");
    let allow = Arc::new(opts.allow_upstreams.clone());
    // h2 itself, not hyper: a stream's bytes go from the task relaying them to the
    // connection, with no task of hyper's between (`tunnel::H2Stream`).
    let handshake = h2::server::Builder::new()
        // Each proxied connection is a stream: a bound that still leaves room for
        // the gateway's heartbeats beside a burst of them.
        .max_concurrent_streams(10_000)
        .max_header_list_size(tunnel::AGENT_H2_MAX_HEADERS)
        .max_frame_size(tunnel::AGENT_H2_FRAME)
        .initial_window_size(tunnel::AGENT_H2_STREAM_WINDOW)
        .initial_connection_window_size(tunnel::AGENT_H2_CONN_WINDOW)
        .max_send_buffer_size(tunnel::AGENT_H2_SEND_BUF)
        .handshake::<_, Bytes>(tls);
    let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| AgentError::Io("the gateway did not start HTTP/2 in time".into()))?
        .map_err(|e| AgentError::Io(e.to_string()))?;
    // The gateway asks `GET /health` every few seconds: a connection on which
    // nothing is asked for longer is dead, even if its socket is not closed.
    let silence = tokio::time::sleep(tunnel::AGENT_SILENCE);
    // Renewal runs beside the session (both polled here), on its own connection;
    // the new certificate serves the next session.
    let renewal = keep_renewed(gateway, files, renewing);
    tokio::pin!(silence, renewal);
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    silence.as_mut().reset(tokio::time::Instant::now() + tunnel::AGENT_SILENCE);
                    tokio::spawn(upstreams::handle(req, respond, allow.clone()));
                }
                Some(Err(e)) => return Err(AgentError::Io(e.to_string())),
                None => return Ok(()),
            },
            () = &mut silence => {
                return Err(AgentError::Io("the gateway sent no heartbeat in time".into()));
            }
            _ = shutdown.changed() => {
                conn.graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Some(Ok((_req, mut respond))) = conn.accept().await {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                    }
                })
                .await;
                return Ok(());
            }
            never = &mut renewal => match never {},
        }
    }
}

/// Renews the certificate whenever it is due, for as long as it is polled.
async fn keep_renewed(
    gateway: &str,
    files: &Files,
    renewing: &tokio::sync::Mutex<()>,
) -> std::convert::Infallible {
    loop {
        let due_in = renewal_due_in(files).unwrap_or(Duration::from_secs(3600));
        tokio::time::sleep(due_in).await;
        if let Err(e) = renew_if_due(gateway, files, renewing).await {
            tracing::warn!(error = %e, "certificate renewal failed; will retry");
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(setup("writing the key"))?;
    io::Write::write_all(&mut f, bytes).map_err(setup("writing the key"))?;
    std::fs::rename(&tmp, path).map_err(setup("writing the key"))
}

/// Accepts the gateway's certificate only if its chain holds the CA the enrollment
/// token pins, and the certificate verifies against that CA for the gateway's name.
#[derive(Debug)]
struct PinnedCa {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| Sha256::digest(c.as_ref())[..] == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the gateway's CA does not match the enrollment token's pin".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
