//! A JWT's outer shape (what the token endpoint reads before it verifies anything)
//! never panics, whatever a workload sends.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = keyway_core::jwt::read(s);
    }
});
