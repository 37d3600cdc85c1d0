//! The token endpoint, where services, CI jobs and AI agents trade their client
//! credential for a short-lived access token. It listens apart from the admin API
//! (`token_listen`), since workloads reach it.
//!
//! `POST /v1/token/exchange` with `Authorization: Bearer <client credential>` and
//! `{"service": "billing", "ttl": "10m"}` answers
//! `{"access_token", "token_type": "Bearer", "expires_in", "expires_at", "refresh_after", …}`.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use bytes::Bytes;
use keyway_core::clock::format_ms;
use keyway_core::EventKind;
use keyway_core::{DenyReason, TokenKind};
use serde::Deserialize;
use serde_json::json;

use crate::listener::ConnInfo;
use crate::proxy::Handles;
use crate::tokens::ExchangeError;

pub fn router(h: Handles) -> Router {
    Router::new()
        .route("/v1/token/exchange", post(exchange))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "POST /v1/token/exchange",
            )
        })
        .with_state(h)
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
    ev.source = Some(source.to_string());
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
    let text = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let cert = conn.cert_thumbprint.as_deref();
    let credential = match h
        .authz
        .authenticate(TokenKind::ClientCredential, text, source, cert)
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
