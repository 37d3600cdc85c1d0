//! A throwaway PKI for TLS tests: a CA, a server certificate for 127.0.0.1, and client
//! certificates, written as PEM files; and TLS client connections that present them.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// A client identity: PEM files, and its RFC 8705 thumbprint.
pub struct Client {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub thumbprint: String,
}

impl Pki {
    pub fn new(dir: &Path) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "keyway test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();

        let pki = Self {
            issuer: Issuer::new(ca, ca_key),
            dir: dir.to_owned(),
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        };
        pki.renew(&pki.server_cert, &pki.server_key);
        pki
    }

    /// A client certificate signed by this CA.
    pub fn client(&self, name: &str) -> Client {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![format!("{name}.clients.test")]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        Client {
            thumbprint: keyway_gateway::tls::thumbprint(cert.der()),
            cert: c,
            key: k,
        }
    }

    /// A server certificate for 127.0.0.1 and its key, written to `cert` and `key`
    /// (over what is there: a renewal in place); its thumbprint.
    pub fn renew(&self, cert: &Path, key: &Path) -> String {
        let k = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let c = params.signed_by(&k, &self.issuer).unwrap();
        std::fs::write(cert, c.pem()).unwrap();
        std::fs::write(key, k.serialize_pem()).unwrap();
        keyway_gateway::tls::thumbprint(c.der())
    }

    /// The thumbprint of the certificate that `addr` presents in a TLS handshake
    /// trusting this CA.
    pub async fn served_cert(&self, addr: SocketAddr) -> String {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(self.client_config(None)))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        keyway_gateway::tls::thumbprint(tls.get_ref().1.peer_certificates().unwrap()[0].as_ref())
    }

    /// A TLS connection to `addr`, trusting this CA, presenting `client` if given.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        client: Option<&Client>,
    ) -> std::io::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        let config = self.client_config(client);
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// A client trusting this CA, presenting `client` if given.
    fn client_config(&self, client: Option<&Client>) -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        match client {
            None => builder.with_no_client_auth(),
            Some(c) => {
                let certs: Vec<_> = CertificateDer::pem_file_iter(&c.cert)
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect();
                let key = PrivateKeyDer::from_pem_file(&c.key).unwrap();
                builder.with_client_auth_cert(certs, key).unwrap()
            }
        }
    }
}

/// Sends one request on a TLS connection; the status, or an error if the connection
/// was refused.
pub async fn status(
    pki: &Pki,
    addr: SocketAddr,
    client: Option<&Client>,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let mut sender = pki.connect(addr, client).await.map_err(|e| e.to_string())?;
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    use http_body_util::BodyExt;
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
