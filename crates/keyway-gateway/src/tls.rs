//! TLS on the gateway's listeners, and client certificates.
//!
//! A listener with `tls` serves HTTPS; with `client_ca` it asks for a client
//! certificate and verifies it against that CA (and with `require_client_cert`,
//! refuses connections without one). A token bound to a certificate (RFC 8705: the
//! SHA-256 thumbprint of the DER certificate, base64url, `x5t#S256`) is accepted only
//! on a connection that presented that certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use keyway_core::config::TlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use sha2::{Digest, Sha256};

mod renewing;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {why}")]
    Certs { path: String, why: String },
    #[error("cannot read a private key from {path}: {why}")]
    Key { path: String, why: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The application protocol (ALPN) each kind of listener speaks. A client that offers
/// ALPN must find its protocol here, or rustls ends the handshake.
pub mod alpn {
    pub const HTTP: &[u8] = b"http/1.1";
    /// HTTP/2, which a proxied HTTP service's listener offers before HTTP/1.1.
    pub const H2: &[u8] = b"h2";
    pub const TUNNEL: &[u8] = b"keyway-tunnel";
    /// What libpq 17+ offers.
    pub const POSTGRES: &[u8] = b"postgresql";
}

/// A listener's TLS as loaded, with the digest of its files ([`files_digest`])
/// taken just before: a reload that finds other files loads them again.
#[derive(Clone)]
pub struct Loaded {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub files: Option<[u8; 32]>,
}

/// Loads the TLS of a listener that speaks the protocols `alpn` (preferred first).
pub fn load(t: &TlsConfig, alpn: &[&[u8]]) -> Result<Loaded, TlsError> {
    let files = files_digest(t);
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(t, alpn)?);
    Ok(Loaded { acceptor, files })
}

/// The TLS of a service's listener, speaking its protocol's ALPN. A PostgreSQL
/// service without `tls`, and an HTTP service with `tls = "local"`, get a
/// certificate from the gateway's local CA in `data_dir` (`ca.pem`, as the
/// tunnel's): clients send a password-like token, so `sslmode=require` works with
/// no setup and `verify-full` with `sslrootcert=<data_dir>/ca.pem` (`curl --cacert`
/// likewise). `None` for other services without `tls`. At start-up and on a reload
/// alike.
pub fn service_acceptor(
    svc: &keyway_core::config::Service,
    data_dir: &std::path::Path,
) -> Option<Result<Loaded, TlsError>> {
    use keyway_core::config::ServiceKind;
    let postgres = matches!(svc.kind, ServiceKind::Postgres(_));
    let local = postgres || matches!(&svc.kind, ServiceKind::Http(h) if h.local_tls);
    let alpn: &[&[u8]] = if postgres {
        &[alpn::POSTGRES]
    } else {
        &[alpn::H2, alpn::HTTP]
    };
    match (&svc.tls, svc.listen) {
        (Some(t), _) => Some(load(t, alpn)),
        (None, Some(listen)) if local => Some(LocalCa::open(data_dir).and_then(|ca| {
            Ok(Loaded {
                acceptor: tokio_rustls::TlsAcceptor::from(ca.server_config(listen, alpn, None)?),
                files: None,
            })
        })),
        (None, _) => None,
    }
}

/// The TLS of one of the gateway's own listeners (the token endpoint, the tunnel),
/// which a reload replaces when its certificate files are renewed in place: each
/// connection takes the one in force when it is accepted, and a connection already
/// open keeps the one it was accepted with. (A service's listener needs none: a
/// renewal starts a new proxy on the same port.)
#[derive(Clone)]
pub struct Renewable(Arc<std::sync::RwLock<tokio_rustls::TlsAcceptor>>);

impl Renewable {
    pub fn new(acceptor: tokio_rustls::TlsAcceptor) -> Self {
        Self(Arc::new(std::sync::RwLock::new(acceptor)))
    }

    /// The acceptor in force.
    pub fn current(&self) -> tokio_rustls::TlsAcceptor {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `acceptor` in force for the connections accepted from now on.
    pub fn replace(&self, acceptor: tokio_rustls::TlsAcceptor) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = acceptor;
    }
}

/// SHA-256 over a listener's TLS files (certificate, key, client CA), or None when
/// one cannot be read (loading them then fails with the reason): a reload compares
/// it with the one taken when they were loaded, to tell a renewal in place.
pub fn files_digest(t: &TlsConfig) -> Option<[u8; 32]> {
    digest_of(
        [Some(&t.cert), Some(&t.key), t.client_ca.as_ref()]
            .into_iter()
            .flatten(),
    )
}

/// SHA-256 over the contents of `paths`, or None when one cannot be read: a reload
/// compares it with the one taken when they were loaded, to tell a renewal.
pub(crate) fn digest_of<'a>(paths: impl IntoIterator<Item = &'a PathBuf>) -> Option<[u8; 32]> {
    let mut h = Sha256::new();
    for path in paths {
        h.update(std::fs::read(path).ok()?);
        h.update([0]);
    }
    Some(h.finalize().into())
}

/// A rustls server configuration for a listener that speaks `alpn`.
pub fn server_config(
    tls: &TlsConfig,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&tls.cert)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| TlsError::Key {
        path: tls.key.display().to_string(),
        why: e.to_string(),
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = roots(ca, "client_ca")?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if tls.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The RFC 8705 thumbprint of a DER certificate.
pub fn thumbprint(der: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(der))
}

/// The thumbprint of the first certificate in a PEM file.
pub fn thumbprint_of_pem(path: &Path) -> Result<String, TlsError> {
    let certs = read_certs(path)?;
    Ok(thumbprint(certs[0].as_ref()))
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |why: String| TlsError::Certs {
        path: path.display().to_string(),
        why,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(certs)
}

/// The certificates of the PEM file `path` as trust roots; a certificate refused is
/// named by `label` in the error.
pub(crate) fn roots(path: &Path, label: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(path)? {
        roots
            .add(c)
            .map_err(|e| TlsError::Config(format!("{label}: {e}")))?;
    }
    Ok(roots)
}

/// The gateway's local CA: created on first start (`<data_dir>/ca.pem`, key in
/// `ca.key`, mode 0600). It serves the tunnel when no certificate is configured (a
/// 90-day server certificate for `localhost`, 127.0.0.1 and the listen address,
/// renewed at 60 days; clients pass `ca.pem` to `keyway connect --ca`), and it
/// issues agents their client certificates.
pub struct LocalCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    der: CertificateDer<'static>,
}

/// The pin of the local CA in `data_dir` (hex SHA-256 of `ca.pem`'s certificate).
pub fn local_ca_pin(data_dir: &Path) -> Result<String, TlsError> {
    let ca = read_certs(&data_dir.join("ca.pem"))?;
    Ok(hex::encode(Sha256::digest(ca[0].as_ref())))
}

/// The name agents verify the tunnel's certificate as.
pub const AGENT_SERVER_NAME: &str = "gateway.keyway";

/// The DNS name in an agent's certificate.
pub fn agent_dns_name(agent: &str) -> String {
    format!("{agent}.agents.keyway")
}

impl LocalCa {
    pub fn open(data_dir: &Path) -> Result<Arc<Self>, TlsError> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let cfg_err = |e: rcgen::Error| TlsError::Config(format!("local CA: {e}"));
        let (ca_pem, ca_key_path) = (data_dir.join("ca.pem"), data_dir.join("ca.key"));
        let ca_params = || {
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            p.distinguished_name
                .push(DnType::CommonName, "Keyway local CA");
            Ok::<_, rcgen::Error>(p)
        };
        let ca_key = match std::fs::read_to_string(&ca_key_path) {
            Ok(pem) => KeyPair::from_pem(&pem).map_err(cfg_err)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = KeyPair::generate().map_err(cfg_err)?;
                let cert = ca_params()
                    .and_then(|p| p.self_signed(&key))
                    .map_err(cfg_err)?;
                keyway_store::keys::write_secret_file(&ca_key_path, key.serialize_pem().as_bytes())
                    .map_err(|e| TlsError::Key {
                        path: ca_key_path.display().to_string(),
                        why: e.to_string(),
                    })?;
                std::fs::write(&ca_pem, cert.pem()).map_err(|e| TlsError::Certs {
                    path: ca_pem.display().to_string(),
                    why: e.to_string(),
                })?;
                tracing::info!(path = %ca_pem.display(), "created the gateway's local CA; give ca.pem to `keyway connect --ca`");
                key
            }
            Err(e) => {
                return Err(TlsError::Key {
                    path: ca_key_path.display().to_string(),
                    why: e.to_string(),
                })
            }
        };
        let der = read_certs(&ca_pem)?.remove(0);
        // The same subject and key give the same issuer name and key identifier as the
        // CA certificate on disk.
        let issuer = Issuer::new(ca_params().map_err(cfg_err)?, ca_key);
        Ok(Arc::new(Self { issuer, der }))
    }

    /// The tunnel's TLS: a fresh server certificate (sent with the CA, so an agent
    /// can check its pin), and client certificates verified against the CA when
    /// presented (agents present theirs; `keyway connect` presents none).
    pub fn tunnel_server_config(
        self: &Arc<Self>,
        listen: std::net::SocketAddr,
        client_ca: Option<&Path>,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.der.clone())
            .map_err(|e| TlsError::Config(format!("local CA: {e}")))?;
        if let Some(ca) = client_ca {
            roots
                .roots
                .extend(self::roots(ca, "tunnel_client_ca")?.roots);
        }
        self.server_config(listen, &[alpn::TUNNEL], Some(roots))
    }

    /// Whether the certificate `der` was issued by this CA (an agent's), not by
    /// another CA the tunnel takes client certificates from.
    pub fn issued(&self, der: &CertificateDer<'_>) -> bool {
        let mut roots = RootCertStore::empty();
        if roots.add(self.der.clone()).is_err() {
            return false;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let Ok(verifier) =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()
        else {
            return false;
        };
        verifier
            .verify_client_cert(der, &[], rustls::pki_types::UnixTime::now())
            .is_ok()
    }

    /// A listener's TLS from the local CA: a server certificate for `localhost`,
    /// `127.0.0.1` and the address it listens on (sent with the CA), renewed as it
    /// ages ([`renewing`]), speaking `alpn`; with `clients`, client certificates of
    /// those roots are verified when presented.
    pub fn server_config(
        self: &Arc<Self>,
        listen: std::net::SocketAddr,
        alpn: &[&[u8]],
        clients: Option<RootCertStore>,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        // `gateway.keyway`: the name agents verify, whatever address they dial (their
        // CA is pinned, so a fixed name is enough).
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            AGENT_SERVER_NAME.to_owned(),
        ];
        if !listen.ip().is_unspecified() && !listen.ip().is_loopback() {
            names.push(listen.ip().to_string());
        }
        let resolver = renewing::LocalCert::new(self.clone(), names)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = if let Some(roots) = clients {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// A server certificate for `names` from `now` (an hour's slack before) for
    /// [`renewing::LIFETIME`], with the CA after it in the chain.
    fn issue_server(
        &self,
        names: &[String],
        now: std::time::SystemTime,
    ) -> Result<rustls::sign::CertifiedKey, TlsError> {
        use rcgen::{CertificateParams, DnType, KeyPair};
        let cfg_err = |e: rcgen::Error| TlsError::Config(format!("local CA: {e}"));
        let mut params = CertificateParams::new(names.to_vec()).map_err(cfg_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Keyway gateway");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = (now - std::time::Duration::from_secs(3600)).into();
        params.not_after = (now + renewing::LIFETIME).into();
        let key = KeyPair::generate().map_err(cfg_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(cfg_err)?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(rustls::sign::CertifiedKey::new(
            vec![cert.der().clone(), self.der.clone()],
            signing,
        ))
    }

    /// Signs an agent's certificate request: the agent's name, client use only,
    /// `lifetime` from now. Only the request's public key is taken from it.
    pub fn sign_agent(
        &self,
        csr_pem: &str,
        agent: &str,
        now: keyway_core::UnixMillis,
        lifetime: std::time::Duration,
    ) -> Result<String, TlsError> {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose};
        let bad = |e: rcgen::Error| TlsError::Config(format!("agent certificate request: {e}"));
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(bad)?;
        let mut params = CertificateParams::new(vec![agent_dns_name(agent)]).map_err(bad)?;
        params.distinguished_name.push(DnType::CommonName, agent);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Not back-dated: the issue time is what revocation compares with (on the
        // gateway's clock, the one revocations are stamped with).
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_millis(now.max(0) as u64);
        params.not_before = now.into();
        params.not_after = (now + lifetime).into();
        csr.params = params;
        Ok(csr.signed_by(&self.issuer).map_err(bad)?.pem())
    }
}

/// Who an agent certificate (already verified against the local CA) names, and when
/// it was issued (Unix ms).
pub fn agent_identity(der: &[u8]) -> Option<(String, i64)> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let agent = san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(d) => d.strip_suffix(".agents.keyway").map(str::to_owned),
        _ => None,
    })?;
    let issued = cert.validity().not_before.timestamp() * 1000;
    Some((agent, issued))
}

/// The TLS client configuration of `keyway connect`: the tunnel's ALPN and crypto
/// ([`keyway_core::tunnel::crypto_provider`]), trusting the CA in `ca` (PEM), and
/// presenting the client certificate `cert` (PEM: the certificate and its key)
/// when given, for tokens bound to it.
pub fn client_config(
    ca: &Path,
    cert: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = roots(ca, &ca.display().to_string())?;
    let provider = Arc::new(keyway_core::tunnel::crypto_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
                path: key.display().to_string(),
                why: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Config(e.to_string()))?
        }
    };
    config.alpn_protocols = vec![alpn::TUNNEL.to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A configured certificate (not the local CA) for `localhost`, and its CA's
    /// certificate in `ca.pem`.
    fn configured(dir: &Path) -> TlsConfig {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &Issuer::new(ca, ca_key))
            .unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        TlsConfig {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            client_ca: None,
            require_client_cert: false,
        }
    }

    /// Whether a client offering `offered` completes a handshake with `server`: the
    /// protocol and the cipher suite agreed.
    async fn agree(
        server: Arc<rustls::ServerConfig>,
        mut client: rustls::ClientConfig,
        offered: &[u8],
    ) -> Option<(Option<Vec<u8>>, rustls::CipherSuite)> {
        client.alpn_protocols = vec![offered.to_vec()];
        let (a, b) = tokio::io::duplex(64 * 1024);
        let accept = tokio_rustls::TlsAcceptor::from(server).accept(a);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let connect = tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, b);
        let (s, c) = tokio::join!(accept, connect);
        let (_s, c) = (s.ok()?, c.ok()?);
        let c = c.get_ref().1;
        let alpn = c.alpn_protocol().map(<[u8]>::to_vec);
        Some((alpn, c.negotiated_cipher_suite()?.suite()))
    }

    /// The protocol agreed, if the handshake completes.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: rustls::ClientConfig,
        offered: &[u8],
    ) -> Option<Vec<u8>> {
        agree(server, client, offered).await?.0
    }

    #[tokio::test]
    async fn tunnel_clients_choose_aes_128_and_other_clients_keep_their_choice() {
        let dir = tempfile::tempdir().unwrap();
        let tls = configured(dir.path());
        let tunnel = server_config(&tls, &[alpn::TUNNEL]).unwrap();
        let ours = (*client_config(&dir.path().join("ca.pem"), None).unwrap()).clone();
        let agreed = agree(tunnel.clone(), ours.clone(), alpn::TUNNEL).await;
        assert_eq!(
            agreed.map(|a| a.1),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        // The gateway follows the client's order: a client that puts ChaCha20 first
        // (one without AES hardware) gets ChaCha20.
        let roots = roots(&dir.path().join("ca.pem"), "ca.pem").unwrap();
        let mut chacha_first = rustls::crypto::ring::default_provider();
        chacha_first
            .cipher_suites
            .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
        let other = rustls::ClientConfig::builder_with_provider(Arc::new(chacha_first))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let agreed = agree(tunnel, other, alpn::TUNNEL).await;
        assert_eq!(
            agreed.map(|a| a.1),
            Some(rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256)
        );
    }

    #[tokio::test]
    async fn each_listener_agrees_on_its_own_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let tls = configured(dir.path());
        let client = (*client_config(&dir.path().join("ca.pem"), None).unwrap()).clone();
        // A configured tunnel certificate serves `keyway connect`.
        let tunnel = server_config(&tls, &[alpn::TUNNEL]).unwrap();
        assert_eq!(
            handshake(tunnel.clone(), client.clone(), alpn::TUNNEL).await,
            Some(alpn::TUNNEL.to_vec())
        );
        // libpq 17+ offers `postgresql`.
        let pg = server_config(&tls, &[alpn::POSTGRES]).unwrap();
        assert_eq!(
            handshake(pg, client.clone(), alpn::POSTGRES).await,
            Some(alpn::POSTGRES.to_vec())
        );
        // A client speaking something else is refused.
        assert_eq!(handshake(tunnel, client, alpn::HTTP).await, None);
    }
}
