//! An HTTP/1 request head as Keyway reads it: parsed by httparse (as hyper does),
//! refused where hyper's types refuse it, then Keyway's own readers: the bearer
//! token, a token in the target, the path as grants see it, the client address
//! behind a trusted proxy. Nothing panics, and each answer comes from the head.
#![no_main]

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use keyway_core::{forwarded, head, path, token};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut slots);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else {
        return;
    };
    let Some(Ok(uri)) = req.path.map(|p| p.parse::<Uri>()) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return;
        };
        headers.append(name, value);
    }

    if let Some(t) = head::bearer(&headers) {
        let one = headers.get(http::header::AUTHORIZATION).unwrap();
        let text = one.to_str().unwrap();
        assert!(text.contains(t) && t == t.trim());
    }

    if let Some(target) = uri.path_and_query().map(|pq| pq.as_str()) {
        if let Some((decoded, found)) = head::tokens_in_target(target) {
            assert!(!found.is_empty());
            for f in found {
                let text = &decoded[f.start..f.start + token::TOKEN_LEN];
                assert!(f.checksum_ok && text.starts_with("kw"));
            }
        }
    }

    for allow in [false, true] {
        if let Ok(p) = path::normalize(uri.path(), allow) {
            assert_eq!(path::normalize(&p, allow).as_deref(), Ok(p.as_str()));
        }
    }

    let peer: IpAddr = "10.1.2.3".parse().unwrap();
    let trusted = ["10.0.0.0/8".parse().unwrap()];
    let values = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok());
    if let Some(client) = forwarded::client_address(peer, values, &trusted) {
        assert_ne!(client, peer);
    }
});
