//! The keys that must live outside the database: the pepper of token hashes and the
//! master key that seals upstream credentials.
//!
//! Each comes from an environment variable (64 hex characters) or a file of that form;
//! a file readable by group or others is refused. A missing file is created (mode
//! 0600) only when the store is new; the store keeps a fingerprint of each key, so
//! starting with the wrong one is a clear error instead of every token silently
//! failing or every secret failing to open.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use secrecy::{ExposeSecret, SecretBox};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{var} must hold 64 hexadecimal characters (32 bytes)")]
    BadEnv { var: String },
    #[error("{path} must hold 64 hexadecimal characters (32 bytes)")]
    BadFile { path: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is missing but the store already holds data protected by it; restore the file \
         (or set {var}) rather than starting with a new key"
    )]
    MissingForExistingStore { path: String, var: String },
    #[error(
        "{path} holds a key but is readable by group or others (mode {mode:04o}); \
         run `chmod 600 {path}`, and consider the key exposed if others could log in here"
    )]
    TooOpen { path: String, mode: u32 },
}

/// Where a key came from, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Env,
    File,
    Created,
}

/// Loads the key from `env_var` or `path`; creates the file when it is missing and
/// `may_create` (the store is new).
pub fn load_or_create(
    path: &Path,
    env_var: &str,
    may_create: bool,
) -> Result<(SecretBox<[u8; 32]>, KeySource), KeyError> {
    if let Ok(v) = std::env::var(env_var) {
        let key = decode(&v).ok_or_else(|| KeyError::BadEnv {
            var: env_var.into(),
        })?;
        return Ok((key, KeySource::Env));
    }
    let shown = path.display().to_string();
    // Refused before it is read: a key others can read is not used.
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o044 != 0 {
            return Err(KeyError::TooOpen { path: shown, mode });
        }
    }
    match fs::read_to_string(path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            let key = decode(&text).ok_or(KeyError::BadFile {
                path: shown.clone(),
            })?;
            Ok((key, KeySource::File))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !may_create {
                return Err(KeyError::MissingForExistingStore {
                    path: shown,
                    var: env_var.into(),
                });
            }
            let key = keyway_core::Pepper::generate_key();
            write_secret_file(path, hex::encode(key.expose_secret()).as_bytes()).map_err(
                |source| KeyError::Create {
                    path: shown,
                    source,
                },
            )?;
            Ok((key, KeySource::Created))
        }
        Err(source) => Err(KeyError::Read {
            path: shown,
            source,
        }),
    }
}

/// Writes `data` to a new file readable only by its owner (0600). Refuses to replace
/// an existing file.
pub fn write_secret_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.write_all(b"\n")?;
    f.sync_all()
}

fn decode(text: &str) -> Option<SecretBox<[u8; 32]>> {
    let mut key = Box::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), &mut key[..]).ok()?;
    Some(SecretBox::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/pepper.key");
        let (a, src) = load_or_create(&path, "KEYWAY_TEST_UNSET_VAR", true).unwrap();
        assert_eq!(src, KeySource::Created);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (b, src) = load_or_create(&path, "KEYWAY_TEST_UNSET_VAR", false).unwrap();
        assert_eq!(src, KeySource::File);
        assert_eq!(a.expose_secret(), b.expose_secret());
    }

    #[test]
    fn missing_key_for_an_existing_store_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_or_create(&dir.path().join("nope.key"), "KEYWAY_TEST_UNSET_VAR", false)
            .unwrap_err();
        assert!(matches!(e, KeyError::MissingForExistingStore { .. }), "{e}");
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pepper.key");
        let (_, _) = load_or_create(&path, "KEYWAY_TEST_UNSET_VAR", true).unwrap();
        for mode in [0o640, 0o604, 0o644] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let e = load_or_create(&path, "KEYWAY_TEST_UNSET_VAR", false).unwrap_err();
            let shown = e.to_string();
            assert!(matches!(e, KeyError::TooOpen { .. }), "{shown}");
            assert!(
                shown.contains(&format!("chmod 600 {}", path.display())),
                "{shown}"
            );
            assert!(shown.contains(&format!("{mode:04o}")), "{shown}");
        }
        // Writable by its owner only, or not even that: fine.
        for mode in [0o600, 0o400] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            assert!(load_or_create(&path, "KEYWAY_TEST_UNSET_VAR", false).is_ok());
        }
    }

    #[test]
    fn a_bad_file_does_not_echo_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        fs::write(&path, "hunter2").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let e = load_or_create(&path, "KEYWAY_TEST_UNSET_VAR", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("64 hexadecimal"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}
