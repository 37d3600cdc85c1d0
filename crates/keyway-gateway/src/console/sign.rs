//! Signing in to the console and out of it: with an admin token pasted once, or in
//! the browser through the identity provider (`[identity.oidc]`), back to
//! `/ui/login/callback` on the admin listener.
//!
//! A sign-in through the provider makes the person's `kwse_` session, as
//! `keyway login` does (so `keyway logout`, a revocation or the session's end
//! ends the console's session too), and remembers the flow under way in a cookie
//! of its own (`SameSite=Lax`, since the provider sends the browser back from
//! another site; `Path=/ui/login`; ten minutes), which the callback must bring: a
//! callback made for someone else's browser finds no sign-in under way.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use keyway_core::head::Bearer;
use keyway_core::{EventKind, UnixMillis};
use maud::html;
use serde::Deserialize;

use super::pages::page;
use super::{
    digest, forged, random, unaudited, Console, Csrf, Person, Signed, COOKIE, MAX_SESSIONS,
    MAX_SESSIONS_EACH, SESSION_TTL,
};
use crate::listener::ConnInfo;
use crate::people::Started;

/// The cookie that carries a provider sign-in under way.
const FLOW_COOKIE: &str = "keyway_console_login";

pub(super) async fn login(State(c): State<Console>) -> Response {
    login_page(&c, None)
}

fn login_page(c: &Console, error: Option<&str>) -> Response {
    let providers: Vec<String> = c.gw.config().identity.oidc.keys().cloned().collect();
    page(
        "Sign in",
        None,
        html! {
            @if let Some(e) = error { p class="error" role="alert" { (e) } }
            // A link, not a form: the page's `form-action 'self'` would stop a form
            // redirected to the provider's site.
            @for name in &providers {
                p class="sso" { a href="/ui/login/sso" class="button" { "Sign in with " (name) } }
            }
            form method="post" action="/ui/login" {
                label for="token" { "Admin token" }
                input id="token" name="token" type="password" autocomplete="off" required autofocus[providers.is_empty()];
                p class="hint" { "From " code { "data/admin.token" } " or " code { "keyway admin reset" } ". It is sent once; the console keeps a session of its own for an hour." }
                button type="submit" { "Sign in with the token" }
            }
        },
    )
}

fn refused(c: &Console, status: StatusCode, why: &str) -> Response {
    let mut r = login_page(c, Some(why));
    *r.status_mut() = status;
    r
}

/// Whether a form was posted from the console's own pages: a browser says where a
/// POST comes from (`Sec-Fetch-Site`, or `Origin`); one that says another site is
/// refused, so no other site can sign a person in to a session of its choosing.
fn same_origin(headers: &HeaderMap) -> bool {
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

fn source(conn: Option<&ConnInfo>) -> Option<String> {
    conn.map(|c| c.peer_text().to_owned())
}

#[derive(Deserialize)]
pub(super) struct WithToken {
    #[serde(default)]
    token: String,
}

/// Takes an admin token once and opens a console session.
pub(super) async fn with_token(
    State(c): State<Console>,
    conn: Option<Extension<ConnInfo>>,
    headers: HeaderMap,
    Form(f): Form<WithToken>,
) -> Response {
    if !same_origin(&headers) {
        return forged();
    }
    let conn = conn.map(|Extension(c)| c);
    let conn = conn.as_ref();
    let mut ev = c.gw.event(EventKind::ConsoleSignIn);
    ev.source = source(conn);
    let entry = match c.gw.authenticate_admin(Bearer::Token(f.token.trim()), conn) {
        Ok(e) => e,
        Err(refusal) => {
            ev.deny(refusal.reason);
            ev.token_id = refusal.token_id;
            ev.principal = refusal.principal;
            let _ = c.gw.audit.record(ev).wait().await;
            return refused(
                &c,
                StatusCode::UNAUTHORIZED,
                "That token was refused: it is not a live admin token.",
            );
        }
    };
    let signed = Signed {
        principal: entry.record.principal.clone(),
        token_id: entry.id().to_owned(),
        sso: false,
        admin: true,
        cert: entry.record.cert_thumbprint.clone(),
        csrf: random(),
        expires_at: 0,
    };
    ev.detail = serde_json::json!({ "via": "admin_token", "role": "admin" });
    open(
        &c,
        signed,
        ev,
        conn.is_some_and(|c| c.tls),
        Redirect::to("/ui/").into_response(),
    )
    .await
}

/// Records the sign-in, keeps the session and answers `then` with its cookie.
async fn open(
    c: &Console,
    mut s: Signed,
    mut ev: keyway_store::AuditEvent,
    tls: bool,
    mut then: Response,
) -> Response {
    ev.allow();
    ev.principal = Some(s.principal.clone());
    ev.token_id = Some(s.token_id.clone());
    if !c.gw.audit.record(ev).wait().await {
        return unaudited();
    }
    let cookie = random();
    let now = c.gw.now();
    s.expires_at = now + SESSION_TTL.as_millis() as UnixMillis;
    {
        let mut sessions = c.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| s.expires_at > now);
        // Bounded, each person and all: past a bound, the person's own oldest
        // session makes room, else the oldest viewer's, else the oldest of all; so
        // no one signing in again and again can push the admins out.
        let mine = sessions
            .iter()
            .filter(|(_, x)| x.principal == s.principal)
            .count();
        let room = if mine >= MAX_SESSIONS_EACH {
            oldest(&sessions, |x| x.principal == s.principal)
        } else if sessions.len() >= MAX_SESSIONS {
            oldest(&sessions, |x| !x.admin).or_else(|| oldest(&sessions, |_| true))
        } else {
            None
        };
        if let Some(k) = room {
            sessions.remove(&k);
        }
        sessions.insert(digest(&cookie), s);
    }
    let secure = if tls { "; Secure" } else { "" };
    let set = format!(
        "{COOKIE}={cookie}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    );
    if let Ok(v) = HeaderValue::from_str(&set) {
        then.headers_mut().append(header::SET_COOKIE, v);
    }
    then
}

/// The session closest to its end among those `which` picks.
fn oldest(
    sessions: &std::collections::HashMap<[u8; 32], Signed>,
    which: impl Fn(&Signed) -> bool,
) -> Option<[u8; 32]> {
    sessions
        .iter()
        .filter(|(_, s)| which(s))
        .min_by_key(|(_, s)| s.expires_at)
        .map(|(k, _)| *k)
}

/// Starts a sign-in through the identity provider: to the provider's page, with
/// this console's callback as the place to come back to. Another site can send a
/// browser here, but a sign-in started so only ever signs its own person in.
pub(super) async fn sso_start(
    State(c): State<Console>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Response {
    // The address the browser reached this listener by; the provider only sends
    // it back to an address registered for the client.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<axum::http::uri::Authority>().ok());
    let Some(host) = host else {
        return refused(&c, StatusCode::BAD_REQUEST, "The request named no host.");
    };
    let scheme = if conn.tls { "https" } else { "http" };
    let callback = format!("{scheme}://{host}/ui/login/callback");
    let started = c
        .people
        .console_login_start(&callback, conn.peer.ip().to_canonical())
        .await;
    let (login_id, url) = match started {
        Ok(Started::Browser { login_id, url }) => (login_id, url),
        Ok(Started::Device { .. }) => return could_not_start(&c),
        Err(e) => {
            // The details (a provider unreachable, a client secret not set) are for
            // the log, not for a page anyone can open.
            tracing::warn!(error = %e, "a console sign-in through the provider could not start");
            return could_not_start(&c);
        }
    };
    let secure = if conn.tls { "; Secure" } else { "" };
    let set = format!(
        "{FLOW_COOKIE}={login_id}; HttpOnly; SameSite=Lax; Path=/ui/login; Max-Age=600{secure}"
    );
    let mut r = Redirect::to(&url).into_response();
    if let Ok(v) = HeaderValue::from_str(&set) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn could_not_start(c: &Console) -> Response {
    refused(
        c,
        StatusCode::BAD_GATEWAY,
        "The sign-in through the provider could not start; the gateway's log says why.",
    )
}

/// The OAuth error codes a provider sends back (RFC 6749 §4.1.2.1, OpenID Connect
/// §3.1.2.6): the only words of its answer the page repeats.
const OAUTH_ERRORS: [&str; 12] = [
    "access_denied",
    "invalid_request",
    "unauthorized_client",
    "unsupported_response_type",
    "invalid_scope",
    "server_error",
    "temporarily_unavailable",
    "interaction_required",
    "login_required",
    "account_selection_required",
    "consent_required",
    "invalid_request_uri",
];

#[derive(Deserialize)]
pub(super) struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// The provider sends the browser back here: the code is redeemed, the person's
/// session made, and the console's opened.
pub(super) async fn sso_callback(
    State(c): State<Console>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Query(q): Query<Callback>,
) -> Response {
    let mut ev = c.gw.event(EventKind::ConsoleSignIn);
    ev.source = source(Some(&conn));
    let login_id = super::cookie_named(&headers, FLOW_COOKIE);
    let deny = |mut ev: keyway_store::AuditEvent, reason: &str, why: String| {
        let c = c.clone();
        ev.deny_with(reason);
        ev.detail = serde_json::json!({ "via": "sso", "why": why });
        async move {
            let _ = c.gw.audit.record(ev).wait().await;
            refused(
                &c,
                StatusCode::UNAUTHORIZED,
                &format!("The sign-in was refused: {why}."),
            )
        }
    };
    // Nothing was attempted with a credential: no event (a visit here cannot fill
    // the audit log).
    let Some(login_id) = login_id else {
        return refused(
            &c,
            StatusCode::BAD_REQUEST,
            "No sign-in is under way in this browser; start again.",
        );
    };
    if let Some(e) = q.error {
        let code = OAUTH_ERRORS
            .iter()
            .find(|k| **k == e)
            .unwrap_or(&"an error");
        return deny(
            ev,
            "refused",
            format!("the identity provider answered {code}"),
        )
        .await;
    }
    let done = c
        .people
        .login_finish(&login_id, q.code.as_deref(), q.state.as_deref())
        .await;
    let (person, _session, record) = match done {
        Ok(x) => x,
        Err(crate::people::LoginFinishError::Login(e)) => {
            return deny(ev, e.reason(), e.to_string()).await;
        }
        Err(crate::people::LoginFinishError::Store(e)) => {
            tracing::error!(error = %e, "could not store a console sign-in's session");
            return unaudited();
        }
    };
    let subjects = keyway_core::config::person_subjects(&person.user, &person.groups);
    let Some(role) = super::role_of(&c.gw.config(), &subjects) else {
        // The provider knows them; the console does not: the session just made ends.
        if let Some(entry) = c.gw.index.get(&record.id) {
            if let Err(e) = c.people.logout(&entry).await {
                tracing::error!(error = %e, "could not end the session of a refused console sign-in");
            }
        }
        ev.principal = Some(record.principal.clone());
        let why = format!(
            "{} is named in neither identity.console_admins nor identity.console_viewers",
            record.principal
        );
        return deny(ev, "not_console_user", why).await;
    };
    let role = role.as_str();
    ev.detail = serde_json::json!({ "via": "sso", "provider": person.provider, "role": role });
    let signed = Signed {
        principal: record.principal.clone(),
        token_id: record.id.clone(),
        sso: true,
        admin: role == "admin",
        cert: None,
        csrf: random(),
        expires_at: 0,
    };
    // A page rather than a redirect: the browser came from the provider's site, and
    // a redirect would carry on that cross-site navigation, on which the session's
    // `SameSite=Strict` cookie is not sent; the page moves on from this site.
    let mut then = page(
        "Signed in",
        None,
        html! {
            meta http-equiv="refresh" content="0; url=/ui/";
            p { "Signed in as " (record.principal) " (" (role) "). " a href="/ui/" id="continue" { "Continue to the console" } }
        },
    );
    then.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "keyway_console_login=; HttpOnly; SameSite=Lax; Path=/ui/login; Max-Age=0",
        ),
    );
    open(&c, signed, ev, conn.tls, then).await
}

/// Ends the console's session (and the `kwse_` session a provider sign-in made).
pub(super) async fn sign_out(State(c): State<Console>, p: Person, Form(f): Form<Csrf>) -> Response {
    if !p.checks(&f.csrf) {
        return forged();
    }
    c.sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&p.key);
    if p.sso {
        if let Some(entry) = c.gw.index.get(&p.token_id) {
            if let Err(e) = c.people.logout(&entry).await {
                tracing::error!(error = %e, "could not end the session of a console sign-out");
            }
        }
    }
    let mut r = Redirect::to("/ui/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("keyway_console=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0"),
    );
    let ev = c.gw.event(EventKind::ConsoleSignOut);
    super::audited(&c, ev, &p, r).await
}
