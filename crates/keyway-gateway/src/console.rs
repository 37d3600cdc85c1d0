//! The console: the gateway's own web pages for operators, served under `/ui/` on
//! the admin listener, rendered on the server (`console/pages.rs`), with one small
//! script of its own and nothing fetched from elsewhere.
//!
//! Sign-in takes an admin token once; the console then keeps a session of its own,
//! named by a random cookie (`HttpOnly`, `SameSite=Strict`, `Secure` over TLS,
//! `Path=/ui`) that lives [`SESSION_TTL`] and ends at sign-out, when the gateway
//! stops, or when the admin token behind it is revoked or expires. Every form that
//! changes something carries the session's CSRF token, checked in constant time.
//! Every page is sent with a strict Content-Security-Policy (no inline script or
//! style), `X-Frame-Options: DENY`, `no-store`. Sign-in, sign-out and every action
//! are audit events naming the person.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use keyway_core::{EventKind, UnixMillis};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::control::Control;

mod operate;
mod pages;

/// How long a console session lives.
pub const SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(3600);
const COOKIE: &str = crate::runtime::CONSOLE_COOKIE;
/// Console sessions kept at most.
const MAX_SESSIONS: usize = 1_000;

/// The console's state: the control plane's handles and its sessions.
#[derive(Clone)]
pub struct Console {
    gw: Control,
    /// By the SHA-256 of the cookie's value.
    sessions: Arc<Mutex<HashMap<[u8; 32], Signed>>>,
}

/// A signed-in person's console session.
#[derive(Clone)]
struct Signed {
    principal: String,
    /// The admin token it was opened with: revoked or expired, the session ends.
    token_id: String,
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
pub fn router(gw: Control) -> Router {
    let console = Console {
        gw,
        sessions: Arc::default(),
    };
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(pages::overview))
        .route("/ui/login", get(pages::login).post(sign_in))
        .route("/ui/logout", post(sign_out))
        .route("/ui/sessions", get(pages::sessions))
        .route("/ui/sessions/rows", get(pages::session_rows))
        .route("/ui/sessions/{id}/terminate", post(terminate))
        .route("/ui/tokens", get(pages::tokens))
        .route("/ui/tokens/{id}/revoke", post(revoke))
        .route("/ui/agents", get(operate::agents))
        .route("/ui/agents/{name}/revoke", post(operate::revoke_agent))
        .route("/ui/config", get(operate::config))
        .route("/ui/audit", get(pages::audit))
        .route("/ui/audit/export", get(pages::export))
        .route("/ui/console.css", get(pages::css))
        .route("/ui/console.js", get(pages::js))
        .route("/ui/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/ui/{*rest}", get(pages::not_found).post(pages::not_found))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(console)
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

fn cookie_of(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

// === impl Person ===

impl FromRequestParts<Console> for Person {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &Console) -> Result<Self, Self::Rejection> {
        let to_login = || Redirect::to("/ui/login").into_response();
        let key = digest(&cookie_of(parts).ok_or_else(to_login)?);
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
        // The admin token behind it must still be live.
        let live =
            c.gw.index
                .get(&s.token_id)
                .is_some_and(|e| e.check_live(now).is_ok());
        if !live {
            sessions.remove(&key);
            return Err(to_login());
        }
        Ok(Person {
            principal: s.principal,
            token_id: s.token_id,
            source: conn.map(|c| c.peer.ip().to_canonical().to_string()),
            csrf: s.csrf,
            key,
        })
    }
}

impl Person {
    /// Whether `form`'s CSRF token is this session's (constant time).
    fn checks(&self, form: &Csrf) -> bool {
        !form.csrf.is_empty() && bool::from(form.csrf.as_bytes().ct_eq(self.csrf.as_bytes()))
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

/// Whether a form was posted from the console's own pages: a browser says where a
/// POST comes from (`Sec-Fetch-Site`, or `Origin`); one that says another site is
/// refused, so no other site can sign a person in to a session of its choosing.
fn same_origin(headers: &axum::http::HeaderMap) -> bool {
    let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        return site == "same-origin" || site == "none";
    }
    match (get("origin"), get("host")) {
        (Some(origin), Some(host)) => origin.split_once("://").is_some_and(|(_, o)| o == host),
        (Some(_), None) => false,
        // Not a browser's cross-site form (curl, a script): the token decides.
        (None, _) => true,
    }
}

#[derive(Deserialize)]
struct SignIn {
    #[serde(default)]
    token: String,
}

/// Takes an admin token once and opens a console session.
async fn sign_in(
    State(c): State<Console>,
    conn: Option<axum::Extension<crate::listener::ConnInfo>>,
    headers: axum::http::HeaderMap,
    Form(f): Form<SignIn>,
) -> Response {
    if !same_origin(&headers) {
        return forged();
    }
    let conn = conn.map(|axum::Extension(c)| c);
    let conn = conn.as_ref();
    let tls = conn.is_some_and(|c| c.tls);
    let mut ev = c.gw.event(EventKind::ConsoleSignIn);
    ev.source = conn.map(|c| c.peer.ip().to_canonical().to_string());
    let entry = match c.gw.authenticate_admin(Some(f.token.trim()), conn) {
        Ok(e) => e,
        Err(refused) => {
            ev.deny(refused.reason);
            ev.token_id = refused.token_id;
            ev.principal = refused.principal;
            let _ = c.gw.audit.record(ev).wait().await;
            return pages::login_refused().await;
        }
    };
    let cookie = random();
    let now = c.gw.now();
    let s = Signed {
        principal: entry.record.principal.clone(),
        token_id: entry.id().to_owned(),
        cert: entry.record.cert_thumbprint.clone(),
        csrf: random(),
        expires_at: now + SESSION_TTL.as_millis() as UnixMillis,
    };
    ev.allow();
    ev.principal = Some(s.principal.clone());
    ev.token_id = Some(s.token_id.clone());
    if !c.gw.audit.record(ev).wait().await {
        return unaudited();
    }
    {
        let mut sessions = c.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| s.expires_at > now);
        // Bounded: past it, the session closest to its end makes room.
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                sessions.remove(&k);
            }
        }
        sessions.insert(digest(&cookie), s);
    }
    let secure = if tls { "; Secure" } else { "" };
    let set = format!(
        "{COOKIE}={cookie}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    );
    let mut r = Redirect::to("/ui/").into_response();
    if let Ok(v) = HeaderValue::from_str(&set) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn sign_out(State(c): State<Console>, p: Person, Form(f): Form<Csrf>) -> Response {
    if !p.checks(&f) {
        return forged();
    }
    c.sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&p.key);
    let mut r = Redirect::to("/ui/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("keyway_console=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0"),
    );
    let ev = c.gw.event(EventKind::ConsoleSignOut);
    audited(&c, ev, &p, r).await
}

#[derive(Deserialize)]
struct Terminate {
    #[serde(default)]
    csrf: String,
    /// Also revoke the session's token.
    #[serde(default)]
    revoke: Option<String>,
}

/// Ends a live session at once (its client is told where the protocol can say
/// so), and revokes its token when asked.
async fn terminate(
    State(c): State<Console>,
    p: Person,
    Path(id): Path<u64>,
    Form(f): Form<Terminate>,
) -> Response {
    if !p.checks(&Csrf { csrf: f.csrf }) {
        return forged();
    }
    let Some(s) = c.gw.sessions.list().into_iter().find(|s| s.id == id) else {
        return (
            StatusCode::NOT_FOUND,
            "no such live session (it may have ended)",
        )
            .into_response();
    };
    let revoke = f.revoke.is_some();
    let mut ev = c.gw.event(EventKind::SessionTerminated);
    ev.service = Some(s.service.clone());
    ev.detail = serde_json::json!({
        "session": id,
        "protocol": s.protocol,
        "session_principal": s.principal,
        "session_token": s.token_id,
        "revoke": revoke,
    });
    // Recorded first: an action the audit log cannot take is not done.
    if !record(&c, ev, &p).await {
        return unaudited();
    }
    if revoke {
        if let Err(e) = c.gw.tokens.revoke(&s.token_id, &p.token_id, None).await {
            tracing::error!(error = %e, "the console could not revoke a token");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the store did not take the revocation; the session is left as it was",
            )
                .into_response();
        }
    }
    c.gw.sessions.end(id);
    Redirect::to("/ui/sessions").into_response()
}

/// Revokes a token (and its children, as `token revoke` does).
async fn revoke(
    State(c): State<Console>,
    p: Person,
    Path(id): Path<String>,
    Form(f): Form<Csrf>,
) -> Response {
    if !p.checks(&f) {
        return forged();
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
    kind: String,
    #[serde(default)]
    after: i64,
}

impl AuditFilter {
    fn query(&self, limit: u32) -> keyway_store::AuditQuery {
        let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
        keyway_store::AuditQuery {
            after_seq: self.after.max(0),
            limit,
            principal: some(&self.principal),
            service: some(&self.service),
            decision: some(&self.decision),
            kind: some(&self.kind),
            ..keyway_store::AuditQuery::default()
        }
    }
}
