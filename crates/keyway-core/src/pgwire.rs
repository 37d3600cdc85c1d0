//! What the PostgreSQL proxy reads of a client by hand, as pure functions over bytes:
//! the start-up packet's length, code and parameters, a typed message's length, the
//! password message (the client's token), a `CancelRequest`'s key, and what the
//! audit keeps of a statement frame as it streams through ([`Capture`]). The
//! gateway's reads wrap these; the fuzz target `postgres_frontend` drives them.
//! Messages the gateway sends as a client upstream are `postgres-protocol`'s.

use std::collections::HashMap;

/// A start-up packet is small; anything larger is refused before it is read.
pub const MAX_STARTUP: usize = 10 * 1024;
/// The largest password message (a token) and upstream start-up message accepted.
pub const MAX_AUTH_MESSAGE: usize = 64 * 1024;
/// Statement text kept in an audit event.
pub const MAX_STATEMENT: usize = 4096;
/// Text captured beyond the cap, so a token that straddles it is redacted whole.
pub const REDACT_SLACK: usize = 128;

pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;

/// What a start-up packet's code asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Ssl,
    Gssenc,
    Cancel,
    /// Protocol 3.`minor`: a start-up message with parameters.
    V3 {
        minor: i32,
    },
    /// Another protocol: refused, naming it.
    Other {
        major: i32,
        minor: i32,
    },
}

impl Code {
    /// A start-up packet's code, classified.
    pub fn of(code: i32) -> Self {
        match code {
            SSL_REQUEST => Code::Ssl,
            GSSENC_REQUEST => Code::Gssenc,
            CANCEL_REQUEST => Code::Cancel,
            c if c >> 16 == 3 => Code::V3 { minor: c & 0xffff },
            c => Code::Other {
                major: c >> 16,
                minor: c & 0xffff,
            },
        }
    }
}

/// A start-up packet's length (which counts itself and the code) when it is one a
/// start-up packet can have: 8 to [`MAX_STARTUP`].
pub fn startup_len(len: i32) -> Option<usize> {
    usize::try_from(len)
        .ok()
        .filter(|&l| (8..=MAX_STARTUP).contains(&l))
}

/// A typed message's length (which counts itself) when it is 4 to `max`.
pub fn message_len(len: i32, max: usize) -> Option<usize> {
    usize::try_from(len)
        .ok()
        .filter(|&l| (4..=max).contains(&l))
}

/// Start-up parameters: NUL-terminated key, value pairs, up to an empty key.
pub fn parse_params(body: &[u8]) -> HashMap<String, String> {
    let mut parts = body.split(|&b| b == 0);
    let mut out = HashMap::new();
    while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
        if k.is_empty() {
            break;
        }
        out.insert(
            String::from_utf8_lossy(k).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        );
    }
    out
}

/// The password of a `PasswordMessage` body: its text up to the first NUL.
pub fn password(body: &[u8]) -> String {
    let text = body.split(|&b| b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(text).into_owned()
}

/// The process id and secret key of a `CancelRequest` body (8 bytes, else none).
pub fn cancel_key(body: &[u8]) -> Option<(i32, i32)> {
    let b: &[u8; 8] = body.try_into().ok()?;
    Some((
        i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
    ))
}

/// Whether `buffered` holds at least one whole frame (type byte, then its length,
/// which counts itself).
pub fn whole_frame_waiting(buffered: &[u8]) -> bool {
    buffered.len() >= 5
        && (u32::from_be_bytes([buffered[1], buffered[2], buffered[3], buffered[4]]) as usize)
            < buffered.len()
}

/// What the audit keeps of a `Q`, `P` or `F` frame as it streams through: the
/// statement text (for `P`, after the statement name, whatever its length) up to
/// [`MAX_STATEMENT`] and [`REDACT_SLACK`], and its whole length; for `F`, the
/// function's OID. Fed in chunks of any size, it keeps the same.
#[derive(Debug)]
pub struct Capture {
    pub kind: u8,
    skip_name: bool,
    done: bool,
    /// The text kept (for `F`, the OID's 4 bytes).
    pub kept: Vec<u8>,
    /// The text's whole length.
    pub len: usize,
}

impl Capture {
    pub fn new(kind: u8) -> Self {
        Self {
            kind,
            skip_name: kind == b'P',
            done: false,
            kept: Vec::new(),
            len: 0,
        }
    }

    pub fn feed(&mut self, mut chunk: &[u8]) {
        if self.kind == b'F' {
            let need = 4usize.saturating_sub(self.kept.len()).min(chunk.len());
            self.kept.extend_from_slice(&chunk[..need]);
            return;
        }
        if self.done {
            return;
        }
        if self.skip_name {
            let Some(i) = chunk.iter().position(|&b| b == 0) else {
                return;
            };
            self.skip_name = false;
            chunk = &chunk[i + 1..];
        }
        let (text, end) = match chunk.iter().position(|&b| b == 0) {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        self.len += text.len();
        let room = (MAX_STATEMENT + REDACT_SLACK).saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&text[..text.len().min(room)]);
        self.done = end;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn capture(kind: u8, body: &[u8], chunk: usize) -> Capture {
        let mut c = Capture::new(kind);
        for part in body.chunks(chunk.max(1)) {
            c.feed(part);
        }
        c
    }

    proptest! {
        /// However a frame arrives in pieces, the audit keeps the same text and
        /// length, within its cap.
        #[test]
        fn a_capture_does_not_depend_on_the_chunks(
            kind in prop::sample::select(vec![b'Q', b'P', b'F']),
            body in prop::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..6000),
            chunk in 1usize..700,
        ) {
            let whole = capture(kind, &body, body.len());
            let parts = capture(kind, &body, chunk);
            prop_assert_eq!(&whole.kept, &parts.kept);
            prop_assert_eq!(whole.len, parts.len);
            prop_assert!(whole.len <= body.len());
            prop_assert!(whole.kept.len() <= MAX_STATEMENT + REDACT_SLACK);
        }

        /// Parameters are read back as written, and never panic on noise.
        #[test]
        fn start_up_parameters_read_back(
            pairs in prop::collection::hash_map("[a-z_.]{1,12}", "[ -~]{0,20}", 0..8),
            noise in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut body = Vec::new();
            for (k, v) in &pairs {
                body.extend_from_slice(k.as_bytes());
                body.push(0);
                body.extend_from_slice(v.as_bytes());
                body.push(0);
            }
            body.push(0);
            prop_assert_eq!(parse_params(&body), pairs);
            let _ = parse_params(&noise);
        }

        /// A length is taken only within its bounds.
        #[test]
        fn lengths_are_bounded(len in any::<i32>()) {
            if let Some(l) = startup_len(len) {
                prop_assert!((8..=MAX_STARTUP).contains(&l));
            }
            if let Some(l) = message_len(len, MAX_AUTH_MESSAGE) {
                prop_assert!((4..=MAX_AUTH_MESSAGE).contains(&l));
            }
        }
    }

    #[test]
    fn openings_and_keys() {
        assert_eq!(Code::of(196_608), Code::V3 { minor: 0 });
        assert_eq!(Code::of(196_610), Code::V3 { minor: 2 });
        assert_eq!(Code::of(SSL_REQUEST), Code::Ssl);
        assert_eq!(Code::of(CANCEL_REQUEST), Code::Cancel);
        assert_eq!(Code::of(131_072), Code::Other { major: 2, minor: 0 });
        assert_eq!(cancel_key(&[0, 0, 0, 7, 255, 255, 255, 255]), Some((7, -1)));
        assert_eq!(cancel_key(&[0; 7]), None);
        assert_eq!(password(b"kw_tok\0"), "kw_tok");
        assert_eq!(password(b""), "");
    }

    #[test]
    fn a_parse_frame_is_captured_after_its_name_whatever_its_length() {
        let mut body = vec![b'n'; 10_000];
        body.push(0);
        body.extend_from_slice(b"select secret_things()\0\0\0");
        for chunk in [1, 7, 4096, 100_000] {
            let c = capture(b'P', &body, chunk);
            assert_eq!(c.kept, b"select secret_things()", "chunk {chunk}");
            assert_eq!(c.len, 22);
        }
    }

    #[test]
    fn a_long_statement_keeps_its_length_and_a_capped_text() {
        let mut body = b"/*".to_vec();
        body.extend(std::iter::repeat_n(b' ', 10_000));
        body.extend_from_slice(b"*/ drop table t\0");
        let c = capture(b'Q', &body, 333);
        assert_eq!(c.len, body.len() - 1);
        assert_eq!(c.kept.len(), MAX_STATEMENT + REDACT_SLACK);
    }

    #[test]
    fn a_function_call_keeps_its_oid() {
        let c = capture(b'F', &[0, 0, 0x0b, 0xb8, 0, 1, 0, 0], 3);
        assert_eq!(c.kept, [0, 0, 0x0b, 0xb8]);
    }

    #[test]
    fn frames_waiting() {
        assert!(!whole_frame_waiting(b"Q\0\0"));
        assert!(!whole_frame_waiting(b"Q\0\0\0\x09abc"));
        assert!(whole_frame_waiting(b"Q\0\0\0\x08abcd"));
    }

    #[test]
    fn a_token_across_the_cap_is_redacted_whole() {
        use secrecy::ExposeSecret;
        let issued = crate::token::IssuedToken::generate(crate::TokenKind::Access);
        let token = issued.secret().expose_secret();
        let mut body = vec![b' '; MAX_STATEMENT - 30];
        body.extend_from_slice(token.as_bytes());
        body.push(0);
        let c = capture(b'Q', &body, 1000);
        let text = String::from_utf8_lossy(&c.kept);
        let redacted = crate::token::redact(&text);
        assert!(
            redacted.contains(issued.id()),
            "the token is still named by its id"
        );
        assert!(
            !redacted.contains(&token[22..40]),
            "{}",
            &redacted[redacted.len() - 80..]
        );
    }
}
