//! Path normalisation never panics, and its output is a fixed point with no dot
//! segments.
#![no_main]

use keyway_core::path::normalize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        for allow in [false, true] {
            if let Ok(out) = normalize(s, allow) {
                assert!(!out.split('/').any(|seg| seg == "." || seg == ".."));
                assert_eq!(normalize(&out, allow).as_deref(), Ok(out.as_str()));
            }
        }
    }
});
