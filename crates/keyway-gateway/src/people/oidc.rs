//! Signing a person in with an OpenID Connect provider, on the gateway's side: the
//! gateway is the provider's client. It makes the authorization URL (PKCE S256,
//! `state`, `nonce`) or starts the device authorization grant, redeems the code (or
//! polls the device code) with the client secret, and verifies the ID token. The
//! CLI only carries the browser's redirect back; neither the client secret, the
//! PKCE verifier nor any token of the provider leaves the gateway, and none is kept
//! past the sign-in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use keyway_core::config::{OidcProvider, WorkloadIssuer, WORKLOAD_ALGORITHMS};
use keyway_core::UnixMillis;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::Digest;

use super::LoginError;
use crate::identity::{IdentityError, Verifier};

/// How long a sign-in may take, from its start.
const LOGIN_TTL: Duration = Duration::from_secs(10 * 60);
/// Sign-ins under way at once, at most (each is a few hundred bytes).
const MAX_PENDING: usize = 4096;
/// Sign-ins under way from one address at once, at most: one client cannot take
/// every slot.
const MAX_PENDING_PER_SOURCE: usize = 16;
/// A discovery document is fetched again after this.
const DISCOVERY_MAX_AGE: Duration = Duration::from_secs(10 * 60);
/// Groups taken from an ID token, at most.
const MAX_GROUPS: usize = 256;

/// The provider's endpoints, from its discovery document.
#[derive(Debug, Clone)]
struct Endpoints {
    authorization: String,
    token: String,
    device: Option<String>,
}

/// A provider's endpoints, when they were fetched, and the provider's config then.
type Discovered = (Instant, Arc<Endpoints>, OidcProvider);

/// A sign-in under way.
struct Pending {
    provider: String,
    source: std::net::IpAddr,
    started: Instant,
    flow: Flow,
}

enum Flow {
    Code {
        state: String,
        nonce: String,
        verifier: SecretString,
        redirect_uri: String,
    },
    Device {
        device_code: SecretString,
        interval: Duration,
        next_poll: Instant,
    },
}

/// What the CLI is told to start a sign-in.
#[derive(Debug)]
pub enum Started {
    /// Open `url` in a browser; the redirect brings `code` and `state` back.
    Browser { login_id: String, url: String },
    /// Show the person `user_code` and `verification_uri`; poll every `interval`.
    Device {
        login_id: String,
        user_code: String,
        verification_uri: String,
        verification_uri_complete: Option<String>,
        interval: Duration,
        expires_in: u64,
    },
}

/// A person the provider vouched for.
#[derive(Debug, Clone)]
pub struct Person {
    pub provider: String,
    pub issuer: String,
    /// The user claim's value (`user:<user>` in policies).
    pub user: String,
    pub groups: Vec<String>,
}

/// The sign-ins under way, the providers' endpoints and keys.
#[derive(Default)]
pub struct Client {
    verifier: Verifier,
    endpoints: Mutex<HashMap<String, Discovered>>,
    pending: Mutex<HashMap<String, Pending>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("oidc::Client").finish_non_exhaustive()
    }
}

// === impl Client ===

impl Client {
    /// Starts a sign-in with `provider`: through the browser back to `redirect_uri`
    /// (checked by the caller: the CLI's loopback address, or the console's own
    /// callback), or with the device flow.
    pub async fn start(
        &self,
        provider: &OidcProvider,
        redirect_uri: Option<&str>,
        client_secret: Option<&SecretString>,
        source: std::net::IpAddr,
    ) -> Result<Started, LoginError> {
        self.room_for(source)?;
        let endpoints = self.endpoints(provider).await?;
        let login_id = random();
        let flow = match redirect_uri {
            Some(uri) => Flow::Code {
                state: random(),
                nonce: random(),
                verifier: SecretString::from(random()),
                redirect_uri: uri.to_owned(),
            },
            None => {
                let url = endpoints
                    .device
                    .as_deref()
                    .ok_or(LoginError::NoDeviceFlow)?;
                let scope = provider.scopes.join(" ");
                let mut form = vec![("scope", scope.as_str())];
                let basic = basic(provider, client_secret, &mut form);
                let (status, answer) = self
                    .verifier
                    .http()
                    .post_form(url, &form, basic)
                    .await
                    .map_err(LoginError::Unreachable)?;
                let text = |k: &str| answer.get(k).and_then(|v| v.as_str()).map(str::to_owned);
                let (Some(device_code), Some(user_code), Some(verification_uri)) = (
                    text("device_code"),
                    text("user_code"),
                    text("verification_uri"),
                ) else {
                    return Err(LoginError::Refused(oauth_error(status, &answer)));
                };
                // RFC 8628 §3.2: 5 seconds when the provider does not say.
                let interval = Duration::from_secs(
                    answer
                        .get("interval")
                        .and_then(|v| v.as_u64())
                        .unwrap_or(5)
                        .clamp(1, 60),
                );
                let started = Started::Device {
                    login_id: login_id.clone(),
                    user_code,
                    verification_uri,
                    verification_uri_complete: text("verification_uri_complete"),
                    interval,
                    expires_in: answer
                        .get("expires_in")
                        .and_then(|v| v.as_u64())
                        .unwrap_or(600)
                        .min(LOGIN_TTL.as_secs()),
                };
                self.keep(
                    login_id,
                    Pending {
                        provider: provider.name.clone(),
                        source,
                        started: Instant::now(),
                        flow: Flow::Device {
                            device_code: SecretString::from(device_code),
                            interval,
                            next_poll: Instant::now(),
                        },
                    },
                )?;
                return Ok(started);
            }
        };
        let Flow::Code {
            state,
            nonce,
            verifier,
            redirect_uri,
        } = &flow
        else {
            unreachable!("the browser flow was made above")
        };
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(verifier.expose_secret().as_bytes()));
        let query = serde_urlencoded::to_string([
            ("response_type", "code"),
            ("client_id", provider.client_id.as_str()),
            ("redirect_uri", redirect_uri.as_str()),
            ("scope", provider.scopes.join(" ").as_str()),
            ("state", state.as_str()),
            ("nonce", nonce.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ])
        .map_err(|e| LoginError::Unreachable(e.to_string()))?;
        let sep = if endpoints.authorization.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!("{}{sep}{query}", endpoints.authorization);
        self.keep(
            login_id.clone(),
            Pending {
                provider: provider.name.clone(),
                source,
                started: Instant::now(),
                flow,
            },
        )?;
        Ok(Started::Browser { login_id, url })
    }

    /// The provider a sign-in under way is with.
    pub fn provider_of(&self, login_id: &str) -> Option<String> {
        self.lock().get(login_id).map(|p| p.provider.clone())
    }

    /// Finishes a sign-in: redeems the browser's `code` (checking its `state`), or
    /// polls the device code once. The person, with the ID token verified at `now`.
    pub async fn finish(
        &self,
        provider: &OidcProvider,
        login_id: &str,
        code: Option<&str>,
        state: Option<&str>,
        client_secret: Option<&SecretString>,
        now: UnixMillis,
    ) -> Result<Person, LoginError> {
        let endpoints = self.endpoints(provider).await?;
        // A browser sign-in is taken out at once (a code is redeemed once, right or
        // wrong); a device sign-in stays until it is confirmed, refused or expired.
        let (nonce, form_owned) = {
            let mut pending = self.lock();
            let p = pending.get_mut(login_id).ok_or(LoginError::UnknownLogin)?;
            if p.provider != provider.name || p.started.elapsed() > LOGIN_TTL {
                pending.remove(login_id);
                return Err(LoginError::UnknownLogin);
            }
            match &mut p.flow {
                Flow::Code { .. } => {
                    let Some(Pending {
                        flow:
                            Flow::Code {
                                state: want,
                                nonce,
                                verifier,
                                redirect_uri,
                            },
                        ..
                    }) = pending.remove(login_id)
                    else {
                        unreachable!("matched a browser sign-in above")
                    };
                    let same = state.is_some_and(|s| {
                        subtle::ConstantTimeEq::ct_eq(s.as_bytes(), want.as_bytes()).into()
                    });
                    if !same {
                        return Err(LoginError::StateMismatch);
                    }
                    let code = code.ok_or(LoginError::StateMismatch)?;
                    (
                        Some(nonce),
                        vec![
                            ("grant_type", "authorization_code".to_owned()),
                            ("code", code.to_owned()),
                            ("redirect_uri", redirect_uri),
                            ("code_verifier", verifier.expose_secret().to_owned()),
                        ],
                    )
                }
                Flow::Device {
                    device_code,
                    interval,
                    next_poll,
                } => {
                    let at = Instant::now();
                    if at < *next_poll {
                        return Err(LoginError::Pending {
                            interval: *interval,
                        });
                    }
                    *next_poll = at + *interval;
                    (
                        None,
                        vec![
                            (
                                "grant_type",
                                "urn:ietf:params:oauth:grant-type:device_code".to_owned(),
                            ),
                            ("device_code", device_code.expose_secret().to_owned()),
                        ],
                    )
                }
            }
        };
        let mut form: Vec<(&str, &str)> =
            form_owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let basic = basic(provider, client_secret, &mut form);
        let answer = self
            .verifier
            .http()
            .post_form(&endpoints.token, &form, basic)
            .await;
        let (status, answer) = answer.map_err(LoginError::Unreachable)?;
        let Some(id_token) = answer.get("id_token").and_then(|v| v.as_str()) else {
            let code = oauth_error(status, &answer);
            if nonce.is_none() {
                match code.as_str() {
                    "authorization_pending" | "slow_down" => {
                        let mut pending = self.lock();
                        let Some(Pending {
                            flow:
                                Flow::Device {
                                    interval,
                                    next_poll,
                                    ..
                                },
                            ..
                        }) = pending.get_mut(login_id)
                        else {
                            return Err(LoginError::UnknownLogin);
                        };
                        if code == "slow_down" {
                            *interval += Duration::from_secs(5);
                            *next_poll = Instant::now() + *interval;
                        }
                        return Err(LoginError::Pending {
                            interval: *interval,
                        });
                    }
                    // The provider failing is not the person refusing: poll again.
                    _ if status.is_server_error() => {
                        return Err(LoginError::Unreachable(format!(
                            "the provider's token endpoint answered {status}"
                        )));
                    }
                    _ => {
                        self.lock().remove(login_id);
                    }
                }
            }
            return Err(LoginError::Refused(code));
        };
        self.lock().remove(login_id);
        self.verify(provider, id_token, nonce.as_deref(), now).await
    }

    /// Verifies an ID token from `provider`: signature with its published keys,
    /// `iss`, `aud` (the client id), times, the `nonce` of the sign-in; then reads
    /// the person and their groups.
    pub async fn verify(
        &self,
        provider: &OidcProvider,
        id_token: &str,
        nonce: Option<&str>,
        now: UnixMillis,
    ) -> Result<Person, LoginError> {
        let keyway_core::jwt::Unverified { alg, kid, .. } = keyway_core::jwt::read(id_token)
            .map_err(|_| LoginError::IdToken(IdentityError::Malformed))?;
        let issuer = as_issuer(provider);
        let (claims, _) = self
            .verifier
            .verify_signed(&issuer, &alg, kid.as_deref(), id_token, now)
            .await
            .map_err(LoginError::IdToken)?;
        if let Some(want) = nonce {
            let got = claims.get("nonce").and_then(|v| v.as_str()).unwrap_or("");
            if !bool::from(subtle::ConstantTimeEq::ct_eq(
                got.as_bytes(),
                want.as_bytes(),
            )) {
                return Err(LoginError::IdToken(IdentityError::MissingClaim(
                    "nonce (of this sign-in)".into(),
                )));
            }
        }
        let user = claims
            .get(&provider.user_claim)
            .and_then(|v| v.as_str())
            .filter(|s| {
                !s.is_empty() && s.len() <= 256 && !s.chars().any(|c| c.is_control() || c == ' ')
            })
            .ok_or_else(|| LoginError::NoUser(provider.user_claim.clone()))?;
        // An address the provider has not verified is anyone's to type in.
        if provider.user_claim == "email"
            && claims.get("email_verified").and_then(|v| v.as_bool()) != Some(true)
        {
            return Err(LoginError::EmailNotVerified);
        }
        let mut groups: Vec<String> = claims
            .get(&provider.groups_claim)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|g| g.as_str())
                    .filter(|g| !g.is_empty() && g.len() <= 256 && !g.chars().any(char::is_control))
                    .take(MAX_GROUPS)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        groups.sort();
        groups.dedup();
        Ok(Person {
            provider: provider.name.clone(),
            issuer: provider.issuer.clone(),
            user: user.to_owned(),
            groups,
        })
    }

    async fn endpoints(&self, provider: &OidcProvider) -> Result<Arc<Endpoints>, LoginError> {
        {
            let cache = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, e, for_provider)) = cache.get(&provider.name) {
                if at.elapsed() < DISCOVERY_MAX_AGE && for_provider == provider {
                    return Ok(e.clone());
                }
            }
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            provider.issuer.trim_end_matches('/')
        );
        let doc = self
            .verifier
            .http()
            .get_json(&url)
            .await
            .map_err(LoginError::Unreachable)?;
        let endpoint = |k: &str| -> Result<Option<String>, LoginError> {
            match doc.get(k).and_then(|v| v.as_str()) {
                None => Ok(None),
                Some(u) if keyway_core::config::https_or_loopback(u) => Ok(Some(u.to_owned())),
                Some(_) => Err(LoginError::Unreachable(format!(
                    "the discovery document's {k} is not https"
                ))),
            }
        };
        let missing =
            |k: &str| LoginError::Unreachable(format!("the discovery document has no {k}"));
        let e = Arc::new(Endpoints {
            authorization: endpoint("authorization_endpoint")?
                .ok_or_else(|| missing("authorization_endpoint"))?,
            token: endpoint("token_endpoint")?.ok_or_else(|| missing("token_endpoint"))?,
            device: endpoint("device_authorization_endpoint")?,
        });
        self.endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                provider.name.clone(),
                (Instant::now(), e.clone(), provider.clone()),
            );
        Ok(e)
    }

    /// Whether one more sign-in may start from `source`: old ones are dropped first.
    fn room_for(&self, source: std::net::IpAddr) -> Result<(), LoginError> {
        let mut pending = self.lock();
        pending.retain(|_, p| p.started.elapsed() <= LOGIN_TTL);
        let mine = pending.values().filter(|p| p.source == source).count();
        if pending.len() >= MAX_PENDING || mine >= MAX_PENDING_PER_SOURCE {
            return Err(LoginError::Busy);
        }
        Ok(())
    }

    fn keep(&self, id: String, p: Pending) -> Result<(), LoginError> {
        self.room_for(p.source)?;
        self.lock().insert(id, p);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The provider as an issuer of JWTs whose audience is Keyway's client id. Its keys
/// are cached apart from a workload issuer of the same name.
fn as_issuer(p: &OidcProvider) -> WorkloadIssuer {
    WorkloadIssuer {
        name: format!("oidc:{}", p.name),
        issuer: p.issuer.clone(),
        audience: p.client_id.clone(),
        subject_claim: "sub".into(),
        jwks_url: None,
        algorithms: WORKLOAD_ALGORITHMS.iter().map(|a| a.to_string()).collect(),
    }
}

/// Client authentication: HTTP Basic with the secret, or the client id in the form
/// for a public client.
fn basic<'a>(
    p: &'a OidcProvider,
    secret: Option<&'a SecretString>,
    form: &mut Vec<(&'a str, &'a str)>,
) -> Option<(&'a str, &'a str)> {
    match secret {
        Some(s) => Some((p.client_id.as_str(), s.expose_secret())),
        None => {
            form.push(("client_id", p.client_id.as_str()));
            None
        }
    }
}

/// An OAuth error answer's code (bounded, printable), or the status.
fn oauth_error(status: http::StatusCode, answer: &serde_json::Value) -> String {
    answer
        .get("error")
        .and_then(|v| v.as_str())
        .filter(|e| e.len() <= 64 && e.bytes().all(|c| c.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("status {}", status.as_u16()))
}

/// 256 random bits, base64url.
fn random() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// `http://127.0.0.1:<port>/…` or `http://[::1]:<port>/…` (RFC 8252 §7.3): the
/// browser brings the code back to this machine only.
pub(super) fn loopback_redirect(uri: &str) -> bool {
    let Ok(u) = uri.parse::<http::Uri>() else {
        return false;
    };
    u.scheme_str() == Some("http")
        && matches!(u.host(), Some("127.0.0.1") | Some("[::1]"))
        && u.port_u16().is_some()
        && !u.authority().is_some_and(|a| a.as_str().contains('@'))
        && uri.len() <= 256
}

#[cfg(test)]
mod tests;
