//! A tcp service's part of its check: a `host:port` upstream, reached through the
//! tunnel with `keyway connect`, maybe wrapped in TLS; the HTTP-only keys are refused.

use std::time::Duration;

use super::problem::Problems;
use super::service::Common;
use super::{RawService, Service, ServiceKind, TcpService};

// === impl RawService ===

impl RawService {
    pub(super) fn check_tcp(self, c: Common<'_>, p: &mut Problems) -> Option<Service> {
        let key = |k: &str| c.key(k);
        let asked = self.upstream_tls_mode(&c, p);
        let upstream_tls = self.check_upstream_tls(asked, false, &c, p);
        let tcp = TcpService {
            upstream: check_tcp_upstream(&self.upstream, &key("upstream"), p).unwrap_or_default(),
            connect_timeout: p.duration_or(
                &key("connect_timeout"),
                self.connect_timeout.as_deref(),
                Duration::from_secs(5),
            ),
            upstream_tls,
        };
        let http_only = [
            ("upstream_auth", self.upstream_auth.is_some()),
            ("rate_limit", self.rate_limit.is_some()),
            ("tls", self.tls.is_some()),
            ("upstream_timeout", self.upstream_timeout.is_some()),
            ("header_timeout", self.header_timeout.is_some()),
            ("h2c", self.h2c.is_some()),
            ("trusted_proxies", self.trusted_proxies.is_some()),
            ("body_timeout", self.body_timeout.is_some()),
            ("upstream_protocol", self.upstream_protocol.is_some()),
        ];
        for (k, set) in http_only {
            if set {
                p.push(&key(k), "applies to http services only");
            }
        }
        if self.allow_weak_upstream_auth.is_some() {
            p.push(
                &key("allow_weak_upstream_auth"),
                "applies to postgres services only",
            );
        }
        c.service(p, None, None, ServiceKind::Tcp(tcp))
    }
}

/// `host:port` of a TCP upstream.
pub(super) fn check_tcp_upstream(s: &str, key: &str, p: &mut Problems) -> Option<String> {
    let ok = s.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if !ok {
        p.push(key, "is not an address like `10.0.0.5:6379` (host:port)");
        return None;
    }
    Some(s.to_owned())
}
