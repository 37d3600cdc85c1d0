//! A postgres service's part of its check: the database its sessions open, the grant
//! roles mapped to upstream users and their secrets, TLS on its listener and to the
//! database, the weak password methods it may accept.

use std::collections::BTreeMap;
use std::time::Duration;

use super::check::{valid_name, valid_secret_name};
use super::problem::Problems;
use super::service::Common;
use super::tcp::check_tcp_upstream;
use super::{
    PgHolds, PgRole, PostgresService, RawListenerTls, RawService, Service, ServiceKind, TlsConfig,
};

// === impl RawService ===

impl RawService {
    pub(super) fn check_postgres(self, c: Common<'_>, p: &mut Problems) -> Option<Service> {
        let key = |k: &str| c.key(k);
        let mut roles = BTreeMap::new();
        match &self.roles {
            None => p.push(&key("roles"), "a postgres service maps grant roles to upstream users: `roles.readonly = { user = \"…\", secret = \"…\" }`"),
            Some(r) => {
                for (role, raw) in r {
                    if !valid_name(role) {
                        p.push(&key(&format!("roles.{role}")), "a role name is 1 to 63 characters of a-z, 0-9, `-` and `_`");
                    }
                    if !valid_secret_name(&raw.secret) {
                        p.push(&key(&format!("roles.{role}.secret")), "is the name of a secret set with `keyway secret set NAME`, never its value");
                    }
                    if raw.user.is_empty() || raw.user.len() > 63 || raw.user.contains('\0') {
                        p.push(&key(&format!("roles.{role}.user")), "is a PostgreSQL role name");
                    }
                    roles.insert(role.clone(), PgRole { user: raw.user.clone(), secret: raw.secret.clone() });
                }
            }
        }
        let database = self.database.clone().unwrap_or_default();
        if database.is_empty() || database.contains('\0') {
            p.push(
                &key("database"),
                "a postgres service names the database its sessions open",
            );
        }
        for (k, set) in [
            ("upstream_auth", self.upstream_auth.is_some()),
            ("rate_limit", self.rate_limit.is_some()),
            ("h2c", self.h2c.is_some()),
            ("trusted_proxies", self.trusted_proxies.is_some()),
            ("body_timeout", self.body_timeout.is_some()),
            ("upstream_protocol", self.upstream_protocol.is_some()),
        ] {
            if set {
                p.push(&key(k), "applies to http services only");
            }
        }
        let asked = self.upstream_tls_mode(&c, p);
        let upstream_tls = self.check_upstream_tls(asked, false, &c, p);
        let weak = self.allow_weak_upstream_auth.clone().unwrap_or_default();
        for (i, m) in weak.iter().enumerate() {
            if !matches!(m.as_str(), "md5" | "password" | "trust") {
                p.push(
                    &format!("{}[{i}]", key("allow_weak_upstream_auth")),
                    "names `md5`, `password` (cleartext) or `trust` (no password), as pg_hba.conf calls them",
                );
            }
        }
        let holds = match self.audit_holds.as_deref() {
            None | Some("statement") => PgHolds::Statement,
            Some("answer") => PgHolds::Answer,
            Some(_) => {
                p.push(
                    &key("audit_holds"),
                    "must be `statement` (the default: a statement runs only once its audit event is committed) or `answer` (it runs at once; its answer waits for the commit)",
                );
                PgHolds::Statement
            }
        };
        let pg = PostgresService {
            upstream: check_tcp_upstream(&self.upstream, &key("upstream"), p).unwrap_or_default(),
            database,
            roles,
            connect_timeout: p.duration_or(
                &key("connect_timeout"),
                self.connect_timeout.as_deref(),
                Duration::from_secs(5),
            ),
            allow_plaintext: self.allow_plaintext.unwrap_or(false),
            upstream_tls,
            allow_weak_upstream_auth: weak,
            holds,
        };
        let tls = match self.tls {
            Some(RawListenerTls::Files(t)) => Some(TlsConfig {
                cert: c.path(t.cert),
                key: c.path(t.key),
                client_ca: self.client_ca.clone().map(|p| c.path(p)),
                require_client_cert: self.require_client_cert.unwrap_or(false),
            }),
            Some(RawListenerTls::Local(l)) => {
                if l != "local" {
                    p.push(
                        &key("tls"),
                        "is `{ cert = \"…\", key = \"…\" }` or `\"local\"`",
                    );
                }
                // A postgres listener without files serves the local CA's certificate.
                None
            }
            None => None,
        };
        c.service(p, None, tls, ServiceKind::Postgres(pg))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Config, ConfigError, PgHolds, ServiceKind};

    #[test]
    fn a_postgres_service_says_what_waits_for_a_statements_audit() {
        let pg = "[services.db]\nprotocol = \"postgres\"\nlisten = \"127.0.0.1:6432\"\n\
                  upstream = \"127.0.0.1:5432\"\ndatabase = \"test\"\nmax_ttl = \"1h\"\n\
                  roles.readonly = { user = \"root\", secret = \"kw-ro\" }\n";
        let holds = |extra: &str| {
            let c = Config::parse(&format!("{pg}{extra}"), Path::new("/etc/keyway"))?;
            let ServiceKind::Postgres(p) = &c.service("db").unwrap().kind else {
                panic!("postgres")
            };
            Ok::<_, ConfigError>(p.holds)
        };
        assert_eq!(holds("").unwrap(), PgHolds::Statement);
        assert_eq!(
            holds("audit_holds = \"statement\"").unwrap(),
            PgHolds::Statement
        );
        assert_eq!(holds("audit_holds = \"answer\"").unwrap(), PgHolds::Answer);
        let e = holds("audit_holds = \"nothing\"").unwrap_err().to_string();
        assert!(
            e.contains("services.db.audit_holds") && e.contains("`statement`"),
            "{e}"
        );
        let http =
            "[services.api]\nprotocol = \"http\"\nlisten = \"127.0.0.1:9001\"\nupstream = \"http://127.0.0.1:8080\"\n\
                    max_ttl = \"1h\"\naudit_holds = \"answer\"\n";
        let e = Config::parse(http, Path::new("/etc/keyway"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("services.api.audit_holds") && e.contains("postgres services only"),
            "{e}"
        );
        let tcp = "tunnel_listen = \"127.0.0.1:7443\"\n[services.cache]\nprotocol = \"tcp\"\n\
                   upstream = \"127.0.0.1:6379\"\nmax_ttl = \"1h\"\naudit_holds = \"answer\"\n";
        let e = Config::parse(tcp, Path::new("/etc/keyway"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("services.cache.audit_holds"), "{e}");
    }
}
