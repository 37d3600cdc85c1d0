//! Workload identity: a JWT that a workload's platform signed for it (a CI job's
//! OIDC token, a Kubernetes service-account token), verified against its issuer's
//! published keys, stands in for a stored secret at the token endpoint.
//!
//! Verification, in order: the header's algorithm is on the issuer's allow-list
//! (public-key signatures only: never `none`, never HMAC, whose key a JWKS would
//! publish); the unverified `iss` picks the configured issuer; the `kid` picks one of
//! its keys (fetched, cached, fetched again on an unknown `kid`); the signature;
//! `iss`, `aud`, `exp`, `nbf`, `iat` with a minute's leeway; the subject claim. A JWT
//! is taken once, when a policy gives it something: its `jti` (or the hash of its
//! signed part) is spent in the store with the token it buys, in one transaction,
//! and kept until the JWT expires.
//!
//! # Layout
//!
//! - `keys`: the issuers' key sets, fetched (discovery or `jwks_url`) within bounds
//!   of size and time, and cached.

use jsonwebtoken::{Algorithm, Validation};
use keyway_core::config::{Config, WorkloadIssuer};
use keyway_core::UnixMillis;
use sha2::Digest;

mod keys;

pub use keys::KeyCache;

/// Leeway on `exp`, `nbf` and `iat`, for clocks a little apart.
const LEEWAY_SECS: u64 = 60;

/// A workload, as its verified JWT names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadIdentity {
    /// The issuer's name in the config (`[identity.workload.NAME]`).
    pub provider: String,
    /// `iss`.
    pub issuer: String,
    /// As policies name it: `workload:<provider>:<subject claim>`.
    pub subject: String,
    /// What is spent against a replay ([`WorkloadIdentity::spend`]): a hash of the
    /// issuer and the `jti`, or of the signed part (an ECDSA signature can be
    /// rewritten and still verify, so never of the signature).
    replay: String,
    /// `exp` (Unix seconds).
    exp: u64,
}

// === impl WorkloadIdentity ===

impl WorkloadIdentity {
    /// The JWT as a one-use value: kept until it expires (plus the leeway), so the
    /// same JWT is refused until then, by every gateway on the store, across restarts.
    pub fn spend(&self, now: UnixMillis) -> keyway_store::Spend {
        // Accepted while `now` (whole seconds) is at most `exp` plus the leeway: kept
        // through the end of that last second.
        let until = i64::try_from(self.exp.saturating_add(LEEWAY_SECS + 1))
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000);
        keyway_store::Spend {
            key: format!("jwt:{}", self.replay),
            until,
            now,
        }
    }
}

/// Why a JWT was refused; `reason()` goes to the audit log, never to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("not a JWT")]
    Malformed,
    #[error("its signature algorithm is not allowed")]
    Algorithm,
    #[error("no configured issuer has its `iss`")]
    UnknownIssuer,
    #[error("the issuer has no key with its `kid`")]
    UnknownKey,
    #[error("the signature does not verify")]
    Signature,
    #[error("it is for another audience")]
    Audience,
    #[error("it has expired")]
    Expired,
    #[error("it is not valid yet")]
    NotYetValid,
    #[error("it was issued in the future")]
    IssuedInFuture,
    #[error("it lacks a claim it needs: {0}")]
    MissingClaim(String),
    #[error("it was used before")]
    Replayed,
    #[error("the issuer's keys cannot be fetched: {0}")]
    IssuerUnreachable(String),
}

// === impl IdentityError ===

impl IdentityError {
    /// The audit log's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed_jwt",
            Self::Algorithm => "algorithm_not_allowed",
            Self::UnknownIssuer => "unknown_issuer",
            Self::UnknownKey => "unknown_key",
            Self::Signature => "bad_signature",
            Self::Audience => "wrong_audience",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::IssuedInFuture => "issued_in_future",
            Self::MissingClaim(_) => "missing_claim",
            Self::Replayed => "replayed",
            Self::IssuerUnreachable(_) => "issuer_unreachable",
        }
    }
}

/// Verifies workload JWTs against the issuers of the config in force.
#[derive(Debug, Default)]
pub struct Verifier {
    keys: KeyCache,
}

// === impl Verifier ===

impl Verifier {
    /// Verifies `jwt` at `now` against `config`'s issuers. Nothing is kept: the
    /// caller spends the identity ([`WorkloadIdentity::spend`]) with what it buys.
    pub async fn verify(
        &self,
        config: &Config,
        jwt: &str,
        now: UnixMillis,
    ) -> Result<WorkloadIdentity, IdentityError> {
        let keyway_core::jwt::Unverified { alg, kid, claims } =
            keyway_core::jwt::read(jwt).map_err(|_| IdentityError::Malformed)?;
        // Unverified, only to pick the issuer whose keys verify it.
        let iss = claims
            .get("iss")
            .and_then(|v| v.as_str())
            .ok_or_else(|| IdentityError::MissingClaim("iss".into()))?;
        let issuer = config
            .identity
            .workload
            .values()
            .find(|i| i.issuer == iss)
            .ok_or(IdentityError::UnknownIssuer)?;
        let (claims, exp) = self
            .verify_signed(issuer, &alg, kid.as_deref(), jwt, now)
            .await?;
        let sub = claims
            .get(&issuer.subject_claim)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty() && s.len() <= 512 && !s.chars().any(char::is_control))
            .ok_or_else(|| IdentityError::MissingClaim(issuer.subject_claim.clone()))?;
        // By the issuer's URL, not its name in the config: renaming the entry does not
        // make a spent JWT new.
        let mut h = sha2::Sha256::new();
        h.update(issuer.issuer.as_bytes());
        match claims.get("jti").and_then(|v| v.as_str()) {
            Some(jti) => {
                h.update(b"\0jti\0");
                h.update(jti.as_bytes());
            }
            None => {
                let signed = jwt.rsplit_once('.').map_or(jwt, |(signed, _)| signed);
                h.update(b"\0signed\0");
                h.update(signed.as_bytes());
            }
        }
        Ok(WorkloadIdentity {
            provider: issuer.name.clone(),
            issuer: issuer.issuer.clone(),
            subject: format!("workload:{}:{sub}", issuer.name),
            replay: hex::encode(h.finalize()),
            exp,
        })
    }

    /// Verifies a JWT `issuer` signed (its header's `alg` and `kid` given): the
    /// algorithm is allowed, the signature verifies with the issuer's key, `iss` and
    /// `aud` are the issuer's, and `exp`, `nbf`, `iat` hold at `now` (the gateway's
    /// clock) within the leeway. Returns the claims and `exp`.
    pub async fn verify_signed(
        &self,
        issuer: &WorkloadIssuer,
        alg: &str,
        kid: Option<&str>,
        jwt: &str,
        now: UnixMillis,
    ) -> Result<(serde_json::Map<String, serde_json::Value>, u64), IdentityError> {
        if !issuer.algorithms.iter().any(|a| a == alg) {
            return Err(IdentityError::Algorithm);
        }
        let alg: Algorithm = alg.parse().map_err(|_| IdentityError::Algorithm)?;
        let key = self.keys.key(issuer, kid, alg).await?;
        let claims = check(jwt, issuer, alg, &key)?;
        // Times against the gateway's clock, as every other expiry is.
        let now_s = u64::try_from(now / 1000).unwrap_or(0);
        // A time is whole seconds since the epoch; present in another form, the JWT is
        // refused rather than the check skipped.
        let time = |name: &str| match claims.get(name) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or(IdentityError::Malformed),
        };
        let exp = time("exp")?.ok_or_else(|| IdentityError::MissingClaim("exp".into()))?;
        if now_s > exp.saturating_add(LEEWAY_SECS) {
            return Err(IdentityError::Expired);
        }
        if time("nbf")?.is_some_and(|nbf| nbf > now_s + LEEWAY_SECS) {
            return Err(IdentityError::NotYetValid);
        }
        if time("iat")?.is_some_and(|iat| iat > now_s + LEEWAY_SECS) {
            return Err(IdentityError::IssuedInFuture);
        }
        Ok((claims, exp))
    }

    /// The HTTP client of the identity providers (bounded in size and time).
    pub fn http(&self) -> &KeyCache {
        &self.keys
    }
}

/// Verifies the signature and the registered claims; returns the claims.
fn check(
    jwt: &str,
    issuer: &WorkloadIssuer,
    alg: Algorithm,
    key: &jsonwebtoken::DecodingKey,
) -> Result<serde_json::Map<String, serde_json::Value>, IdentityError> {
    use jsonwebtoken::errors::ErrorKind;
    let mut v = Validation::new(alg);
    // `exp`, `nbf` and `iat` are checked by the caller, against the gateway's clock.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.set_issuer(&[&issuer.issuer]);
    v.set_audience(&[&issuer.audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(jwt, key, &v) {
        Ok(data) => Ok(data.claims),
        Err(e) => Err(match e.kind() {
            ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => IdentityError::Signature,
            ErrorKind::InvalidAudience => IdentityError::Audience,
            ErrorKind::InvalidIssuer => IdentityError::UnknownIssuer,
            ErrorKind::MissingRequiredClaim(c) => IdentityError::MissingClaim(c.clone()),
            _ => IdentityError::Malformed,
        }),
    }
}

#[cfg(test)]
mod tests;
