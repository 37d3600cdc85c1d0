//! The client address read from `X-Forwarded-For` never panics, and is an address
//! written in the header, never the trusted peer.
#![no_main]

use std::net::{IpAddr, SocketAddr};

use keyway_core::forwarded::client_address;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let trusted = ["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let peer: IpAddr = "10.1.2.3".parse().unwrap();
        let Some(got) = client_address(peer, [s], &trusted) else {
            return;
        };
        let written = s.split(',').filter_map(|h| {
            let h = h.trim();
            h.parse::<IpAddr>()
                .ok()
                .or_else(|| h.parse::<SocketAddr>().ok().map(|a| a.ip()))
                .map(|a| a.to_canonical())
        });
        assert!(got != peer && written.into_iter().any(|w| w == got));
    }
});
