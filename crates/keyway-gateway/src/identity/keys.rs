//! The issuers' key sets: fetched from `jwks_url`, or from the `jwks_uri` of the
//! issuer's discovery document; bounded in size and time; cached, and fetched again
//! when a JWT names a key the cache does not have (the issuer rotated its keys) or
//! the set is old.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use keyway_core::config::WorkloadIssuer;

use super::IdentityError;

/// A discovery document or a key set, at most.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Keys of one issuer kept at most.
const MAX_KEYS: usize = 64;
/// Each fetch, connection to last byte (discovery and key set each, and both
/// together).
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
    /// One slot per issuer, each behind its own lock: an issuer that is slow or down
    /// holds up only its own JWTs, and only one fetch of it is in flight.
    slots: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    client: OnceLock<Result<HttpsClient, String>>,
}

/// One issuer's keys, and its last fetch.
#[derive(Default)]
struct Slot {
    set: Option<KeySet>,
    /// The last fetch tried, whether it worked or not: the next waits
    /// [`MIN_REFETCH`] after it (real time, not the gateway's clock).
    tried_at: Option<Instant>,
    /// Why the last fetch failed, while it is the last one.
    failed: Option<String>,
}

struct KeySet {
    /// The issuer's config the set was fetched for: a changed one fetches anew.
    issuer: WorkloadIssuer,
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
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(issuer.name.clone())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        let now = Instant::now();
        if slot.set.as_ref().is_some_and(|s| s.issuer != *issuer) {
            *slot = Slot::default();
        }
        let fetched_at = slot.set.as_ref().map(|s| s.fetched_at);
        let found = slot
            .set
            .as_ref()
            .and_then(|s| pick(&s.keys, kid, alg).cloned());
        let within = |t: Option<Instant>, limit| t.is_some_and(|t| now.duration_since(t) < limit);
        if let (true, Some(k)) = (within(fetched_at, MAX_AGE), &found) {
            return Ok(k.clone());
        }
        let stale_ok = |found: Option<DecodingKey>| found.filter(|_| within(fetched_at, STALE_OK));
        // Missing, old, or without this `kid`: fetch, unless one was just tried.
        if within(slot.tried_at, MIN_REFETCH) {
            return match (stale_ok(found), &slot.failed) {
                (Some(k), _) => Ok(k),
                (None, Some(e)) => Err(IdentityError::IssuerUnreachable(e.clone())),
                (None, None) => Err(IdentityError::UnknownKey),
            };
        }
        slot.tried_at = Some(now);
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, self.fetch(issuer))
            .await
            .unwrap_or_else(|_| Err(format!("no key set within {}s", FETCH_TIMEOUT.as_secs())));
        match fetched {
            Ok(keys) => {
                let k = pick(&keys, kid, alg).cloned();
                slot.set = Some(KeySet {
                    issuer: issuer.clone(),
                    fetched_at: now,
                    keys,
                });
                slot.failed = None;
                k.ok_or(IdentityError::UnknownKey)
            }
            Err(e) => {
                tracing::warn!(issuer = %issuer.name, error = %e, "could not fetch an identity issuer's keys");
                slot.failed = Some(e.clone());
                stale_ok(found).ok_or(IdentityError::IssuerUnreachable(e))
            }
        }
    }

    fn client(&self) -> Result<&HttpsClient, String> {
        self.client
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
            .map_err(Clone::clone)
    }

    /// GETs a JSON document from an identity provider, within the bounds.
    pub async fn get_json(&self, url: &str) -> Result<serde_json::Value, String> {
        get_json(self.client()?, url).await
    }

    /// POSTs a form to an identity provider (its token or device endpoint), with
    /// HTTP Basic client authentication when `basic` is given; within the bounds.
    /// Returns the status and the JSON answer (an OAuth error is JSON too).
    pub async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> Result<(http::StatusCode, serde_json::Value), String> {
        use base64::Engine;
        let client = self.client()?;
        let body = serde_urlencoded::to_string(form).map_err(|e| e.to_string())?;
        let mut req = http::Request::post(url)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        if let Some((id, secret)) = basic {
            // RFC 6749 §2.3.1: each form-encoded, then joined and base64-encoded.
            let enc = |v: &str| serde_urlencoded::to_string([("", v)]).unwrap_or_default();
            let pair = format!("{}:{}", &enc(id)[1..], &enc(secret)[1..]);
            let mut v = http::HeaderValue::from_str(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            ))
            .map_err(|_| "the client secret is not a header value".to_owned())?;
            v.set_sensitive(true);
            req = req.header(http::header::AUTHORIZATION, v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| format!("`{url}` is not a URL"))?;
        send(client, url, req).await
    }

    async fn fetch(&self, issuer: &WorkloadIssuer) -> Result<Vec<Key>, String> {
        let client = self.client()?;
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
                if !keyway_core::config::https_or_loopback(uri) {
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
                // Nor a key published for encryption.
                if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_))
                    || jwk.common.public_key_use == Some(PublicKeyUse::Encryption)
                {
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

/// GETs a JSON document, within [`FETCH_TIMEOUT`] and [`MAX_DOCUMENT_BYTES`].
async fn get_json(client: &HttpsClient, url: &str) -> Result<serde_json::Value, String> {
    let req = http::Request::get(url)
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|_| format!("`{url}` is not a URL"))?;
    match send(client, url, req).await? {
        (status, _) if !status.is_success() => Err(format!("{url} answered {status}")),
        (_, json) => Ok(json),
    }
}

/// Sends `req` to `url`: the status and the JSON answer, within [`FETCH_TIMEOUT`]
/// and [`MAX_DOCUMENT_BYTES`].
async fn send(
    client: &HttpsClient,
    url: &str,
    req: http::Request<Full<Bytes>>,
) -> Result<(http::StatusCode, serde_json::Value), String> {
    let fetch = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(|_| format!("{url}: the answer is over {MAX_DOCUMENT_BYTES} bytes"))?
            .to_bytes();
        let json = serde_json::from_slice(&body)
            .map_err(|_| format!("{url} answered {status}, not JSON"))?;
        Ok((status, json))
    };
    tokio::time::timeout(FETCH_TIMEOUT, fetch)
        .await
        .map_err(|_| format!("{url}: no answer within {}s", FETCH_TIMEOUT.as_secs()))?
}
