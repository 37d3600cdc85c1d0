//! A service's check: what every protocol checks alike (its name, `protocol`,
//! `listen`, `max_ttl`, `allow_cidrs`, `rate_limit`), then its protocol's own part
//! (`http`, `tcp`, `postgres`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::check::valid_name;
use super::problem::Problems;
use super::{RawService, Service, ServiceKind, TlsConfig};
use crate::units::Rate;

/// What every protocol checks alike, handed on to the protocol's own part.
pub(super) struct Common<'a> {
    pub(super) name: &'a str,
    pub(super) base_dir: &'a Path,
    /// How many problems there were before this service's: any more, and it is refused.
    pub(super) before: usize,
    /// `None` when `listen` is wrong; `Some(None)` when the service has none (tcp).
    pub(super) listen: Option<Option<SocketAddr>>,
    pub(super) max_ttl: Duration,
    pub(super) allow_cidrs: Vec<IpNet>,
    pub(super) rate_limit: Option<Rate>,
}

// === impl Common ===

impl Common<'_> {
    /// A path the file names, taken from the config file's folder when relative
    /// (`join` keeps an absolute one as it is).
    pub(super) fn path(&self, p: impl AsRef<Path>) -> PathBuf {
        self.base_dir.join(p)
    }

    /// The path of this service's key `k`, as problems name it.
    pub(super) fn key(&self, k: &str) -> String {
        format!("services.{}.{k}", self.name)
    }

    /// The service, with its protocol's part; `None` if its check found any problem.
    /// (A tcp service that gets this far has `listen` as `Some(None)`: it has none.)
    pub(super) fn service(
        self,
        p: &Problems,
        rate_limit: Option<Rate>,
        tls: Option<TlsConfig>,
        kind: ServiceKind,
    ) -> Option<Service> {
        if p.0.len() > self.before {
            return None;
        }
        Some(Service {
            name: self.name.to_owned(),
            listen: self.listen?,
            max_ttl: self.max_ttl,
            allow_cidrs: self.allow_cidrs,
            rate_limit,
            tls,
            via: None,
            kind,
        })
    }
}

// === impl RawService ===

impl RawService {
    pub(super) fn check(
        self,
        name: &str,
        global_max_ttl: Duration,
        base_dir: &Path,
        p: &mut Problems,
    ) -> Option<Service> {
        let key = |k: &str| format!("services.{name}.{k}");
        let before = p.0.len();
        if !valid_name(name) {
            p.push(
                &format!("services.{name}"),
                "a service name is 1 to 63 characters of a-z, 0-9, `-` and `_`",
            );
        }
        let is_tcp = self.protocol == "tcp";
        let is_pg = self.protocol == "postgres";
        match self.protocol.as_str() {
            "http" | "tcp" | "postgres" | "mcp" => {}
            "mysql" | "redis" => p.push(
                &key("protocol"),
                &format!(
                    "protocol `{}` is not supported yet by this version; use `http`, `tcp`, `postgres` or `mcp`",
                    self.protocol
                ),
            ),
            _ => p.push(
                &key("protocol"),
                "unknown protocol; this version supports `http`, `tcp`, `postgres` and `mcp`",
            ),
        }
        let listen: Option<Option<SocketAddr>> = match (&self.listen, is_tcp) {
            (Some(l), false) => p.addr(&key("listen"), l).map(Some),
            (None, false) => {
                p.push(
                    &key("listen"),
                    "an http, mcp or postgres service needs `listen`: the gateway port that stands for it",
                );
                None
            }
            (Some(_), true) => {
                p.push(
                    &key("listen"),
                    "a tcp service is reached through `tunnel_listen` with `keyway connect`; remove `listen`",
                );
                None
            }
            (None, true) => Some(None),
        };
        let max_ttl = p.duration_or(&key("max_ttl"), self.max_ttl.as_deref(), global_max_ttl);
        if max_ttl > global_max_ttl {
            p.push(
                &key("max_ttl"),
                &format!(
                    "{} is longer than the global max_ttl of {}",
                    crate::units::format_duration(max_ttl),
                    crate::units::format_duration(global_max_ttl)
                ),
            );
        }
        let mut allow_cidrs = Vec::new();
        if let Some(cidrs) = &self.allow_cidrs {
            if cidrs.is_empty() {
                p.push(
                    &key("allow_cidrs"),
                    "is empty, so nothing could connect; remove the key to allow any source",
                );
            }
            for (i, c) in cidrs.iter().enumerate() {
                let parsed = c
                    .parse::<IpNet>()
                    .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from));
                match parsed {
                    Ok(n) => allow_cidrs.push(n.trunc()),
                    Err(_) => p.push(
                        &format!("{}[{i}]", key("allow_cidrs")),
                        "is not a CIDR like `10.0.0.0/8`",
                    ),
                }
            }
        }
        let rate_limit = match self.rate_limit.as_deref().map(Rate::parse) {
            None => None,
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                p.push(&key("rate_limit"), &e.to_string());
                None
            }
        };
        if self.audit_holds.is_some() && !is_pg {
            p.push(&key("audit_holds"), "applies to postgres services only");
        }
        let common = Common {
            name,
            base_dir,
            before,
            listen,
            max_ttl,
            allow_cidrs,
            rate_limit,
        };
        if is_tcp {
            return self.check_tcp(common, p);
        }
        if is_pg {
            return self.check_postgres(common, p);
        }
        self.check_http(common, p)
    }
}
