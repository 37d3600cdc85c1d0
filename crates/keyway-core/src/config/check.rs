//! The raw file checked into [`Config`]: the global keys and their defaults, the
//! audit, that no two listeners share a port, that agents and the services they carry
//! name each other; each service's own check is in `service`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::problem::{ConfigError, Problems};
use super::{
    Agent, AuditConfig, Config, Durability, OnFull, PortAuditConfig, RawConfig, ServiceKind,
    TlsConfig, Written, DEFAULT_ADMIN_LISTEN, DEFAULT_DATA_DIR, PORT_AUDIT_DEFAULT,
};

/// `audit.queue_bytes` by default: 32 MiB, about 30,000 request events.
const DEFAULT_QUEUE_BYTES: usize = 32 << 20;

const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_ADMIN_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const DEFAULT_CREDENTIAL_MAX_AGE: Duration = Duration::from_secs(90 * 24 * 3600);

// === impl RawConfig ===

impl RawConfig {
    pub fn check(mut self, base_dir: &Path) -> Result<Config, ConfigError> {
        let mut p = Problems::default();
        // `join` keeps an absolute path as it is.
        let rel = |path: PathBuf| base_dir.join(path);

        let data_dir = rel(self.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()));
        if let Some(url) = &self.store {
            check_store_url(&mut p, url);
        }
        let replica = self.replica.unwrap_or_else(default_replica);
        super::replicas::apply(&mut p, &self.replicas, &replica, &mut self.services);
        let store_max_lag = p.duration_or(
            "store_max_lag",
            self.store_max_lag.as_deref(),
            Duration::from_secs(5),
        );
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&store_max_lag) {
            p.push("store_max_lag", "must be between 1s and 1h");
        }
        let grace = if self.store.is_some() { 5 } else { 0 };
        let drain_grace = p.duration_or(
            "drain_grace",
            self.drain_grace.as_deref(),
            Duration::from_secs(grace),
        );
        if drain_grace > Duration::from_secs(600) {
            p.push("drain_grace", "must be at most 10m");
        }
        if !valid_replica(&replica) {
            p.push(
                "replica",
                "a replica's name is 1 to 63 characters of a-z, 0-9, `-`, `_` and `.`",
            );
        }
        let admin_listen = p
            .addr(
                "admin_listen",
                self.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
            )
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7070)));
        let max_ttl = p.duration_or("max_ttl", self.max_ttl.as_deref(), DEFAULT_MAX_TTL);
        let admin_token_ttl = p.duration_or(
            "admin_token_ttl",
            self.admin_token_ttl.as_deref(),
            DEFAULT_ADMIN_TOKEN_TTL,
        );
        let token_listen = self
            .token_listen
            .as_deref()
            .and_then(|a| p.addr("token_listen", a));
        let token_tls = self.token_tls.map(|t| TlsConfig {
            cert: rel(t.cert),
            key: rel(t.key),
            client_ca: t.client_ca.map(rel),
            require_client_cert: false,
        });
        let tunnel_listen = self
            .tunnel_listen
            .as_deref()
            .and_then(|a| p.addr("tunnel_listen", a));
        let tunnel_tls = self.tunnel_tls.map(|t| TlsConfig {
            cert: rel(t.cert),
            key: rel(t.key),
            client_ca: t.client_ca.map(rel),
            require_client_cert: false,
        });
        let tunnel_client_ca = self.tunnel_client_ca.map(rel);
        if tunnel_client_ca.is_some() && tunnel_tls.is_some() {
            p.push(
                "tunnel_client_ca",
                "with `tunnel_tls`, the tunnel's client CA is its `client_ca`",
            );
        }
        let credential_max_age = p.duration_or(
            "credential_max_age",
            self.credential_max_age.as_deref(),
            DEFAULT_CREDENTIAL_MAX_AGE,
        );
        let agent_cert_ttl = p.duration_or(
            "agent_cert_ttl",
            self.agent_cert_ttl.as_deref(),
            Duration::from_secs(24 * 3600),
        );
        if !(Duration::from_secs(5)..=Duration::from_secs(30 * 24 * 3600)).contains(&agent_cert_ttl)
        {
            p.push("agent_cert_ttl", "must be between 5s and 30d");
        }
        // A path written in the file is relative to it; the defaults are already
        // under `data_dir`, which is.
        let pepper_file = self
            .pepper_file
            .map(rel)
            .unwrap_or_else(|| data_dir.join("pepper.key"));
        let master_key_file = self
            .master_key_file
            .map(rel)
            .unwrap_or_else(|| data_dir.join("master.key"));

        let on_full = match self.audit.on_full.as_deref() {
            None | Some("fail_closed") => OnFull::FailClosed,
            Some("fail_open") => OnFull::FailOpen,
            Some(_) => {
                p.push(
                    "audit.on_full",
                    "must be `fail_closed` (the default) or `fail_open`",
                );
                OnFull::FailClosed
            }
        };
        let durability = match self.audit.durability.as_deref() {
            None | Some("commit") => Durability::Commit,
            Some("batched") => Durability::Batched,
            Some(_) => {
                p.push(
                    "audit.durability",
                    "must be `commit` (the default) or `batched`",
                );
                Durability::Commit
            }
        };
        let retention = self
            .audit
            .retention
            .as_deref()
            .map(|r| p.duration_or("audit.retention", Some(r), Duration::MAX));
        let checkpoint_every = p.duration_or(
            "audit.checkpoint_every",
            self.audit.checkpoint_every.as_deref(),
            Duration::from_secs(60),
        );
        if checkpoint_every > Duration::from_secs(3600) {
            p.push("audit.checkpoint_every", "must be at most 1h");
        }
        if retention.is_some_and(|r| r < 2 * checkpoint_every) {
            p.push(
                "audit.retention",
                "must be at least twice `audit.checkpoint_every`, so that a checkpoint can anchor what is kept",
            );
        }
        let ports = self.audit.ports.map(|raw| {
            let every = p.duration_or(
                "audit.ports.every",
                Some(&raw.every),
                Duration::from_secs(7 * 24 * 3600),
            );
            if every < Duration::from_secs(1) {
                p.push("audit.ports.every", "must be at least 1s");
            }
            let ports =
                crate::units::parse_ports(raw.ports.as_deref().unwrap_or(PORT_AUDIT_DEFAULT))
                    .unwrap_or_else(|e| {
                        p.push("audit.ports.ports", &e.to_string());
                        Default::default()
                    });
            let hosts = raw.hosts.unwrap_or_default();
            if hosts.len() > 256 {
                p.push("audit.ports.hosts", "at most 256 hosts or CIDRs");
            }
            for (i, h) in hosts.iter().enumerate() {
                let ok = match h.parse::<IpNet>() {
                    Ok(n) => n.prefix_len() + 16 >= n.max_prefix_len(),
                    Err(_) => {
                        h.parse::<std::net::IpAddr>().is_ok()
                            || (!h.is_empty()
                                && h.len() <= 253
                                && h.bytes()
                                    .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-'))
                    }
                };
                if !ok {
                    p.push(
                        &format!("audit.ports.hosts[{i}]"),
                        "is not a host name, an address or a CIDR of at most 65536 addresses",
                    );
                }
            }
            PortAuditConfig {
                every,
                hosts,
                ports,
            }
        });
        let queue = self.audit.queue.unwrap_or(65_536);
        if !(64..=10_000_000).contains(&queue) {
            p.push("audit.queue", "must be between 64 and 10000000 events");
        }
        let queue_bytes = self.audit.queue_bytes.unwrap_or(DEFAULT_QUEUE_BYTES);
        if !((1 << 20)..=(4 << 30)).contains(&queue_bytes) {
            p.push(
                "audit.queue_bytes",
                "must be between 1048576 (1 MiB) and 4294967296 (4 GiB)",
            );
        }

        let mut services = BTreeMap::new();
        let mut listens: BTreeMap<SocketAddr, String> = BTreeMap::new();
        listens.insert(admin_listen, "admin_listen".into());
        if let Some(t) = tunnel_listen.filter(|t| t.port() != 0) {
            if claim(&mut listens, t, "tunnel_listen".into()).is_some() {
                p.push(
                    "tunnel_listen",
                    "shares its address with another listener; give each its own port",
                );
            }
        }
        if let Some(t) = token_listen.filter(|t| t.port() != 0) {
            if claim(&mut listens, t, "token_listen".into()).is_some() {
                p.push(
                    "token_listen",
                    "is the same address as `admin_listen`; give each its own port",
                );
            }
        }
        for (name, raw) in self.services {
            let via = raw.via.clone();
            let Some(mut svc) = raw.check(&name, max_ttl, base_dir, &mut p) else {
                continue;
            };
            svc.via = via;
            // Port 0 asks the system for any free port, so it never collides.
            let taken = svc
                .listen
                .filter(|l| l.port() != 0)
                .and_then(|l| claim(&mut listens, l, format!("services.{name}.listen")));
            if let Some(other) = taken {
                p.push(
                    &format!("services.{name}.listen"),
                    &format!(
                        "{} is already used by `{other}`; give each its own port",
                        svc.listen.map(|l| l.to_string()).unwrap_or_default()
                    ),
                );
            }
            if matches!(svc.kind, ServiceKind::Tcp(_)) && tunnel_listen.is_none() {
                p.push(
                    &format!("services.{name}.protocol"),
                    "a tcp service is reached through the tunnel; set `tunnel_listen` (like \"0.0.0.0:7443\")",
                );
            }
            services.insert(name, svc);
        }

        let mut agents = BTreeMap::new();
        for (name, raw) in self.agents {
            if !valid_name(&name) {
                p.push(
                    &format!("agents.{name}"),
                    "an agent name is 1 to 63 characters of a-z, 0-9, `-` and `_`",
                );
            }
            for (i, svc) in raw.services.iter().enumerate() {
                match services.get(svc) {
                    None => p.push(
                        &format!("agents.{name}.services[{i}]"),
                        &format!("names no service; declare `[services.{}]`", svc.chars().take(64).collect::<String>()),
                    ),
                    Some(s) if s.via.as_deref() != Some(name.as_str()) => p.push(
                        &format!("agents.{name}.services[{i}]"),
                        &format!("set `via = \"{name}\"` on `services.{svc}` too, so the gateway never dials it itself"),
                    ),
                    Some(_) => {}
                }
            }
            agents.insert(
                name.clone(),
                Agent {
                    name,
                    services: raw.services,
                },
            );
        }
        for (name, svc) in &services {
            let Some(via) = &svc.via else { continue };
            let key = format!("services.{name}.via");
            match agents.get(via) {
                None => p.push(&key, "names no agent; declare `[agents.NAME]`"),
                Some(a) if !a.services.contains(name) => p.push(
                    &key,
                    &format!("list `{name}` in `agents.{via}.services` too"),
                ),
                Some(_) => {}
            }
        }
        if !agents.is_empty() {
            if tunnel_listen.is_none() {
                p.push(
                    "agents",
                    "agents dial the gateway's tunnel; set `tunnel_listen`",
                );
            }
            if tunnel_tls.is_some() {
                p.push(
                    "tunnel_tls",
                    "agents are enrolled with the gateway's own CA, which the tunnel must use; remove `tunnel_tls`",
                );
            }
        }

        let detect = self.detect.check(&mut p);
        let alerts = self.alerts.check(&mut p);
        let identity = self.identity.check(&mut p);
        let policies = self
            .policies
            .into_iter()
            .map(|(name, raw)| {
                let policy = raw.check(&name, &services, &identity, &mut p);
                (name, policy)
            })
            .collect();
        if !identity.workload.is_empty() && token_listen.is_none() {
            p.push(
                "identity.workload",
                "workloads exchange their JWTs at the token endpoint; set `token_listen`",
            );
        }
        if !identity.oidc.is_empty() && token_listen.is_none() {
            p.push(
                "identity.oidc",
                "people sign in and ask for access at the token endpoint; set `token_listen`",
            );
        }

        p.finish(Config {
            data_dir,
            store: self.store,
            replica,
            store_max_lag,
            drain_grace,
            admin_listen,
            max_ttl,
            admin_token_ttl,
            token_listen,
            token_tls,
            tunnel_listen,
            tunnel_tls,
            tunnel_client_ca,
            credential_max_age,
            agent_cert_ttl,
            revoke_tokens_in_urls: self.revoke_tokens_in_urls.unwrap_or(true),
            pepper_file,
            master_key_file,
            audit: AuditConfig {
                queue,
                queue_bytes,
                on_full,
                durability,
                retention,
                checkpoint_every,
                ports,
            },
            services,
            agents,
            detect,
            alerts,
            identity,
            policies,
            written: Written {
                base_dir: base_dir.to_path_buf(),
                ..Written::default()
            },
        })
    }
}

pub(super) fn valid_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

/// `localhost` or a loopback address (IPv6 in brackets or not).
pub fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A secret's name: what `keyway secret set` takes.
pub fn valid_secret_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
}

/// Takes `addr` for `key` unless a listener already has its port on the same
/// address or on a wildcard one (`0.0.0.0:9001` holds `127.0.0.1:9001` too); returns
/// the key that has it.
fn claim(
    listens: &mut BTreeMap<SocketAddr, String>,
    addr: SocketAddr,
    key: String,
) -> Option<String> {
    let taken = listens.iter().find(|(a, _)| {
        a.port() == addr.port()
            && (a.ip() == addr.ip() || a.ip().is_unspecified() || addr.ip().is_unspecified())
    });
    if let Some((_, other)) = taken {
        return Some(other.clone());
    }
    listens.insert(addr, key);
    None
}

/// Whether `name` may name a replica: 1 to 63 of `a-z`, `0-9`, `-`, `_`, `.`.
pub fn valid_replica(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_.".contains(&c))
}

/// The host's name, as a replica's name (lowercased; other characters as `-`).
fn default_replica() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let name: String = host
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if name.is_empty() {
        "gateway".into()
    } else {
        name
    }
}

/// A store URL: `postgres://` or `postgresql://`, and no password in it (the config
/// file is not where secrets go).
fn check_store_url(p: &mut Problems, url: &str) {
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        p.push(
            "store",
            "is a PostgreSQL URL like postgres://keyway@db.internal/keyway (SQLite, the default, needs no `store`)",
        );
        return;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let query = rest.split_once('?').map_or("", |(_, q)| q);
    let in_query = query
        .split('&')
        .any(|kv| kv.to_ascii_lowercase().starts_with("password="));
    if in_query
        || authority
            .rsplit_once('@')
            .is_some_and(|(user, _)| user.contains(':'))
    {
        p.push(
            "store",
            "holds a password; give it in KEYWAY_STORE_URL or PGPASSWORD, never in the file",
        );
    }
}
