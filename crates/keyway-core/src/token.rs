//! The token format.
//!
//! ```text
//! kwat_0123456789abcdef_<43 base62 characters of secret><6 base62 characters of CRC32>
//! └┬─┘ └──── public id ──┘
//!  prefix: `kw` + kind
//! ```
//!
//! - The prefix makes a token easy for secret scanners to find; the kind says what it
//!   is for (`at` access token, `cc` client credential, `ae` agent enrollment, `ad`
//!   admin, `se` a person's session after an SSO login).
//! - The public id (16 base62 characters, ~95 bits) is safe to log, show and audit.
//! - The secret is 43 base62 characters drawn from the OS CSPRNG: 256 bits.
//! - The checksum is CRC32 over everything before it, so a scanner can tell a real
//!   token from noise offline, and the gateway can refuse a mistyped one without a
//!   lookup.
//!
//! The store keeps only `HMAC-SHA256(pepper, token)`; the pepper lives outside the
//! database. A token's secret in memory is held by types whose `Debug` masks it.

use std::fmt;

use hmac::{Hmac, Mac};
use rand::distributions::Alphanumeric;
use rand::rngs::OsRng;
use rand::Rng;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Length of the public id, in base62 characters.
pub const ID_LEN: usize = 16;
/// Length of the secret, in base62 characters (43 × log2(62) ≈ 256 bits).
pub const SECRET_LEN: usize = 43;
/// Length of the checksum, in base62 characters (62^6 > 2^32).
pub const CHECKSUM_LEN: usize = 6;
/// `kw` + two kind letters + `_`.
const PREFIX_LEN: usize = 5;
/// Total length of every token.
pub const TOKEN_LEN: usize = PREFIX_LEN + ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// Calls one service, for minutes to hours.
    Access,
    /// Exchanged for access tokens; calls nothing itself.
    ClientCredential,
    /// Enrolls an agent, once.
    AgentEnrollment,
    /// Calls the admin API.
    Admin,
    /// A person signed in through an identity provider (`keyway login`): obtains
    /// access tokens as policies allow, and files and decides access requests;
    /// calls nothing itself.
    Session,
}

/// Why a string is not a token. The variants are kept apart because they mean
/// different things to a detector: a wrong checksum on a well-formed token is a guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a Keyway token")]
    Malformed,
    #[error("token checksum does not match")]
    Checksum,
}

/// A token as presented by a client: borrowed from the request, checked for shape and
/// checksum, not yet for validity. `Debug` shows the public id only.
#[derive(Clone, Copy)]
pub struct PresentedToken<'a> {
    kind: TokenKind,
    id: &'a str,
    full: &'a str,
}

/// A newly generated token: the only time its whole text exists in Keyway.
pub struct IssuedToken {
    kind: TokenKind,
    id: String,
    full: SecretString,
}

/// `HMAC-SHA256(pepper, token)`: what the store and the index keep.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

/// The key of the token hash. Kept outside the store, so a copy of the database alone
/// cannot be used to test guesses.
#[derive(Clone)]
pub struct Pepper {
    mac: Hmac<Sha256>,
    fingerprint: [u8; 32],
}

/// Where a token was found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Byte offset of the token's first character.
    pub start: usize,
    pub kind: TokenKind,
    /// The public id: safe to show.
    pub id: String,
    /// Whether the checksum matched (a scanner reports only these as tokens).
    pub checksum_ok: bool,
}

// === impl TokenKind ===

impl TokenKind {
    pub const ALL: [TokenKind; 5] = [
        TokenKind::Access,
        TokenKind::ClientCredential,
        TokenKind::AgentEnrollment,
        TokenKind::Admin,
        TokenKind::Session,
    ];

    /// The two letters after `kw`.
    pub fn code(self) -> &'static str {
        match self {
            TokenKind::Access => "at",
            TokenKind::ClientCredential => "cc",
            TokenKind::AgentEnrollment => "ae",
            TokenKind::Admin => "ad",
            TokenKind::Session => "se",
        }
    }

    /// The name used in the store and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Access => "access",
            TokenKind::ClientCredential => "client_credential",
            TokenKind::AgentEnrollment => "agent_enrollment",
            TokenKind::Admin => "admin",
            TokenKind::Session => "session",
        }
    }

    pub fn from_code(code: &[u8]) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code().as_bytes() == code)
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl IssuedToken ===

impl IssuedToken {
    /// Draws a new token of `kind` from the OS CSPRNG.
    pub fn generate(kind: TokenKind) -> Self {
        let id = random_base62(ID_LEN);
        let secret = SecretString::from(random_base62(SECRET_LEN));
        let mut full = String::with_capacity(TOKEN_LEN);
        full.push_str("kw");
        full.push_str(kind.code());
        full.push('_');
        full.push_str(&id);
        full.push('_');
        full.push_str(secret.expose_secret());
        let crc = checksum(full.as_bytes());
        full.extend(crc.iter().map(|&c| char::from(c)));
        Self {
            kind,
            id,
            full: SecretString::from(full),
        }
    }

    pub fn kind(&self) -> TokenKind {
        self.kind
    }

    /// The public id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The whole token, to hand to its holder once.
    pub fn secret(&self) -> &SecretString {
        &self.full
    }

    pub fn hash(&self, pepper: &Pepper) -> TokenHash {
        pepper.hash(self.full.expose_secret().as_bytes())
    }
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuedToken(kw{}_{}_***)", self.kind.code(), self.id)
    }
}

// === impl PresentedToken ===

impl<'a> PresentedToken<'a> {
    /// Checks the shape and checksum of `s`. Does no allocation and no lookup.
    pub fn parse(s: &'a str) -> Result<Self, TokenError> {
        let b = s.as_bytes();
        if b.len() != TOKEN_LEN || &b[..2] != b"kw" || b[4] != b'_' {
            return Err(TokenError::Malformed);
        }
        let kind = TokenKind::from_code(&b[2..4]).ok_or(TokenError::Malformed)?;
        let id_end = PREFIX_LEN + ID_LEN;
        if b[id_end] != b'_' {
            return Err(TokenError::Malformed);
        }
        // Two plain slices, not a chain of them: a loop the compiler can unroll.
        let alphanumeric = |part: &[u8]| part.iter().all(u8::is_ascii_alphanumeric);
        if !alphanumeric(&b[PREFIX_LEN..id_end]) || !alphanumeric(&b[id_end + 1..]) {
            return Err(TokenError::Malformed);
        }
        let (body, crc) = b.split_at(TOKEN_LEN - CHECKSUM_LEN);
        if checksum(body) != crc {
            return Err(TokenError::Checksum);
        }
        Ok(Self {
            kind,
            id: &s[PREFIX_LEN..id_end],
            full: s,
        })
    }

    pub fn kind(&self) -> TokenKind {
        self.kind
    }

    /// The public id.
    pub fn id(&self) -> &'a str {
        self.id
    }

    pub fn hash(&self, pepper: &Pepper) -> TokenHash {
        pepper.hash(self.full.as_bytes())
    }
}

impl fmt::Debug for PresentedToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PresentedToken(kw{}_{}_***)", self.kind.code(), self.id)
    }
}

// === impl TokenHash ===

impl TokenHash {
    /// Constant-time equality.
    pub fn ct_eq(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(Self(b.try_into().ok()?))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}…)", &self.to_hex()[..8])
    }
}

// === impl Pepper ===

impl Pepper {
    /// Key length of a pepper, in bytes.
    pub const LEN: usize = 32;

    pub fn new(key: &SecretBox<[u8; 32]>) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key.expose_secret())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        let mut fp = mac.clone();
        fp.update(b"keyway pepper fingerprint v1");
        let fingerprint = fp.finalize().into_bytes().into();
        Self { mac, fingerprint }
    }

    /// Draws a fresh pepper key.
    pub fn generate_key() -> SecretBox<[u8; 32]> {
        let mut key = Box::new([0u8; 32]);
        OsRng.fill(&mut key[..]);
        SecretBox::new(key)
    }

    pub fn hash(&self, data: &[u8]) -> TokenHash {
        let mut mac = self.mac.clone();
        mac.update(data);
        TokenHash(mac.finalize().into_bytes().into())
    }

    /// A value that identifies this pepper without revealing it, kept in the store so
    /// that starting with the wrong pepper is a clear error rather than every token
    /// silently failing.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pepper(***)")
    }
}

// === finding tokens in text ===

/// Finds everything in `text` that has the shape of a Keyway token. Matches with a
/// wrong checksum are returned too (flagged), so callers choose how strict to be.
pub fn find_tokens(text: &str) -> Vec<Found> {
    let b = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i + TOKEN_LEN <= b.len() {
        if b[i] == b'k' && b[i + 1] == b'w' {
            let candidate = &b[i..i + TOKEN_LEN];
            // Token characters are ASCII, so a candidate with a non-ASCII byte is not
            // one, and slicing `text` below stays on character boundaries. No word
            // boundary is required: a token glued to other text (`/xkwat_…`) is still
            // a token, and the checksum keeps noise out.
            if candidate.is_ascii() {
                let s = &text[i..i + TOKEN_LEN];
                let shaped = match PresentedToken::parse(s) {
                    Ok(t) => Some((t.kind(), t.id().to_owned(), true)),
                    Err(TokenError::Checksum) => {
                        let kind = TokenKind::from_code(&candidate[2..4]);
                        kind.map(|k| (k, s[PREFIX_LEN..PREFIX_LEN + ID_LEN].to_owned(), false))
                    }
                    Err(TokenError::Malformed) => None,
                };
                // The search goes on at the next character, not past the match: a
                // token-shaped string can end with a real token's first characters
                // (its `kw` and kind), and that token must be found too. No two
                // matches overlap by more than those 4 characters (each has its `_`
                // where the other has base62), so redaction keeps every secret out.
                if let Some((kind, id, checksum_ok)) = shaped {
                    found.push(Found {
                        start: i,
                        kind,
                        id,
                        checksum_ok,
                    });
                }
            }
        }
        i += 1;
    }
    found
}

/// Replaces the secret part of every token-shaped string in `text` with `***`, keeping
/// the prefix and public id so the redacted text still says which token it was.
pub fn redact(text: &str) -> std::borrow::Cow<'_, str> {
    let found = find_tokens(text);
    if found.is_empty() {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for f in found {
        let keep = (f.start + PREFIX_LEN + ID_LEN + 1).max(last);
        out.push_str(&text[last..keep]);
        out.push_str("***");
        last = f.start + TOKEN_LEN;
    }
    out.push_str(&text[last..]);
    std::borrow::Cow::Owned(out)
}

/// The CRC-32 of `data` in base 62: ASCII, without an allocation (every request
/// checks one).
fn checksum(data: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(data) as u64;
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

fn random_base62(len: usize) -> String {
    // `Alphanumeric` samples uniformly from the same 62 characters, by rejection.
    OsRng
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests;
