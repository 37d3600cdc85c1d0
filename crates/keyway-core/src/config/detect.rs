//! `[detect.*]` and `[alerts.webhook]`: which detectors watch the event stream, their
//! thresholds and windows, what each does when it fires, and where alerts go.
//!
//! Every detector is on by default with the action `alert`, so a new gateway notices
//! attacks without locking anyone out by surprise; `enabled = false` turns one off.

use std::collections::BTreeMap;
use std::time::Duration;

use http::Uri;
use ipnet::IpNet;
use serde::Deserialize;

use super::{is_loopback_host, valid_secret_name, Problems};

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDetect {
    /// Sources that are never blocked (monitoring, load balancers); alerts still fire.
    pub never_block: Option<Vec<String>>,
    pub block_for: Option<String>,
    pub max_block: Option<String>,
    pub brute_force: Option<RawDetector>,
    pub token_guessing: Option<RawDetector>,
    pub scanning: Option<RawDetector>,
    pub new_network: Option<RawDetector>,
    pub concurrent_sources: Option<RawDetector>,
    pub rate_spike: Option<RawDetector>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDetector {
    pub enabled: Option<bool>,
    pub threshold: Option<u32>,
    pub window: Option<String>,
    pub factor: Option<f64>,
    pub action: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    pub webhook: Option<RawWebhook>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: String,
    /// The name of a secret set with `keyway secret set`: the HMAC key.
    pub secret: String,
    pub timeout: Option<String>,
    pub retries: Option<u32>,
}

/// The detectors, by what they notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DetectorKind {
    /// Many failed authentications from one source.
    BruteForce,
    /// Well-formed tokens with wrong checksums or unknown ids from one source.
    TokenGuessing,
    /// One source touching many gateway ports or unknown services.
    Scanning,
    /// A token used from a network (/24, /64) it was never used from.
    NewNetwork,
    /// One token used from two sources within the window.
    ConcurrentSources,
    /// A token's requests in a window far above its own moving baseline.
    RateSpike,
}

/// What a detector does when it fires; every firing also alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Alert,
    /// Refuse the source's connections for a time that doubles with each block.
    Block,
    /// Revoke the token.
    Revoke,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Detector {
    /// Events (or, for scanning, distinct ports and services) within `window` that
    /// fire it; for `rate_spike`, the fewest requests in a window that can.
    pub threshold: u32,
    pub window: Duration,
    /// `rate_spike` only: how many times the token's baseline a window must reach.
    pub factor: f64,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DetectConfig {
    pub never_block: Vec<IpNet>,
    pub block_for: Duration,
    pub max_block: Duration,
    pub detectors: BTreeMap<DetectorKind, Detector>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertsConfig {
    pub webhook: Option<Webhook>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub url: Uri,
    pub secret: String,
    /// One attempt's bound.
    pub timeout: Duration,
    /// Attempts after the first, with a doubling pause (1 s, 2 s, 4 s, …).
    pub retries: u32,
}

// === impl DetectorKind ===

impl DetectorKind {
    pub const ALL: [Self; 6] = [
        Self::BruteForce,
        Self::TokenGuessing,
        Self::Scanning,
        Self::NewNetwork,
        Self::ConcurrentSources,
        Self::RateSpike,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BruteForce => "brute_force",
            Self::TokenGuessing => "token_guessing",
            Self::Scanning => "scanning",
            Self::NewNetwork => "new_network",
            Self::ConcurrentSources => "concurrent_sources",
            Self::RateSpike => "rate_spike",
        }
    }

    /// Whether it watches a source (no token to revoke) rather than a token.
    pub fn is_per_source(self) -> bool {
        matches!(
            self,
            Self::BruteForce | Self::TokenGuessing | Self::Scanning
        )
    }

    fn default(self) -> Detector {
        let (threshold, window, factor) = match self {
            Self::BruteForce => (10, 60, 0.0),
            Self::TokenGuessing => (5, 60, 0.0),
            Self::Scanning => (10, 60, 0.0),
            Self::NewNetwork => (1, 0, 0.0),
            Self::ConcurrentSources => (2, 10, 0.0),
            Self::RateSpike => (100, 10, 10.0),
        };
        Detector {
            threshold,
            window: Duration::from_secs(window),
            factor,
            action: Action::Alert,
        }
    }
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alert => "alert",
            Self::Block => "block",
            Self::Revoke => "revoke",
        }
    }
}

impl Default for DetectConfig {
    fn default() -> Self {
        RawDetect::default().check(&mut Problems::default())
    }
}

// === impl RawDetect ===

impl RawDetect {
    pub(super) fn check(self, p: &mut Problems) -> DetectConfig {
        let mut never_block = Vec::new();
        for (i, c) in self.never_block.unwrap_or_default().iter().enumerate() {
            match c
                .parse::<IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
            {
                Ok(n) => never_block.push(n.trunc()),
                Err(_) => p.push(
                    &format!("detect.never_block[{i}]"),
                    "is not a CIDR like `10.0.0.0/8`",
                ),
            }
        }
        let block_for = p.duration_or(
            "detect.block_for",
            self.block_for.as_deref(),
            Duration::from_secs(60),
        );
        let max_block = p.duration_or(
            "detect.max_block",
            self.max_block.as_deref(),
            Duration::from_secs(24 * 3600),
        );
        if max_block < block_for {
            p.push(
                "detect.max_block",
                "must not be shorter than `detect.block_for`",
            );
        }
        let raws = [
            (DetectorKind::BruteForce, self.brute_force),
            (DetectorKind::TokenGuessing, self.token_guessing),
            (DetectorKind::Scanning, self.scanning),
            (DetectorKind::NewNetwork, self.new_network),
            (DetectorKind::ConcurrentSources, self.concurrent_sources),
            (DetectorKind::RateSpike, self.rate_spike),
        ];
        let mut detectors = BTreeMap::new();
        for (kind, raw) in raws {
            let raw = raw.unwrap_or_default();
            if raw.enabled == Some(false) {
                continue;
            }
            detectors.insert(kind, raw.check(kind, p));
        }
        DetectConfig {
            never_block,
            block_for,
            max_block,
            detectors,
        }
    }
}

impl RawDetector {
    fn check(self, kind: DetectorKind, p: &mut Problems) -> Detector {
        let key = |k: &str| format!("detect.{}.{k}", kind.as_str());
        let mut d = kind.default();
        let uses_threshold = !matches!(
            kind,
            DetectorKind::NewNetwork | DetectorKind::ConcurrentSources
        );
        match (self.threshold, uses_threshold) {
            (Some(_), false) => p.push(&key("threshold"), "is not a setting of this detector"),
            (Some(0), true) => p.push(&key("threshold"), "must be at least 1"),
            (Some(t), true) => d.threshold = t,
            (None, _) => {}
        }
        match (self.window, kind) {
            (Some(_), DetectorKind::NewNetwork) => {
                p.push(&key("window"), "is not a setting of this detector")
            }
            (Some(w), _) => {
                d.window = p.duration_or(&key("window"), Some(&w), d.window);
                if d.window > Duration::from_secs(24 * 3600) {
                    p.push(&key("window"), "must be at most 24h");
                }
            }
            (None, _) => {}
        }
        match (self.factor, kind) {
            (Some(f), DetectorKind::RateSpike) if f.is_finite() && f >= 1.5 => d.factor = f,
            (Some(_), DetectorKind::RateSpike) => p.push(&key("factor"), "must be at least 1.5"),
            (Some(_), _) => p.push(&key("factor"), "is a setting of `detect.rate_spike` only"),
            (None, _) => {}
        }
        d.action = match self.action.as_deref() {
            None | Some("alert") => Action::Alert,
            Some("block") => Action::Block,
            Some("revoke") if kind.is_per_source() => {
                p.push(
                    &key("action"),
                    "this detector watches sources, which have no token to revoke; use `alert` or `block`",
                );
                Action::Alert
            }
            Some("revoke") => Action::Revoke,
            Some(_) => {
                p.push(&key("action"), "must be `alert`, `block` or `revoke`");
                Action::Alert
            }
        };
        d
    }
}

// === impl RawAlerts ===

impl RawAlerts {
    pub(super) fn check(self, p: &mut Problems) -> AlertsConfig {
        let Some(w) = self.webhook else {
            return AlertsConfig::default();
        };
        let url = match w.url.parse::<Uri>() {
            Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => Some(u),
            Ok(u) if u.scheme_str() == Some("http") && u.host().is_some_and(is_loopback_host) => {
                Some(u)
            }
            Ok(u) if u.scheme_str() == Some("http") => {
                p.push(
                    "alerts.webhook.url",
                    "must be `https://`; plain `http://` is accepted only for a loopback address",
                );
                None
            }
            _ => {
                p.push(
                    "alerts.webhook.url",
                    "is not a URL like `https://hooks.example/keyway`",
                );
                None
            }
        };
        if !valid_secret_name(&w.secret) {
            p.push(
                "alerts.webhook.secret",
                "names a secret set with `keyway secret set NAME` (a-z, 0-9, `-`, `_`); the key itself never goes in this file",
            );
        }
        let timeout = p.duration_or(
            "alerts.webhook.timeout",
            w.timeout.as_deref(),
            Duration::from_secs(5),
        );
        let retries = w.retries.unwrap_or(5);
        if retries > 10 {
            p.push("alerts.webhook.retries", "must be at most 10");
        }
        AlertsConfig {
            webhook: url.map(|url| Webhook {
                url,
                secret: w.secret,
                timeout,
                retries,
            }),
        }
    }
}
