//! The detectors, fed observations directly: each fires on what it is for, and not
//! on normal traffic; the admission check's blocks double up to their maximum.

use std::net::IpAddr;

use keyway_core::config::{Config, DetectorKind};
use keyway_core::DenyReason;

use super::*;
use crate::admission::STRIKE_MEMORY;

fn config(toml: &str) -> DetectConfig {
    Config::parse(toml, std::path::Path::new("/tmp"))
        .expect("config")
        .detect
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn denied(at: UnixMillis, source: &str, reason: DenyReason) -> Seen {
    Seen::Denied {
        at,
        source: ip(source),
        reason,
        unknown_service: false,
    }
}

fn used(at: UnixMillis, source: &str, token: &str) -> Seen {
    Seen::Used {
        at,
        source: ip(source),
        token_id: token.into(),
        principal: Some("alice".into()),
        service: Some("api".into()),
    }
}

fn kinds(f: &[Firing]) -> Vec<DetectorKind> {
    f.iter().map(|f| f.detector).collect()
}

#[test]
fn brute_force_fires_at_the_threshold_within_the_window_only() {
    let c = config("[detect.brute_force]\nthreshold = 3\nwindow = \"10s\"\naction = \"block\"\n");
    let mut d = Detectors::new(&c);
    // Spread over more than the window: never three within 10 s.
    for i in 0..6 {
        assert!(d
            .see(&denied(
                1_000_000 + i * 6_000,
                "10.0.0.1",
                DenyReason::WrongSecret
            ))
            .is_empty());
    }
    let mut fired = Vec::new();
    for i in 0..3 {
        fired.extend(d.see(&denied(
            2_000_000 + i * 100,
            "10.0.0.2",
            DenyReason::WrongSecret,
        )));
    }
    assert_eq!(kinds(&fired), vec![DetectorKind::BruteForce]);
    assert_eq!(fired[0].action, Action::Block);
    assert_eq!(fired[0].source, ip("10.0.0.2"));
    assert!(
        fired[0].summary.contains("3 failed authentications"),
        "{}",
        fired[0].summary
    );
    // Denials that are not failed authentications do not count.
    for i in 0..10 {
        assert!(d
            .see(&denied(
                3_000_000 + i,
                "10.0.0.3",
                DenyReason::PathNotGranted
            ))
            .is_empty());
    }
}

#[test]
fn token_guessing_counts_wrong_checksums_and_unknown_ids() {
    let c =
        config("[detect.token_guessing]\nthreshold = 2\n[detect.brute_force]\nenabled = false\n");
    let mut d = Detectors::new(&c);
    assert!(d
        .see(&denied(1_000, "10.0.0.1", DenyReason::WrongSecret))
        .is_empty());
    assert!(d
        .see(&denied(1_001, "10.0.0.1", DenyReason::BadChecksum))
        .is_empty());
    let f = d.see(&denied(1_002, "10.0.0.1", DenyReason::UnknownToken));
    assert_eq!(kinds(&f), vec![DetectorKind::TokenGuessing]);
}

#[test]
fn scanning_counts_distinct_ports_and_unknown_services() {
    let c = config("[detect.scanning]\nthreshold = 4\n");
    let mut d = Detectors::new(&c);
    // The same port again and again is a busy client, not a scan.
    for i in 0..50 {
        let s = Seen::Touch {
            at: 1_000 + i,
            source: ip("10.0.0.1"),
            port: 5432,
        };
        assert!(d.see(&s).is_empty());
    }
    let mut fired = Vec::new();
    for (i, port) in [22u16, 80, 443].into_iter().enumerate() {
        fired.extend(d.see(&Seen::Touch {
            at: 2_000 + i as i64,
            source: ip("10.0.0.2"),
            port,
        }));
    }
    assert!(fired.is_empty());
    fired.extend(d.see(&Seen::Denied {
        at: 2_010,
        source: ip("10.0.0.2"),
        reason: DenyReason::UnknownService,
        unknown_service: true,
    }));
    assert_eq!(kinds(&fired), vec![DetectorKind::Scanning]);
    assert!(
        fired[0]
            .summary
            .starts_with("3 gateway ports and 1 unknown services"),
        "{}",
        fired[0].summary
    );
}

#[test]
fn new_network_fires_once_per_network_not_for_the_first() {
    let c = config("[detect.new_network]\naction = \"revoke\"\n");
    let mut d = Detectors::new(&c);
    assert!(d.see(&used(1_000, "10.1.2.3", "tok1")).is_empty());
    assert!(
        d.see(&used(2_000, "10.1.2.200", "tok1")).is_empty(),
        "same /24"
    );
    let f = d.see(&used(3_000, "10.1.3.1", "tok1"));
    assert_eq!(kinds(&f), vec![DetectorKind::NewNetwork]);
    assert_eq!(f[0].token_id.as_deref(), Some("tok1"));
    assert_eq!(f[0].action, Action::Revoke);
    assert_eq!(f[0].principal.as_deref(), Some("alice"));
    assert!(f[0].summary.contains("10.1.3.0/24"), "{}", f[0].summary);
    assert!(
        d.see(&used(4_000, "10.1.3.9", "tok1")).is_empty(),
        "now known"
    );
    // IPv6: the /64.
    assert!(d.see(&used(1_000, "2001:db8:0:1::1", "tok2")).is_empty());
    assert!(d.see(&used(1_001, "2001:db8:0:1::ffff", "tok2")).is_empty());
    assert_eq!(
        kinds(&d.see(&used(1_002, "2001:db8:0:2::1", "tok2"))),
        vec![DetectorKind::NewNetwork]
    );
}

#[test]
fn concurrent_sources_fires_for_two_sources_within_the_window() {
    let c = config(
        "[detect.concurrent_sources]\nwindow = \"5s\"\n[detect.new_network]\nenabled = false\n",
    );
    let mut d = Detectors::new(&c);
    assert!(d.see(&used(10_000, "10.0.0.1", "t")).is_empty());
    assert!(d.see(&used(11_000, "10.0.0.1", "t")).is_empty());
    // A different source after the window: moved, not concurrent.
    assert!(d.see(&used(17_000, "10.0.0.2", "t")).is_empty());
    let f = d.see(&used(18_000, "10.0.0.3", "t"));
    assert_eq!(kinds(&f), vec![DetectorKind::ConcurrentSources]);
    // Once per window.
    assert!(d.see(&used(18_500, "10.0.0.2", "t")).is_empty());
}

#[test]
fn rate_spike_is_measured_against_the_tokens_own_baseline() {
    let c = config(
        "[detect.rate_spike]\nwindow = \"10s\"\nthreshold = 50\nfactor = 5\n[detect.new_network]\nenabled = false\n",
    );
    let mut d = Detectors::new(&c);
    let mut at = 1_000_000;
    // Twenty windows of a steady 40 requests: high, but its own normal.
    for _ in 0..20 {
        for i in 0..40 {
            assert!(d.see(&used(at + i * 200, "10.0.0.1", "busy")).is_empty());
        }
        at += 10_000;
    }
    // 150 in a window: under five times the baseline of 40.
    for i in 0..150 {
        assert!(d.see(&used(at + i * 50, "10.0.0.1", "busy")).is_empty());
    }
    at += 10_000;
    // A fresh token has no baseline yet: 60 in its first window is its own normal.
    for i in 0..60 {
        assert!(d.see(&used(at + i * 10, "10.0.0.1", "fresh")).is_empty());
    }
    // A quiet token that suddenly makes 60 requests in a window.
    let mut fired = Vec::new();
    for w in 0..5 {
        fired.extend(d.see(&used(at + w * 10_000, "10.0.0.1", "quiet")));
    }
    assert!(fired.is_empty());
    at += 50_000;
    for i in 0..60 {
        fired.extend(d.see(&used(at + i * 10, "10.0.0.1", "quiet")));
    }
    assert_eq!(
        kinds(&fired),
        vec![DetectorKind::RateSpike],
        "fires once per window"
    );
}

#[test]
fn blocks_double_up_to_the_maximum_and_spare_never_block() {
    let c = config(
        "[detect]\nblock_for = \"1m\"\nmax_block = \"3m\"\nnever_block = [\"192.168.0.0/16\"]\n",
    );
    let m = Arc::new(Metrics::new([]));
    let d = crate::admission::Admission::new(c, m, Arc::new(keyway_core::SystemClock));
    let now = 1_000_000;
    assert!(!d.is_blocked(ip("10.0.0.1"), now));
    assert_eq!(d.block(ip("10.0.0.1"), now), Some(now + 60_000));
    assert_eq!(
        d.block(ip("10.0.0.1"), now + 10),
        Some(now + 60_000),
        "no strike while still blocked"
    );
    assert!(d.is_blocked(ip("10.0.0.1"), now + 59_999));
    assert!(
        d.is_blocked(ip("::ffff:10.0.0.1"), now + 1),
        "IPv4-mapped is the same source"
    );
    assert!(!d.is_blocked(ip("10.0.0.1"), now + 60_000));
    assert_eq!(
        d.block(ip("10.0.0.1"), now + 60_000),
        Some(now + 60_000 + 120_000)
    );
    assert_eq!(
        d.block(ip("10.0.0.1"), now + 180_000),
        Some(now + 180_000 + 180_000),
        "capped"
    );
    assert_eq!(d.block(ip("192.168.1.1"), now), None);
    // IPv6: the /64 is one source.
    assert!(d.block(ip("2001:db8:0:1::1"), now).is_some());
    assert!(d.is_blocked(ip("2001:db8:0:1::beef"), now + 1));
    assert!(!d.is_blocked(ip("2001:db8:0:2::1"), now + 1));
    assert!(!d.admit(ip("10.0.0.1"), 80, now + 200_000));
    assert!(d.admit(ip("10.0.0.2"), 80, now + 200_000));
    assert_eq!(d.blocked_sources(now + 200_000), 1);
    d.sweep(now + 200_000 + STRIKE_MEMORY + 180_000);
    assert_eq!(d.remembered(), 0, "forgotten after a day");
}

#[test]
fn revoke_is_refused_for_detectors_of_sources() {
    let e = Config::parse(
        "[detect.brute_force]\naction = \"revoke\"\n",
        std::path::Path::new("/tmp"),
    )
    .expect_err("refused");
    assert!(e.to_string().contains("`detect.brute_force.action`"), "{e}");
    let e = Config::parse(
        "[detect.new_network]\nthreshold = 3\n",
        std::path::Path::new("/tmp"),
    )
    .expect_err("refused");
    assert!(
        e.to_string().contains("is not a setting of this detector"),
        "{e}"
    );
    let e = Config::parse(
        "[alerts.webhook]\nurl = \"http://hooks.example/k\"\nsecret = \"hook\"\n",
        std::path::Path::new("/tmp"),
    )
    .expect_err("refused");
    assert!(e.to_string().contains("must be `https://`"), "{e}");
    let e = Config::parse(
        "[detect.scanning]\nthreshhold = 3\n",
        std::path::Path::new("/tmp"),
    )
    .expect_err("refused");
    assert!(e.to_string().contains("detect.scanning"), "{e}");
}

#[test]
fn a_flood_of_sources_makes_room_rather_than_blinding_the_detectors() {
    let c = config("[detect.brute_force]\nthreshold = 3\nwindow = \"10s\"\n");
    let mut d = Detectors::new(&c);
    // The table fills with sources that failed once, long ago.
    for i in 0..MAX_TRACKED as u32 {
        let source = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        d.see(&Seen::Denied {
            at: 1_000,
            source,
            reason: DenyReason::NoToken,
            unknown_service: false,
        });
    }
    assert_eq!(d.sources.len(), MAX_TRACKED);
    // A new attacker, a minute later, is still noticed.
    let mut fired = Vec::new();
    for i in 0..3 {
        fired.extend(d.see(&denied(61_000 + i, "192.0.2.1", DenyReason::WrongSecret)));
    }
    assert_eq!(kinds(&fired), vec![DetectorKind::BruteForce]);
    assert!(d.sources.len() < MAX_TRACKED, "the idle ones went");
}

#[test]
fn new_network_keeps_the_newest_networks_and_fires_once_for_each() {
    let c = config(
        "[detect.concurrent_sources]\nenabled = false\n[detect.rate_spike]\nenabled = false\n",
    );
    let mut d = Detectors::new(&c);
    let mut fired = 0;
    for n in 0..40u32 {
        for _ in 0..3 {
            let source = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0001 + (n << 8)));
            fired += d
                .see(&Seen::Used {
                    at: 1_000 + i64::from(n),
                    source,
                    token_id: "t".into(),
                    principal: None,
                    service: None,
                })
                .len();
        }
    }
    assert_eq!(fired, 39, "once per new network, not once per request");
}
