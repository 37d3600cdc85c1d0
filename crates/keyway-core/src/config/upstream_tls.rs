//! TLS from the gateway to an upstream, alike for every protocol: how it is asked for
//! (an http service by `https://`, PostgreSQL and TCP by `upstream_tls`), whom it
//! trusts (`upstream_ca`, else the system's roots), the client certificate it shows
//! (`upstream_client_cert` / `upstream_client_key`) and the name it verifies
//! (`upstream_server_name`). Verification is turned off only by a key that says so.

use super::problem::Problems;
use super::service::Common;
use super::{ClientCert, RawService, UpstreamTls};

/// How a service asked for TLS to its upstream, before the keys that refine it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Asked {
    /// No TLS: `http://`, or `upstream_tls` unset or `disable`.
    No,
    /// Verified: `https://` or `verify-full`.
    Verified,
    /// Encrypted, not verified: `upstream_tls = "require"`.
    Unverified,
}

// === impl RawService ===

impl RawService {
    /// PostgreSQL's and TCP's `upstream_tls`, checked: what it asks for.
    pub(super) fn upstream_tls_mode(&self, c: &Common<'_>, p: &mut Problems) -> Asked {
        match self.upstream_tls.as_deref() {
            None | Some("disable") => Asked::No,
            Some("verify-full") => Asked::Verified,
            Some("require") => Asked::Unverified,
            Some(_) => {
                p.push(
                    &c.key("upstream_tls"),
                    "is `verify-full` (encrypted and verified), `require` (encrypted, not verified) or `disable`",
                );
                Asked::No
            }
        }
    }

    /// The upstream TLS keys, checked against what `asked` says: each needs TLS, and
    /// `upstream_insecure_skip_verify` only fits an `https://` upstream (`skip_key`
    /// says whether this protocol takes it).
    pub(super) fn check_upstream_tls(
        &self,
        asked: Asked,
        skip_key: bool,
        c: &Common<'_>,
        p: &mut Problems,
    ) -> Option<UpstreamTls> {
        let key = |k: &str| c.key(k);
        let skip = self.upstream_insecure_skip_verify.unwrap_or(false);
        if self.upstream_insecure_skip_verify.is_some() && !skip_key {
            p.push(
                &key("upstream_insecure_skip_verify"),
                "applies to `https://` upstreams; here `upstream_tls = \"require\"` encrypts without verifying",
            );
        }
        if asked == Asked::No {
            let set = [
                ("upstream_ca", self.upstream_ca.is_some()),
                ("upstream_client_cert", self.upstream_client_cert.is_some()),
                ("upstream_client_key", self.upstream_client_key.is_some()),
                ("upstream_server_name", self.upstream_server_name.is_some()),
                ("upstream_insecure_skip_verify", skip && skip_key),
            ];
            let why = if skip_key {
                "needs an `https://` upstream"
            } else {
                "needs `upstream_tls = \"verify-full\"` (or `\"require\"`)"
            };
            for (k, _) in set.iter().filter(|(_, set)| *set) {
                p.push(&key(k), why);
            }
            return None;
        }
        let client_cert = match (&self.upstream_client_cert, &self.upstream_client_key) {
            (Some(cert), Some(k)) => Some(ClientCert {
                cert: c.path(cert),
                key: c.path(k),
            }),
            (None, None) => None,
            (Some(_), None) => {
                p.push(
                    &key("upstream_client_key"),
                    "is missing: `upstream_client_cert` needs its private key",
                );
                None
            }
            (None, Some(_)) => {
                p.push(
                    &key("upstream_client_cert"),
                    "is missing: `upstream_client_key` needs its certificate",
                );
                None
            }
        };
        let server_name = self.upstream_server_name.clone();
        if let Some(n) = &server_name {
            if !is_server_name(n) {
                p.push(
                    &key("upstream_server_name"),
                    "is a DNS name or an IP address, as in the upstream's certificate",
                );
            }
        }
        if asked == Asked::Unverified && self.upstream_ca.is_some() {
            p.push(
                &key("upstream_ca"),
                "is not used by `upstream_tls = \"require\"`, which verifies nothing; use `\"verify-full\"` to verify against it",
            );
        }
        if skip && self.upstream_ca.is_some() {
            p.push(
                &key("upstream_insecure_skip_verify"),
                "contradicts `upstream_ca`: with a CA to verify against, verify",
            );
        }
        Some(UpstreamTls {
            verify: asked == Asked::Verified && !skip,
            ca: self.upstream_ca.as_ref().map(|p| c.path(p)),
            client_cert,
            server_name,
        })
    }
}

/// Whether `name` can be verified in a certificate: a DNS name or an IP address.
fn is_server_name(name: &str) -> bool {
    name.parse::<std::net::IpAddr>().is_ok()
        || (!name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    use crate::config::lint::{self, Severity};
    use crate::config::{Config, ServiceKind};

    const HEAD: &str =
        "data_dir = \"d\"\nadmin_listen = \"127.0.0.1:7070\"\ntunnel_listen = \"127.0.0.1:7443\"\n";

    fn service(protocol: &str, upstream: &str, extra: &str) -> String {
        let listen = if protocol == "tcp" {
            ""
        } else {
            "listen = \"127.0.0.1:9001\"\n"
        };
        let pg = if protocol == "postgres" {
            "database = \"app\"\nroles.ro = { user = \"ro\", secret = \"ro\" }\n"
        } else {
            ""
        };
        format!(
            "{HEAD}[services.s]\nprotocol = \"{protocol}\"\n{listen}upstream = \"{upstream}\"\nmax_ttl = \"1h\"\n{pg}{extra}"
        )
    }

    fn problems(text: &str) -> String {
        Config::parse(text, Path::new("/etc/keyway"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn https_upstreams_verify_and_take_their_keys() {
        let text = service(
            "http",
            "https://billing.internal",
            "upstream_ca = \"ca.pem\"\nupstream_client_cert = \"c.pem\"\nupstream_client_key = \"c.key\"\nupstream_server_name = \"billing.svc\"",
        );
        let c = Config::parse(&text, Path::new("/etc/keyway")).unwrap();
        let svc = c.service("s").unwrap();
        assert_eq!(svc.upstream_addr(), "billing.internal:443");
        let t = svc.upstream_tls().unwrap();
        assert!(t.verify);
        assert_eq!(t.ca.as_deref(), Some(Path::new("/etc/keyway/ca.pem")));
        assert_eq!(
            t.client_cert.as_ref().unwrap().key,
            Path::new("/etc/keyway/c.key")
        );
        assert_eq!(t.server_name.as_deref(), Some("billing.svc"));
        // Nothing to warn about: TLS, verified.
        assert!(
            lint::lint(&text, &c).is_empty(),
            "{:?}",
            lint::lint(&text, &c)
        );
    }

    #[test]
    fn tls_keys_without_tls_and_halves_of_a_pair_are_refused() {
        for (protocol, upstream, extra, key, why) in [
            (
                "http",
                "http://10.0.0.5",
                "upstream_ca = \"ca.pem\"",
                "upstream_ca",
                "needs an `https://` upstream",
            ),
            (
                "tcp",
                "10.0.0.5:6379",
                "upstream_server_name = \"r\"",
                "upstream_server_name",
                "needs `upstream_tls",
            ),
            (
                "http",
                "https://10.0.0.5",
                "upstream_client_cert = \"c.pem\"",
                "upstream_client_key",
                "is missing",
            ),
            (
                "http",
                "https://10.0.0.5",
                "upstream_tls = \"verify-full\"",
                "upstream_tls",
                "with `https://`",
            ),
            (
                "postgres",
                "10.0.0.5:5432",
                "upstream_tls = \"yes\"",
                "upstream_tls",
                "is `verify-full`",
            ),
            (
                "postgres",
                "10.0.0.5:5432",
                "upstream_tls = \"require\"\nupstream_insecure_skip_verify = true",
                "upstream_insecure_skip_verify",
                "applies to `https://`",
            ),
            (
                "postgres",
                "10.0.0.5:5432",
                "allow_weak_upstream_auth = [\"plain\"]",
                "allow_weak_upstream_auth[0]",
                "names `md5`, `password`",
            ),
            (
                "http",
                "https://10.0.0.5",
                "upstream_server_name = \"a b\"",
                "upstream_server_name",
                "a DNS name",
            ),
            (
                "http",
                "https://10.0.0.5",
                "upstream_ca = \"ca.pem\"\nupstream_insecure_skip_verify = true",
                "upstream_insecure_skip_verify",
                "contradicts",
            ),
            (
                "postgres",
                "10.0.0.5:5432",
                "upstream_tls = \"require\"\nupstream_ca = \"ca.pem\"",
                "upstream_ca",
                "is not used by",
            ),
        ] {
            let e = problems(&service(protocol, upstream, extra));
            assert!(
                e.contains(&format!("services.s.{key}")) && e.contains(why),
                "{extra}: {e}"
            );
        }
    }

    #[test]
    fn weakened_verification_is_found_by_the_linter() {
        // Turned off on an https upstream: an error `--allow-insecure` makes a warning.
        let text = service(
            "http",
            "https://10.0.0.5",
            "upstream_insecure_skip_verify = true",
        );
        let c = Config::parse(&text, Path::new("/")).unwrap();
        assert!(!c.service("s").unwrap().upstream_tls().unwrap().verify);
        let mut found = lint::lint(&text, &c);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].severity, Severity::Error);
        assert!(found[0].insecure);
        lint::allow_insecure(&mut found);
        assert_eq!(found[0].severity, Severity::Warning);

        // `require` to a database: encrypted, not verified, a warning.
        let text = service("postgres", "10.0.0.5:5432", "upstream_tls = \"require\"");
        let c = Config::parse(&text, Path::new("/")).unwrap();
        let found = lint::lint(&text, &c);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].severity, found[0].at.as_str()),
            (Severity::Warning, "services.s.upstream_tls")
        );

        // Plaintext beyond loopback names the fix for its protocol.
        for (protocol, upstream, fix) in [
            ("http", "http://10.0.0.5", "an `https://` upstream"),
            ("tcp", "10.0.0.5:6379", "`upstream_tls = \"verify-full\"`"),
        ] {
            let text = service(protocol, upstream, "");
            let c = Config::parse(&text, Path::new("/")).unwrap();
            let found = lint::lint(&text, &c);
            assert!(
                found
                    .iter()
                    .any(|f| f.message.contains("plaintext") && f.message.contains(fix)),
                "{found:?}"
            );
        }

        // md5 allowed in plaintext beyond loopback: said.
        let text = service(
            "postgres",
            "10.0.0.5:5432",
            "allow_weak_upstream_auth = [\"md5\"]",
        );
        let c = Config::parse(&text, Path::new("/")).unwrap();
        let ServiceKind::Postgres(pg) = &c.service("s").unwrap().kind else {
            panic!()
        };
        assert_eq!(pg.allow_weak_upstream_auth, ["md5"]);
        let found = lint::lint(&text, &c);
        assert!(
            found
                .iter()
                .any(|f| f.at == "services.s.allow_weak_upstream_auth"),
            "{found:?}"
        );
    }
}
