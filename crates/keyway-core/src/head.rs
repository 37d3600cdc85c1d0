//! What Keyway reads of an HTTP request head once hyper has parsed it: the bearer
//! token, and a token written into the target (path or query), which is refused and
//! revoked. The services' proxy, the token endpoint and the admin API read these the
//! same way; the fuzz target `http_head` drives them over raw request heads.

use http::{header, HeaderMap};

use crate::token::{find_tokens, Found};

/// The credential a request or a connection presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bearer<'a> {
    /// None: no `Authorization` header, or one of another scheme.
    Absent,
    /// A token (not yet checked).
    Token(&'a str),
    /// Two or more `Authorization` headers. Which one a hop behind would read is
    /// not ours to guess, so none is tried: the credential is malformed.
    Several,
}

/// The token of the request's one `Authorization: Bearer …` header (the scheme in
/// any case).
pub fn bearer(headers: &HeaderMap) -> Bearer<'_> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Bearer::Absent;
    };
    if values.next().is_some() {
        return Bearer::Several;
    }
    match value.to_str().ok().and_then(|v| v.split_once(' ')) {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Bearer::Token(token.trim())
        }
        _ => Bearer::Absent,
    }
}

/// The tokens (checksums that match) in a request target, percent-decoded first,
/// with the decoded target their offsets point into; none when there is none.
pub fn tokens_in_target(target: &str) -> Option<(String, Vec<Found>)> {
    if !target.contains("kw") && !target.contains('%') {
        return None;
    }
    let target = crate::path::percent_decode_lossy(target);
    let found: Vec<Found> = find_tokens(&target)
        .into_iter()
        .filter(|f| f.checksum_ok)
        .collect();
    (!found.is_empty()).then(|| (target.into_owned(), found))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn one_bearer_header_in_any_case() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), Bearer::Absent);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc "),
        );
        assert_eq!(bearer(&h), Bearer::Token("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), Bearer::Absent);
        h.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Bearer::Several, "two Authorization headers");
    }

    #[test]
    fn a_token_in_a_target_is_found_encoded_or_not() {
        let t = crate::token::IssuedToken::generate(crate::TokenKind::Access);
        let text = secrecy::ExposeSecret::expose_secret(t.secret()).to_owned();
        let (decoded, found) = tokens_in_target(&format!("/x?token={text}")).unwrap();
        assert_eq!(&decoded[found[0].start..], text);
        let encoded: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
        let (_, found) = tokens_in_target(&format!("/x/{encoded}")).unwrap();
        assert_eq!(found[0].id, t.id());
        assert!(tokens_in_target("/invoices?page=2").is_none());
    }
}
