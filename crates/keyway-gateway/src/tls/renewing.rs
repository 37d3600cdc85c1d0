//! The local CA's server certificates renew themselves: each is issued for 90 days,
//! and a handshake that finds it older than [`RENEW_AFTER`] has a new one issued
//! first, so a gateway that runs for months never serves an expired certificate
//! (its tunnel, PostgreSQL listeners without `tls`, HTTP listeners with
//! `tls = "local"`). Connections already open keep theirs.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{LocalCa, TlsError};

/// How long a local server certificate lives.
pub(super) const LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Its age at which the next handshake gets a new one (a third of its life left).
pub(super) const RENEW_AFTER: Duration = Duration::from_secs(60 * 24 * 3600);

/// A listener's certificate from the local CA, for `names`, renewed as it ages.
pub(super) struct LocalCert {
    ca: Arc<LocalCa>,
    names: Vec<String>,
    current: RwLock<(Arc<CertifiedKey>, SystemTime)>,
}

impl LocalCert {
    /// Issues the first certificate now (an error here stops start-up).
    pub(super) fn new(ca: Arc<LocalCa>, names: Vec<String>) -> Result<Self, TlsError> {
        let now = SystemTime::now();
        let first = Arc::new(ca.issue_server(&names, now)?);
        Ok(Self {
            ca,
            names,
            current: RwLock::new((first, now)),
        })
    }

    /// The certificate to serve at `now`: the current one, or a new one once it is
    /// older than [`RENEW_AFTER`], or issued "in the future" (the clock was set
    /// back: it may not be valid yet). A failure to issue keeps the current one, said
    /// in the log, and is tried again an hour later.
    pub(super) fn at(&self, now: SystemTime) -> Arc<CertifiedKey> {
        let due = |issued: SystemTime| {
            now.duration_since(issued)
                .map_or(true, |age| age >= RENEW_AFTER)
        };
        let (cert, issued) = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !due(issued) {
            return cert;
        }
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if !due(current.1) {
            return current.0.clone();
        }
        match self.ca.issue_server(&self.names, now) {
            Ok(new) => {
                tracing::info!(names = ?self.names, "renewed a server certificate from the local CA");
                *current = (Arc::new(new), now);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot renew a server certificate from the local CA; trying again in an hour");
                let retry = now + Duration::from_secs(3600);
                current.1 = retry.checked_sub(RENEW_AFTER).unwrap_or(now);
            }
        }
        current.0.clone()
    }
}

impl std::fmt::Debug for LocalCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCert")
            .field("names", &self.names)
            .finish()
    }
}

impl ResolvesServerCert for LocalCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.at(SystemTime::now()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// When the certificate `served` ends.
    fn not_after(served: &CertifiedKey) -> x509_parser::time::ASN1Time {
        let (_, cert) = x509_parser::parse_x509_certificate(served.cert[0].as_ref()).unwrap();
        cert.validity().not_after
    }

    #[test]
    fn a_local_certificate_is_renewed_before_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::open(dir.path()).unwrap();
        let cert = LocalCert::new(ca, vec!["localhost".into()]).unwrap();
        let start = SystemTime::now();
        let first = cert.at(start);
        // The CA travels with it.
        assert_eq!(first.cert.len(), 2);
        // A month and a half on: the same one.
        let later = start + Duration::from_secs(45 * 24 * 3600);
        assert!(Arc::ptr_eq(&first, &cert.at(later)));
        // Two months and a day on: a new one, valid for 90 days from then.
        let old = start + RENEW_AFTER + Duration::from_secs(24 * 3600);
        let renewed = cert.at(old);
        assert!(!Arc::ptr_eq(&first, &renewed));
        assert!(not_after(&renewed) > not_after(&first));
        let ends = not_after(&renewed).timestamp();
        let want = (old + LIFETIME)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((ends - want).abs() < 3600 + 60, "{ends} vs {want}");
        // And it stays until it ages in turn.
        assert!(Arc::ptr_eq(
            &renewed,
            &cert.at(old + Duration::from_secs(60))
        ));
        // The clock set back past its issue: renewed, since it may not be valid yet.
        let back = old - Duration::from_secs(2 * 3600);
        assert!(!Arc::ptr_eq(&renewed, &cert.at(back)));
    }
}
