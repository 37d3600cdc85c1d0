//! The clock that every expiry decision reads.
//!
//! Time is kept as Unix milliseconds: what the store keeps, what the audit log shows,
//! and exact enough for expiry (a token is valid strictly before its `expires_at`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type UnixMillis = i64;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> UnixMillis;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

/// A clock that only moves when told to; for tests of expiry.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

/// Formats Unix milliseconds as RFC 3339 UTC (`2026-11-28T04:05:06.789Z`).
pub fn format_ms(ms: UnixMillis) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Parses an RFC 3339 time (`2026-11-28T04:05:06Z`) into Unix milliseconds.
pub fn parse_time(s: &str) -> Option<UnixMillis> {
    let t = humantime::parse_rfc3339_weak(s.trim()).ok()?;
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// Converts a duration to milliseconds, saturating.
pub fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

// === impl SystemClock ===

impl Clock for SystemClock {
    fn now_ms(&self) -> UnixMillis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(duration_ms)
            .unwrap_or(0)
    }
}

// === impl ManualClock ===

impl ManualClock {
    pub fn new(start: UnixMillis) -> Self {
        Self(AtomicI64::new(start))
    }

    pub fn set(&self, ms: UnixMillis) {
        self.0.store(ms, Ordering::SeqCst);
    }

    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(duration_ms(d), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> UnixMillis {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let ms = 1_795_000_000_123;
        assert_eq!(parse_time(&format_ms(ms)), Some(ms));
        assert_eq!(parse_time("not a time"), None);
    }
}
