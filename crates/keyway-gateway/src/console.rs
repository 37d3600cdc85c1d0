//! The console: the gateway's own web pages for operators, served under `/ui/` on
//! the admin listener, rendered on the server (`console/pages.rs`), with one small
//! script of its own and nothing fetched from elsewhere.
//!
//! Sign-in takes an admin token once, or goes through the identity provider
//! (`[identity.oidc]`, `console/sign.rs`); the console then keeps a session of its own,
//! named by a random cookie (`HttpOnly`, `SameSite=Strict`, `Secure` over TLS,
//! `Path=/ui`) that lives [`SESSION_TTL`] and ends at sign-out, when the gateway
//! stops, or when the admin token behind it is revoked or expires. Every form that
//! changes something carries the session's CSRF token, checked in constant time.
//! Every page is sent with a strict Content-Security-Policy (no inline script or
//! style), `X-Frame-Options: DENY`, `no-store`. Sign-in, sign-out and every action
//! are audit events naming the person.
//!
//! Who signed in with an admin token acts (terminates, revokes, issues, approves);
//! who signed in through the provider acts when `identity.console_admins` names
//! them or one of their groups, and otherwise only looks: the pages show a viewer
//! no action, and every action's route refuses one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use keyway_core::UnixMillis;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::control::Control;
use crate::people::People;

mod grant;
mod live;
mod operate;
mod overview;
mod pages;
mod sign;

/// How long a console session lives.
pub const SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(3600);
const COOKIE: &str = crate::runtime::CONSOLE_COOKIE;
/// Console sessions kept at most.
const MAX_SESSIONS: usize = 1_000;
/// Console sessions one person keeps at most: a new sign-in ends their oldest.
const MAX_SESSIONS_EACH: usize = 10;

/// The console's state: the control plane's handles and its sessions.
#[derive(Clone)]
pub struct Console {
    gw: Control,
    /// Sign-ins through the provider, and access requests.
    people: Arc<People>,
    /// By the SHA-256 of the cookie's value.
    sessions: Arc<Mutex<HashMap<[u8; 32], Signed>>>,
    /// The last walk of the audit chain from the console, and when; held while one
    /// runs, so one runs at a time.
    verified: Arc<tokio::sync::Mutex<Option<(UnixMillis, keyway_store::Verdict)>>>,
}

/// A signed-in person's console session.
#[derive(Clone)]
struct Signed {
    principal: String,
    /// The admin token it was opened with, or the person's `kwse_` session made
    /// by a sign-in through the provider: revoked or expired, the session ends.
    token_id: String,
    /// Signed in through the provider (else with an admin token).
    sso: bool,
    /// Whether it acted at sign-in: when sessions must make room, a viewer's goes
    /// first.
    admin: bool,
    /// The client certificate the admin token is bound to, if it is: every request
    /// must come with it, as every admin API call must.
    cert: Option<String>,
    csrf: String,
    expires_at: UnixMillis,
}

/// A request from a signed-in person.
pub struct Person {
    principal: String,
    token_id: String,
    /// May act (terminate, revoke, issue, approve); a viewer only looks.
    admin: bool,
    /// Signed in through the provider: sign-out ends the `kwse_` session too.
    sso: bool,
    /// The connection's source, for the audit log.
    source: Option<String>,
    csrf: String,
    /// The cookie's digest, to end the session.
    key: [u8; 32],
}

/// The form fields every change carries.
#[derive(Deserialize)]
struct Csrf {
    #[serde(default)]
    csrf: String,
}

/// Served under `/ui` by the admin listener.
pub fn router(gw: Control, people: Arc<People>) -> Router {
    let console = Console {
        gw,
        people,
        sessions: Arc::default(),
        verified: Arc::default(),
    };
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(overview::overview))
        .route("/ui/login", get(sign::login).post(sign::with_token))
        .route("/ui/login/sso", get(sign::sso_start))
        .route("/ui/login/callback", get(sign::sso_callback))
        .route("/ui/logout", post(sign::sign_out))
        .route("/ui/sessions", get(live::sessions))
        .route("/ui/sessions/rows", get(live::session_rows))
        .route("/ui/sessions/{id}/terminate", post(live::terminate))
        .route("/ui/tokens", get(pages::tokens))
        .route("/ui/tokens/new", get(grant::new_token).post(grant::issue))
        .route("/ui/tokens/revoke", post(revoke_matching))
        .route("/ui/tokens/{id}/revoke", post(revoke))
        .route("/ui/requests", get(grant::inbox))
        .route("/ui/requests/{id}/{action}", post(grant::decide))
        .route("/ui/agents", get(operate::agents))
        .route("/ui/agents/{name}/revoke", post(operate::revoke_agent))
        .route("/ui/config", get(operate::config))
        .route("/ui/config/plan", post(operate::plan))
        .route("/ui/config/apply", post(operate::apply))
        .route("/ui/audit", get(pages::audit))
        .route("/ui/audit/export", get(pages::export))
        .route("/ui/audit/verify", post(overview::verify))
        .route("/ui/audit/{seq}", get(pages::event))
        .route("/ui/console.css", get(pages::css))
        .route("/ui/console.js", get(pages::js))
        .route("/ui/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/ui/{*rest}", get(pages::not_found).post(pages::not_found))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(console)
}

/// What a person may do in the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Admin,
    Viewer,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Viewer => "viewer",
        }
    }
}

/// The role `identity.console_admins` or `console_viewers` gives a person signed in
/// through the provider with these subjects; none when neither names them.
fn role_of(config: &keyway_core::config::Config, subjects: &[String]) -> Option<Role> {
    let named = |list: &[String]| subjects.iter().any(|s| list.contains(s));
    let id = &config.identity;
    if named(&id.console_admins) {
        Some(Role::Admin)
    } else if named(&id.console_viewers) {
        Some(Role::Viewer)
    } else {
        None
    }
}

/// The headers every console answer carries.
async fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn digest(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

/// A random value for a cookie or a CSRF token: 32 bytes, base64url.
fn random() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The value of the cookie `name` the request brings.
fn cookie_named(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

// === impl Person ===

impl FromRequestParts<Console> for Person {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &Console) -> Result<Self, Self::Rejection> {
        let to_login = || Redirect::to("/ui/login").into_response();
        let key = digest(&cookie_named(&parts.headers, COOKIE).ok_or_else(to_login)?);
        let now = c.gw.now();
        let mut sessions = c.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| s.expires_at > now);
        let s = sessions.get(&key).cloned().ok_or_else(to_login)?;
        let conn = parts.extensions.get::<crate::listener::ConnInfo>();
        let presented = conn.and_then(|c| c.cert_thumbprint.as_deref());
        if let Some(bound) = &s.cert {
            if !presented.is_some_and(|p| crate::authz::same_thumbprint(p, bound)) {
                return Err(to_login());
            }
        }
        // The token behind it must still be live.
        let Some(entry) =
            c.gw.index
                .get(&s.token_id)
                .filter(|e| e.check_live(now).is_ok())
        else {
            sessions.remove(&key);
            return Err(to_login());
        };
        // A person's role follows the config in force, not the one at sign-in; one
        // it no longer names at all is signed out.
        let role = if s.sso {
            role_of(&c.gw.config(), &crate::people::subjects_of(&entry))
        } else {
            Some(Role::Admin)
        };
        let Some(role) = role else {
            sessions.remove(&key);
            return Err(to_login());
        };
        let admin = role == Role::Admin;
        Ok(Person {
            principal: s.principal,
            token_id: s.token_id,
            admin,
            sso: s.sso,
            source: conn.map(|c| c.peer_text().to_owned()),
            csrf: s.csrf,
            key,
        })
    }
}

impl Person {
    /// Whether `form`'s CSRF token is this session's (constant time).
    fn checks(&self, csrf: &str) -> bool {
        !csrf.is_empty() && bool::from(csrf.as_bytes().ct_eq(self.csrf.as_bytes()))
    }

    /// Why this person may not make a change with `csrf`, as the answer: the form
    /// is not the session's own, or the person looks rather than acts. `None` when
    /// they may.
    fn refusal(&self, csrf: &str) -> Option<Response> {
        if !self.checks(csrf) {
            return Some(forged());
        }
        (!self.admin).then(|| {
            (
                StatusCode::FORBIDDEN,
                "refused: you signed in as a viewer; only the people `identity.console_admins` names (or an admin token) can change anything",
            )
                .into_response()
        })
    }
}

/// A change refused for a missing or wrong CSRF token.
fn forged() -> Response {
    (
        StatusCode::FORBIDDEN,
        "refused: the form did not carry this session's CSRF token; reload the page",
    )
        .into_response()
}

/// Records `ev` (with the person's identity) and answers with `then` once it is
/// committed, or 503 when the audit log cannot take it.
async fn audited(
    c: &Console,
    ev: keyway_store::AuditEvent,
    p: &Person,
    then: Response,
) -> Response {
    if record(c, ev, p).await {
        then
    } else {
        unaudited()
    }
}

/// Records `ev` as the person's, with their source: whether it was committed.
async fn record(c: &Console, mut ev: keyway_store::AuditEvent, p: &Person) -> bool {
    ev.principal = Some(p.principal.clone());
    ev.token_id = Some(p.token_id.clone());
    ev.source = p.source.clone();
    c.gw.audit.record(ev).wait().await
}

fn unaudited() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the audit log cannot be written now, so nothing was done; retry shortly",
    )
        .into_response()
}

/// Revokes a token (and its children, as `token revoke` does).
async fn revoke(
    State(c): State<Console>,
    p: Person,
    Path(id): Path<String>,
    Form(f): Form<Csrf>,
) -> Response {
    if let Some(refused) = p.refusal(&f.csrf) {
        return refused;
    }
    // Recorded as the admin API records it: by the admin token behind the session.
    match c.gw.tokens.revoke(&id, &p.token_id, None).await {
        Ok(Some(_)) => Redirect::to("/ui/tokens").into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such token").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "the console could not revoke a token");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the store did not take the revocation",
            )
                .into_response()
        }
    }
}

#[derive(Deserialize)]
struct Matching {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    principal: String,
    #[serde(default)]
    service: String,
    #[serde(default)]
    policy: String,
}

/// Revokes exactly the live tokens the tokens page lists for a filter (each with
/// its children, as `keyway token revoke ID` does).
async fn revoke_matching(State(c): State<Console>, p: Person, Form(f): Form<Matching>) -> Response {
    if let Some(refused) = p.refusal(&f.csrf) {
        return refused;
    }
    let filter = pages::TokenFilter {
        principal: f.principal.trim().to_owned(),
        service: f.service.trim().to_owned(),
        policy: f.policy.trim().to_owned(),
        state: "live".into(),
    };
    if filter.principal.is_empty() && filter.service.is_empty() && filter.policy.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            "name a principal, a service or a policy",
        )
            .into_response();
    }
    for e in pages::matching(&c, &filter, c.gw.now()) {
        if let Err(e) = c.gw.tokens.revoke(e.id(), &p.token_id, None).await {
            tracing::error!(error = %e, "the console could not revoke tokens");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the store did not take every revocation; those not taken hold in this gateway only until it restarts; run it again",
            )
                .into_response();
        }
    }
    Redirect::to("/ui/tokens?state=revoked").into_response()
}

/// The query of the audit page and its export.
#[derive(Deserialize, Default, Clone)]
pub(crate) struct AuditFilter {
    #[serde(default)]
    principal: String,
    #[serde(default)]
    service: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    kind: String,
    /// From this time on (UTC, `2026-12-06T09:30`), and before `to`.
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    after: i64,
}

impl AuditFilter {
    /// The store's query, or which time was not understood.
    fn query(&self, limit: u32) -> Result<keyway_store::AuditQuery, &'static str> {
        let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
        Ok(keyway_store::AuditQuery {
            after_seq: self.after.max(0),
            limit,
            principal: some(&self.principal),
            service: some(&self.service),
            decision: some(&self.decision),
            reason: some(&self.reason),
            kind: some(&self.kind),
            since: time(&self.from).map_err(|()| "from")?,
            until: time(&self.to).map_err(|()| "to")?,
        })
    }

    /// The filter as a query string, from `after`.
    fn link(&self, after: i64) -> String {
        serde_urlencoded::to_string([
            ("principal", self.principal.as_str()),
            ("service", self.service.as_str()),
            ("decision", self.decision.as_str()),
            ("reason", self.reason.as_str()),
            ("kind", self.kind.as_str()),
            ("from", self.from.as_str()),
            ("to", self.to.as_str()),
            ("after", &after.to_string()),
        ])
        .unwrap_or_default()
    }
}

/// A time as a form gives it (`2026-12-06T09:30`, seconds optional), in UTC; none
/// when empty.
fn time(s: &str) -> Result<Option<UnixMillis>, ()> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let full = if s.len() == 16 {
        format!("{s}:00")
    } else {
        s.to_owned()
    };
    keyway_core::clock::parse_time(&full).map(Some).ok_or(())
}
