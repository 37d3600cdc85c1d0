//! Request path normalisation.
//!
//! The gateway decides on the normalised path and forwards the same normalised path,
//! so the gateway and the upstream can never disagree about which resource was asked
//! for. Percent-encodings of unreserved characters are decoded (so `%2e%2e` is `..`),
//! `.` and `..` segments are resolved, empty segments (`//`) are collapsed.
//!
//! Refused outright: a `..` that would climb above the root; a NUL, a backslash (some
//! servers treat it as `/`) or its encoding; a malformed percent-encoding; a segment
//! like `..;x` that Java servers resolve as `..`. Where the grant restricts paths, an
//! encoded slash (`%2f`) and an encoded percent sign (`%25`, double encoding) are
//! refused too: an upstream that decodes them would see a different path than the
//! grant did. Where it does not, they pass through as they are.

/// The longest path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with `/`")]
    NotAbsolute,
    #[error("the path is too long")]
    TooLong,
    #[error("the path has a malformed percent-encoding")]
    BadEncoding,
    #[error("the path contains an encoded slash")]
    EncodedSlash,
    #[error("the path contains a backslash, a NUL or a control character")]
    Forbidden,
    #[error("the path climbs above the root")]
    EscapesRoot,
    #[error("the path has a dot segment with parameters")]
    DotParameters,
    #[error("the path contains an encoded percent sign")]
    DoubleEncoding,
}

/// Normalises an origin-form request path (no query). `unrestricted` is true where no
/// path prefix is enforced; see the module docs.
pub fn normalize(raw: &str, unrestricted: bool) -> Result<String, PathError> {
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode_unreserved(raw, unrestricted)?;

    let mut segments: Vec<&str> = Vec::new();
    let raw_segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = raw_segments.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in raw_segments.iter().enumerate() {
        let dot_part = seg.split(';').next().unwrap_or(seg);
        if seg.contains(';') && (dot_part == "." || dot_part == "..") {
            return Err(PathError::DotParameters);
        }
        match *seg {
            "" => trailing_slash = i == last,
            "." => trailing_slash = i == last,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::EscapesRoot);
                }
                trailing_slash = i == last;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// Whether `path` (normalised) lies under `prefix` (normalised), on segment
/// boundaries: `/invoices` covers `/invoices` and `/invoices/1`, not `/invoicesX`.
pub fn under_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Decodes every percent-encoding it can, leaving the rest as is: for looking into
/// text (a token hidden as `kwat%5F…`), never for deciding on a path.
pub fn percent_decode_lossy(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('%') {
        return std::borrow::Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = b.get(i + 1..i + 3).and_then(hex_pair) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn decode_unreserved(raw: &str, unrestricted: bool) -> Result<String, PathError> {
    let b = raw.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or(PathError::BadEncoding)?;
            let v = hex_pair(hex).ok_or(PathError::BadEncoding)?;
            match v {
                b'/' if unrestricted => out.push_str("%2F"),
                b'/' => return Err(PathError::EncodedSlash),
                b'%' if !unrestricted => return Err(PathError::DoubleEncoding),
                b'\\' | 0 => return Err(PathError::Forbidden),
                v if is_unreserved(v) => out.push(v as char),
                v => {
                    out.push('%');
                    out.push(HEX[(v >> 4) as usize] as char);
                    out.push(HEX[(v & 15) as usize] as char);
                }
            }
            i += 3;
            continue;
        }
        if c == b'\\' || c < 0x20 || c == 0x7f {
            return Err(PathError::Forbidden);
        }
        // Multi-byte UTF-8 is copied as is: `raw` is a `&str`, so boundaries hold.
        let ch_len = utf8_len(c);
        out.push_str(&raw[i..i + ch_len]);
        i += ch_len;
    }
    Ok(out)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_pair(h: &[u8]) -> Option<u8> {
    let d = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
    Some(d(*h.first()?)? << 4 | d(*h.get(1)?)?)
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p, false)
    }

    #[test]
    fn normal_forms() {
        let cases = [
            ("/", "/"),
            ("/invoices/", "/invoices/"),
            ("/invoices/1", "/invoices/1"),
            ("//invoices//1", "/invoices/1"),
            ("/invoices/./1", "/invoices/1"),
            ("/invoices/1/..", "/invoices/"),
            ("/invoices/../admin", "/admin"),
            ("/invoices/%2e%2e/admin", "/admin"),
            ("/invoices/%2E./admin", "/admin"),
            ("/%69nvoices/", "/invoices/"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/caf\u{e9}", "/caf\u{e9}"),
        ];
        for (raw, want) in cases {
            assert_eq!(n(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(n("/.."), Err(PathError::EscapesRoot));
        assert_eq!(n("/a/../.."), Err(PathError::EscapesRoot));
        assert_eq!(n("/%2e%2e/etc"), Err(PathError::EscapesRoot));
        assert_eq!(n("/invoices%2f..%2fadmin"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a%5cb"), Err(PathError::Forbidden));
        assert_eq!(n("/a\\b"), Err(PathError::Forbidden));
        assert_eq!(n("/a%00"), Err(PathError::Forbidden));
        assert_eq!(n("/a%zz"), Err(PathError::BadEncoding));
        assert_eq!(n("/a%2"), Err(PathError::BadEncoding));
        assert_eq!(n("/invoices/..;/admin"), Err(PathError::DotParameters));
        assert_eq!(n("a"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("/a%2fb", true).as_deref(), Ok("/a%2Fb"));
        assert_eq!(
            n("/invoices/%252e%252e/admin"),
            Err(PathError::DoubleEncoding)
        );
        assert_eq!(normalize("/a%25b", true).as_deref(), Ok("/a%25b"));
    }

    #[test]
    fn lossy_decoding_for_scanning() {
        assert_eq!(percent_decode_lossy("a%5Fb%zz%"), "a_b%zz%");
        assert_eq!(percent_decode_lossy("plain"), "plain");
    }

    #[test]
    fn prefixes_respect_segments() {
        assert!(under_prefix("/invoices/1", "/invoices/"));
        assert!(!under_prefix("/invoices", "/invoices/"));
        assert!(under_prefix("/invoices", "/invoices"));
        assert!(under_prefix("/invoices/1", "/invoices"));
        assert!(!under_prefix("/invoicesX", "/invoices"));
        assert!(under_prefix("/anything", "/"));
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,64}") {
            let _ = normalize(&s, false);
            let _ = normalize(&s, true);
        }

        #[test]
        fn output_is_a_fixed_point_without_dot_segments(
            segs in proptest::collection::vec("(\\.|\\.\\.|%2e|%2E%2e|[a-z]{1,3}|%41|)", 0..8)
        ) {
            let raw = format!("/{}", segs.join("/"));
            if let Ok(out) = normalize(&raw, false) {
                prop_assert!(out.starts_with('/'));
                prop_assert!(!out.contains("//"));
                prop_assert!(!out.split('/').any(|s| s == "." || s == ".."));
                prop_assert_eq!(normalize(&out, false), Ok(out.clone()));
            }
        }

        #[test]
        fn a_prefix_cannot_be_escaped(tail in "[a-z./%2eEfF]{0,24}") {
            let raw = format!("/invoices/{tail}");
            if let Ok(out) = normalize(&raw, false) {
                // Whatever is accepted and still under the prefix really is under it:
                // no dot segment survives that a server could resolve upward.
                if under_prefix(&out, "/invoices/") {
                    prop_assert!(!out["/invoices/".len()..].split('/').any(|s| s == ".."));
                }
            }
        }
    }
}
