//! Tunnel opening frames: the length is bounded and decoding never panics.
#![no_main]

use keyway_core::tunnel::{body_len, decode, Hello, Reply, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let header = [data[0], data[1], data[2], data[3]];
        if let Ok(n) = body_len(header) {
            assert!(n <= MAX_FRAME);
        }
        let _ = decode::<Hello>(&data[4..]);
        let _ = decode::<Reply>(&data[4..]);
    }
});
