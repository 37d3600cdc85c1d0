//! Upstream credentials: sealed at rest under the master key, opened once into
//! header values marked sensitive, injected by the proxies, never shown. The proxies
//! read them; the admin API sets them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use http::HeaderValue;
use keyway_core::config::{valid_secret_name, Config, ServiceKind};
use keyway_core::EventKind;
use keyway_store::{Sealer, Store, StoreError};
use secrecy::{ExposeSecret, SecretString};

use crate::audit::AuditSink;

/// The read side of the upstream credentials, what a proxy injects: it cannot set
/// one.
#[derive(Clone)]
pub struct SecretHeaders(Arc<Secrets>);

/// The opened upstream credentials, and the way to set one.
pub struct Secrets {
    sealer: Sealer,
    store: Arc<dyn Store>,
    /// By name, as header values marked sensitive.
    map: RwLock<HashMap<String, HeaderValue>>,
    audit: AuditSink,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("a secret name is 1 to 64 characters of a-z, A-Z, 0-9, `.`, `-` and `_`")]
    BadName,
    #[error("the value must be 1 to 8192 visible characters (it is sent as a header value)")]
    BadValue,
    #[error(transparent)]
    Store(#[from] StoreError),
}

// === impl SecretHeaders ===

impl SecretHeaders {
    pub fn new(secrets: Arc<Secrets>) -> Self {
        Self(secrets)
    }

    /// The opened upstream credential called `name`.
    pub fn header(&self, name: &str) -> Option<HeaderValue> {
        self.0.header(name)
    }
}

// === impl Secrets ===

impl Secrets {
    /// Opens every stored credential; one that cannot be opened is logged and left
    /// out (its service then answers 503 until it is set again).
    pub async fn load(
        sealer: Sealer,
        store: Arc<dyn Store>,
        audit: AuditSink,
    ) -> Result<Self, StoreError> {
        let mut map = HashMap::new();
        for (name, sealed) in store.secrets().await? {
            match sealer.open(&name, &sealed) {
                Ok(v) => {
                    if let Some(h) = header_value(&v) {
                        map.insert(name, h);
                    }
                }
                Err(e) => tracing::error!(error = %e, "an upstream credential could not be opened"),
            }
        }
        Ok(Self {
            sealer,
            store,
            map: RwLock::new(map),
            audit,
        })
    }

    /// Seals and stores an upstream credential, uses it from the next request on, and
    /// audits the change (the name, never the value).
    pub async fn set(&self, name: &str, value: &SecretString, by: &str) -> Result<(), SecretError> {
        if !valid_secret_name(name) {
            return Err(SecretError::BadName);
        }
        let header = header_value(value).ok_or(SecretError::BadValue)?;
        let sealed = self.sealer.seal(name, value);
        let mut ev = self.audit.event(EventKind::SecretSet);
        ev.detail = serde_json::json!({ "name": name, "by": by });
        let events = [ev];
        self.store
            .put_secret(name, &sealed, events[0].at, &events)
            .await?;
        self.write().insert(name.to_owned(), header);
        self.audit.committed(&events);
        Ok(())
    }

    /// Reads the secret `name` again from the store (another replica set it).
    pub async fn follow(&self, name: &str) -> Result<(), StoreError> {
        let all = self.store.secrets().await?;
        let Some((_, sealed)) = all.iter().find(|(n, _)| n == name) else {
            return Ok(());
        };
        match self.sealer.open(name, sealed) {
            Ok(v) => {
                if let Some(h) = header_value(&v) {
                    self.write().insert(name.to_owned(), h);
                }
            }
            Err(e) => tracing::error!(error = %e, "an upstream credential could not be opened"),
        }
        Ok(())
    }

    /// The opened upstream credential called `name`.
    pub fn header(&self, name: &str) -> Option<HeaderValue> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Names of the secrets that are set.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<_> = self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Warns about upstream credentials (and identity providers' client secrets) the
    /// config names but nobody has set.
    pub fn warn_missing(&self, config: &Config) {
        for p in config.identity.oidc.values() {
            if let Some(name) = &p.client_secret {
                if self.header(name).is_none() {
                    tracing::warn!(
                        provider = %p.name,
                        secret = %name,
                        "the identity provider's client secret is not set; sign-ins will fail \
                         until `keyway secret set {name}` is run"
                    );
                }
            }
        }
        for svc in config.services.values() {
            let ServiceKind::Http(h) = &svc.kind else {
                continue;
            };
            if let Some(auth) = &h.upstream_auth {
                if self.header(&auth.secret).is_none() {
                    tracing::warn!(
                        service = %svc.name,
                        secret = %auth.secret,
                        "upstream credential is not set; requests will be refused with 503 until \
                         `keyway secret set {}` is run",
                        auth.secret
                    );
                }
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, HeaderValue>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn header_value(v: &SecretString) -> Option<HeaderValue> {
    let s = v.expose_secret();
    if s.is_empty() || s.len() > 8192 {
        return None;
    }
    let mut h = HeaderValue::from_str(s).ok()?;
    h.set_sensitive(true);
    Some(h)
}
