//! Unit tests of the HTTP proxy's header handling.

use super::forward::{join_cookies, strip_console_cookie, strip_hop_by_hop};
use super::*;

#[test]
fn hop_by_hop_headers_go() {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONNECTION,
        HeaderValue::from_static("keep-alive, x-secret-hop"),
    );
    h.insert("x-secret-hop", HeaderValue::from_static("1"));
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    h.insert("x-kept", HeaderValue::from_static("1"));
    strip_hop_by_hop(&mut h);
    assert_eq!(h.len(), 1, "{h:?}");
    assert!(h.contains_key("x-kept"));

    // Names in any case, spaced, in several fields; one of the fixed set among them.
    let mut h = HeaderMap::new();
    h.append(
        header::CONNECTION,
        HeaderValue::from_static("Keep-Alive ,X-Hop-One"),
    );
    h.append(
        header::CONNECTION,
        HeaderValue::from_static(" close, x-hop-two"),
    );
    for name in ["x-hop-one", "x-hop-two", "close", "keep-alive", "x-kept"] {
        h.insert(name, HeaderValue::from_static("1"));
    }
    strip_hop_by_hop(&mut h);
    let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
    assert_eq!(left, ["x-kept"]);
}

#[test]
fn the_consoles_cookie_never_reaches_an_upstream() {
    let mut h = HeaderMap::new();
    h.append(
        header::COOKIE,
        HeaderValue::from_static("theme=dark; keyway_console=s3cr3t; lang=en"),
    );
    h.append(
        header::COOKIE,
        HeaderValue::from_static("keyway_console=again"),
    );
    strip_console_cookie(&mut h);
    let left: Vec<_> = h.get_all(header::COOKIE).iter().collect();
    assert_eq!(left, [HeaderValue::from_static("theme=dark; lang=en")]);
}

#[test]
fn cookies_split_by_http2_go_to_http1_as_one_field() {
    let mut h = HeaderMap::new();
    h.append(header::COOKIE, HeaderValue::from_static("a=1"));
    join_cookies(&mut h);
    assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
    h.append(header::COOKIE, HeaderValue::from_static("b=2"));
    join_cookies(&mut h);
    let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
    assert_eq!(all, ["a=1; b=2"]);
}

#[test]
fn a_cookie_that_is_not_ascii_does_not_carry_the_consoles_past() {
    let mut h = HeaderMap::new();
    let value = HeaderValue::from_bytes("name=caf\u{e9}; keyway_console=s3cr3t; b=2".as_bytes())
        .unwrap_or(HeaderValue::from_static("x"));
    h.append(header::COOKIE, value);
    strip_console_cookie(&mut h);
    let left: Vec<&[u8]> = h
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    assert_eq!(left, ["name=caf\u{e9}; b=2".as_bytes()]);
}
