//! What is wrong with a config: each problem with its key's path (and, for a syntax
//! error, its line), never the value, since a config file is where secrets get pasted
//! by mistake.

use std::net::SocketAddr;
use std::time::Duration;

use super::{lint, Config};
use crate::units::parse_duration;

/// Everything wrong with a config, one problem a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

/// One thing wrong with a config: where (the key's path; for a syntax error, also
/// the line) and what. Shown as ``line N: `key`: message``.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

/// The problems a check has found so far; a check goes on past each one, so that the
/// operator sees them all at once.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<Problem>);

// === impl Problem ===

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

// === impl Problems ===

impl Problems {
    pub(super) fn push(&mut self, key: &str, msg: &str) {
        // Keys can hold names people typed (a service's, a role's).
        self.0.push(Problem {
            line: None,
            key: Some(lint::mask_secrets(key)),
            message: msg.to_owned(),
        });
    }

    pub(super) fn addr(&mut self, key: &str, s: &str) -> Option<SocketAddr> {
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(key, "is not an address like `127.0.0.1:9001`");
                None
            }
        }
    }

    pub(super) fn duration_or(
        &mut self,
        key: &str,
        s: Option<&str>,
        default: Duration,
    ) -> Duration {
        match s.map(parse_duration) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.push(key, &e.to_string());
                default
            }
        }
    }

    pub(super) fn finish(self, c: Config) -> Result<Config, ConfigError> {
        if self.0.is_empty() {
            Ok(c)
        } else {
            Err(ConfigError { problems: self.0 })
        }
    }
}

/// serde's messages quote the offending value (`invalid type: string "sk_live_…",
/// expected …`); a config file is where secrets get pasted by mistake, so keep only
/// what was expected.
pub(super) fn without_values(msg: &str) -> String {
    if msg.starts_with("invalid type")
        || msg.starts_with("invalid value")
        || msg.starts_with("invalid length")
    {
        return match msg.rsplit_once(", expected ") {
            Some((_, expected)) => format!("wrong type or value here; expected {expected}"),
            None => "wrong type or value here".to_owned(),
        };
    }
    msg.to_owned()
}
