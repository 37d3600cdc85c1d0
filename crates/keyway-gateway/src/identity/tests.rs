//! The JWT's outer shape and the replay guard; verification against a real issuer is
//! in `tests/workload_identity.rs`.

use proptest::prelude::*;

use base64::Engine;

use super::*;

#[test]
fn a_jwt_is_spent_until_it_expires_plus_the_leeway() {
    let who = WorkloadIdentity {
        provider: "gh".into(),
        issuer: "https://gh.example".into(),
        subject: "workload:gh:x".into(),
        replay: "abc".into(),
        exp: 100,
    };
    let s = who.spend(50_000);
    assert_eq!(s.key, "jwt:abc");
    assert_eq!(s.until, (100 + LEEWAY_SECS as i64 + 1) * 1000);
    assert_eq!(s.now, 50_000);
}

#[tokio::test]
async fn shapes_that_are_not_a_jwt_are_refused_before_any_key_is_fetched() {
    let config = keyway_core::config::Config::parse("", std::path::Path::new("/")).unwrap();
    let v = Verifier::default();
    let none = format!(
        "{}.{}.",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"iss":"x"}"#)
    );
    for (jwt, want) in [
        ("", IdentityError::Malformed),
        ("a.b", IdentityError::Malformed),
        ("a.b.c.d", IdentityError::Malformed),
        ("!!.!!.!!", IdentityError::Malformed),
        (none.as_str(), IdentityError::UnknownIssuer),
    ] {
        assert_eq!(v.verify(&config, jwt, 0).await, Err(want), "{jwt}");
    }
    let big = "a".repeat(keyway_core::jwt::MAX_JWT_BYTES + 1);
    assert_eq!(
        v.verify(&config, &big, 0).await,
        Err(IdentityError::Malformed)
    );
}

proptest! {
    #[test]
    fn any_text_is_refused_without_a_panic(jwt in ".{0,300}", dots in "[A-Za-z0-9_=-]{0,40}\\.[A-Za-z0-9_=-]{0,40}\\.[A-Za-z0-9_-]{0,20}") {
        let config = keyway_core::config::Config::parse("", std::path::Path::new("/")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let v = Verifier::default();
        for text in [jwt, dots] {
            // No issuer is configured: whatever the text, nothing verifies.
            prop_assert!(rt.block_on(v.verify(&config, &text, 0)).is_err());
        }
    }
}
