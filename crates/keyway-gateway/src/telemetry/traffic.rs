//! The last hour of each service's traffic, by minute: requests and connections let
//! through, and refused. The console's overview draws it; Prometheus has the same
//! counts as ever-growing counters, which a page cannot turn into a recent history
//! without keeping one.

use std::collections::HashMap;
use std::sync::Mutex;

use keyway_core::UnixMillis;

/// Minutes kept.
pub const MINUTES: usize = 60;

/// One minute's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Minute {
    pub allowed: u32,
    pub denied: u32,
}

/// Each service's last [`MINUTES`] minutes.
#[derive(Default)]
pub struct Traffic {
    by_service: Mutex<HashMap<String, Ring>>,
}

/// A service's minutes, each slot stamped with the minute it counts.
#[derive(Clone)]
struct Ring([(i64, Minute); MINUTES]);

impl Default for Ring {
    fn default() -> Self {
        Self([(i64::MIN, Minute::default()); MINUTES])
    }
}

// === impl Traffic ===

impl Traffic {
    /// Counts one attempt on `service` at `at`. `service` is a configured name (the
    /// caller's bounded label), so the map cannot grow past the config.
    pub fn count(&self, service: &str, at: UnixMillis, denied: bool) {
        let minute = at.div_euclid(60_000);
        let slot = minute.rem_euclid(MINUTES as i64) as usize;
        let mut all = self.by_service.lock().unwrap_or_else(|p| p.into_inner());
        let ring = match all.get_mut(service) {
            Some(r) => r,
            None => all.entry(service.to_owned()).or_default(),
        };
        let (stamp, counts) = &mut ring.0[slot];
        // An event dated before the minute its slot counts now (late by an hour or
        // more, or a clock stepped back) is not drawn rather than wiping newer counts.
        if minute < *stamp {
            return;
        }
        if minute > *stamp {
            *stamp = minute;
            *counts = Minute::default();
        }
        if denied {
            counts.denied = counts.denied.saturating_add(1);
        } else {
            counts.allowed = counts.allowed.saturating_add(1);
        }
    }

    /// Each service's last hour up to `now`, oldest minute first, by name.
    pub fn last_hour(&self, now: UnixMillis) -> Vec<(String, [Minute; MINUTES])> {
        let current = now.div_euclid(60_000);
        let all = self.by_service.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = all
            .iter()
            .map(|(name, ring)| {
                let mut hour = [Minute::default(); MINUTES];
                for (i, m) in hour.iter_mut().enumerate() {
                    let minute = current - (MINUTES - 1 - i) as i64;
                    let (stamp, counts) = ring.0[minute.rem_euclid(MINUTES as i64) as usize];
                    if stamp == minute {
                        *m = counts;
                    }
                }
                (name.clone(), hour)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_minute_counts_its_own_and_an_hour_old_slot_starts_over() {
        let t = Traffic::default();
        let now = 1_000 * 60_000;
        t.count("billing", now, false);
        t.count("billing", now, true);
        t.count("billing", now - 60_000, false);
        // An hour ago lands in the same slot as now; it must not add to it.
        t.count("db", now - 60 * 60_000, false);
        t.count("db", now - 59 * 60_000, true);
        let hour = t.last_hour(now + 5_000);
        assert_eq!(hour.len(), 2);
        let (name, billing) = &hour[0];
        assert_eq!(name, "billing");
        assert_eq!(
            billing[MINUTES - 1],
            Minute {
                allowed: 1,
                denied: 1
            }
        );
        assert_eq!(
            billing[MINUTES - 2],
            Minute {
                allowed: 1,
                denied: 0
            }
        );
        let db = &hour[1].1;
        assert_eq!(
            db[0],
            Minute {
                allowed: 0,
                denied: 1
            }
        );
        assert_eq!(
            db[MINUTES - 1],
            Minute::default(),
            "an hour-old count is gone"
        );
        // Counted later, the slot of an older minute starts from zero.
        t.count("db", now, false);
        let one = Minute {
            allowed: 1,
            denied: 0,
        };
        assert_eq!(t.last_hour(now)[1].1[MINUTES - 1], one);
        // An event an hour late leaves the minute now in its slot alone.
        t.count("db", now - 60 * 60_000, true);
        assert_eq!(t.last_hour(now)[1].1[MINUTES - 1], one);
    }
}
