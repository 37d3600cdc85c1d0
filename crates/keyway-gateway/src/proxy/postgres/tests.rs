//! Unit tests of the PostgreSQL proxy's framing, capture and wire helpers.

use super::relay::{Framing, Syncs};
use super::startup::negotiate_protocol_version;
use super::*;
use keyway_core::pgwire::{parse_params, whole_frame_waiting, REDACT_SLACK};

/// The `ReadyForQuery`s a stream of upstream messages carries, as the relay
/// counts them.
fn readies(kinds: &[u8]) -> u64 {
    let mut f = Framing::default();
    for &k in kinds {
        f.advance(&frame(k, b"x"));
    }
    f.readies
}

#[test]
fn a_query_is_running_until_its_ready_for_query() {
    let busy = |client: &[u8], upstream: &[u8]| {
        let s = Syncs::default();
        client.iter().for_each(|&k| s.sent(k));
        s.awaiting(readies(upstream))
    };
    // Simple query: running until its Z.
    assert!(busy(b"Q", b""));
    assert!(busy(b"Q", b"TD"));
    assert!(!busy(b"Q", b"TDCZ"));
    // Two pipelined: the first Z does not end the second.
    assert!(busy(b"QQ", b"CZ"));
    assert!(!busy(b"QQ", b"CZCZ"));
    // Extended: Parse, Bind, Execute, Sync.
    assert!(busy(b"PBES", b"12"));
    assert!(!busy(b"PBES", b"12DCZ"));
    // Execute and Flush without Sync: results come, no Z, still counted busy.
    assert!(busy(b"PBEH", b"12DC"));
    // A function call; COPY FROM STDIN ended by CopyDone.
    assert!(!busy(b"F", b"VZ"));
    assert!(!busy(b"Qdc", b"GCZ"));
    // Idle, and Terminate.
    assert!(!busy(b"", b""));
    assert!(!busy(b"X", b""));
}

#[test]
fn error_responses_and_params() {
    let e = error_response("FATAL", "28P01", "no");
    assert_eq!(e[0], b'E');
    assert_eq!(
        u32::from_be_bytes([e[1], e[2], e[3], e[4]]) as usize,
        e.len() - 1
    );
    assert_eq!(error_text(&e[5..]), "no");
    let p = parse_params(b"user\0alice\0database\0test\0\0");
    assert_eq!(p["user"], "alice");
    assert_eq!(p["database"], "test");
    assert!(parse_params(b"").is_empty());
    assert!(parse_params(b"odd").is_empty());
}

fn capture(kind: u8, body: &[u8], chunk: usize) -> Capture {
    let mut c = Capture::new(kind);
    for part in body.chunks(chunk.max(1)) {
        c.feed(part);
    }
    c
}

#[test]
fn a_parse_frame_is_captured_after_its_name_whatever_its_length() {
    let mut body = vec![b'n'; 10_000];
    body.push(0);
    body.extend_from_slice(b"select secret_things()\0\0\0");
    for chunk in [1, 7, 4096, 100_000] {
        let c = capture(b'P', &body, chunk);
        assert_eq!(c.kept, b"select secret_things()", "chunk {chunk}");
        assert_eq!(c.len, 22);
    }
}

#[test]
fn a_long_statement_keeps_its_length_and_a_capped_text() {
    let mut body = b"/*".to_vec();
    body.extend(std::iter::repeat_n(b' ', 10_000));
    body.extend_from_slice(b"*/ drop table t\0");
    let c = capture(b'Q', &body, 333);
    assert_eq!(c.len, body.len() - 1);
    assert_eq!(c.kept.len(), MAX_STATEMENT + REDACT_SLACK);
}

#[test]
fn a_function_call_keeps_its_oid() {
    let c = capture(b'F', &[0, 0, 0x0b, 0xb8, 0, 1, 0, 0], 3);
    assert_eq!(c.kept, [0, 0, 0x0b, 0xb8]);
}

#[test]
fn frames_waiting_and_protocol_negotiation() {
    assert!(!whole_frame_waiting(b"Q\0\0"));
    assert!(!whole_frame_waiting(b"Q\0\0\0\x09abc"));
    assert!(whole_frame_waiting(b"Q\0\0\0\x08abcd"));
    let name = "_pq_.x".to_owned();
    let v = negotiate_protocol_version(&[&name]);
    assert_eq!(v[0], b'v');
    assert_eq!(&v[5..13], &[0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(&v[13..], b"_pq_.x\0");
}

proptest::proptest! {
    /// Whatever sizes the upstream's messages have and however the bytes are cut
    /// into reads, the framing is at a boundary exactly between messages.
    #[test]
    fn framing_finds_the_boundaries(
        sizes in proptest::collection::vec(0usize..300, 1..20),
        cut in 1usize..64,
    ) {
        let mut stream = Vec::new();
        let mut ends = std::collections::BTreeSet::new();
        for n in &sizes {
            stream.push(b'D');
            stream.extend_from_slice(&((n + 4) as u32).to_be_bytes());
            stream.extend(std::iter::repeat_n(7u8, *n));
            ends.insert(stream.len());
        }
        let mut f = Framing::default();
        let mut at = 0;
        for part in stream.chunks(cut) {
            f.advance(part);
            at += part.len();
            proptest::prop_assert_eq!(f.at_boundary(), ends.contains(&at), "at {}", at);
        }
        proptest::prop_assert_eq!(f.bytes, stream.len() as u64);
    }
}

#[test]
fn a_token_across_the_cap_is_redacted_whole() {
    use secrecy::ExposeSecret;
    let issued = keyway_core::token::IssuedToken::generate(keyway_core::TokenKind::Access);
    let token = issued.secret().expose_secret();
    let mut body = vec![b' '; MAX_STATEMENT - 30];
    body.extend_from_slice(token.as_bytes());
    body.push(0);
    let c = capture(b'Q', &body, 1000);
    let text = String::from_utf8_lossy(&c.kept);
    let redacted = keyway_core::token::redact(&text);
    assert!(
        redacted.contains(issued.id()),
        "the token is still named by its id"
    );
    assert!(
        !redacted.contains(&token[22..40]),
        "{}",
        &redacted[redacted.len() - 80..]
    );
}
