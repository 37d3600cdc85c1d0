//! The admin API: every call needs the admin token, even on loopback.
//!
//! | call | what |
//! |---|---|
//! | `GET /v1/status` | version and services |
//! | `POST /v1/tokens` | issue an access token (the response holds it, once) |
//! | `GET /v1/tokens?unused=30d` | list tokens (never their secrets), optionally only those unused for that long |
//! | `POST /v1/tokens/{id}/revoke` | revoke a token; its live streams end |
//! | `POST /v1/tokens/revoke` | revoke by `principal`, `service`, `issued_before` (all given must match) |
//! | `POST /v1/tokens/{id}/rotate` | a successor (the response holds it, once); the old one lives `overlap` more |
//! | `POST /v1/credentials` | issue a client credential (the response holds it, once) |
//! | `PUT /v1/secrets/{name}` | seal and store an upstream credential |
//! | `GET /v1/secrets` | names of the credentials that are set |
//! | `GET /v1/audit?after=N&limit=M&principal=&service=&decision=&reason=&kind=&since=&until=` | audit events after sequence number N, filtered |
//! | `POST /v1/agents/{name}/enroll` | a one-use enrollment token for an agent, with the CA pin (once) |
//! | `POST /v1/agents/{name}/revoke` | disconnect an agent now and refuse its certificates |
//! | `GET /v1/agents` | each agent's state, version, last heartbeat and services |
//! | `GET /v1/report?since=30d` | the hygiene report: unused tokens, quiet services, broad grants, … |
//! | `GET /v1/config` | the SHA-256 of the config in force |
//! | `POST /v1/config/plan` | what `{"config": "<toml>"}` would change in the running gateway |
//! | `POST /v1/config/apply` | apply it, as one atomic change, audited as `config.applied` |
//! | `GET /metrics` | Prometheus text format (needs the admin token too) |
//! | `GET /v1/openapi.json` | this API's OpenAPI 3.1 document ([`openapi`]) |
//!
//! A write (every `POST` and `PUT`) that carries a body must say it is JSON
//! (`Content-Type: application/json`), or is refused with 415 ([`JsonBody`]), after
//! the admin token is checked. Every refusal, the extractors' included, is JSON:
//! `{"error": "…"}`.

use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use keyway_core::clock::format_ms;
use keyway_core::config::ServiceKind;
use keyway_core::EventKind;
use keyway_core::UnixMillis;
use keyway_store::{AuditQuery, TokenRecord};
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::control::Control;
use crate::secrets::SecretError;
use crate::tokens::{CredentialRequest, IssueError, IssueRequest, RotateError};

mod mcp;
pub mod openapi;
mod operate;
mod tokens;

use mcp::*;
use operate::*;
use tokens::*;

pub use keyway_core::api::{Enrollment, Issued, TokenInfo};

type Gw = Control;

/// Proof that the caller presented a live admin token.
pub struct Admin {
    pub token_id: String,
    pub principal: String,
}

pub fn router(gw: Gw) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/healthz", get(healthz))
        .route("/v1/cluster", get(cluster))
        .route("/v1/tokens", get(list_tokens).post(issue_token))
        .route("/v1/tokens/revoke", post(revoke_matching))
        .route("/v1/tokens/{id}/revoke", post(revoke_token))
        .route("/v1/tokens/{id}/rotate", post(rotate_token))
        .route("/v1/credentials", post(issue_credential))
        .route("/v1/secrets", get(list_secrets))
        .route("/v1/secrets/{name}", put(set_secret))
        .route("/v1/audit", get(audit))
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/{name}/enroll", post(enroll_agent))
        .route("/v1/agents/{name}/revoke", post(revoke_agent))
        .route("/v1/mcp/{service}/tools", get(list_tools))
        .route("/v1/mcp/{service}/tools/{tool}/approve", post(approve_tool))
        .route("/v1/report", get(report))
        .route("/v1/config", get(current_config))
        .route("/v1/config/plan", post(plan_config))
        .route("/v1/config/apply", post(apply_config))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi::serve))
        .fallback(|_: Admin| async { error(StatusCode::NOT_FOUND, "no such admin call") })
        .method_not_allowed_fallback(|_: Admin| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "this admin call takes another method (see Allow)",
            )
        })
        .with_state(gw)
}

/// The body of a write: JSON, said so in `Content-Type` (parameters such as
/// `charset` allowed). An empty body needs no type: the calls whose fields are all
/// optional take none. Taken last, after [`Admin`], so an unauthenticated write is
/// refused (and audited) as such.
pub struct JsonBody(pub Bytes);

/// The query string as `T`; refused as JSON, like every other answer.
pub struct Params<T>(pub T);

/// The path's named segments as `T`; refused as JSON.
pub struct Segments<T>(pub T);

/// A refusal, as every admin call gives it.
#[derive(Serialize, ToSchema)]
pub struct ApiError {
    /// What was wrong, and what to do about it.
    pub error: String,
}

// === impl Admin ===

/// A refused admin call, answered once its event is committed (a 503 if the store
/// did not take it).
async fn refuse(gw: &Gw, ev: keyway_store::AuditEvent) -> Response {
    if gw.audit.record(ev).wait().await {
        error(StatusCode::UNAUTHORIZED, "unauthorized")
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit log cannot be written now (audit_unavailable); retry shortly",
        )
    }
}

impl FromRequestParts<Gw> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, gw: &Gw) -> Result<Self, Self::Rejection> {
        let mut leak = gw.event(EventKind::AdminDenied);
        if gw.tokens.refuse_token_in_url(&parts.uri, &mut leak) {
            leak.deny(keyway_core::DenyReason::TokenInUrl);
            return Err(refuse(gw, leak).await);
        }
        let text = keyway_core::head::bearer(&parts.headers);
        let conn = parts.extensions.get::<crate::listener::ConnInfo>();
        match gw.authenticate_admin(text, conn) {
            Ok(entry) => Ok(Admin {
                token_id: entry.id().to_owned(),
                principal: entry.record.principal.clone(),
            }),
            Err(refused) => {
                let mut ev = gw.event(EventKind::AdminDenied);
                ev.deny(refused.reason);
                ev.token_id = refused.token_id;
                ev.principal = refused.principal;
                ev.source = conn.map(|c| c.peer_text().to_owned());
                ev.detail = json!({ "path": keyway_core::token::redact(parts.uri.path()) });
                Err(refuse(gw, ev).await)
            }
        }
    }
}

// === impl JsonBody ===

impl FromRequest<Gw> for JsonBody {
    type Rejection = Response;

    async fn from_request(req: Request, gw: &Gw) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
        let body = Bytes::from_request(req, gw)
            .await
            .map_err(|e| error(e.status(), &e.body_text()))?;
        if !body.is_empty() && !json {
            return Err(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as JSON, with Content-Type: application/json",
            ));
        }
        Ok(Self(body))
    }
}

impl JsonBody {
    /// The body as `T`, from a JSON object. Only an object: serde takes an array
    /// for a struct too, its fields by position, which the API never documents.
    fn object<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        if self.0.trim_ascii_start().first() != Some(&b'{') {
            return Err(serde::de::Error::custom("the body is not a JSON object"));
        }
        serde_json::from_slice(&self.0)
    }

    /// The body as `T`, or `T`'s default when there is none (or it is `null`): for
    /// the calls whose fields are all optional.
    fn or_default<T: DeserializeOwned + Default>(&self) -> Result<T, serde_json::Error> {
        let text = self.0.trim_ascii();
        if text.is_empty() || text == b"null" {
            return Ok(T::default());
        }
        self.object()
    }
}

// === impl Params, Segments ===

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(t)) => Ok(Self(t)),
            Err(e) => Err(error(e.status(), &e.body_text())),
        }
    }
}

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Segments<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(t)) => Ok(Self(t)),
            Err(e) => Err(error(e.status(), &e.body_text())),
        }
    }
}

/// For a load balancer, without a token: 200 while this gateway serves, 503 while
/// it drains (SIGTERM) or is behind the shared store.
#[utoipa::path(get, path = "/healthz", tag = "gateway", security(()),
    responses(
        (status = 200, description = "Serving", body = String, content_type = "text/plain"),
        (status = 503, description = "Draining, or behind the shared store", body = String, content_type = "text/plain"),
    ))]
async fn healthz(State(gw): State<Gw>) -> Response {
    let h = gw.authz.health();
    let (status, text) = if h.draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if h.behind() {
        (StatusCode::SERVICE_UNAVAILABLE, "behind the shared store\n")
    } else {
        (StatusCode::OK, "serving\n")
    };
    (status, text).into_response()
}

/// The replicas on the shared store, as their heartbeats say.
#[derive(Serialize, ToSchema)]
struct Cluster {
    /// The newest change on the store.
    head: i64,
    now: String,
    /// The config applied to every replica, if one was.
    config: Option<AppliedView>,
    replicas: Vec<keyway_store::Beat>,
}

#[derive(Serialize, ToSchema)]
struct AppliedView {
    sha256: String,
    at: String,
}

/// The replicas on the shared store, as their heartbeats say.
#[utoipa::path(get, path = "/v1/cluster", tag = "gateway",
    responses((status = 200, body = Cluster), (status = 503, body = ApiError)))]
async fn cluster(_: Admin, State(gw): State<Gw>) -> Response {
    let applied = match gw.store.applied_config().await {
        Ok(a) => a,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    match gw.store.replicas().await {
        Ok(replicas) => Json(Cluster {
            head: gw.store.change_head().await.unwrap_or(0),
            now: format_ms(gw.clock.now_ms()),
            config: applied.map(|a| AppliedView {
                sha256: a.sha256,
                at: format_ms(a.at),
            }),
            replicas,
        })
        .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// The version and the services.
#[derive(Serialize, ToSchema)]
struct Status {
    version: String,
    services: Vec<ServiceView>,
}

#[derive(Serialize, ToSchema)]
struct ServiceView {
    name: String,
    /// `http`, `tcp` or `postgres`.
    protocol: String,
    /// Its own port, if it has one.
    listen: Option<String>,
    upstream: String,
    /// The longest a token for it lives.
    max_ttl: String,
}

/// The version and the services.
#[utoipa::path(get, path = "/v1/status", tag = "gateway", responses((status = 200, body = Status)))]
async fn status(_: Admin, State(gw): State<Gw>) -> Response {
    let services: Vec<_> = gw
        .config()
        .services
        .values()
        .map(|s| {
            let (protocol, upstream) = match &s.kind {
                ServiceKind::Http(h) => (
                    "http",
                    format!("http://{}{}", h.upstream.authority, h.upstream.base_path),
                ),
                ServiceKind::Tcp(t) => ("tcp", t.upstream.clone()),
                ServiceKind::Postgres(pg) => ("postgres", pg.upstream.clone()),
            };
            ServiceView {
                name: s.name.clone(),
                protocol: protocol.into(),
                listen: s.listen.map(|l| l.to_string()),
                upstream,
                max_ttl: keyway_core::units::format_duration(s.max_ttl),
            }
        })
        .collect();
    Json(Status {
        version: env!("CARGO_PKG_VERSION").into(),
        services,
    })
    .into_response()
}

fn error(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({ "error": msg }))).into_response()
}

/// A token as the admin API shows it, from its record and its live state.
pub(crate) fn token_info(
    r: &TokenRecord,
    revoked_at: Option<UnixMillis>,
    last_used: Option<UnixMillis>,
    now: UnixMillis,
) -> TokenInfo {
    let state = if revoked_at.is_some() {
        "revoked"
    } else if now >= r.expires_at {
        "expired"
    } else {
        "active"
    };
    // A credential's scope shows as its services joined, with their shared grant.
    let scoped = r
        .scope
        .as_ref()
        .and_then(|c| c.grants.first().map(|g| (c, g)));
    let (service, methods, paths) = match (r.grant.as_ref(), scoped) {
        (Some(g), _) => (Some(g.service.clone()), g.methods.clone(), g.paths.clone()),
        (None, Some((c, g))) => {
            let names: Vec<&str> = c.grants.iter().map(|g| g.service.as_str()).collect();
            (Some(names.join(",")), g.methods.clone(), g.paths.clone())
        }
        (None, None) => (None, Vec::new(), Vec::new()),
    };
    TokenInfo {
        id: r.id.clone(),
        kind: r.kind.as_str().into(),
        principal: r.principal.clone(),
        service,
        methods,
        paths,
        role: r.grant.as_ref().and_then(|g| g.role.clone()),
        mcp: r.grant.as_ref().map(|g| g.mcp.clone()).unwrap_or_default(),
        state: state.into(),
        created_at: format_ms(r.created_at),
        expires_at: format_ms(r.expires_at),
        revoked_at: revoked_at.map(format_ms),
        last_used_at: last_used.map(format_ms),
        policy: r
            .origin
            .as_ref()
            .map(|o| o.policy.clone())
            .filter(|p| !p.is_empty()),
        issuer: r.origin.as_ref().map(|o| o.issuer.clone()),
    }
}
