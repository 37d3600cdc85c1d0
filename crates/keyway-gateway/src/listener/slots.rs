//! A listener's connection slots, counted in all and per source, so that one source
//! (or a few) cannot take every slot: the rule of [`ConnectionCaps`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::admission::source_key;
use crate::runtime::ConnectionCaps;

/// How often, at most, a listener logs that it refuses connections.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The slots of one listener.
pub(crate) struct Slots {
    caps: ConnectionCaps,
    held: Arc<Mutex<Held>>,
}

/// One connection's slot, given back when dropped.
pub(crate) struct Slot {
    held: Arc<Mutex<Held>>,
    source: IpAddr,
}

#[derive(Default)]
struct Held {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
    /// Refusals since the last warning, and when that was.
    refused: u64,
    warned: Option<Instant>,
}

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// Every slot is taken.
    Listener,
    /// Its source holds its share.
    Source,
    /// Only the reserved slots are left, and its source holds too many to take one.
    Reserved,
}

// === impl Slots ===

impl Slots {
    pub(crate) fn new(caps: ConnectionCaps) -> Self {
        Self {
            caps,
            held: Arc::default(),
        }
    }

    /// A slot for a connection from `peer`, if the caps allow one.
    pub(crate) fn take(&self, peer: IpAddr, listener: &str) -> Result<Slot, Full> {
        let source = source_key(peer);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let mine = held.by_source.get(&source).copied().unwrap_or(0);
        let free = self.caps.total.saturating_sub(held.total);
        let full = if free == 0 {
            Some(Full::Listener)
        } else if mine >= self.caps.per_source {
            Some(Full::Source)
        } else if free <= self.caps.reserved && mine >= self.caps.reserved_below {
            Some(Full::Reserved)
        } else {
            None
        };
        if let Some(why) = full {
            held.refused += 1;
            if held.warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                tracing::warn!(
                    listener,
                    %source,
                    why = why.as_str(),
                    refused = held.refused,
                    open = held.total,
                    "refusing connections (counted since the last warning)"
                );
                held.refused = 0;
                held.warned = Some(Instant::now());
            }
            return Err(why);
        }
        held.total += 1;
        *held.by_source.entry(source).or_insert(0) += 1;
        Ok(Slot {
            held: self.held.clone(),
            source,
        })
    }
}

// === impl Full ===

impl Full {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Full::Listener => "listener_full",
            Full::Source => "source_at_its_cap",
            Full::Reserved => "only_reserved_slots_left",
        }
    }
}

// === impl Slot ===

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                held.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: ConnectionCaps = ConnectionCaps {
        total: 10,
        per_source: 4,
        reserved: 3,
        reserved_below: 1,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_gets_its_share_and_no_more() {
        let slots = Slots::new(CAPS);
        let a: Vec<_> = (0..4).map(|_| slots.take(ip("10.0.0.1"), "t")).collect();
        assert!(a.iter().all(Result::is_ok));
        assert_eq!(slots.take(ip("10.0.0.1"), "t").err(), Some(Full::Source));
        // An IPv4-mapped address is the same source.
        assert_eq!(
            slots.take(ip("::ffff:10.0.0.1"), "t").err(),
            Some(Full::Source)
        );
        drop(a);
        assert!(slots.take(ip("10.0.0.1"), "t").is_ok());
    }

    #[test]
    fn an_ipv6_64_is_one_source() {
        let slots = Slots::new(CAPS);
        let held: Vec<_> = (1..=4)
            .map(|i| slots.take(ip(&format!("2001:db8::{i}")), "t").unwrap())
            .collect();
        assert_eq!(
            slots.take(ip("2001:db8::ffff"), "t").err(),
            Some(Full::Source)
        );
        assert!(slots.take(ip("2001:db8:0:1::1"), "t").is_ok());
        drop(held);
    }

    #[test]
    fn the_reserved_slots_go_to_new_sources_only() {
        let slots = Slots::new(CAPS);
        // Two sources take the 7 unreserved slots.
        let mut held: Vec<_> = (0..4)
            .map(|_| slots.take(ip("10.0.0.1"), "t").unwrap())
            .collect();
        held.extend((0..3).map(|_| slots.take(ip("10.0.0.2"), "t").unwrap()));
        assert_eq!(slots.take(ip("10.0.0.2"), "t").err(), Some(Full::Reserved));
        // Three newcomers get one each; then the listener is full.
        for i in 3..6 {
            held.push(slots.take(ip(&format!("10.0.0.{i}")), "t").unwrap());
        }
        assert_eq!(slots.take(ip("10.0.0.9"), "t").err(), Some(Full::Listener));
        held.truncate(5);
        assert!(slots.take(ip("10.0.0.9"), "t").is_ok());
    }
}
