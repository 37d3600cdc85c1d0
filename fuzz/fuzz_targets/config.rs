//! Config parsing never panics, whatever the file holds.
#![no_main]

use keyway_core::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = Config::parse(s, std::path::Path::new("/etc/keyway"));
    }
});
