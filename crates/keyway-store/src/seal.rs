//! Encryption at rest of upstream credentials: XChaCha20-Poly1305 under the master
//! key, a random 192-bit nonce per value, the secret's name as associated data (so a
//! sealed value cannot be moved to another name). Each sealed value records the id of
//! the key that sealed it, so keys can be rotated.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::rngs::OsRng;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// A sealed value, as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// Seals and opens values with the master key.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    key_id: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("secret `{name}` was sealed with master key {key_id}, which is not loaded")]
    UnknownKey { name: String, key_id: String },
    #[error("secret `{name}` does not open with the master key (tampered, or the wrong key)")]
    Open { name: String },
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sealed(key {}, {} bytes)",
            self.key_id,
            self.ciphertext.len()
        )
    }
}

impl Sealer {
    pub fn new(key: &SecretBox<[u8; 32]>) -> Self {
        let digest = Sha256::new()
            .chain_update(b"keyway master key id v1")
            .chain_update(key.expose_secret())
            .finalize();
        Self {
            cipher: XChaCha20Poly1305::new(key.expose_secret().into()),
            key_id: hex::encode(&digest[..8]),
        }
    }

    /// A public identifier of the master key (not derived in a way that helps guess it).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn seal(&self, name: &str, value: &SecretString) -> Sealed {
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: value.expose_secret().as_bytes(),
            aad: name.as_bytes(),
        };
        // Encryption fails only for messages beyond 256 GiB.
        let ciphertext = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), payload)
            .unwrap_or_else(|_| unreachable!("XChaCha20-Poly1305 seals any value below 256 GiB"));
        Sealed {
            key_id: self.key_id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    pub fn open(&self, name: &str, sealed: &Sealed) -> Result<SecretString, SealError> {
        if sealed.key_id != self.key_id {
            return Err(SealError::UnknownKey {
                name: name.into(),
                key_id: sealed.key_id.clone(),
            });
        }
        let open_err = || SealError::Open { name: name.into() };
        if sealed.nonce.len() != 24 {
            return Err(open_err());
        }
        let payload = Payload {
            msg: &sealed.ciphertext,
            aad: name.as_bytes(),
        };
        let plain = Zeroizing::new(
            self.cipher
                .decrypt(XNonce::from_slice(&sealed.nonce), payload)
                .map_err(|_| open_err())?,
        );
        let text = std::str::from_utf8(&plain).map_err(|_| open_err())?;
        Ok(SecretString::from(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(b: u8) -> Sealer {
        Sealer::new(&SecretBox::new(Box::new([b; 32])))
    }

    #[test]
    fn round_trip_and_binding_to_the_name() {
        let s = sealer(1);
        let v = SecretString::from("upstream-password");
        let sealed = s.seal("billing-key", &v);
        assert!(!sealed.ciphertext.windows(8).any(|w| w == b"upstream"));
        assert_eq!(
            s.open("billing-key", &sealed).unwrap().expose_secret(),
            "upstream-password"
        );
        assert!(matches!(
            s.open("other-name", &sealed),
            Err(SealError::Open { .. })
        ));
        let mut tampered = sealed.clone();
        tampered.ciphertext[0] ^= 1;
        assert!(s.open("billing-key", &tampered).is_err());
        assert!(matches!(
            sealer(2).open("billing-key", &sealed),
            Err(SealError::UnknownKey { .. })
        ));
    }
}
