//! Token parsing, scanning and redaction never panic, and redaction leaves no token.
#![no_main]

use keyway_core::token::{find_tokens, redact, PresentedToken};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = PresentedToken::parse(s);
        let red = redact(s);
        assert!(find_tokens(&red).iter().all(|f| !f.checksum_ok));
    }
});
