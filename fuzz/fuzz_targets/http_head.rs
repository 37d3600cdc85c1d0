//! An HTTP/1 request head as Keyway reads it: parsed by httparse (as hyper does),
//! refused where hyper's types refuse it, then Keyway's own readers: the bearer
//! token (only of one `Authorization` header), a token written into the target
//! (always found, as it is or percent-encoded), the path as grants see it, the
//! client address behind a trusted proxy. Nothing panics.
#![no_main]

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use keyway_core::{forwarded, head, path};
use libfuzzer_sys::fuzz_target;

/// A well-formed access token (its checksum matches) and its id.
const TOKEN: &str = "kwat_0123456789abcdef_0123456789abcdefghijABCDEFGHIJ0123456789abc4XOF9W";
const TOKEN_ID: &str = "0123456789abcdef";

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

    // The bearer token: only of exactly one Authorization header, with the scheme;
    // several are told apart from none.
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let expected = match (values.next(), values.next()) {
        (Some(one), None) => one
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or(head::Bearer::Absent, |(_, t)| head::Bearer::Token(t.trim())),
        (Some(_), Some(_)) => head::Bearer::Several,
        (None, _) => head::Bearer::Absent,
    };
    assert_eq!(head::bearer(&headers), expected);

    // A token written anywhere into the target, as it is or percent-encoded, is
    // found (and so refused and revoked).
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut at = data.len() % (target.len() + 1);
    while !target.is_char_boundary(at) {
        at -= 1;
    }
    let written = if data.len() % 2 == 0 {
        TOKEN.to_owned()
    } else {
        TOKEN.bytes().map(|b| format!("%{b:02X}")).collect()
    };
    let leaked = format!("{}{written}{}", &target[..at], &target[at..]);
    let found = head::tokens_in_target(&leaked).map(|(_, f)| f).unwrap_or_default();
    assert!(
        found.iter().any(|f| f.id == TOKEN_ID),
        "a token in {leaked:?} was not found"
    );

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
