//! The browser flow's redirect: loopback only.

use super::*;

#[test]
fn only_a_loopback_redirect_is_taken() {
    assert!(loopback_redirect("http://127.0.0.1:5555/callback"));
    assert!(loopback_redirect("http://[::1]:5555/callback"));
    for bad in [
        "https://127.0.0.1:5555/callback",
        "http://127.0.0.1/callback",
        "http://evil.example:5555/callback",
        "http://127.0.0.1.evil.example:5555/",
        "http://user@127.0.0.1:5555/",
        "javascript:alert(1)",
    ] {
        assert!(!loopback_redirect(bad), "{bad}");
    }
}
