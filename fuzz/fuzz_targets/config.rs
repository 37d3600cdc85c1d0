//! Config parsing and `keyway validate`'s checks never panic, whatever the file
//! holds.
#![no_main]

use keyway_core::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = keyway_core::config::lint::secrets_in(s);
        if let Ok(c) = Config::parse(s, std::path::Path::new("/etc/keyway")) {
            let _ = keyway_core::config::lint::lint(s, &c);
        }
    }
});
