//! The token endpoint, where services, CI jobs and AI agents trade their client
//! credential for a short-lived access token. It listens apart from the admin API
//! (`token_listen`), since workloads reach it.
//!
//! `POST /v1/token/exchange` with `Authorization: Bearer <client credential>` and
//! `{"service": "billing", "ttl": "10m"}` answers
//! `{"access_token", "token_type": "Bearer", "expires_in", "expires_at", "refresh_after", …}`.
//!
//! A workload with no stored secret posts instead the JWT its platform signed for it,
//! as an RFC 8693 token exchange (form-encoded or JSON): `grant_type` (optional)
//! `urn:ietf:params:oauth:grant-type:token-exchange`, `subject_token`,
//! `subject_token_type` `urn:ietf:params:oauth:token-type:jwt` (or `id_token`),
//! `service` (or `audience`), `ttl`. A policy decides what it gets. Every refusal of
//! the JWT answers the same `invalid_grant`; the audit log has the reason.
//!
//! People sign in, ask for access and decide access requests here too (`people`).

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use bytes::Bytes;
use keyway_core::clock::format_ms;
use keyway_core::head::{bearer, Bearer};
use keyway_core::EventKind;
use keyway_core::{DenyReason, TokenKind};
use serde::Deserialize;
use serde_json::json;

use crate::identity::IdentityError;
use crate::listener::ConnInfo;
use crate::proxy::Handles;
use crate::tokens::{ExchangeError, IdentityExchangeError};

mod people;

pub fn router(h: Handles, people: std::sync::Arc<crate::people::People>) -> Router {
    Router::new()
        .route("/v1/token/exchange", post(exchange))
        .with_state(h.clone())
        .merge(people::router(h, people))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "POST /v1/token/exchange; people: /v1/login/start, /v1/access, /v1/requests",
            )
        })
}

async fn exchange(
    State(h): State<Handles>,
    Extension(conn): Extension<ConnInfo>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    #[derive(Deserialize)]
    struct Body {
        service: String,
        ttl: Option<String>,
    }
    let source = conn.peer.ip().to_canonical();
    let mut ev = h.audit.event(EventKind::TokenExchange);
    ev.source = Some(conn.peer_text().to_owned());
    if h.tokens.refuse_token_in_url(&uri, &mut ev) {
        return deny(
            &h,
            ev,
            DenyReason::TokenInUrl.as_str(),
            StatusCode::UNAUTHORIZED,
            "invalid_request",
            "a token never goes in a URL; this one is revoked",
        )
        .await;
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if form || looks_like_token_exchange(&body) {
        return exchange_workload(&h, ev, form, &body).await;
    }
    let text = bearer(&headers);
    if text == Bearer::Several {
        return refuse_several(&h, ev).await;
    }
    let cert = conn.cert_thumbprint.as_deref();
    let credential =
        match h
            .authz
            .authenticate(TokenKind::ClientCredential, text, Some(source), cert)
        {
            Ok(c) => c,
            Err(r) => {
                ev.token_id = r.token_id;
                ev.principal = r.principal;
                let msg = match r.reason {
                    DenyReason::NoToken => "send the client credential as a Bearer token",
                    DenyReason::CertificateMismatch => {
                        "this credential is bound to a client certificate; present it (mTLS)"
                    }
                    _ => "the client credential was refused",
                };
                return deny(
                    &h,
                    ev,
                    r.reason.as_str(),
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    msg,
                )
                .await;
            }
        };
    let now = h.now();
    ev.token_id = Some(credential.id().to_owned());
    ev.principal = Some(credential.record.principal.clone());
    let Ok(b) = serde_json::from_slice::<Body>(&body) else {
        return deny(
            &h,
            ev,
            "bad_request",
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "body must be JSON: {\"service\": …, \"ttl\": \"15m\"}",
        )
        .await;
    };
    ev.service = Some(b.service.chars().take(64).collect());
    let ttl = match b.ttl.as_deref().map(keyway_core::units::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            return deny(
                &h,
                ev,
                "bad_request",
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("ttl: {e}"),
            )
            .await
        }
    };
    let result = h
        .tokens
        .exchange(
            &credential,
            &b.service,
            ttl,
            source,
            conn.cert_thumbprint.as_deref(),
        )
        .await;
    let (token, record) = match result {
        Ok(x) => x,
        Err(ExchangeError::Store(e)) => {
            tracing::error!(error = %e, "could not store an exchanged token");
            return unavailable();
        }
        Err(e @ (ExchangeError::Certificate | ExchangeError::TooOld | ExchangeError::Revoked)) => {
            let (reason, msg) = match e {
                ExchangeError::Certificate => (
                    "certificate_mismatch",
                    "this credential is bound to a client certificate; present it (mTLS)",
                ),
                ExchangeError::TooOld => ("expired", "the client credential was refused"),
                _ => ("revoked", "the client credential was refused"),
            };
            return deny(
                &h,
                ev,
                reason,
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                msg,
            )
            .await;
        }
        Err(
            e @ (ExchangeError::Source | ExchangeError::Service | ExchangeError::NotACredential),
        ) => {
            let reason = match e {
                ExchangeError::Source => "source_not_allowed",
                _ => "service_not_granted",
            };
            return deny(
                &h,
                ev,
                reason,
                StatusCode::FORBIDDEN,
                "access_denied",
                "this credential cannot get a token for that service from here",
            )
            .await;
        }
    };
    // Only a successful exchange counts as use of the credential.
    credential.mark_used(now);
    ev.allow();
    ev.detail = json!({
        "access_token_id": record.id,
        "expires_at": format_ms(record.expires_at),
        "cert_thumbprint": record.cert_thumbprint,
    });
    if !h.audit.record(ev).wait().await {
        return unavailable();
    }
    let lifetime = record.expires_at - record.created_at;
    let mut body = json!({
        "access_token": secrecy::ExposeSecret::expose_secret(token.secret()),
        "token_type": "Bearer",
        "id": record.id,
        "service": b.service,
        "expires_in": lifetime / 1000,
        "expires_at": format_ms(record.expires_at),
        "refresh_after": format_ms(record.created_at + lifetime * 2 / 3),
    });
    if credential.near_max_age(now) {
        let mut warn = h.audit.event(EventKind::CredentialNearMaxAge);
        warn.token_id = Some(credential.id().to_owned());
        warn.principal = Some(credential.record.principal.clone());
        warn.detail = json!({ "expires_at": format_ms(credential.expires_at()) });
        let _ = h.audit.record(warn);
        tracing::warn!(
            token_id = %credential.id(),
            "a client credential is within 14 days of its maximum age; issue a new one"
        );
        body["warning"] = json!(format!(
            "this client credential stops working at {}; issue a new one",
            format_ms(credential.expires_at())
        ));
    }
    let mut resp = (StatusCode::OK, Json(body)).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// The token-exchange grant, and the subject token types taken for a JWT.
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPES: [&str; 2] = [
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
];

/// A JSON body with a `subject_token`: a workload's exchange, not a credential's.
fn looks_like_token_exchange(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
        .is_ok_and(|m| m.contains_key("subject_token"))
}

/// A token exchange's JWT, service and ttl; else the OAuth error code and why.
#[allow(clippy::type_complexity)]
fn read_exchange(
    form: bool,
    body: &[u8],
) -> Result<(String, String, Option<std::time::Duration>), (&'static str, String)> {
    #[derive(Deserialize)]
    struct Request {
        grant_type: Option<String>,
        subject_token: Option<String>,
        subject_token_type: Option<String>,
        service: Option<String>,
        audience: Option<String>,
        ttl: Option<String>,
    }
    const USAGE: &str = "a token exchange names subject_token (the JWT), subject_token_type \
                         urn:ietf:params:oauth:token-type:jwt and service";
    let parsed: Option<Request> = if form {
        serde_urlencoded::from_bytes(body).ok()
    } else {
        serde_json::from_slice(body).ok()
    };
    let r = parsed.ok_or(("invalid_request", USAGE.to_owned()))?;
    if r.grant_type.as_deref().is_some_and(|g| g != TOKEN_EXCHANGE) {
        return Err((
            "unsupported_grant_type",
            "grant_type must be urn:ietf:params:oauth:grant-type:token-exchange".into(),
        ));
    }
    let ttl = r
        .ttl
        .as_deref()
        .map(keyway_core::units::parse_duration)
        .transpose()
        .map_err(|e| ("invalid_request", format!("ttl: {e}")))?;
    let jwt_type = r
        .subject_token_type
        .as_deref()
        .is_some_and(|t| JWT_TYPES.contains(&t));
    match (r.subject_token, r.service.or(r.audience)) {
        (Some(jwt), Some(service)) if jwt_type => Ok((jwt, service, ttl)),
        _ => Err(("invalid_request", USAGE.to_owned())),
    }
}

/// A workload's JWT for an access token, as a policy allows.
async fn exchange_workload(
    h: &Handles,
    mut ev: keyway_store::AuditEvent,
    form: bool,
    body: &[u8],
) -> Response {
    let (jwt, service, ttl) = match read_exchange(form, body) {
        Ok(r) => r,
        Err((code, msg)) => {
            return deny(h, ev, "bad_request", StatusCode::BAD_REQUEST, code, &msg).await;
        }
    };
    ev.detail = json!({ "grant": "workload_jwt" });
    ev.service = Some(service.chars().take(64).collect());
    let refused = "the subject token was refused";
    let (token, record) = match h.tokens.exchange_identity(&jwt, &service, ttl).await {
        Ok(x) => x,
        Err(IdentityExchangeError::Identity(IdentityError::IssuerUnreachable(why))) => {
            tracing::warn!(error = %why, "a workload exchange waits on its identity provider");
            ev.deny_with("issuer_unreachable");
            let _ = h.audit.record(ev).wait().await;
            let mut resp = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the identity provider's keys cannot be fetched now; retry shortly",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(5));
            return resp;
        }
        Err(IdentityExchangeError::Identity(e)) => {
            ev.detail["why"] = json!(e.to_string());
            return deny(
                h,
                ev,
                e.reason(),
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                refused,
            )
            .await;
        }
        Err(IdentityExchangeError::NoPolicy { subject, .. }) => {
            ev.principal = Some(subject);
            return deny(
                h,
                ev,
                "no_policy",
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                refused,
            )
            .await;
        }
        Err(IdentityExchangeError::Store(e)) => {
            tracing::error!(error = %e, "could not store a workload's token");
            return unavailable();
        }
    };
    let origin = record.origin.clone();
    ev.principal = Some(record.principal.clone());
    ev.allow();
    ev.detail = json!({
        "grant": "workload_jwt",
        "access_token_id": record.id,
        "expires_at": format_ms(record.expires_at),
        "origin": origin,
    });
    if !h.audit.record(ev).wait().await {
        return unavailable();
    }
    let lifetime = record.expires_at - record.created_at;
    let body = json!({
        "access_token": secrecy::ExposeSecret::expose_secret(token.secret()),
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "token_type": "Bearer",
        "id": record.id,
        "service": service,
        "expires_in": lifetime / 1000,
        "expires_at": format_ms(record.expires_at),
        "refresh_after": format_ms(record.created_at + lifetime * 2 / 3),
        "policy": origin.as_ref().map(|o| o.policy.clone()),
        "subject": record.principal,
    });
    let mut resp = (StatusCode::OK, Json(body)).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// Audits a refusal and answers it once its event is committed (a 503 if the store
/// did not take it).
async fn deny(
    h: &Handles,
    mut ev: keyway_store::AuditEvent,
    reason: &str,
    status: StatusCode,
    code: &str,
    msg: &str,
) -> Response {
    ev.deny_with(reason);
    if !h.audit.record(ev).wait().await {
        return unavailable();
    }
    error(status, code, msg)
}

/// Two or more `Authorization` headers, on any route of this listener: which one a
/// hop before us read is not ours to guess, so none is tried, and the client is told
/// what it did (RFC 6749 §5.2 and RFC 6750 §3.1: a request that includes multiple
/// credentials is an `invalid_request`). Audited as a malformed credential.
async fn refuse_several(h: &Handles, ev: keyway_store::AuditEvent) -> Response {
    deny(
        h,
        ev,
        DenyReason::MalformedToken.as_str(),
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "send one Authorization header, not several",
    )
    .await
}

/// The store or the audit log cannot take a write now: nothing was issued.
fn unavailable() -> Response {
    let mut resp = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the gateway cannot record this now (store_unavailable); retry shortly",
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(1));
    resp
}

fn error(status: StatusCode, code: &str, msg: &str) -> Response {
    (
        status,
        Json(json!({ "error": code, "error_description": msg })),
    )
        .into_response()
}
