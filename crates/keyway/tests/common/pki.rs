//! Certificates made by the tests: a CA, and server or client certificates it signs
//! (for names, for a time), written as PEM files where a config points.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// A test CA.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// When a certificate is valid.
pub enum Validity {
    /// From an hour ago for a day.
    Now,
    /// It ended an hour ago.
    Expired,
}

impl TestCa {
    /// A CA named `name` (distinct from its leaves' names: OpenSSL takes a
    /// certificate whose issuer is its own subject for a self-signed one).
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// The CA's certificate, written to `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, &self.pem).unwrap();
    }

    /// A server certificate for `names` (DNS names or IP addresses), written to
    /// `<stem>.pem` and `<stem>.key` in `dir`.
    pub fn server(&self, dir: &Path, stem: &str, names: &[&str], validity: Validity) {
        self.leaf(
            dir,
            stem,
            names,
            "keyway test server",
            validity,
            ExtendedKeyUsagePurpose::ServerAuth,
        );
    }

    /// A client certificate with common name `cn`, written to `<stem>.pem` and
    /// `<stem>.key` in `dir`.
    pub fn client(&self, dir: &Path, stem: &str, cn: &str) {
        self.client_named(dir, stem, cn, &[]);
    }

    /// A client certificate with common name `cn` and the DNS names `names`.
    pub fn client_named(&self, dir: &Path, stem: &str, cn: &str, names: &[&str]) {
        self.leaf(
            dir,
            stem,
            names,
            cn,
            Validity::Now,
            ExtendedKeyUsagePurpose::ClientAuth,
        );
    }

    fn leaf(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        cn: &str,
        validity: Validity,
        usage: ExtendedKeyUsagePurpose,
    ) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let (from, until) = match validity {
            Validity::Now => (now - hour, now + 24 * hour),
            Validity::Expired => (now - 48 * hour, now - hour),
        };
        params.not_before = from.into();
        params.not_after = until.into();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
    }
}
