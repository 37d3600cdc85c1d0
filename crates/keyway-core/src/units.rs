//! Durations (`15m`, `24h`, `90d`) and rates (`50/s`) as written in `keyway.toml` and on
//! the command line.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

/// A rate: `count` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    #[error("not a duration; write it like `90s`, `15m`, `24h` or `7d`")]
    Duration,
    #[error("a duration of zero is not allowed here")]
    ZeroDuration,
    #[error("a duration longer than 10 years is not allowed")]
    TooLong,
    #[error("not a rate; write it like `50/s`, `600/m` or `10000/h` (a count from 1 to 1000000)")]
    Rate,
}

/// Parses a human duration; zero is refused, since every use of a duration in Keyway
/// (a TTL, a timeout, a window) is meaningless at zero.
/// Values are never echoed in errors: they come from config files and command lines,
/// where secrets get pasted by mistake.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let d = humantime::parse_duration(s.trim()).map_err(|_| UnitError::Duration)?;
    if d.is_zero() {
        return Err(UnitError::ZeroDuration);
    }
    if d > MAX_DURATION {
        return Err(UnitError::TooLong);
    }
    Ok(d)
}

/// The longest duration accepted anywhere (and so the latest time Keyway formats).
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Formats a duration the way it is written in the config (`1h 30m`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

// === impl Rate ===

impl Rate {
    pub fn parse(s: &str) -> Result<Self, UnitError> {
        let err = || UnitError::Rate;
        let (count, unit) = s.trim().split_once('/').ok_or_else(err)?;
        let count: u32 = count.trim().parse().map_err(|_| err())?;
        let count = NonZeroU32::new(count)
            .filter(|c| c.get() <= 1_000_000)
            .ok_or_else(err)?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(err()),
        };
        Ok(Self { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{}", self.count, unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86400)));
        assert_eq!(parse_duration("0s"), Err(UnitError::ZeroDuration));
        assert!(parse_duration("forever").is_err());
        assert_eq!(parse_duration("11y"), Err(UnitError::TooLong));
        assert!(!parse_duration("sk_live_abc")
            .unwrap_err()
            .to_string()
            .contains("sk_live"));
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn rates() {
        let r = Rate::parse("50/s").unwrap();
        assert_eq!((r.count.get(), r.per), (50, Duration::from_secs(1)));
        assert_eq!(Rate::parse("600/m").unwrap().to_string(), "600/m");
        for bad in ["0/s", "50", "50/d", "-1/s", "x/s", "/s", "2000000/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
