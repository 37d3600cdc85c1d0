//! A PostgreSQL client's bytes as the proxy reads them: the start-up packet (length,
//! code, parameters or cancel key), then typed messages (the password, statements).
//! The framing is the relay's, re-read here over a byte slice (the gateway reads it
//! from a socket). Nothing panics; the relay's test for a whole frame waiting agrees
//! with the framing; what the audit keeps of a `Q`, `P` or `F` frame is the same
//! however the frame arrives in pieces, and within its cap.
#![no_main]

use keyway_core::pgwire::{self, Capture, Code, MAX_AUTH_MESSAGE, MAX_STATEMENT, REDACT_SLACK};
use libfuzzer_sys::fuzz_target;

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

fn take_i32(rest: &mut &[u8]) -> Option<i32> {
    take(rest, 4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn capture(kind: u8, body: &[u8], chunk: usize) -> Capture {
    let mut c = Capture::new(kind);
    for part in body.chunks(chunk.max(1)) {
        c.feed(part);
    }
    c
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the size of the pieces statements arrive in.
    let Some((&chunk, mut rest)) = data.split_first() else {
        return;
    };
    let Some(len) = take_i32(&mut rest).and_then(pgwire::startup_len) else {
        return;
    };
    let Some(code) = take_i32(&mut rest) else {
        return;
    };
    let Some(body) = take(&mut rest, len - 8) else {
        return;
    };
    match Code::of(code) {
        Code::Cancel => {
            let _ = pgwire::cancel_key(body);
        }
        Code::V3 { .. } => {
            let _ = pgwire::parse_params(body);
        }
        _ => {}
    }
    let mut waiting = rest;
    while let Some((&kind, after)) = rest.split_first() {
        rest = after;
        let Some(len) = take_i32(&mut rest).and_then(|l| pgwire::message_len(l, MAX_AUTH_MESSAGE))
        else {
            return;
        };
        let Some(body) = take(&mut rest, len - 4) else {
            // Not all of it is here: the relay would not see a whole frame waiting.
            assert!(!pgwire::whole_frame_waiting(waiting));
            return;
        };
        // All of it is here: the relay sees a whole frame waiting.
        assert!(pgwire::whole_frame_waiting(waiting));
        match kind {
            b'p' => {
                let _ = pgwire::password(body);
            }
            b'Q' | b'P' | b'F' => {
                let whole = capture(kind, body, body.len());
                let pieces = capture(kind, body, usize::from(chunk));
                assert_eq!(whole.kept, pieces.kept);
                assert_eq!(whole.len, pieces.len);
                assert!(whole.len <= body.len());
                assert!(whole.kept.len() <= MAX_STATEMENT + REDACT_SLACK);
            }
            _ => {}
        }
        waiting = rest;
    }
});
