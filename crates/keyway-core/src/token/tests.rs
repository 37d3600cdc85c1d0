//! Tokens: format, checksum, hashing, and finding them in text, with property tests.

use proptest::prelude::*;

use super::*;

fn pepper() -> Pepper {
    Pepper::new(&SecretBox::new(Box::new([7u8; 32])))
}

#[test]
fn generated_tokens_parse_back() {
    for kind in TokenKind::ALL {
        let t = IssuedToken::generate(kind);
        let text = t.secret().expose_secret();
        assert_eq!(text.len(), TOKEN_LEN);
        assert!(text.starts_with(&format!("kw{}_", kind.code())));
        let p = PresentedToken::parse(text).unwrap();
        assert_eq!(p.kind(), kind);
        assert_eq!(p.id(), t.id());
        assert!(p.hash(&pepper()).ct_eq(&t.hash(&pepper())));
    }
}

#[test]
fn two_tokens_differ() {
    let a = IssuedToken::generate(TokenKind::Access);
    let b = IssuedToken::generate(TokenKind::Access);
    assert_ne!(a.id(), b.id());
    assert_ne!(a.secret().expose_secret(), b.secret().expose_secret());
}

#[test]
fn debug_never_shows_the_secret() {
    let t = IssuedToken::generate(TokenKind::Access);
    let secret = t.secret().expose_secret().to_owned();
    let shown = format!(
        "{t:?} {:?} {:?}",
        PresentedToken::parse(&secret).unwrap(),
        pepper()
    );
    assert!(
        !shown.contains(&secret[PREFIX_LEN + ID_LEN + 1..]),
        "{shown}"
    );
    assert!(shown.contains(t.id()));
}

#[test]
fn a_changed_character_fails_the_checksum() {
    let t = IssuedToken::generate(TokenKind::Access);
    let mut text = t.secret().expose_secret().to_owned().into_bytes();
    let i = TOKEN_LEN - CHECKSUM_LEN - 1;
    text[i] = if text[i] == b'a' { b'b' } else { b'a' };
    let text = String::from_utf8(text).unwrap();
    assert_eq!(
        PresentedToken::parse(&text).unwrap_err(),
        TokenError::Checksum
    );
}

#[test]
fn wrong_shapes_are_malformed() {
    let t = IssuedToken::generate(TokenKind::Access);
    let good = t.secret().expose_secret().to_owned();
    let cases = [
        String::new(),
        "kwat_".into(),
        good[1..].to_owned(),
        format!("{good}x"),
        good.replacen("kwat", "kwzz", 1),
        good.replacen("kwat", "ghat", 1),
        good.replacen('_', "-", 1),
        format!("{}é{}", &good[..30], &good[32..]),
    ];
    for c in cases {
        assert_eq!(
            PresentedToken::parse(&c).unwrap_err(),
            TokenError::Malformed,
            "{c:?}"
        );
    }
}

#[test]
fn pepper_changes_the_hash() {
    let t = IssuedToken::generate(TokenKind::Access);
    let other = Pepper::new(&SecretBox::new(Box::new([8u8; 32])));
    assert!(!t.hash(&pepper()).ct_eq(&t.hash(&other)));
    assert_ne!(pepper().fingerprint(), other.fingerprint());
}

#[test]
fn find_and_redact_tokens_in_text() {
    let t = IssuedToken::generate(TokenKind::ClientCredential);
    let s = t.secret().expose_secret();
    let text = format!("export TOKEN={s}\nother kwat_not_a_token\n\"{s}\"");
    let found = find_tokens(&text);
    assert_eq!(found.len(), 2);
    assert!(found.iter().all(|f| f.checksum_ok && f.id == t.id()));
    let red = redact(&text);
    assert!(!red.contains(&s[PREFIX_LEN + ID_LEN + 1..]));
    assert!(red.contains(&format!("kwcc_{}_***", t.id())));
    assert_eq!(redact("nothing here"), "nothing here");
}

/// Found by the `http_head` fuzz target: a token-shaped string with a wrong checksum
/// whose last characters are a real token's first (`kwat`) hid the real token from
/// the search, so it was neither refused in a URL nor redacted (its secret stayed).
#[test]
fn a_token_glued_to_a_token_shaped_string_is_still_found_and_redacted() {
    let real = IssuedToken::generate(TokenKind::Access);
    let s = real.secret().expose_secret();
    // 67 characters: with the real token's first 4 they take a token's shape.
    let junk = format!("kwat_{}_{}", "A".repeat(16), "B".repeat(45));
    let text = format!("/x?t={junk}{s}&y=1");
    let found = find_tokens(&text);
    assert!(
        found.iter().any(|f| f.id == real.id() && f.checksum_ok),
        "{found:?}"
    );
    let red = redact(&text);
    assert!(!red.contains(&s[PREFIX_LEN + ID_LEN + 1..]), "{red}");
}

#[test]
fn a_token_glued_to_other_text_is_still_found() {
    let t = IssuedToken::generate(TokenKind::Access);
    let s = t.secret().expose_secret();
    for text in [format!("x{s}"), format!("{s}x"), format!("/invoicesX{s}Y")] {
        let found = find_tokens(&text);
        assert_eq!(found.len(), 1, "{text}");
        assert!(!redact(&text).contains(&s[PREFIX_LEN + ID_LEN + 1..]));
    }
}

proptest! {
    #[test]
    fn parse_never_panics(s in "\\PC{0,100}") {
        let _ = PresentedToken::parse(&s);
        let _ = find_tokens(&s);
        let _ = redact(&s);
    }

    #[test]
    fn token_shaped_noise_fails_the_checksum_almost_always(
        kind in 0usize..4,
        id in "[0-9A-Za-z]{16}",
        body in "[0-9A-Za-z]{49}",
    ) {
        let s = format!("kw{}_{id}_{body}", TokenKind::ALL[kind].code());
        let expected = checksum(&s.as_bytes()[..TOKEN_LEN - CHECKSUM_LEN]);
        let result = PresentedToken::parse(&s);
        if s.as_bytes().ends_with(&expected) {
            prop_assert!(result.is_ok());
        } else {
            prop_assert_eq!(result.unwrap_err(), TokenError::Checksum);
        }
    }

    #[test]
    fn redaction_removes_every_secret(prefix in "\\PC{0,20}", suffix in "\\PC{0,20}") {
        let t = IssuedToken::generate(TokenKind::Access);
        let s = t.secret().expose_secret();
        let text = format!("{prefix} {s} {suffix}");
        let red = redact(&text);
        prop_assert!(!red.contains(&s[PREFIX_LEN + ID_LEN + 1..]));
    }
}
