//! A JWT's outer shape, read before anything about it is trusted: three base64url
//! parts, a JSON header naming its algorithm and key, and JSON claims. The gateway
//! uses the unverified `iss` only to pick the issuer whose keys then verify it.

use base64::Engine;

/// A JWT at most, in bytes.
pub const MAX_JWT_BYTES: usize = 16 * 1024;

/// A JWT as read, nothing verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Unverified {
    /// The header's `alg`, as written.
    pub alg: String,
    pub kid: Option<String>,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// Not a JWT: too long, not three parts, not base64url JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a JWT")]
pub struct Malformed;

#[derive(serde::Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

/// Reads `jwt`'s header and claims, verifying nothing.
pub fn read(jwt: &str) -> Result<Unverified, Malformed> {
    if jwt.len() > MAX_JWT_BYTES {
        return Err(Malformed);
    }
    let mut parts = jwt.split('.');
    let (Some(head), Some(body), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Malformed);
    };
    let header: Header = part(head)?;
    Ok(Unverified {
        alg: header.alg,
        kid: header.kid,
        claims: part(body)?,
    })
}

/// A header or the claims: base64url (unpadded) JSON.
fn part<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Malformed> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| Malformed)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn a_jwt_reads_into_its_header_and_claims() {
        let jwt = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#),
            b64(r#"{"iss":"https://ci.example","sub":"repo:x"}"#)
        );
        let u = read(&jwt).unwrap();
        assert_eq!((u.alg.as_str(), u.kid.as_deref()), ("ES256", Some("k1")));
        assert_eq!(u.claims["sub"], "repo:x");
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!.!.!",
            &format!("{}.e30.x", b64("[]")),
        ] {
            assert_eq!(read(bad), Err(Malformed), "{bad}");
        }
        assert_eq!(read(&"a".repeat(MAX_JWT_BYTES + 1)), Err(Malformed));
    }

    proptest! {
        #[test]
        fn any_text_reads_or_is_malformed(text in ".{0,400}") {
            let _ = read(&text);
        }

        #[test]
        fn any_json_parts_read_back(alg in "[A-Za-z0-9]{1,8}", sub in "\\PC{0,40}") {
            let header = serde_json::json!({ "alg": alg }).to_string();
            let claims = serde_json::json!({ "sub": sub }).to_string();
            let u = read(&format!("{}.{}.", b64(&header), b64(&claims))).unwrap();
            prop_assert_eq!(u.alg, alg);
            prop_assert_eq!(u.claims["sub"].as_str(), Some(sub.as_str()));
        }
    }
}
