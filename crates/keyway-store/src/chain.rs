//! The audit log's hash chain: each event stores the hash of the event before it
//! (`prev_hash`) and its own (`hash`), an HMAC-SHA256 under a key kept outside the
//! database, over the previous hash and every field as stored. Editing the store
//! directly shows:
//!
//! - an **altered** event: its hash no longer matches its fields;
//! - a **deleted** event: the next one's `prev_hash` is not its predecessor's hash,
//!   and its `seq` skips;
//! - **reordered** events: the same broken link with no gap in `seq`.
//!
//! The sequence number is left out of the hash on purpose, so a reordering reads as
//! a reordering rather than as an alteration. Removing the newest events leaves a
//! shorter, intact chain; the chain proves what is there was not changed.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::AuditEvent;

/// The key of the chain (derived from the pepper by the gateway).
pub type ChainKey = [u8; 32];

/// The `prev_hash` of the first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// The hash of an event that follows `prev`; `detail` as stored.
pub fn link(key: &ChainKey, prev: &[u8; 32], e: &AuditEvent, detail: &str) -> [u8; 32] {
    // HMAC takes keys of any length; a 32-byte key cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key");
    mac.update(b"keyway audit v1");
    mac.update(prev);
    mac.update(&e.at.to_be_bytes());
    for field in [
        Some(e.kind.as_str()),
        e.decision.as_deref(),
        e.reason.as_deref(),
        e.principal.as_deref(),
        e.service.as_deref(),
        e.token_id.as_deref(),
        e.source.as_deref(),
        Some(detail),
    ] {
        match field {
            Some(s) => {
                mac.update(&(s.len() as u32).to_be_bytes());
                mac.update(s.as_bytes());
            }
            None => mac.update(&u32::MAX.to_be_bytes()),
        }
    }
    mac.finalize().into_bytes().into()
}

/// What a walk of the chain found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Verdict {
    Intact {
        /// Events in the chain.
        events: u64,
        /// Events from before the chain existed (no hashes), all before it.
        unchained: u64,
    },
    Broken {
        /// The first event that does not hold.
        seq: i64,
        kind: String,
        /// `altered`, `deleted` (events before this one are missing) or `reordered`.
        what: String,
    },
}

/// Walks events in `seq` order and says where the chain first breaks. `rows` holds
/// `(seq, event, detail as stored, prev_hash, hash)`.
#[derive(Debug)]
pub struct Walk<'k> {
    key: &'k ChainKey,
    last: Option<(i64, [u8; 32])>,
    events: u64,
    unchained: u64,
}

impl<'k> Walk<'k> {
    pub fn new(key: &'k ChainKey) -> Self {
        Self {
            key,
            last: None,
            events: 0,
            unchained: 0,
        }
    }

    /// The next row; `Err` with the verdict at the first break.
    pub fn step(
        &mut self,
        seq: i64,
        e: &AuditEvent,
        detail: &str,
        prev: Option<&[u8]>,
        hash: Option<&[u8]>,
    ) -> Result<(), Verdict> {
        let broken = |what: &str| Verdict::Broken {
            seq,
            kind: e.kind.clone(),
            what: what.into(),
        };
        let (Some(prev), Some(hash)) = (prev, hash) else {
            // Unchained rows may only come before the chain starts.
            if self.last.is_some() {
                return Err(broken("altered"));
            }
            self.unchained += 1;
            return Ok(());
        };
        let (Ok(prev), Ok(hash)) = (<[u8; 32]>::try_from(prev), <[u8; 32]>::try_from(hash)) else {
            return Err(broken("altered"));
        };
        if link(self.key, &prev, e, detail) != hash {
            return Err(broken("altered"));
        }
        let expected = self.last.map_or(GENESIS, |(_, h)| h);
        if prev != expected {
            let gap = self.last.is_some_and(|(s, _)| seq != s + 1);
            // The first chained event links to the genesis, unless events before it
            // were removed.
            return Err(broken(if gap || self.last.is_none() {
                "deleted"
            } else {
                "reordered"
            }));
        }
        self.last = Some((seq, hash));
        self.events += 1;
        Ok(())
    }

    pub fn finish(self) -> Verdict {
        Verdict::Intact {
            events: self.events,
            unchained: self.unchained,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: i64) -> AuditEvent {
        AuditEvent {
            at: n,
            kind: format!("k{n}"),
            ..AuditEvent::default()
        }
    }

    /// A chain of `n` events: (seq, event, prev, hash).
    fn chain(key: &ChainKey, n: i64) -> Vec<(i64, AuditEvent, [u8; 32], [u8; 32])> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|s| {
                let e = ev(s);
                let h = link(key, &prev, &e, "{}");
                let row = (s, e, prev, h);
                prev = h;
                row
            })
            .collect()
    }

    fn walk(key: &ChainKey, rows: &[(i64, AuditEvent, [u8; 32], [u8; 32])]) -> Verdict {
        let mut w = Walk::new(key);
        for (s, e, p, h) in rows {
            if let Err(v) = w.step(*s, e, "{}", Some(p), Some(h)) {
                return v;
            }
        }
        w.finish()
    }

    #[test]
    fn each_kind_of_tampering_is_named() {
        let key = [7; 32];
        let rows = chain(&key, 5);
        assert_eq!(
            walk(&key, &rows),
            Verdict::Intact {
                events: 5,
                unchained: 0
            }
        );

        let mut altered = rows.clone();
        altered[2].1.reason = Some("edited".into());
        assert!(
            matches!(walk(&key, &altered), Verdict::Broken { seq: 3, ref what, .. } if what == "altered")
        );

        let mut deleted = rows.clone();
        deleted.remove(2);
        assert!(
            matches!(walk(&key, &deleted), Verdict::Broken { seq: 4, ref what, .. } if what == "deleted")
        );

        let mut reordered = rows.clone();
        let (a, b) = (reordered[1].clone(), reordered[2].clone());
        reordered[1] = (2, b.1, b.2, b.3);
        reordered[2] = (3, a.1, a.2, a.3);
        assert!(
            matches!(walk(&key, &reordered), Verdict::Broken { seq: 2, ref what, .. } if what == "reordered")
        );

        // Another key cannot vouch for the chain, nor forge it.
        assert!(matches!(
            walk(&[8; 32], &rows),
            Verdict::Broken { seq: 1, .. }
        ));
    }
}
