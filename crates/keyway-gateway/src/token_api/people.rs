//! The token endpoint's routes for people, beside the workloads' exchange:
//!
//! - `POST /v1/login/start` `{provider?, redirect_uri?}`: a browser sign-in (the
//!   authorization URL, to come back to the loopback `redirect_uri`), or without
//!   `redirect_uri` the device flow (a user code to confirm elsewhere).
//! - `POST /v1/login/finish` `{login_id, code?, state?}`: redeems the browser's code,
//!   or polls the device flow (`428 authorization_pending` until confirmed); answers
//!   the session `{session_token, user, groups, expires_at}`.
//! - with `Authorization: Bearer <session>`: `GET /v1/whoami`; `POST /v1/logout`
//!   (the session and its tokens end); `POST /v1/access`
//!   `{service, role?, methods?, paths?, ttl?, reason?}` (a token, or `202` and a
//!   filed request); `GET /v1/requests`; `POST /v1/requests/{id}/approve`,
//!   `…/reject`, `…/collect`, `…/revoke`.
//!
//! Every answer is audited before it is sent, as the exchange's are.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use keyway_core::clock::format_ms;
use keyway_core::{EventKind, TokenKind};
use keyway_store::{AuditEvent, TokenRecord};
use serde::Deserialize;
use serde_json::json;

use super::{deny, error, refuse_several, unavailable};
use crate::index::Entry;
use crate::listener::ConnInfo;
use crate::people::{
    describe, AccessError, Ask, Given, LoginError, LoginFinishError, People, Started,
};
use crate::proxy::Handles;
use crate::tokens::PersonTokenError;
use keyway_core::head::{bearer, Bearer};

mod requests;

#[derive(Clone)]
struct Api {
    h: Handles,
    people: Arc<People>,
}

pub(super) fn router(h: Handles, people: Arc<People>) -> Router {
    Router::new()
        .route("/v1/login/start", post(login_start))
        .route("/v1/login/finish", post(login_finish))
        .route("/v1/whoami", get(whoami))
        .route("/v1/logout", post(logout))
        .route("/v1/access", post(access))
        .route("/v1/requests", get(requests::list))
        .route("/v1/requests/{id}/{action}", post(requests::action))
        .with_state(Api { h, people })
}

fn event(api: &Api, kind: EventKind, conn: &ConnInfo) -> AuditEvent {
    let mut ev = api.h.audit.event(kind);
    ev.source = Some(conn.peer_text().to_owned());
    ev
}

/// The answer to a body that is not the JSON expected (`usage`).
fn bad_body(usage: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        &format!("body must be JSON: {usage}"),
    )
}

/// An answer that holds a secret (a session, a token): never cached.
fn no_store(status: StatusCode, body: serde_json::Value) -> Response {
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

async fn login_start(
    State(api): State<Api>,
    Extension(conn): Extension<ConnInfo>,
    bytes: axum::body::Bytes,
) -> Response {
    #[derive(Deserialize)]
    struct Body {
        provider: Option<String>,
        redirect_uri: Option<String>,
    }
    let Ok(b) = serde_json::from_slice::<Body>(&bytes) else {
        return bad_body("{\"provider\": …, \"redirect_uri\": …}");
    };
    let started = api
        .people
        .login_start(
            b.provider.as_deref(),
            b.redirect_uri.as_deref(),
            conn.peer.ip().to_canonical(),
        )
        .await;
    match started {
        Ok(Started::Browser { login_id, url }) => no_store(
            StatusCode::OK,
            json!({ "login_id": login_id, "authorization_url": url }),
        ),
        Ok(Started::Device {
            login_id,
            user_code,
            verification_uri,
            verification_uri_complete,
            interval,
            expires_in,
        }) => no_store(
            StatusCode::OK,
            json!({
                "login_id": login_id,
                "user_code": user_code,
                "verification_uri": verification_uri,
                "verification_uri_complete": verification_uri_complete,
                "interval": interval.as_secs(),
                "expires_in": expires_in,
            }),
        ),
        Err(e) => {
            let mut ev = event(&api, EventKind::Login, &conn);
            let provider = b.provider.map(|p| p.chars().take(64).collect::<String>());
            ev.detail = json!({ "provider": provider, "step": "start", "why": e.to_string() });
            login_refused(&api, ev, e).await
        }
    }
}

async fn login_refused(api: &Api, ev: AuditEvent, e: LoginError) -> Response {
    let (status, code) = match &e {
        LoginError::Pending { interval } => {
            // Polling is not an event: the sign-in's end is.
            return (
                StatusCode::PRECONDITION_REQUIRED,
                Json(json!({
                    "error": "authorization_pending",
                    "error_description": e.to_string(),
                    "interval": interval.as_secs(),
                })),
            )
                .into_response();
        }
        LoginError::Unreachable(why) => {
            tracing::warn!(error = %why, "an identity provider cannot be reached");
            (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
        }
        LoginError::NoClientSecret(_) => (StatusCode::SERVICE_UNAVAILABLE, "server_error"),
        LoginError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
        LoginError::IdToken(_) | LoginError::NoUser(_) | LoginError::EmailNotVerified => {
            (StatusCode::UNAUTHORIZED, "access_denied")
        }
        LoginError::Refused(_) => (StatusCode::UNAUTHORIZED, "access_denied"),
        _ => (StatusCode::BAD_REQUEST, "invalid_request"),
    };
    deny(&api.h, ev, e.reason(), status, code, &e.to_string()).await
}

async fn login_finish(
    State(api): State<Api>,
    Extension(conn): Extension<ConnInfo>,
    bytes: axum::body::Bytes,
) -> Response {
    #[derive(Deserialize)]
    struct Body {
        login_id: String,
        code: Option<String>,
        state: Option<String>,
    }
    let Ok(b) = serde_json::from_slice::<Body>(&bytes) else {
        return bad_body("{\"login_id\": …, \"code\": …, \"state\": …}");
    };
    let mut ev = event(&api, EventKind::Login, &conn);
    let done = api
        .people
        .login_finish(&b.login_id, b.code.as_deref(), b.state.as_deref())
        .await;
    let (person, token, record) = match done {
        Ok(x) => x,
        Err(LoginFinishError::Login(e)) => {
            ev.detail = json!({ "step": "finish", "why": e.to_string() });
            return login_refused(&api, ev, e).await;
        }
        Err(LoginFinishError::Store(e)) => {
            tracing::error!(error = %e, "could not store a session");
            return unavailable();
        }
    };
    ev.principal = Some(record.principal.clone());
    ev.token_id = Some(record.id.clone());
    ev.allow();
    ev.detail = json!({
        "provider": person.provider,
        "issuer": person.issuer,
        "groups": person.groups,
        "expires_at": format_ms(record.expires_at),
    });
    if !api.h.audit.record(ev).wait().await {
        return unavailable();
    }
    no_store(
        StatusCode::OK,
        json!({
            "session_token": secrecy::ExposeSecret::expose_secret(token.secret()),
            "id": record.id,
            "user": person.user,
            "provider": person.provider,
            "groups": person.groups,
            "expires_at": format_ms(record.expires_at),
        }),
    )
}

/// The session a request carries, or the audited answer that refuses it.
async fn session(
    api: &Api,
    conn: &ConnInfo,
    headers: &HeaderMap,
    ev: &mut AuditEvent,
) -> Result<Arc<Entry>, Response> {
    let text = bearer(headers);
    if text == Bearer::Several {
        return Err(refuse_several(&api.h, ev.clone()).await);
    }
    let source = conn.peer.ip().to_canonical();
    let cert = conn.cert_thumbprint.as_deref();
    match api
        .h
        .authz
        .authenticate(TokenKind::Session, text, Some(source), cert)
    {
        Ok(s) => {
            s.mark_used(api.h.now());
            ev.principal = Some(s.record.principal.clone());
            ev.token_id = Some(s.id().to_owned());
            Ok(s)
        }
        Err(r) => {
            ev.token_id = r.token_id;
            ev.principal = r.principal;
            Err(deny(
                &api.h,
                ev.clone(),
                r.reason.as_str(),
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "send your session as a Bearer token; sign in with `keyway login`",
            )
            .await)
        }
    }
}

async fn logout(
    State(api): State<Api>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Response {
    let mut ev = event(&api, EventKind::Login, &conn);
    let s = match session(&api, &conn, &headers, &mut ev).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    // The revocation's own events (`token.revoked`, its children too) say it.
    match api.people.logout(&s).await {
        Ok(_) => (
            StatusCode::OK,
            Json(json!({ "session_id": s.id(), "state": "ended" })),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "could not end a session");
            unavailable()
        }
    }
}

async fn whoami(
    State(api): State<Api>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Response {
    let mut ev = event(&api, EventKind::Access, &conn);
    let s = match session(&api, &conn, &headers, &mut ev).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let origin = s.record.origin.clone().unwrap_or_default();
    let policies: Vec<_> = api
        .people
        .allowed(&s)
        .into_iter()
        .map(|p| {
            json!({
                "policy": p.name,
                "grants": p.grants.iter().map(|g| json!({
                    "service": g.service,
                    "grant": describe(g),
                })).collect::<Vec<_>>(),
                "max_ttl": humantime::format_duration(p.max_ttl).to_string(),
                "approval": p.approval.as_ref().map(|a| json!({
                    "approvers": a.approvers,
                    "min": a.min,
                })),
            })
        })
        .collect();
    (
        StatusCode::OK,
        Json(json!({
            "user": s.record.principal.strip_prefix("user:").unwrap_or(&s.record.principal),
            "provider": origin.provider,
            "issuer": origin.issuer,
            "groups": origin.groups,
            "session_id": s.id(),
            "expires_at": format_ms(s.expires_at()),
            "policies": policies,
        })),
    )
        .into_response()
}

fn token_body(token: &keyway_core::IssuedToken, record: &TokenRecord) -> serde_json::Value {
    let lifetime = record.expires_at - record.created_at;
    json!({
        "access_token": secrecy::ExposeSecret::expose_secret(token.secret()),
        "token_type": "Bearer",
        "id": record.id,
        "service": record.grant.as_ref().map(|g| g.service.clone()),
        "grant": record.grant,
        "policy": record.origin.as_ref().map(|o| o.policy.clone()),
        "expires_in": lifetime / 1000,
        "expires_at": format_ms(record.expires_at),
    })
}

async fn access(
    State(api): State<Api>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    #[derive(Deserialize)]
    struct Body {
        service: String,
        role: Option<String>,
        #[serde(default)]
        methods: Vec<String>,
        #[serde(default)]
        paths: Vec<String>,
        ttl: Option<String>,
        reason: Option<String>,
    }
    let mut ev = event(&api, EventKind::Access, &conn);
    let s = match session(&api, &conn, &headers, &mut ev).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(b) = serde_json::from_slice::<Body>(&bytes) else {
        return bad_body("{\"service\": …, \"ttl\": \"30m\", \"reason\": …}");
    };
    ev.service = Some(b.service.chars().take(64).collect());
    let ttl = match b.ttl.as_deref().map(keyway_core::units::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            let msg = format!("ttl: {e}");
            return deny(
                &api.h,
                ev,
                "bad_request",
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &msg,
            )
            .await;
        }
    };
    let ask = Ask {
        service: b.service,
        role: b.role,
        methods: b.methods,
        paths: b.paths,
        ttl,
        reason: b.reason.map(|r| r.chars().take(512).collect()),
    };
    match api.people.access(&s, &ask).await {
        Ok(Given::Token(token, record)) => {
            ev.allow();
            ev.detail = json!({
                "access_token_id": record.id,
                "policy": record.origin.as_ref().map(|o| o.policy.clone()),
                "grant": record.grant,
                "expires_at": format_ms(record.expires_at),
                "reason": ask.reason,
            });
            if !api.h.audit.record(ev).wait().await {
                return unavailable();
            }
            no_store(StatusCode::OK, token_body(&token, &record))
        }
        Ok(Given::Filed(r, approval)) => {
            // Filed, not given: the `access.requested` event is in; this one says
            // from where.
            ev.detail = json!({ "request": r.id, "state": "pending", "reason": ask.reason });
            if !api.h.audit.record(ev).wait().await {
                return unavailable();
            }
            (
                StatusCode::ACCEPTED,
                Json(json!({
                    "request_id": r.id,
                    "state": "pending",
                    "policy": r.origin.policy,
                    "grant": r.grant,
                    "approvers": approval.approvers,
                    "min": approval.min,
                    "expires_at": format_ms(r.expires_at),
                })),
            )
                .into_response()
        }
        Err(e) => {
            let (reason, status, code) = match &e {
                AccessError::NoService(_) => {
                    ("unknown_service", StatusCode::NOT_FOUND, "not_found")
                }
                AccessError::BadAsk(_) => {
                    ("bad_request", StatusCode::BAD_REQUEST, "invalid_request")
                }
                AccessError::NoPolicy { .. } => {
                    ("no_policy", StatusCode::FORBIDDEN, "access_denied")
                }
                AccessError::TooManyRequests => (
                    "too_many_requests",
                    StatusCode::TOO_MANY_REQUESTS,
                    "invalid_request",
                ),
                AccessError::Broader { .. } => (
                    "broader_than_policy",
                    StatusCode::FORBIDDEN,
                    "access_denied",
                ),
                AccessError::Token(PersonTokenError::SessionEnded) => {
                    ("session_ended", StatusCode::UNAUTHORIZED, "invalid_token")
                }
                AccessError::Token(PersonTokenError::PolicyChanged) => {
                    ("policy_changed", StatusCode::FORBIDDEN, "access_denied")
                }
                AccessError::Token(PersonTokenError::Store(err)) | AccessError::Store(err) => {
                    tracing::error!(error = %err, "could not store a person's access");
                    return unavailable();
                }
                AccessError::Token(PersonTokenError::Collected) => {
                    ("collected", StatusCode::CONFLICT, "invalid_request")
                }
            };
            deny(&api.h, ev, reason, status, code, &e.to_string()).await
        }
    }
}
