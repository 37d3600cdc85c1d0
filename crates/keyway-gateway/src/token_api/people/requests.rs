//! The access requests' routes: `GET /v1/requests` and
//! `POST /v1/requests/{id}/approve|reject|collect|revoke`, with the person's session.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use keyway_core::clock::format_ms;
use keyway_core::EventKind;
use serde::Deserialize;
use serde_json::json;

use super::super::{deny, error, unavailable};
use super::{bad_body, event, no_store, session, token_body, Api};
use crate::listener::ConnInfo;
use crate::people::{describe, RequestError};
use crate::tokens::PersonTokenError;

pub(super) async fn list(
    State(api): State<Api>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Response {
    let mut ev = event(&api, EventKind::Access, &conn);
    let s = match session(&api, &conn, &headers, &mut ev).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let listed = match api.people.requests(&s).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "could not read the access requests");
            return unavailable();
        }
    };
    let rows: Vec<_> = listed
        .into_iter()
        .map(|l| {
            let r = l.request;
            json!({
                "id": r.id,
                "state": l.state,
                "requester": r.origin.subject,
                "policy": r.origin.policy,
                "service": r.grant.service,
                "grant": describe(&r.grant),
                "ttl_s": r.ttl_ms / 1000,
                "reason": r.reason,
                "approvals": r.approvals.iter().map(|a| a.by.clone()).collect::<Vec<_>>(),
                "min": l.needed,
                "can_decide": l.can_decide,
                "created_at": format_ms(r.created_at),
                "expires_at": format_ms(r.expires_at),
            })
        })
        .collect();
    (StatusCode::OK, Json(json!({ "requests": rows }))).into_response()
}

pub(super) async fn action(
    State(api): State<Api>,
    Extension(conn): Extension<ConnInfo>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    #[derive(Deserialize, Default)]
    struct Body {
        reason: Option<String>,
    }
    let kind = match action.as_str() {
        "approve" => EventKind::AccessApproved,
        "reject" => EventKind::AccessRejected,
        "collect" | "revoke" => EventKind::Access,
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "POST /v1/requests/{id}/approve, reject, collect or revoke",
            )
        }
    };
    let mut ev = event(&api, kind, &conn);
    let s = match session(&api, &conn, &headers, &mut ev).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let b: Body = if bytes.is_empty() {
        Body::default()
    } else {
        match serde_json::from_slice::<Body>(&bytes) {
            Ok(b) => b,
            Err(_) => return bad_body("{\"reason\": …}"),
        }
    };
    let id: String = id.chars().take(64).collect();
    ev.detail = json!({ "request": id, "action": action });
    let refused = |e: RequestError| {
        let (reason, status) = match &e {
            RequestError::Unknown => ("unknown_request", StatusCode::NOT_FOUND),
            RequestError::NotRequester => ("not_requester", StatusCode::FORBIDDEN),
            RequestError::NotApprover(_) => ("not_approver", StatusCode::FORBIDDEN),
            RequestError::SelfApproval => ("self_approval", StatusCode::FORBIDDEN),
            RequestError::AlreadyApproved => ("already_approved", StatusCode::CONFLICT),
            RequestError::Expired => ("request_expired", StatusCode::GONE),
            RequestError::Rejected => ("request_rejected", StatusCode::GONE),
            RequestError::Decided => ("already_decided", StatusCode::CONFLICT),
            RequestError::Pending(_) => ("pending", StatusCode::CONFLICT),
            RequestError::PolicyGone(_) => ("policy_changed", StatusCode::GONE),
            RequestError::Conflict => ("conflict", StatusCode::CONFLICT),
            RequestError::Token(PersonTokenError::Collected) => ("collected", StatusCode::GONE),
            RequestError::Token(PersonTokenError::SessionEnded) => {
                ("session_ended", StatusCode::UNAUTHORIZED)
            }
            RequestError::Token(PersonTokenError::PolicyChanged) => {
                ("policy_changed", StatusCode::GONE)
            }
            RequestError::Token(PersonTokenError::Store(_)) | RequestError::Store(_) => {
                ("store_unavailable", StatusCode::SERVICE_UNAVAILABLE)
            }
        };
        (reason, status, e.to_string())
    };
    let deny_with = |ev, e| {
        let (reason, status, msg) = refused(e);
        let api = api.clone();
        async move {
            if status == StatusCode::SERVICE_UNAVAILABLE {
                tracing::error!(error = %msg, "an access request could not be written");
                return unavailable();
            }
            let code = if status == StatusCode::FORBIDDEN {
                "access_denied"
            } else {
                "invalid_request"
            };
            deny(&api.h, ev, reason, status, code, &msg).await
        }
    };
    match action.as_str() {
        "approve" | "reject" => {
            match api
                .people
                .decide(&s, &id, action == "approve", b.reason)
                .await
            {
                // The decision's event is written with it.
                Ok((r, state)) => (
                    StatusCode::OK,
                    Json(json!({
                        "id": r.id,
                        "state": state,
                        "approvals": r.approvals.iter().map(|a| a.by.clone()).collect::<Vec<_>>(),
                    })),
                )
                    .into_response(),
                Err(e) => deny_with(ev, e).await,
            }
        }
        "collect" => match api.people.collect(&s, &id).await {
            Ok((token, record)) => {
                ev.allow();
                ev.service = record.grant.as_ref().map(|g| g.service.clone());
                ev.detail["access_token_id"] = json!(record.id);
                ev.detail["expires_at"] = json!(format_ms(record.expires_at));
                if !api.h.audit.record(ev).wait().await {
                    return unavailable();
                }
                no_store(StatusCode::OK, token_body(&token, &record))
            }
            Err(e) => deny_with(ev, e).await,
        },
        _ => match api.people.revoke_request(&s, &id).await {
            Ok(revoked) => (
                StatusCode::OK,
                Json(json!({
                    "id": id,
                    "state": "revoked",
                    "revoked_tokens": revoked.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
                })),
            )
                .into_response(),
            Err(e) => deny_with(ev, e).await,
        },
    }
}
