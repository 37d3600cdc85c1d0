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
//! | `GET /v1/audit?after=N&limit=M&principal=&service=&decision=&kind=&since=&until=` | audit events after sequence number N, filtered |
//! | `POST /v1/agents/{name}/enroll` | a one-use enrollment token for an agent, with the CA pin (once) |
//! | `POST /v1/agents/{name}/revoke` | disconnect an agent now and refuse its certificates |
//! | `GET /v1/agents` | each agent's state, version, last heartbeat and services |
//! | `GET /v1/report?since=30d` | the hygiene report: unused tokens, quiet services, broad grants, … |
//! | `GET /v1/config` | the SHA-256 of the config in force |
//! | `POST /v1/config/plan` | what `{"config": "<toml>"}` would change in the running gateway |
//! | `POST /v1/config/apply` | apply it, as one atomic change, audited as `config.applied` |
//! | `GET /metrics` | Prometheus text format (needs the admin token too) |

use std::time::Duration;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use keyway_core::clock::format_ms;
use keyway_core::config::ServiceKind;
use keyway_core::EventKind;
use keyway_core::{TokenKind, UnixMillis};
use keyway_store::{AuditQuery, TokenRecord};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::control::Control;
use crate::secrets::SecretError;
use crate::tokens::{CredentialRequest, IssueError, IssueRequest, RotateError};

type Gw = Control;

/// Proof that the caller presented a live admin token.
pub struct Admin {
    pub token_id: String,
    pub principal: String,
}

/// A token as the admin API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub kind: String,
    pub principal: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub methods: Vec<String>,
    pub paths: Vec<String>,
    /// For database services: the role the token connects as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub state: String,
    pub created_at: String,
    pub expires_at: String,
    pub revoked_at: Option<String>,
    pub last_used_at: Option<String>,
}

/// The answer to `POST /v1/tokens`. Its `Debug` leaves the token out.
#[derive(Serialize, Deserialize)]
pub struct Issued {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

#[derive(Debug, Deserialize)]
struct AuditParams {
    #[serde(default)]
    after: i64,
    #[serde(default)]
    limit: u32,
    principal: Option<String>,
    service: Option<String>,
    decision: Option<String>,
    kind: Option<String>,
    /// RFC 3339, or a duration back from now (`1h`).
    since: Option<String>,
    until: Option<String>,
}

pub fn router(gw: Gw) -> Router {
    Router::new()
        .route("/v1/status", get(status))
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
        .route("/v1/report", get(report))
        .route("/v1/config", get(current_config))
        .route("/v1/config/plan", post(plan_config))
        .route("/v1/config/apply", post(apply_config))
        .route("/metrics", get(metrics))
        .fallback(|_: Admin| async { error(StatusCode::NOT_FOUND, "no such admin call") })
        .with_state(gw)
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("token", &"***")
            .field("info", &self.info)
            .finish()
    }
}

// === impl Admin ===

impl FromRequestParts<Gw> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, gw: &Gw) -> Result<Self, Self::Rejection> {
        let mut leak = gw.event(EventKind::AdminDenied);
        if gw.tokens.refuse_token_in_url(&parts.uri, &mut leak) {
            leak.deny(keyway_core::DenyReason::TokenInUrl);
            gw.audit.record(leak);
            return Err(error(StatusCode::UNAUTHORIZED, "unauthorized"));
        }
        let text = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        let conn = parts.extensions.get::<crate::listener::ConnInfo>();
        let source = conn.map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| {
            c.peer.ip().to_canonical()
        });
        let cert = conn.and_then(|c| c.cert_thumbprint.as_deref());
        let result = gw
            .authz
            .authenticate(TokenKind::Admin, text, source, cert)
            .map_err(|r| (r.reason, r.token_id));
        match result {
            Ok(entry) => {
                entry.mark_used(gw.now());
                Ok(Admin {
                    token_id: entry.id().to_owned(),
                    principal: entry.record.principal.clone(),
                })
            }
            Err((reason, token_id)) => {
                let mut ev = gw.event(EventKind::AdminDenied);
                ev.deny(reason);
                ev.token_id = token_id;
                ev.source = conn.map(|c| c.peer.ip().to_canonical().to_string());
                ev.detail = json!({ "path": keyway_core::token::redact(parts.uri.path()) });
                gw.audit.record(ev);
                Err(error(StatusCode::UNAUTHORIZED, "unauthorized"))
            }
        }
    }
}

// === impl TokenInfo ===

impl TokenInfo {
    pub fn new(
        r: &TokenRecord,
        revoked_at: Option<UnixMillis>,
        last_used: Option<UnixMillis>,
        now: UnixMillis,
    ) -> Self {
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
        Self {
            id: r.id.clone(),
            kind: r.kind.as_str().into(),
            principal: r.principal.clone(),
            service,
            methods,
            paths,
            role: r.grant.as_ref().and_then(|g| g.role.clone()),
            state: state.into(),
            created_at: format_ms(r.created_at),
            expires_at: format_ms(r.expires_at),
            revoked_at: revoked_at.map(format_ms),
            last_used_at: last_used.map(format_ms),
        }
    }
}

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
            json!({
                "name": s.name,
                "protocol": protocol,
                "listen": s.listen.map(|l| l.to_string()),
                "upstream": upstream,
                "max_ttl": keyway_core::units::format_duration(s.max_ttl),
            })
        })
        .collect();
    Json(json!({ "version": env!("CARGO_PKG_VERSION"), "services": services })).into_response()
}

async fn issue_token(admin: Admin, State(gw): State<Gw>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<IssueRequest>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be JSON: {\"service\": …, \"principal\": …, \"ttl\": \"15m\", \"methods\": […], \"paths\": […]}",
        );
    };
    match gw.tokens.issue(&req, &admin.token_id).await {
        Ok((token, record)) => {
            let info = TokenInfo::new(&record, None, None, gw.now());
            let token = secrecy::ExposeSecret::expose_secret(token.secret()).to_owned();
            (StatusCode::CREATED, Json(Issued { token, info })).into_response()
        }
        Err(IssueError::Store(e)) => {
            tracing::error!(error = %e, "could not store a new token");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store failed; see the gateway log",
            )
        }
        Err(IssueError::UnknownService(_)) => error(
            StatusCode::NOT_FOUND,
            &IssueError::UnknownService(req.service).to_string(),
        ),
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
struct ListParams {
    /// Only tokens not used (nor issued) within this long, like `30d`.
    unused: Option<String>,
}

async fn issue_credential(admin: Admin, State(gw): State<Gw>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<CredentialRequest>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be JSON: {\"principal\": …, \"services\": […], \"cidrs\": […], \"max_age\": \"90d\"}",
        );
    };
    match gw.tokens.issue_credential(&req, &admin.token_id).await {
        Ok((token, record)) => {
            let info = TokenInfo::new(&record, None, None, gw.now());
            let token = secrecy::ExposeSecret::expose_secret(token.secret()).to_owned();
            (StatusCode::CREATED, Json(Issued { token, info })).into_response()
        }
        Err(IssueError::Store(e)) => {
            tracing::error!(error = %e, "could not store a new credential");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store failed; see the gateway log",
            )
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

async fn list_tokens(_: Admin, State(gw): State<Gw>, Query(p): Query<ListParams>) -> Response {
    let now = gw.now();
    let unused_since = match p.unused.as_deref().map(keyway_core::units::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(now - keyway_core::clock::duration_ms(d)),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, &format!("unused: {e}")),
    };
    let records = match gw.store.tokens().await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "could not list tokens");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store failed; see the gateway log",
            );
        }
    };
    let tokens: Vec<TokenInfo> = records
        .iter()
        .filter_map(|r| {
            let info = live_info(&gw, r, now);
            let last = info.1.unwrap_or(r.created_at);
            unused_since
                .is_none_or(|since| last < since)
                .then_some(info.0)
        })
        .collect();
    Json(tokens).into_response()
}

/// A token as listed, with the index's fresher last use and revocation; and the last
/// use in milliseconds.
fn live_info(gw: &Control, r: &TokenRecord, now: UnixMillis) -> (TokenInfo, Option<UnixMillis>) {
    let live = gw.tokens.token(&r.id);
    let last = live.as_ref().and_then(|e| e.last_used()).or(r.last_used_at);
    let revoked = live.as_ref().and_then(|e| e.revoked_at()).or(r.revoked_at);
    (TokenInfo::new(r, revoked, last, now), last)
}

async fn revoke_matching(admin: Admin, State(gw): State<Gw>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    struct Body {
        principal: Option<String>,
        service: Option<String>,
        /// RFC 3339.
        issued_before: Option<String>,
    }
    let Ok(b) = serde_json::from_slice::<Body>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be JSON: {\"principal\": …, \"service\": …, \"issued_before\": \"2026-11-28T10:00:00Z\"}",
        );
    };
    let issued_before = match b
        .issued_before
        .as_deref()
        .map(keyway_core::clock::parse_time)
    {
        None => None,
        Some(Some(t)) => Some(t),
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "issued_before is not an RFC 3339 time like 2026-11-28T10:00:00Z",
            )
        }
    };
    let filter = crate::tokens::RevokeFilter {
        principal: b.principal,
        service: b.service,
        issued_before,
    };
    if filter.principal.is_none() && filter.service.is_none() && filter.issued_before.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "name at least one of principal, service, issued_before",
        );
    }
    match gw.tokens.revoke_where(&filter, &admin.token_id).await {
        Ok(records) => {
            let now = gw.now();
            let infos: Vec<TokenInfo> = records.iter().map(|r| live_info(&gw, r, now).0).collect();
            Json(infos).into_response()
        }
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the store failed part way; the tokens revoked so far are revoked; see the gateway log and run again",
        ),
    }
}

async fn rotate_token(
    admin: Admin,
    State(gw): State<Gw>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    #[derive(Deserialize)]
    struct Body {
        overlap: Option<String>,
    }
    let overlap = match serde_json::from_slice::<Body>(&body).map(|b| b.overlap) {
        Ok(None) => Duration::from_secs(300),
        Ok(Some(o)) if o.trim() == "0" || o.trim() == "0s" => Duration::ZERO,
        Ok(Some(o)) => match keyway_core::units::parse_duration(&o) {
            Ok(d) => d,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("overlap: {e}")),
        },
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "body must be JSON: {\"overlap\": \"5m\"}",
            )
        }
    };
    match gw.tokens.rotate(&id, overlap, &admin.token_id).await {
        Ok((token, record, until)) => {
            let info = TokenInfo::new(&record, None, None, gw.now());
            let token = secrecy::ExposeSecret::expose_secret(token.secret()).to_owned();
            let body = json!({
                "token": token,
                "predecessor_expires_at": format_ms(until),
                "info": info,
            });
            (StatusCode::CREATED, Json(body)).into_response()
        }
        Err(RotateError::Unknown) => error(StatusCode::NOT_FOUND, "no token with that id"),
        Err(RotateError::Store(e)) => {
            tracing::error!(error = %e, "could not rotate a token");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store failed; see the gateway log",
            )
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

async fn revoke_token(admin: Admin, State(gw): State<Gw>, Path(id): Path<String>) -> Response {
    match gw.tokens.revoke(&id, &admin.token_id, None).await {
        Ok(Some(record)) => Json(live_info(&gw, &record, gw.now()).0).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no token with that id"),
        // Logged by `revoke`, which also cut the token's use in this process.
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the token is revoked in the running gateway, but the store failed to record it \
             (it would come back after a restart); see the gateway log and revoke again",
        ),
    }
}

async fn set_secret(
    admin: Admin,
    State(gw): State<Gw>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    #[derive(Deserialize)]
    struct Body {
        value: SecretString,
    }
    // Parse errors of this body are not echoed: they could quote the value.
    let Ok(b) = serde_json::from_slice::<Body>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be JSON: {\"value\": \"…\"}",
        );
    };
    match gw.secrets.set(&name, &b.value, &admin.token_id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(SecretError::Store(e)) => {
            tracing::error!(error = %e, "could not store a secret");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store failed; see the gateway log",
            )
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

async fn list_secrets(_: Admin, State(gw): State<Gw>) -> Response {
    Json(gw.secrets.names()).into_response()
}

async fn audit(_: Admin, State(gw): State<Gw>, Query(p): Query<AuditParams>) -> Response {
    let now = gw.now();
    // A time, or how long ago: `2026-11-28T10:00:00Z`, `1h`.
    let when = |t: &Option<String>| -> Result<Option<UnixMillis>, ()> {
        let Some(t) = t else { return Ok(None) };
        if let Some(at) = keyway_core::clock::parse_time(t) {
            return Ok(Some(at));
        }
        keyway_core::units::parse_duration(t)
            .map(|d| Some(now - keyway_core::clock::duration_ms(d)))
            .map_err(|_| ())
    };
    let (Ok(since), Ok(until)) = (when(&p.since), when(&p.until)) else {
        return error(
            StatusCode::BAD_REQUEST,
            "since and until are RFC 3339 times (2026-11-28T10:00:00Z) or durations back from now (1h)",
        );
    };
    match gw
        .store
        .audit_events(&AuditQuery {
            after_seq: p.after,
            limit: p.limit,
            principal: p.principal,
            service: p.service,
            decision: p.decision,
            kind: p.kind,
            since,
            until,
        })
        .await
    {
        Ok(events) => Json(events).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "could not read the audit log");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store failed; see the gateway log",
            )
        }
    }
}

#[derive(Deserialize)]
struct ReportParams {
    since: Option<String>,
}

async fn report(_: Admin, State(gw): State<Gw>, Query(p): Query<ReportParams>) -> Response {
    let since = match p.since.as_deref().map(keyway_core::units::parse_duration) {
        None => Duration::from_secs(30 * 24 * 3600),
        Some(Ok(d)) => d,
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, &format!("since: {e}")),
    };
    match crate::report::build(&gw, crate::report::window_start(gw.now(), since)).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "could not build the report");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store failed; see the gateway log",
            )
        }
    }
}

#[derive(Debug, Deserialize)]
struct ConfigBody {
    config: String,
}

async fn current_config(_: Admin, State(gw): State<Gw>) -> Response {
    let c = gw.config();
    Json(json!({
        "sha256": c.written.sha256,
        "services": c.services.keys().collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn plan_config(admin: Admin, State(gw): State<Gw>, body: Bytes) -> Response {
    reload(admin, gw, body, true).await
}

async fn apply_config(admin: Admin, State(gw): State<Gw>, body: Bytes) -> Response {
    reload(admin, gw, body, false).await
}

/// Checks the proposed config as `keyway validate` does (errors refuse it) and plans
/// or applies it. Relative paths in it are taken from the running config's folder.
async fn reload(admin: Admin, gw: Gw, body: Bytes, dry_run: bool) -> Response {
    let Ok(b) = serde_json::from_slice::<ConfigBody>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected {\"config\": \"<keyway.toml text>\"}",
        );
    };
    let base = gw.config().written.base_dir.clone();
    let config = match crate::reloads::check_text(&b.config, &base) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    match gw
        .reloads
        .ask(config, &admin.principal, Some(&admin.token_id), dry_run)
        .await
    {
        Ok(outcome) => Json(outcome).into_response(),
        Err(e @ crate::reloads::ApplyError::NeedsRestart(_)) => {
            error(StatusCode::CONFLICT, &e.to_string())
        }
        Err(e @ crate::reloads::ApplyError::Stopped) => {
            error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
    }
}

async fn metrics(_: Admin, State(gw): State<Gw>) -> Response {
    let text = gw.metrics.render(&gw.states());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// An enrollment, given once: the token and the CA pin joined by `.`, as
/// `keyway agent run --enroll-token-file` reads it.
#[derive(Serialize, Deserialize)]
pub struct Enrollment {
    pub enrollment: String,
    pub expires_at: String,
}

async fn enroll_agent(admin: Admin, State(gw): State<Gw>, Path(name): Path<String>) -> Response {
    let pin = match crate::tls::local_ca_pin(&gw.config().data_dir) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "no local CA to enroll agents with");
            return error(
                StatusCode::CONFLICT,
                "the gateway's local CA is missing; agents need `tunnel_listen` without `tunnel_tls`",
            );
        }
    };
    match gw.tokens.issue_enrollment(&name, &admin.token_id).await {
        Ok((token, record)) => {
            let token = secrecy::ExposeSecret::expose_secret(token.secret());
            let body = Enrollment {
                enrollment: format!("{token}.{pin}"),
                expires_at: format_ms(record.expires_at),
            };
            (StatusCode::CREATED, Json(body)).into_response()
        }
        Err(IssueError::Store(e)) => {
            tracing::error!(error = %e, "could not store an enrollment token");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store failed; see the gateway log",
            )
        }
        Err(e) => error(StatusCode::NOT_FOUND, &e.to_string()),
    }
}

async fn revoke_agent(admin: Admin, State(gw): State<Gw>, Path(name): Path<String>) -> Response {
    if !gw.config().agents.contains_key(&name) {
        return error(
            StatusCode::NOT_FOUND,
            "no agent with that name in the config",
        );
    }
    match gw.revoke_agent(&name, &admin.token_id).await {
        Ok(closed) => Json(json!({ "agent": name, "connections_closed": closed })).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "could not record an agent revocation");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the agent is disconnected, but the store failed to record the revocation; revoke again",
            )
        }
    }
}

async fn list_agents(_: Admin, State(gw): State<Gw>) -> Response {
    Json(gw.agents.status(&gw.config())).into_response()
}

fn error(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({ "error": msg }))).into_response()
}
