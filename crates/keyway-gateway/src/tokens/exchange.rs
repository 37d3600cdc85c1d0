//! Trading and renewing: a client credential exchanged for an access token, and a
//! token rotated into a successor with an overlap.

use std::time::Duration;

use keyway_core::clock::{duration_ms, format_ms};
use keyway_core::config::Config;
use keyway_core::{EventKind, IssuedToken, TokenKind, UnixMillis};
use keyway_store::{Origin, StoreError, TokenRecord};

use super::{Lineage, Tokens, DEFAULT_TTL};
use crate::identity::IdentityError;
use crate::index::Entry;

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("not a client credential")]
    NotACredential,
    #[error("the credential may not be used from this address")]
    Source,
    #[error("the credential does not name this service")]
    Service,
    #[error("the credential is bound to a client certificate this connection did not present")]
    Certificate,
    #[error("the credential is older than the policy's credential_max_age")]
    TooOld,
    #[error("the credential was revoked")]
    Revoked,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a workload's JWT got no token.
#[derive(Debug, thiserror::Error)]
pub enum IdentityExchangeError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The identity is verified, but no policy gives it the service.
    #[error("no policy gives {subject} the service `{service}`")]
    NoPolicy { subject: String, service: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("no token with that id")]
    Unknown,
    #[error("only access tokens and client credentials are rotated this way")]
    NotAccess,
    #[error("the token is revoked or expired; issue a new one instead")]
    NotLive,
    #[error("the token's service is no longer configured")]
    ServiceGone,
    #[error("the policy the token came through no longer gives it; obtain a new one")]
    PolicyGone,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether the policy a token came through still gives it as it is: the policy names
/// its subject (for a person: their user or a group they had at sign-in), grants at
/// least its grant, and its identity provider is still configured as it was. A
/// person's session needs only its provider. A token from no policy is judged
/// elsewhere.
pub(crate) fn allowed_by_policy(config: &Config, record: &TokenRecord) -> bool {
    let Some(origin) = &record.origin else {
        return true;
    };
    let (provider, subjects) = match origin.subject.strip_prefix("user:") {
        // A person's: the provider still reads ID tokens the way theirs was read.
        Some(user) => (
            config
                .identity
                .oidc
                .get(&origin.provider)
                .filter(|o| origin.read_as.as_deref() == Some(o.read_as().as_str()))
                .map(|o| &o.issuer),
            keyway_core::config::person_subjects(user, &origin.groups),
        ),
        None => (
            config
                .identity
                .workload
                .get(&origin.provider)
                .map(|w| &w.issuer),
            vec![origin.subject.clone()],
        ),
    };
    if provider != Some(&origin.issuer) {
        return false;
    }
    if record.kind == TokenKind::Session {
        return true;
    }
    config.policies.get(&origin.policy).is_some_and(|p| {
        p.names_any(&subjects)
            && record
                .grant
                .as_ref()
                .is_some_and(|g| p.grant(&g.service).is_some_and(|wider| g.within(wider)))
    })
}

// === impl Tokens ===

impl Tokens {
    /// Trades a client credential (already authenticated) for an access token to one
    /// of its services: 15 minutes by default, never above the service's maximum.
    pub async fn exchange(
        &self,
        credential: &Entry,
        service: &str,
        ttl: Option<Duration>,
        source: std::net::IpAddr,
        presented_cert: Option<&str>,
    ) -> Result<(IssuedToken, TokenRecord), ExchangeError> {
        let scope = credential
            .record
            .scope
            .as_ref()
            .ok_or(ExchangeError::NotACredential)?;
        if !scope.allows_source(source) {
            return Err(ExchangeError::Source);
        }
        // A bound credential works only with its certificate (the token endpoint's
        // authenticate step checks it first; this holds for any other caller); the
        // access token is bound to the certificate of the exchange (RFC 8705), whether
        // or not the credential is.
        if let Some(bound) = &credential.record.cert_thumbprint {
            if !presented_cert.is_some_and(|p| crate::authz::same_thumbprint(p, bound)) {
                return Err(ExchangeError::Certificate);
            }
        }
        let binding = presented_cert.map(str::to_owned);
        let grant = scope
            .grant(service)
            .cloned()
            .ok_or(ExchangeError::Service)?;
        let config = self.config();
        let svc = config.service(service).ok_or(ExchangeError::Service)?;
        // The policy's maximum age holds even for credentials issued under a longer one.
        let now = self.now();
        let policy_end = credential
            .record
            .created_at
            .saturating_add(duration_ms(config.credential_max_age));
        if now >= policy_end {
            return Err(ExchangeError::TooOld);
        }
        // Never longer than the service allows, nor than the credential lives.
        let left = u64::try_from(credential.expires_at().min(policy_end) - now).unwrap_or(0);
        let ttl = ttl
            .unwrap_or(DEFAULT_TTL)
            .min(config.max_ttl_of(svc))
            .min(Duration::from_millis(left));
        let (token, record) = self
            .mint(
                &credential.record.principal,
                grant,
                ttl,
                Lineage {
                    parent_id: Some(credential.id().to_owned()),
                    cert_thumbprint: binding,
                    ..Lineage::default()
                },
                "token_exchange",
            )
            .await?;
        // Revoked while we minted: the revocation's cascade may have missed this one.
        if credential.revoked() {
            self.revoke(&record.id, "gateway", Some("credential_revoked"))
                .await?;
            return Err(ExchangeError::Revoked);
        }
        Ok((token, record))
    }

    /// Trades a workload's JWT for an access token to `service`, as a policy allows:
    /// verified against its issuer's keys and taken once; the token has the policy's
    /// grant, lives at most the policy's and the service's `max_ttl` (15 minutes when
    /// none is asked), and records the policy and the identity it came from.
    pub async fn exchange_identity(
        &self,
        jwt: &str,
        service: &str,
        ttl: Option<Duration>,
    ) -> Result<(IssuedToken, TokenRecord), IdentityExchangeError> {
        let config = self.config();
        let who = self.workloads.verify(&config, jwt, self.now()).await?;
        let no_policy = || IdentityExchangeError::NoPolicy {
            subject: who.subject.clone(),
            service: service.chars().take(64).collect(),
        };
        let (policy, grant) =
            keyway_core::config::policy_for(&config.policies, &who.subject, service)
                .ok_or_else(no_policy)?;
        let svc = config.service(service).ok_or_else(no_policy)?;
        let ttl = ttl
            .unwrap_or(DEFAULT_TTL)
            .min(policy.max_ttl)
            .min(config.max_ttl_of(svc));
        // The JWT is spent with the token it buys, in one transaction, and only now
        // that a policy gives it something: one refused by policy is not used up,
        // nor one whose token the store failed to write.
        let lineage = Lineage {
            origin: Some(Origin {
                policy: policy.name.clone(),
                provider: who.provider.clone(),
                issuer: who.issuer.clone(),
                subject: who.subject.clone(),
                ..Origin::default()
            }),
            spend: Some(who.spend(self.now())),
            ..Lineage::default()
        };
        let by = format!("policy:{}", policy.name);
        let (token, record) = match self
            .mint(&who.subject, grant.clone(), ttl, lineage, &by)
            .await
        {
            Ok(x) => x,
            Err(StoreError::Spent) => return Err(IdentityError::Replayed.into()),
            Err(e) => return Err(e.into()),
        };
        // The config may have changed while the issuer's keys were fetched, after
        // the reload ended what the old policy allowed: judged again by the config
        // in force now.
        let now_config = self.config();
        if !allowed_by_policy(&now_config, &record) {
            self.revoke(&record.id, "gateway", Some("policy_changed"))
                .await?;
            return Err(no_policy());
        }
        let mut record = record;
        if let Some(e) = self.index.get(&record.id) {
            if self.shorten_to_policy(&e, &now_config, "gateway").await? {
                record.expires_at = e.expires_at();
            }
        }
        Ok((token, record))
    }

    /// Rotates an access token: a successor with the same principal and grant, and the
    /// same lifetime (within the service's maximum); the old token keeps working for
    /// `overlap`, then dies (its live streams end then too). Both are audited.
    pub async fn rotate(
        &self,
        id: &str,
        overlap: Duration,
        by: &str,
    ) -> Result<(IssuedToken, TokenRecord, UnixMillis), RotateError> {
        let now = self.now();
        let old = self.index.get(id).ok_or(RotateError::Unknown)?;
        old.check_live(now).map_err(|_| RotateError::NotLive)?;
        let lifetime = u64::try_from(old.record.expires_at - old.record.created_at).unwrap_or(0);
        let (token, record) = match old.record.kind {
            TokenKind::Access => {
                let grant = old.grant().cloned().ok_or(RotateError::NotAccess)?;
                let config = self.config();
                let svc = config
                    .service(&grant.service)
                    .ok_or(RotateError::ServiceGone)?;
                let mut ttl = Duration::from_millis(lifetime).min(config.max_ttl_of(svc));
                // A token obtained with a credential (or through a session) stays in
                // its lineage: the successor is its child too (so revoking the
                // credential or ending the session takes it), and lives no longer.
                if let Some(credential) = self.authz.lineage_parent(&old) {
                    credential
                        .check_live(now)
                        .map_err(|_| RotateError::NotLive)?;
                    let left = u64::try_from(credential.expires_at() - now).unwrap_or(0);
                    ttl = ttl.min(Duration::from_millis(left));
                }
                // A policy's token stays the policy's: its successor is judged by it
                // (and ended with it), and lives no longer than it allows.
                if let Some(origin) = &old.record.origin {
                    if !allowed_by_policy(&config, &old.record) {
                        return Err(RotateError::PolicyGone);
                    }
                    if let Some(p) = config.policies.get(&origin.policy) {
                        ttl = ttl.min(p.max_ttl);
                    }
                }
                let lineage = Lineage {
                    parent_id: old.record.parent_id.clone(),
                    cert_thumbprint: old.record.cert_thumbprint.clone(),
                    origin: old.record.origin.as_deref().cloned(),
                    spend: None,
                };
                self.mint(&old.record.principal, grant, ttl, lineage, by)
                    .await?
            }
            TokenKind::ClientCredential => {
                // Same principal, scope and binding; a fresh max age within the policy.
                let scope = old
                    .record
                    .scope
                    .as_deref()
                    .cloned()
                    .ok_or(RotateError::NotAccess)?;
                let age = Duration::from_millis(lifetime).min(self.config().credential_max_age);
                let cert = old.record.cert_thumbprint.clone();
                self.mint_credential(&old.record.principal, scope, age, cert, by)
                    .await?
            }
            _ => return Err(RotateError::NotAccess),
        };
        let until = now
            .saturating_add(duration_ms(overlap))
            .min(old.expires_at());
        let mut ev = self.audit.event(EventKind::TokenRotated);
        // The successor's `token.issued` names the credential it descends from; this
        // event links it to the token it replaces.
        ev.token_id = Some(id.to_owned());
        ev.principal = Some(old.record.principal.clone());
        ev.service = old.grant().map(|g| g.service.clone());
        ev.detail = serde_json::json!({
            "by": by,
            "successor": record.id,
            "expires_at": format_ms(until),
        });
        let events = [ev];
        self.store.shorten_expiry(id, until, &events).await?;
        old.shorten(until);
        self.cut_at_expiry(old.clone());
        self.audit.committed(&events);
        Ok((token, record, until))
    }
}
