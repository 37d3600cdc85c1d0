//! TLS from the gateway to an upstream: the client configuration each service's
//! `UpstreamTls` makes (its CA or the system's roots, its client certificate,
//! verification on unless the service turned it off), kept per service so that TLS
//! sessions resume, and loaded again when its files are renewed in place (a reload
//! compares their digest, as for listeners). A connection keeps the configuration it
//! was made with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::DialError;
use crate::runtime::Stream;
use crate::tls::TlsError;
use keyway_core::config::{Config, Service, UpstreamTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// A TLS connection to an upstream.
pub(crate) type TlsStream = tokio_rustls::client::TlsStream<Box<dyn Stream>>;

/// The client configurations of the services with TLS to their upstream.
#[derive(Default)]
pub struct UpstreamTlsCache {
    loaded: Mutex<HashMap<String, Arc<Loaded>>>,
}

/// The configurations of a config about to be put in force.
#[derive(Default)]
pub struct Prepared {
    loaded: HashMap<String, Arc<Loaded>>,
    /// Services whose files were renewed in place.
    renewed: Vec<String>,
}

/// One service's configuration as loaded.
struct Loaded {
    tls: UpstreamTls,
    /// SHA-256 over its files when they were read.
    files: Option<[u8; 32]>,
    config: Arc<rustls::ClientConfig>,
}

// === impl UpstreamTlsCache ===

impl UpstreamTlsCache {
    /// Loads the upstream TLS of every service of `config` that has one and is new,
    /// changed, or whose files were renewed on disk; keeps the rest as loaded. At
    /// start-up and on each reload (a dry run too), before anything changes: a file
    /// that cannot be read is an error naming the service. [`Self::install`] puts
    /// the result in force.
    pub fn prepare(&self, config: &Config) -> Result<Prepared, (String, TlsError)> {
        let mut loaded = HashMap::new();
        let mut renewed = Vec::new();
        for (name, svc) in &config.services {
            let Some(t) = svc.upstream_tls() else {
                continue;
            };
            let alpn = alpn_of(svc);
            let l = match self.current(name, t, alpn) {
                Some(l) if l.files == files_digest(t) => l,
                before => {
                    if before.is_some() {
                        renewed.push(name.clone());
                    }
                    Arc::new(load(t, alpn).map_err(|e| (name.clone(), e))?)
                }
            };
            loaded.insert(name.clone(), l);
        }
        Ok(Prepared { loaded, renewed })
    }

    /// Puts what [`Self::prepare`] loaded in force for the connections made from
    /// now on.
    pub fn install(&self, prepared: Prepared) {
        for name in &prepared.renewed {
            tracing::info!(service = %name, "upstream certificate files renewed; new connections use them");
        }
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = prepared.loaded;
    }

    fn current(&self, name: &str, t: &UpstreamTls, alpn: &[&[u8]]) -> Option<Arc<Loaded>> {
        let map = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        map.get(name)
            .filter(|l| {
                l.tls == *t
                    && l.config
                        .alpn_protocols
                        .iter()
                        .map(Vec::as_slice)
                        .eq(alpn.iter().copied())
            })
            .cloned()
    }

    /// Wraps `stream`, a connection to `host`, in TLS as `svc` says. A service whose
    /// configuration is not the one loaded (a proxy a reload is replacing, still
    /// finishing its work) loads its own for this connection, and leaves the cache
    /// to the config in force.
    pub(crate) async fn connect(
        &self,
        svc: &Service,
        host: &str,
        stream: Box<dyn Stream>,
    ) -> Result<TlsStream, DialError> {
        let (name, alpn) = (&svc.name, alpn_of(svc));
        let Some(t) = svc.upstream_tls() else {
            return Err(DialError {
                reason: "upstream_tls_config",
                why: format!("service `{name}` has no TLS to its upstream"),
            });
        };
        let config = match self.current(name, t, alpn) {
            Some(l) => l.config.clone(),
            None => {
                load(t, alpn)
                    .map_err(|e| DialError {
                        reason: "upstream_tls_config",
                        why: e.to_string(),
                    })?
                    .config
            }
        };
        let host = t.server_name.as_deref().unwrap_or(host);
        let server_name = ServerName::try_from(host.to_owned()).map_err(|_| DialError {
            reason: "upstream_tls_config",
            why: format!("`{host}` is not a name a certificate can be verified for"),
        })?;
        tokio_rustls::TlsConnector::from(config)
            .connect(server_name, stream)
            .await
            .map_err(|e| classify(&e))
    }
}

/// The ALPN a service offers its upstream: HTTP/2 or HTTP/1.1, PostgreSQL's, or none
/// (TCP).
fn alpn_of(svc: &Service) -> &'static [&'static [u8]] {
    use keyway_core::config::ServiceKind;
    match &svc.kind {
        ServiceKind::Http(h) if h.upstream_h2 => &[crate::tls::alpn::H2],
        ServiceKind::Http(_) => &[crate::tls::alpn::HTTP],
        ServiceKind::Postgres(_) => &[crate::tls::alpn::POSTGRES],
        ServiceKind::Tcp(_) => &[],
    }
}

/// The audit reason of a failed handshake, from the rustls error inside `e`.
fn classify(e: &std::io::Error) -> DialError {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let reason = match tls {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "upstream_certificate_expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "upstream_certificate_not_yet_valid"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "upstream_certificate_wrong_name"
            }
            CertificateError::UnknownIssuer => "upstream_certificate_untrusted",
            CertificateError::Revoked => "upstream_certificate_revoked",
            _ => "upstream_certificate_invalid",
        },
        Some(rustls::Error::AlertReceived(_)) => "upstream_tls_refused",
        Some(_) => "upstream_tls_failed",
        None => "upstream_tls_failed",
    };
    DialError {
        reason,
        why: format!("TLS with the upstream failed: {e}"),
    }
}

/// SHA-256 over the files of `t` (CA, client certificate and key), or None when one
/// cannot be read.
fn files_digest(t: &UpstreamTls) -> Option<[u8; 32]> {
    let client = t.client_cert.as_ref();
    crate::tls::digest_of(
        [
            t.ca.as_ref(),
            client.map(|c| &c.cert),
            client.map(|c| &c.key),
        ]
        .into_iter()
        .flatten(),
    )
}

/// The rustls client configuration of `t`, offering `alpn`.
fn load(t: &UpstreamTls, alpn: &[&[u8]]) -> Result<Loaded, TlsError> {
    let files = files_digest(t);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = if !t.verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
    } else {
        let roots = match &t.ca {
            Some(ca) => crate::tls::roots(ca, "upstream_ca")?,
            None => system_roots()?,
        };
        builder.with_root_certificates(roots)
    };
    let mut config = match &t.client_cert {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let certs = crate::tls::read_certs(&c.cert)?;
            let key = PrivateKeyDer::from_pem_file(&c.key).map_err(|e| TlsError::Key {
                path: c.key.display().to_string(),
                why: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| TlsError::Config(e.to_string()))?
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Loaded {
        tls: t.clone(),
        files,
        config: Arc::new(config),
    })
}

/// The system's trusted roots, read once found (until then, at each load: a
/// system without them may get them, and a reload then finds them).
fn system_roots() -> Result<RootCertStore, TlsError> {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    if let Some(roots) = ROOTS.get() {
        return Ok(roots.clone());
    }
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsError::Config(
            "no trusted roots on this system (install ca-certificates, or set upstream_ca)".into(),
        ));
    }
    Ok(ROOTS.get_or_init(|| roots).clone())
}

/// A verifier that takes any certificate (the service said so:
/// `upstream_insecure_skip_verify` or `upstream_tls = "require"`), yet checks that
/// the server holds the key of the certificate it showed.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
