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
    #[error("not ports; write them like `22,80,8000-8100` (1 to 65535)")]
    Ports,
}

/// Ports as written on the command line and in `[audit.ports]`: `1-1024,5432`.
pub fn parse_ports(s: &str) -> Result<std::collections::BTreeSet<u16>, UnitError> {
    let mut out = std::collections::BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (Ok(lo), Ok(hi)) = (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) else {
            return Err(UnitError::Ports);
        };
        if lo == 0 || hi < lo {
            return Err(UnitError::Ports);
        }
        out.extend(lo..=hi);
    }
    if out.is_empty() {
        return Err(UnitError::Ports);
    }
    Ok(out)
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
    fn ports_and_ranges() {
        assert_eq!(
            parse_ports("22, 80-82,80")
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            vec![22, 80, 81, 82]
        );
        assert_eq!(parse_ports("1-65535").unwrap().len(), 65535);
        for bad in ["", "0", "9-8", "http", "70000", "1-", ",", "-5"] {
            assert_eq!(parse_ports(bad), Err(UnitError::Ports), "{bad}");
        }
    }

    proptest::proptest! {
        /// Any list of ports and ranges written out parses back to the same set.
        #[test]
        fn ports_round_trip(ranges in proptest::collection::vec((1u16..=65535, 0u16..50), 1..8)) {
            let mut want = std::collections::BTreeSet::new();
            let text: Vec<String> = ranges
                .iter()
                .map(|&(lo, len)| {
                    let hi = lo.saturating_add(len);
                    want.extend(lo..=hi);
                    if hi == lo { lo.to_string() } else { format!("{lo}-{hi}") }
                })
                .collect();
            proptest::prop_assert_eq!(parse_ports(&text.join(",")).unwrap(), want);
        }

        #[test]
        fn ports_never_panic(s in "\\PC{0,40}") {
            let _ = parse_ports(&s);
        }
    }

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
