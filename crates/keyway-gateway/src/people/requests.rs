//! Access requests: filed when a policy asks approval, decided by its approvers
//! (never the requester, `min` distinct ones, before it expires), collected once by
//! the requester, and ended early through the normal revocation.

use std::time::Duration;

use keyway_core::config::{Approval, Config};
use keyway_core::{EventKind, IssuedToken, UnixMillis};
use keyway_store::{AccessRequest, RequestDecision, StoreError, TokenRecord};
use serde_json::json;

use super::{subjects_of, People};
use crate::index::Entry;
use crate::tokens::PersonTokenError;

/// Requests listed at most.
const LIST_LIMIT: u32 = 500;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no access request with that id")]
    Unknown,
    #[error("only the person who filed it can do that")]
    NotRequester,
    #[error("you are not among the approvers of policy `{0}`")]
    NotApprover(String),
    #[error("you cannot approve your own request")]
    SelfApproval,
    #[error("you already approved it")]
    AlreadyApproved,
    #[error("the request has expired")]
    Expired,
    #[error("the request was rejected or withdrawn")]
    Rejected,
    #[error("the request is already approved")]
    Decided,
    #[error("the request awaits {0} more approval(s)")]
    Pending(u32),
    #[error("policy `{0}` no longer gives this")]
    PolicyGone(String),
    #[error("the request changed meanwhile; retry")]
    Conflict,
    #[error(transparent)]
    Token(#[from] PersonTokenError),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for RequestError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Self::Conflict,
            e => Self::Store(e),
        }
    }
}

/// A request as one person sees it in a listing.
#[derive(Debug)]
pub struct Listed {
    pub request: AccessRequest,
    /// `pending`, `approved`, `rejected`, `expired`, or `policy_gone`.
    pub state: &'static str,
    pub needed: u32,
    /// Whether this person may approve or reject it.
    pub can_decide: bool,
}

// === impl People ===

impl People {
    /// Writes a new or changed request with its `kind` event, by the person of
    /// `session`; the event, once committed.
    pub(super) async fn write_request(
        &self,
        session: &Entry,
        r: &AccessRequest,
        kind: EventKind,
        detail: serde_json::Value,
    ) -> Result<keyway_store::AuditEvent, StoreError> {
        let mut ev = self.audit.event(kind);
        ev.principal = Some(session.record.principal.clone());
        ev.token_id = Some(session.id().to_owned());
        ev.service = Some(r.grant.service.clone());
        ev.detail = detail;
        let events = [ev];
        self.store.put_request(r, &events).await?;
        self.audit.committed(&events);
        let [ev] = events;
        Ok(ev)
    }

    /// The requests a person filed or may decide, with their state now.
    pub async fn requests(&self, session: &Entry) -> Result<Vec<Listed>, StoreError> {
        self.listed(session, false).await
    }

    /// Every request of the last day with its state now, and whether the person of
    /// `session` may decide each: the console's inbox, which operators read whole.
    pub async fn inbox(&self, session: &Entry) -> Result<Vec<Listed>, StoreError> {
        self.listed(session, true).await
    }

    async fn listed(&self, session: &Entry, every: bool) -> Result<Vec<Listed>, StoreError> {
        let config = self.config.current();
        let now = self.now();
        let me = &session.record.principal;
        let subjects = subjects_of(session);
        // An expired request stays listed for a day.
        let all = self
            .store
            .requests(now.saturating_sub(86_400_000), LIST_LIMIT)
            .await?;
        Ok(all
            .into_iter()
            .filter_map(|r| {
                let approval = approval_of(&config, &r);
                let can_decide = approval
                    .as_ref()
                    .is_some_and(|a| a.approver(&subjects) && r.origin.subject != *me);
                (every || r.origin.subject == *me || can_decide).then(|| Listed {
                    state: state(&r, approval.as_ref(), now),
                    needed: approval.map_or(0, |a| a.min),
                    can_decide,
                    request: r,
                })
            })
            .collect())
    }

    /// An approver's decision on a request: approval (counted once per person, never
    /// the requester's own) or rejection.
    pub async fn decide(
        &self,
        session: &Entry,
        id: &str,
        approve: bool,
        reason: Option<String>,
    ) -> Result<(AccessRequest, &'static str), RequestError> {
        let config = self.config.current();
        let now = self.now();
        let mut r = self.store.request(id).await?.ok_or(RequestError::Unknown)?;
        let approval = approval_of(&config, &r)
            .ok_or_else(|| RequestError::PolicyGone(r.origin.policy.clone()))?;
        let me = session.record.principal.clone();
        match state(&r, Some(&approval), now) {
            "rejected" => return Err(RequestError::Rejected),
            "expired" => return Err(RequestError::Expired),
            "approved" => return Err(RequestError::Decided),
            _ => {}
        }
        if r.origin.subject == me {
            return Err(RequestError::SelfApproval);
        }
        let mine = subjects_of(session);
        let Some(via) = approval.approvers.iter().find(|a| mine.contains(a)) else {
            return Err(RequestError::NotApprover(r.origin.policy.clone()));
        };
        if r.approvals.iter().any(|a| a.by == me) {
            return Err(RequestError::AlreadyApproved);
        }
        let decision = RequestDecision {
            by: me.clone(),
            via: Some(via.clone()),
            at: now,
            reason: reason.map(|r| r.chars().take(512).collect()),
        };
        let kind = if approve {
            r.approvals.push(decision);
            EventKind::AccessApproved
        } else {
            r.rejected = Some(decision);
            EventKind::AccessRejected
        };
        r.version += 1;
        let st = state(&r, Some(&approval), now);
        let detail = json!({
            "request": r.id,
            "requester": r.origin.subject,
            "policy": r.origin.policy,
            "approvals": r.approvals.len(),
            "min": approval.min,
            "state": st,
        });
        self.write_request(session, &r, kind, detail).await?;
        Ok((r, st))
    }

    /// The requester collects the token of an approved request, once.
    pub async fn collect(
        &self,
        session: &Entry,
        id: &str,
    ) -> Result<(IssuedToken, TokenRecord), RequestError> {
        let config = self.config.current();
        let now = self.now();
        let r = self.store.request(id).await?.ok_or(RequestError::Unknown)?;
        if r.origin.subject != session.record.principal {
            return Err(RequestError::NotRequester);
        }
        let approval = approval_of(&config, &r)
            .ok_or_else(|| RequestError::PolicyGone(r.origin.policy.clone()))?;
        match state(&r, Some(&approval), now) {
            "approved" => {}
            "rejected" => return Err(RequestError::Rejected),
            "expired" => return Err(RequestError::Expired),
            _ => {
                let left = approval.min.saturating_sub(counted(&r, &approval) as u32);
                return Err(RequestError::Pending(left));
            }
        }
        let Some(policy) = config.policies.get(&r.origin.policy) else {
            return Err(RequestError::PolicyGone(r.origin.policy.clone()));
        };
        let ttl = Duration::from_millis(r.ttl_ms).min(policy.max_ttl);
        let ttl = config
            .service(&r.grant.service)
            .map_or(ttl, |svc| ttl.min(config.max_ttl_of(svc)));
        let minted = self
            .tokens
            .mint_for_person(
                session,
                &policy.name,
                r.grant.clone(),
                ttl,
                Some((&r.id, r.expires_at)),
            )
            .await;
        let (token, record) = match minted {
            Err(PersonTokenError::PolicyChanged) => {
                return Err(RequestError::PolicyGone(r.origin.policy.clone()))
            }
            other => other?,
        };
        // Revoked while it was minted: the revocation may have looked for the token
        // before it was there.
        let now_r = self.store.request(id).await?;
        if now_r.is_none_or(|r| r.rejected.is_some()) {
            self.tokens
                .revoke(&record.id, "gateway", Some("request_revoked"))
                .await?;
            return Err(RequestError::Rejected);
        }
        Ok((token, record))
    }

    /// Ends a request early: the requester withdraws it, or an approver or the
    /// requester revokes the access it gave (its token, through the normal
    /// revocation). It cannot be collected after.
    pub async fn revoke_request(
        &self,
        session: &Entry,
        id: &str,
    ) -> Result<Vec<TokenRecord>, RequestError> {
        let config = self.config.current();
        let now = self.now();
        let mut r = self.store.request(id).await?.ok_or(RequestError::Unknown)?;
        let me = session.record.principal.clone();
        let approver = approval_of(&config, &r).is_some_and(|a| a.approver(&subjects_of(session)));
        if r.origin.subject != me && !approver {
            return Err(RequestError::NotRequester);
        }
        if r.rejected.is_none() {
            r.rejected = Some(RequestDecision {
                by: me.clone(),
                via: None,
                at: now,
                reason: Some("revoked".into()),
            });
            r.version += 1;
            let detail = json!({
                "request": r.id,
                "requester": r.origin.subject,
                "policy": r.origin.policy,
                "state": "revoked",
            });
            self.write_request(session, &r, EventKind::AccessRejected, detail)
                .await?;
        }
        Ok(self.tokens.revoke_for_request(id, &me).await?)
    }
}

/// The approval the request's policy asks now, if it still asks one.
fn approval_of(config: &Config, r: &AccessRequest) -> Option<Approval> {
    config.policies.get(&r.origin.policy)?.approval.clone()
}

/// A request's state at `now`, by the policy's approval in force.
fn state(r: &AccessRequest, approval: Option<&Approval>, now: UnixMillis) -> &'static str {
    let Some(a) = approval else {
        return "policy_gone";
    };
    if r.rejected.is_some() {
        "rejected"
    } else if now >= r.expires_at {
        "expired"
    } else if counted(r, a) >= a.min as usize {
        "approved"
    } else {
        "pending"
    }
}

/// The approvals that count: by someone who was an approver by a subject the policy
/// still names as one.
fn counted(r: &AccessRequest, a: &Approval) -> usize {
    r.approvals
        .iter()
        .filter(|d| d.via.as_ref().is_some_and(|v| a.approvers.contains(v)))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_approval_counts_only_while_the_policy_names_its_approver() {
        let decision = |by: &str, via: &str| RequestDecision {
            by: by.into(),
            via: Some(via.into()),
            at: 1,
            reason: None,
        };
        let r = AccessRequest {
            id: "req_x".into(),
            version: 2,
            origin: Default::default(),
            grant: keyway_core::Grant::new("orders-db", &[], &[]).unwrap_or_else(|e| panic!("{e}")),
            ttl_ms: 60_000,
            reason: None,
            created_at: 0,
            expires_at: 1_000,
            approvals: vec![
                decision("user:carol@example.com", "group:db-owners"),
                decision("user:erin@example.com", "group:dba"),
            ],
            rejected: None,
        };
        let approval = |approvers: &[&str], min| Approval {
            approvers: approvers.iter().map(|a| a.to_string()).collect(),
            min,
            request_ttl: Duration::from_secs(60),
        };
        assert_eq!(
            state(
                &r,
                Some(&approval(&["group:db-owners", "group:dba"], 2)),
                10
            ),
            "approved"
        );
        // `group:dba` is no longer an approver: Erin's approval no longer counts.
        assert_eq!(
            state(&r, Some(&approval(&["group:db-owners"], 2)), 10),
            "pending"
        );
        assert_eq!(
            state(&r, Some(&approval(&["group:db-owners"], 1)), 10),
            "approved"
        );
        assert_eq!(
            state(&r, Some(&approval(&["group:db-owners"], 1)), 1_000),
            "expired"
        );
        assert_eq!(state(&r, None, 10), "policy_gone");
    }
}
