//! The JSON-RPC reader never panics, and what it accepts is within its bounds.
#![no_main]

use keyway_core::jsonrpc::{read, Limits, Read};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_bytes: 64 * 1024,
        max_depth: 16,
        max_batch: 8,
    };
    if let Ok(r) = read(data, &limits) {
        assert!(data.len() <= limits.max_bytes);
        if let Read::Batch(b) = r {
            assert!(!b.is_empty() && b.len() <= limits.max_batch);
        }
    }
});
