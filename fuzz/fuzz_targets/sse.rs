//! Server-sent events as an upstream MCP server streams them: any bytes, in two
//! chunks, are read into events or refused, and never panic.
#![no_main]

use keyway_core::sse::Reader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |&b| b as usize).min(data.len());
    let mut r = Reader::new(64 * 1024);
    if let Ok(events) = r.push(&data[..cut]) {
        for ev in events {
            let _ = keyway_core::sse::write(&ev);
        }
        let _ = r.push(&data[cut..]);
    }
});
