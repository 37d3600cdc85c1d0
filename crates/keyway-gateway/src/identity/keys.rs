//! The issuers' key sets: fetched from `jwks_url`, or from the `jwks_uri` of the
//! issuer's discovery document; bounded in size and time; cached, and fetched again
//! when a JWT names a key the cache does not have (the issuer rotated its keys) or
//! the set is old.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use keyway_core::config::WorkloadIssuer;

use super::IdentityError;

/// A discovery document or a key set, at most.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Keys of one issuer kept at most.
const MAX_KEYS: usize = 64;
/// Each fetch, connection to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A set older than this is fetched again before use.
const MAX_AGE: Duration = Duration::from_secs(10 * 60);
/// An unknown `kid` fetches again at most this often (a flood of made-up `kid`s
/// must not become a flood of fetches).
const MIN_REFETCH: Duration = Duration::from_secs(1);
/// When a fetch fails, a set this young is still used.
const STALE_OK: Duration = Duration::from_secs(60 * 60);

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Key sets by issuer name.
#[derive(Default)]
pub struct KeyCache {
    /// Held across a fetch: concurrent misses fetch once.
    sets: tokio::sync::Mutex<HashMap<String, KeySet>>,
    client: OnceLock<Result<HttpsClient, String>>,
}

struct KeySet {
    /// The issuer's config the set was fetched for: a changed one fetches anew.
    issuer: WorkloadIssuer,
    /// Real time, not the gateway's clock: it paces fetches over the network.
    fetched_at: Instant,
    keys: Vec<Key>,
}

struct Key {
    kid: Option<String>,
    /// The JWK's own `alg`, when it names one.
    alg: Option<String>,
    key: DecodingKey,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").finish_non_exhaustive()
    }
}

// === impl KeyCache ===

impl KeyCache {
    /// The issuer's key for a JWT with `kid` and `alg`.
    pub(super) async fn key(
        &self,
        issuer: &WorkloadIssuer,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<DecodingKey, IdentityError> {
        let now = Instant::now();
        let mut sets = self.sets.lock().await;
        let (cached_at, found) = match sets.get(&issuer.name).filter(|s| s.issuer == *issuer) {
            Some(s) => (Some(s.fetched_at), pick(&s.keys, kid, alg).cloned()),
            None => (None, None),
        };
        let age = |limit| cached_at.is_some_and(|t: Instant| now.duration_since(t) < limit);
        if let (true, Some(k)) = (age(MAX_AGE), &found) {
            return Ok(k.clone());
        }
        // Missing, old, or without this `kid`: fetch, unless just fetched.
        if age(MIN_REFETCH) {
            return found.ok_or(IdentityError::UnknownKey);
        }
        match self.fetch(issuer).await {
            Ok(keys) => {
                let k = pick(&keys, kid, alg).cloned();
                sets.insert(
                    issuer.name.clone(),
                    KeySet {
                        issuer: issuer.clone(),
                        fetched_at: now,
                        keys,
                    },
                );
                k.ok_or(IdentityError::UnknownKey)
            }
            Err(e) => {
                tracing::warn!(issuer = %issuer.name, error = %e, "could not fetch an identity issuer's keys");
                match found {
                    Some(k) if age(STALE_OK) => Ok(k),
                    _ => Err(IdentityError::IssuerUnreachable(e)),
                }
            }
        }
    }

    async fn fetch(&self, issuer: &WorkloadIssuer) -> Result<Vec<Key>, String> {
        let client = self
            .client
            .get_or_init(|| {
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
                    .map(|b| {
                        let https = b.https_or_http().enable_http1().build();
                        Client::builder(TokioExecutor::new()).build(https)
                    })
                    .map_err(|e| format!("no trusted roots: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)?;
        let url = match &issuer.jwks_url {
            Some(u) => u.clone(),
            None => {
                let doc = get_json(
                    client,
                    &format!(
                        "{}/.well-known/openid-configuration",
                        issuer.issuer.trim_end_matches('/')
                    ),
                )
                .await?;
                let uri = doc
                    .get("jwks_uri")
                    .and_then(|u| u.as_str())
                    .ok_or("the discovery document has no jwks_uri")?;
                if !safe_url(uri) {
                    return Err("the discovery document's jwks_uri is not https".into());
                }
                uri.to_owned()
            }
        };
        let set = get_json(client, &url).await?;
        let listed = set
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or("the key set has no `keys`")?;
        // Each key alone: one of a type this does not know leaves the others usable.
        let keys: Vec<Key> = listed
            .iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .filter_map(|jwk| {
                // Never a shared secret: a published HMAC key would let anyone sign.
                if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                    return None;
                }
                let key = DecodingKey::from_jwk(&jwk).ok()?;
                Some(Key {
                    kid: jwk.common.key_id.clone(),
                    alg: jwk.common.key_algorithm.map(|a| a.to_string()),
                    key,
                })
            })
            .take(MAX_KEYS)
            .collect();
        if keys.is_empty() {
            return Err("the key set holds no usable public key".into());
        }
        Ok(keys)
    }
}

/// The key a JWT names: by `kid` (a JWT without one takes the only key there is),
/// and never one whose own `alg` differs.
fn pick<'a>(keys: &'a [Key], kid: Option<&str>, alg: Algorithm) -> Option<&'a DecodingKey> {
    let alg = format!("{alg:?}");
    let fits = |k: &&Key| k.alg.as_deref().is_none_or(|a| a == alg);
    match kid {
        Some(kid) => keys
            .iter()
            .filter(fits)
            .find(|k| k.kid.as_deref() == Some(kid)),
        None if keys.len() == 1 => keys.iter().find(fits),
        None => None,
    }
    .map(|k| &k.key)
}

/// HTTPS, or HTTP on loopback.
fn safe_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str() {
        Some("https") => !host.is_empty(),
        Some("http") => keyway_core::config::is_loopback_host(host),
        _ => false,
    }
}

/// GETs a JSON document, within [`FETCH_TIMEOUT`] and [`MAX_DOCUMENT_BYTES`].
async fn get_json(client: &HttpsClient, url: &str) -> Result<serde_json::Value, String> {
    let req = http::Request::get(url)
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|_| format!("`{url}` is not a URL"))?;
    let fetch = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url} answered {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(|_| format!("{url}: the document is over {MAX_DOCUMENT_BYTES} bytes"))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|_| format!("{url}: not JSON"))
    };
    tokio::time::timeout(FETCH_TIMEOUT, fetch)
        .await
        .map_err(|_| format!("{url}: no answer within {}s", FETCH_TIMEOUT.as_secs()))?
}
