//! An http service's part of its check: an `http://` or `https://` upstream without
//! credentials,
//! the header set from a secret, the timeouts and header limits, TLS and client
//! certificates on its listener.

use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, Uri};

use super::check::valid_secret_name;
use super::problem::Problems;
use super::service::Common;
use super::upstream_tls::Asked;
use super::{
    HttpService, HttpUpstream, McpService, RawListenerTls, RawService, Service, ServiceKind,
    TlsConfig, UpstreamAuth,
};

// === impl RawService ===

impl RawService {
    pub(super) fn check_http(self, c: Common<'_>, p: &mut Problems) -> Option<Service> {
        let key = |k: &str| c.key(k);
        let upstream = check_http_upstream(&self.upstream, &key("upstream"), p);
        if self.upstream_tls.is_some() {
            p.push(
                &key("upstream_tls"),
                "an http service says TLS to its upstream with `https://` in `upstream`",
            );
        }
        if self.allow_weak_upstream_auth.is_some() {
            p.push(
                &key("allow_weak_upstream_auth"),
                "applies to postgres services only",
            );
        }
        let asked = match &upstream {
            Some(u) if u.https => Asked::Verified,
            _ => Asked::No,
        };
        let upstream_tls = self.check_upstream_tls(asked, true, &c, p);
        let upstream_auth = self.upstream_auth.and_then(|a| {
            let header = match HeaderName::from_bytes(a.header.as_bytes()) {
                Ok(h) if !is_reserved_header(&h) => Some(h),
                Ok(_) => {
                    p.push(&key("upstream_auth.header"), "cannot be a hop-by-hop or Host header");
                    None
                }
                Err(_) => {
                    p.push(&key("upstream_auth.header"), "is not a valid header name");
                    None
                }
            };
            if !valid_secret_name(&a.secret) {
                p.push(
                    &key("upstream_auth.secret"),
                    "is the name of a secret (set with `keyway secret set NAME`): 1 to 64 characters of \
                     a-z, A-Z, 0-9, `.`, `-` and `_`; never the secret's value",
                );
            }
            let prefix = a.prefix.unwrap_or_default();
            let printable = prefix.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
            if prefix.len() > 64 || !printable {
                p.push(
                    &key("upstream_auth.prefix"),
                    "is up to 64 printable ASCII characters, like `Bearer `",
                );
            }
            Some(UpstreamAuth {
                header: header?,
                secret: a.secret,
                prefix,
            })
        });
        let http = HttpService {
            upstream: upstream.map_or(
                HttpUpstream {
                    authority: Authority::from_static("invalid"),
                    base_path: String::new(),
                },
                |u| u.upstream,
            ),
            upstream_tls,
            local_tls: matches!(&self.tls, Some(RawListenerTls::Local(_))),
            h2c: self.h2c.unwrap_or(false),
            trusted_proxies: self
                .trusted_proxies
                .iter()
                .flatten()
                .enumerate()
                .filter_map(|(i, c)| {
                    let n = c
                        .parse::<ipnet::IpNet>()
                        .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
                    match n {
                        Ok(n) => Some(n.trunc()),
                        Err(_) => {
                            p.push(
                                &format!("{}[{i}]", key("trusted_proxies")),
                                "is not a CIDR like `10.0.0.0/8` (or an address)",
                            );
                            None
                        }
                    }
                })
                .collect(),
            body_timeout: p.duration_or(
                &key("body_timeout"),
                self.body_timeout.as_deref(),
                Duration::from_secs(60),
            ),
            upstream_h2: match self.upstream_protocol.as_deref() {
                None | Some("http1") => false,
                Some("h2") => true,
                Some(_) => {
                    p.push(
                        &key("upstream_protocol"),
                        "is `http1` (the default) or `h2` (HTTP/2, as gRPC servers speak)",
                    );
                    false
                }
            },
            upstream_auth,
            mcp: match (self.protocol == "mcp", self.audit_arguments) {
                (true, a) => Some(McpService {
                    audit_arguments: a.unwrap_or(false),
                }),
                (false, None) => None,
                (false, Some(_)) => {
                    p.push(&key("audit_arguments"), "applies to mcp services only");
                    None
                }
            },
            connect_timeout: p.duration_or(
                &key("connect_timeout"),
                self.connect_timeout.as_deref(),
                Duration::from_secs(5),
            ),
            upstream_timeout: p.duration_or(
                &key("upstream_timeout"),
                self.upstream_timeout.as_deref(),
                Duration::from_secs(30),
            ),
            header_timeout: p.duration_or(
                &key("header_timeout"),
                self.header_timeout.as_deref(),
                Duration::from_secs(10),
            ),
            max_header_bytes: self.max_header_bytes.unwrap_or(16 * 1024),
            max_headers: self.max_headers.unwrap_or(64),
        };
        if !(8192..=1024 * 1024).contains(&http.max_header_bytes) {
            p.push(&key("max_header_bytes"), "must be between 8192 and 1048576");
        }
        if !(8..=1024).contains(&http.max_headers) {
            p.push(&key("max_headers"), "must be between 8 and 1024");
        }
        let require = self.require_client_cert.unwrap_or(false);
        let tls = match self.tls {
            Some(RawListenerTls::Local(l)) => {
                if l != "local" {
                    p.push(
                        &key("tls"),
                        "is `{ cert = \"…\", key = \"…\" }` or `\"local\"` (a certificate from the gateway's local CA)",
                    );
                }
                if self.client_ca.is_some() || require {
                    p.push(
                        &key("client_ca"),
                        "client certificates need `tls = { cert = …, key = … }` on the listener, not `\"local\"`",
                    );
                }
                None
            }
            Some(RawListenerTls::Files(t)) => {
                if t.client_ca.is_some() {
                    p.push(&key("tls.client_ca"), "goes beside `tls`, as `client_ca`");
                }
                if require && self.client_ca.is_none() {
                    p.push(
                        &key("require_client_cert"),
                        "needs `client_ca` to verify client certificates against",
                    );
                }
                Some(TlsConfig {
                    cert: c.path(t.cert),
                    key: c.path(t.key),
                    client_ca: self.client_ca.map(|p| c.path(p)),
                    require_client_cert: require,
                })
            }
            None => {
                if self.client_ca.is_some() || require {
                    p.push(
                        &key("client_ca"),
                        "client certificates need `tls = { cert = …, key = … }` on the listener",
                    );
                }
                None
            }
        };
        if http.h2c && (tls.is_some() || http.local_tls) {
            p.push(
                &key("h2c"),
                "is cleartext HTTP/2; a listener with `tls` offers HTTP/2 by ALPN already",
            );
        }
        let rate_limit = c.rate_limit;
        c.service(p, rate_limit, tls, ServiceKind::Http(http))
    }
}

/// An upstream URL checked, and whether it is `https://`.
struct Checked {
    upstream: HttpUpstream,
    https: bool,
}

fn check_http_upstream(s: &str, key: &str, p: &mut Problems) -> Option<Checked> {
    let Ok(uri) = s.parse::<Uri>() else {
        p.push(key, "is not a URL like `http://10.0.0.5:8080`");
        return None;
    };
    let https = match uri.scheme() {
        Some(s) if *s == Scheme::HTTP => false,
        Some(s) if *s == Scheme::HTTPS => true,
        _ => {
            p.push(key, "must be an `http://` or `https://` URL");
            return None;
        }
    };
    let authority = uri.authority()?.clone();
    if authority.as_str().contains('@') {
        p.push(
            key,
            "must not hold credentials; use `upstream_auth` with a secret",
        );
        return None;
    }
    if uri.query().is_some() {
        p.push(key, "must not have a query string");
        return None;
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    Some(Checked {
        upstream: HttpUpstream {
            authority,
            base_path,
        },
        https,
    })
}

fn is_reserved_header(h: &HeaderName) -> bool {
    matches!(
        h.as_str(),
        "host"
            | "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    ) || h.as_str().starts_with("proxy-")
}
