//! A person's tokens: the session a sign-in gives (`keyway login`), and the access
//! tokens their policies give through it (`keyway access`), at once or once a request
//! is approved.

use std::time::Duration;

use keyway_core::clock::format_ms;
use keyway_core::{EventKind, Grant, IssuedToken, TokenKind};
use keyway_store::{Origin, Spend, StoreError, TokenRecord};

use super::exchange::allowed_by_policy;
use super::{Lineage, Tokens};
use crate::index::Entry;

/// Why a person's access token was not minted.
#[derive(Debug, thiserror::Error)]
pub enum PersonTokenError {
    /// The session ended (revoked, expired) meanwhile.
    #[error("the session has ended; sign in again")]
    SessionEnded,
    /// The policy changed meanwhile and no longer gives it.
    #[error("the policy no longer gives this")]
    PolicyChanged,
    /// The approved request's token was minted before.
    #[error("this request's token was already collected")]
    Collected,
    #[error(transparent)]
    Store(StoreError),
}

// === impl Tokens ===

impl Tokens {
    /// A session for a person a provider signed in: `origin` names the provider, the
    /// person (`user:<user>`) and their groups; no policy.
    pub async fn mint_session(
        &self,
        origin: Origin,
        ttl: Duration,
    ) -> Result<(IssuedToken, TokenRecord), StoreError> {
        let (token, mut record) = self.generate(TokenKind::Session, &origin.subject, ttl);
        let by = format!("login:{}", origin.provider);
        record.origin = Some(Box::new(origin));
        let detail = serde_json::json!({
            "by": by,
            "expires_at": format_ms(record.expires_at),
            "origin": record.origin,
        });
        self.keep(&record, EventKind::TokenIssued, detail).await?;
        Ok((token, record))
    }

    /// An access token for the person of `session`, with `grant` as `policy` gives
    /// it, living `ttl` at most (and never past the session): the session's child, so
    /// ending the session ends it. For an approved request (`request`: its id and
    /// expiry), minted once only: the request's id is spent with it.
    pub async fn mint_for_person(
        &self,
        session: &Entry,
        policy: &str,
        grant: Grant,
        ttl: Duration,
        request: Option<(&str, keyway_core::UnixMillis)>,
    ) -> Result<(IssuedToken, TokenRecord), PersonTokenError> {
        let now = self.now();
        session
            .check_live(now)
            .map_err(|_| PersonTokenError::SessionEnded)?;
        let Some(mut origin) = session.record.origin.clone() else {
            return Err(PersonTokenError::SessionEnded);
        };
        origin.policy = policy.to_owned();
        origin.request = request.map(|(id, _)| id.to_owned());
        let left = u64::try_from(session.expires_at() - now).unwrap_or(0);
        let ttl = ttl.min(Duration::from_millis(left));
        let lineage = Lineage {
            parent_id: Some(session.id().to_owned()),
            origin: Some(*origin),
            spend: request.map(|(id, until)| Spend {
                key: format!("request:{id}"),
                until,
                now,
            }),
            ..Lineage::default()
        };
        let by = format!("policy:{policy}");
        let (token, record) = match self
            .mint(&session.record.principal, grant, ttl, lineage, &by)
            .await
        {
            Ok(x) => x,
            Err(StoreError::Spent) => return Err(PersonTokenError::Collected),
            Err(e) => return Err(PersonTokenError::Store(e)),
        };
        // Ended or narrowed while it was minted: the revocation's cascade or the
        // reload's sweep may have missed this one.
        let config = self.config();
        let ended = session.revoked();
        if ended || !allowed_by_policy(&config, &record) {
            self.revoke(&record.id, "gateway", Some("policy_changed"))
                .await
                .map_err(PersonTokenError::Store)?;
            return Err(if ended {
                PersonTokenError::SessionEnded
            } else {
                PersonTokenError::PolicyChanged
            });
        }
        Ok((token, record))
    }
}

impl Tokens {
    /// Ends the access an approved request gave: revokes the tokens minted for it.
    pub async fn revoke_for_request(
        &self,
        request: &str,
        by: &str,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let pick = |e: &Entry| {
            e.record
                .origin
                .as_ref()
                .is_some_and(|o| o.request.as_deref() == Some(request))
        };
        self.revoke_picked(pick, by, "request_revoked").await
    }
}
