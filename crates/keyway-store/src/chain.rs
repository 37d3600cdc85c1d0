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
//! a reordering rather than as an alteration.
//!
//! Removing the newest events would leave a shorter, intact chain, so the gateway
//! also writes **checkpoints**: every minute, the newest event's `seq` and hash,
//! signed (HMAC under the same outside key, another domain) and logged. An event a
//! checkpoint names that is gone is **truncation**. Retention prunes only up to a
//! checkpoint, which then stays as the chain's signed **anchor**: the first event left
//! must link to it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::AuditEvent;

/// The key of the chain (derived from the pepper by the gateway).
pub type ChainKey = [u8; 32];

/// The `prev_hash` of the first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// The hash of an event that follows `prev`; `detail` as stored.
pub fn link(key: &ChainKey, prev: &[u8; 32], e: &AuditEvent, detail: &str) -> [u8; 32] {
    Linker::new(key).link(prev, e, detail)
}

/// The chain's key, scheduled once: a batch of events (or a walk of the chain) links
/// each from a copy of it instead of keying HMAC again per event.
#[derive(Clone)]
pub struct Linker(Hmac<Sha256>);

impl Linker {
    pub fn new(key: &ChainKey) -> Self {
        // HMAC takes keys of any length; a 32-byte key cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key");
        mac.update(b"keyway audit v1");
        Self(mac)
    }

    /// The hash of an event that follows `prev`; `detail` as stored.
    pub fn link(&self, prev: &[u8; 32], e: &AuditEvent, detail: &str) -> [u8; 32] {
        let mut mac = self.0.clone();
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
}

impl std::fmt::Debug for Linker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Linker(***)")
    }
}

/// A signed statement that the chain's event `seq` had `hash` at time `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: i64,
    pub at: i64,
    pub hash: [u8; 32],
}

impl Checkpoint {
    fn keyed(&self, key: &ChainKey, domain: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key");
        mac.update(domain);
        mac.update(&self.seq.to_be_bytes());
        if domain == CHECKPOINT {
            mac.update(&self.at.to_be_bytes());
        }
        mac.update(&self.hash);
        mac
    }

    /// Its signature under the chain key.
    pub fn mac(&self, key: &ChainKey) -> [u8; 32] {
        self.keyed(key, CHECKPOINT).finalize().into_bytes().into()
    }

    /// Whether `mac` is its signature (constant time).
    pub fn verify(&self, key: &ChainKey, mac: &[u8]) -> bool {
        self.keyed(key, CHECKPOINT).verify_slice(mac).is_ok()
    }

    /// The signature of the record that retention pruned up to this checkpoint.
    pub fn anchor_mac(&self, key: &ChainKey) -> [u8; 32] {
        self.keyed(key, ANCHOR).finalize().into_bytes().into()
    }

    /// Whether `mac` is that record's signature (constant time).
    pub fn verify_anchor(&self, key: &ChainKey, mac: &[u8]) -> bool {
        self.keyed(key, ANCHOR).verify_slice(mac).is_ok()
    }
}

const CHECKPOINT: &[u8] = b"keyway audit checkpoint v1";
const ANCHOR: &[u8] = b"keyway audit anchor v1";

/// What a walk of the chain found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Verdict {
    Intact {
        /// Events in the chain.
        events: u64,
        /// Events from before the chain existed (no hashes), all before it.
        unchained: u64,
        /// Signed checkpoints that matched.
        checkpoints: u64,
        /// When older events were pruned: the checkpoint the chain starts from.
        #[serde(skip_serializing_if = "Option::is_none")]
        anchor: Option<i64>,
        /// The newest event: its `seq` and hash (hex), to keep outside and give to
        /// `keyway audit verify --expect` later.
        #[serde(skip_serializing_if = "Option::is_none")]
        head: Option<(i64, String)>,
    },
    Broken {
        /// The first event that does not hold.
        seq: i64,
        kind: String,
        /// `altered`, `deleted` (events before this one are missing), `reordered`, or
        /// `truncated` (a checkpoint names this event and it is gone).
        what: String,
    },
}

/// Walks events in `seq` order and says where the chain first breaks. `rows` holds
/// `(seq, event, detail as stored, prev_hash, hash)`.
#[derive(Debug)]
pub struct Walk<'k> {
    key: &'k ChainKey,
    linker: Linker,
    last: Option<(i64, [u8; 32])>,
    events: u64,
    unchained: u64,
    /// Verified checkpoints, by `seq`, oldest first; the first may be the anchor.
    checkpoints: std::collections::VecDeque<Checkpoint>,
    matched: u64,
    anchor: Option<i64>,
    /// The signed record of where retention stopped: `(seq, anchor_mac)`.
    proof: Option<(i64, Vec<u8>)>,
}

impl<'k> Walk<'k> {
    pub fn new(key: &'k ChainKey) -> Self {
        Self {
            key,
            linker: Linker::new(key),
            last: None,
            events: 0,
            unchained: 0,
            checkpoints: Default::default(),
            matched: 0,
            anchor: None,
            proof: None,
        }
    }

    /// The record retention signed when it pruned: only the checkpoint it names can
    /// be where the chain starts.
    /// A walk from what a store keeps: its checkpoints as rows `(seq, at, hash,
    /// mac)`, its anchor proof as stored (`seq` big-endian, then the MAC), and
    /// `(seq, hash)` pairs kept outside, which count as signed checkpoints.
    pub fn from_stored(
        key: &'k ChainKey,
        stored: Vec<(i64, i64, Vec<u8>, Vec<u8>)>,
        proof: Option<Vec<u8>>,
        expect: &[(i64, [u8; 32])],
    ) -> Result<Self, Verdict> {
        let proof = proof.and_then(|v| {
            let (seq, mac) = v.split_at_checked(8)?;
            Some((i64::from_be_bytes(seq.try_into().ok()?), mac.to_vec()))
        });
        let mut checkpoints = Vec::with_capacity(stored.len() + expect.len());
        for (seq, at, hash, mac) in stored {
            // A hash of the wrong length cannot match its signature.
            let hash = <[u8; 32]>::try_from(hash.as_slice()).unwrap_or([0xff; 32]);
            checkpoints.push((Checkpoint { seq, at, hash }, mac));
        }
        for &(seq, hash) in expect {
            let c = Checkpoint { seq, at: 0, hash };
            checkpoints.push((c, c.mac(key).to_vec()));
        }
        checkpoints.sort_by_key(|(c, _)| c.seq);
        Ok(Self::new(key)
            .with_checkpoints(checkpoints)?
            .with_anchor_proof(proof))
    }

    pub fn with_anchor_proof(mut self, proof: Option<(i64, Vec<u8>)>) -> Self {
        self.proof = proof;
        self
    }

    /// Checkpoints as stored, `(checkpoint, signature)`, in `seq` order: each
    /// signature is checked first; `Err` names the first that does not hold.
    pub fn with_checkpoints(mut self, stored: Vec<(Checkpoint, Vec<u8>)>) -> Result<Self, Verdict> {
        for (c, mac) in stored {
            if !c.verify(self.key, &mac) {
                return Err(Verdict::Broken {
                    seq: c.seq,
                    kind: "checkpoint".into(),
                    what: "altered".into(),
                });
            }
            self.checkpoints.push_back(c);
        }
        Ok(self)
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
        if self.linker.link(&prev, e, detail) != hash {
            return Err(broken("altered"));
        }
        // Events before a checkpoint can only have been pruned to it: the checkpoint
        // is the anchor the first event left links to.
        while self.checkpoints.front().is_some_and(|c| c.seq < seq) {
            let Some(c) = self.checkpoints.pop_front() else {
                break;
            };
            let proven = self
                .proof
                .as_ref()
                .is_some_and(|(s, mac)| *s == c.seq && c.verify_anchor(self.key, mac));
            if self.last.is_none() && c.seq == seq - 1 && c.hash == prev && proven {
                self.last = Some((c.seq, c.hash));
                self.anchor = Some(c.seq);
                self.matched += 1;
            } else if self.last.is_none_or(|(s, _)| s != c.seq) {
                // It names an event that is not there.
                return Err(broken("deleted"));
            }
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
        while let Some(c) = self.checkpoints.front().filter(|c| c.seq == seq) {
            if c.hash != hash {
                return Err(broken("altered"));
            }
            self.checkpoints.pop_front();
            self.matched += 1;
        }
        self.last = Some((seq, hash));
        self.events += 1;
        Ok(())
    }

    pub fn finish(self) -> Verdict {
        // A checkpoint past the last event: the newest events were removed.
        if let Some(c) = self.checkpoints.back() {
            return Verdict::Broken {
                seq: c.seq,
                kind: "checkpoint".into(),
                what: "truncated".into(),
            };
        }
        Verdict::Intact {
            events: self.events,
            unchained: self.unchained,
            checkpoints: self.matched,
            anchor: self.anchor,
            head: self.last.map(|(s, h)| (s, hex::encode(h))),
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
        assert!(matches!(
            walk(&key, &rows),
            Verdict::Intact {
                events: 5,
                unchained: 0,
                ..
            }
        ));

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

        // Checkpoints: one past the end is truncation; one before the first event
        // left is the anchor after pruning; a forged one is refused.
        let cp = |row: &(i64, AuditEvent, [u8; 32], [u8; 32])| {
            let c = Checkpoint {
                seq: row.0,
                at: 99,
                hash: row.3,
            };
            (c, c.mac(&key).to_vec())
        };
        let proof = |row: &(i64, AuditEvent, [u8; 32], [u8; 32])| {
            let c = Checkpoint {
                seq: row.0,
                at: 0,
                hash: row.3,
            };
            Some((row.0, c.anchor_mac(&key).to_vec()))
        };
        let walk_proven = |rows: &[(i64, AuditEvent, [u8; 32], [u8; 32])],
                           cps: Vec<(Checkpoint, Vec<u8>)>,
                           proof: Option<(i64, Vec<u8>)>| {
            let mut w = match Walk::new(&key).with_checkpoints(cps) {
                Ok(w) => w.with_anchor_proof(proof),
                Err(v) => return v,
            };
            for (s, e, p, h) in rows {
                if let Err(v) = w.step(*s, e, "{}", Some(p), Some(h)) {
                    return v;
                }
            }
            w.finish()
        };
        let walk_cp = |rows: &[(i64, AuditEvent, [u8; 32], [u8; 32])],
                       cps: Vec<(Checkpoint, Vec<u8>)>| {
            walk_proven(rows, cps, None)
        };
        assert!(matches!(
            walk_cp(&rows, vec![cp(&rows[1]), cp(&rows[4])]),
            Verdict::Intact {
                checkpoints: 2,
                anchor: None,
                ..
            }
        ));
        assert!(matches!(
            walk_cp(&rows[..3], vec![cp(&rows[1]), cp(&rows[4])]),
            Verdict::Broken { seq: 5, ref what, .. } if what == "truncated"
        ));
        assert!(matches!(
            walk_proven(
                &rows[2..],
                vec![cp(&rows[1]), cp(&rows[4])],
                proof(&rows[1])
            ),
            Verdict::Intact {
                events: 3,
                checkpoints: 2,
                anchor: Some(2),
                ..
            }
        ));
        // Without the signed record that retention stopped there, it is deletion.
        assert!(matches!(
            walk_cp(&rows[2..], vec![cp(&rows[1]), cp(&rows[4])]),
            Verdict::Broken { seq: 3, ref what, .. } if what == "deleted"
        ));
        assert!(matches!(
            walk_proven(&rows[3..], vec![cp(&rows[2]), cp(&rows[4])], proof(&rows[1])),
            Verdict::Broken { seq: 4, ref what, .. } if what == "deleted"
        ));
        // An outside pair at a checkpointed seq is compared too.
        let (mut wrong, _) = cp(&rows[1]);
        wrong.hash = [1; 32];
        assert!(matches!(
            walk_cp(&rows, vec![cp(&rows[1]), (wrong, wrong.mac(&key).to_vec())]),
            Verdict::Broken { seq: 2, ref what, .. } if what == "altered"
        ));
        // Pruned past the anchor, or with no anchor: events are missing.
        assert!(matches!(
            walk_cp(&rows[3..], vec![cp(&rows[1])]),
            Verdict::Broken { seq: 4, ref what, .. } if what == "deleted"
        ));
        let (mut forged, mac) = cp(&rows[4]);
        forged.seq = 3;
        assert!(matches!(
            walk_cp(&rows, vec![(forged, mac)]),
            Verdict::Broken { seq: 3, ref kind, .. } if kind == "checkpoint"
        ));

        // Another key cannot vouch for the chain, nor forge it.
        assert!(matches!(
            walk(&[8; 32], &rows),
            Verdict::Broken { seq: 1, .. }
        ));
    }
}
