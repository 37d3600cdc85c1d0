//! The live sessions: this gateway's, and on a shared store every other replica's
//! as its last heartbeat (a second old at most) carries them; terminate one here or
//! there. A session on another replica is ended through the store: a change row
//! that replica follows within a second, written with the audit event in one
//! transaction.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use keyway_core::clock::format_ms;
use keyway_core::EventKind;
use keyway_store::BeatSession;
use maud::{html, Markup};
use serde::Deserialize;

use super::pages::page;
use super::{record, unaudited, Console, Person};

/// A heartbeat older than this is a replica gone: its sessions are not listed.
const FRESH_MS: i64 = 5_000;

/// Every live session the console can see: the replica it runs on (this one's
/// name first), and the session.
async fn all(c: &Console) -> Vec<(String, BeatSession)> {
    let own = c.gw.config().replica.clone();
    let mut rows: Vec<_> =
        c.gw.sessions
            .list()
            .iter()
            .map(|s| (own.clone(), s.to_beat()))
            .collect();
    if c.gw.store.shared() {
        let now = c.gw.now();
        // Unreadable, the other replicas' are left out, and the page says nothing
        // false about this one's.
        for beat in c.gw.store.replicas().await.unwrap_or_default() {
            if beat.replica != own && now - beat.at < FRESH_MS {
                rows.extend(beat.sessions.into_iter().map(|s| (beat.replica.clone(), s)));
            }
        }
    }
    rows.sort_by(|a, b| (a.1.started_at, &a.0, a.1.id).cmp(&(b.1.started_at, &b.0, b.1.id)));
    rows
}

async fn session_table(c: &Console, p: &Person) -> Markup {
    let rows = all(c).await;
    let shared = c.gw.store.shared();
    html! {
        tbody id="session-rows" {
            @if rows.is_empty() { tr { td colspan="10" { "No live session." } } }
            @for (replica, s) in &rows {
                tr {
                    @if shared { td data-label="Replica" { (replica) } }
                    td data-label="Protocol" { (s.protocol) }
                    td data-label="Service" { (s.service) }
                    td data-label="Principal" { (s.principal) }
                    td data-label="Token" { code { (s.token_id) } }
                    td data-label="Source" { (s.source) }
                    td data-label="Started" { (format_ms(s.started_at)) }
                    td data-label="In / out" class="num" { (bytes(s.bytes_in)) " / " (bytes(s.bytes_out)) }
                    td data-label="Statement" { @if let Some(st) = &s.statement { code class="statement" { (st) } } }
                    td {
                        @if p.admin {
                            form method="post" action={ "/ui/sessions/" (s.id) "/terminate" } {
                                input type="hidden" name="csrf" value=(p.csrf);
                                input type="hidden" name="replica" value=(replica);
                                label { input type="checkbox" name="revoke" value="1"; " and revoke its token" }
                                button type="submit" class="danger" aria-label={ "Terminate session " (s.id) " on " (replica) } { "Terminate" }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A byte count as people read it.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

pub(super) async fn sessions(State(c): State<Console>, p: Person) -> Response {
    let rows = session_table(&c, &p).await;
    let shared = c.gw.store.shared();
    page(
        "Live sessions",
        Some(&p),
        html! {
            p class="hint" {
                "Tunnel streams, PostgreSQL sessions and WebSockets open now"
                @if shared { ", on every replica" }
                "; refreshed every second."
            }
            table data-refresh="/ui/sessions/rows" class="cards" {
                thead { tr {
                    @if shared { th { "Replica" } }
                    th { "Protocol" } th { "Service" } th { "Principal" } th { "Token" } th { "Source" } th { "Started" } th { "In / out" } th { "Last statement" } th { "" }
                } }
                (rows)
            }
        },
    )
}

/// The rows alone, for the page's refresh.
pub(super) async fn session_rows(State(c): State<Console>, p: Person) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        session_table(&c, &p).await.into_string(),
    )
        .into_response()
}

#[derive(Deserialize)]
pub(super) struct Terminate {
    #[serde(default)]
    csrf: String,
    /// The replica it runs on; this one when empty.
    #[serde(default)]
    replica: String,
    /// Also revoke the session's token.
    #[serde(default)]
    revoke: Option<String>,
}

/// Ends a live session at once (its client is told where the protocol can say
/// so), here or on the replica it runs on, and revokes its token when asked.
pub(super) async fn terminate(
    State(c): State<Console>,
    p: Person,
    Path(id): Path<u64>,
    Form(f): Form<Terminate>,
) -> Response {
    if let Some(refused) = p.refusal(&f.csrf) {
        return refused;
    }
    let own = c.gw.config().replica.clone();
    let replica = if f.replica.is_empty() {
        own.clone()
    } else {
        f.replica
    };
    let Some((_, s)) = all(&c)
        .await
        .into_iter()
        .find(|(r, s)| *r == replica && s.id == id)
    else {
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
        "replica": replica,
        "protocol": s.protocol,
        "session_principal": s.principal,
        "session_token": s.token_id,
        "revoke": revoke,
    });
    // Recorded first (here: with the request to the other replica): an action the
    // audit log cannot take is not done.
    if replica == own {
        if !record(&c, ev, &p).await {
            return unaudited();
        }
    } else {
        ev.principal = Some(p.principal.clone());
        ev.token_id = Some(p.token_id.clone());
        ev.source = p.source.clone();
        let events = [ev];
        if let Err(e) =
            c.gw.store
                .end_session(&format!("{replica}:{id}"), &events)
                .await
        {
            tracing::error!(error = %e, "the console could not ask another replica to end a session");
            return unaudited();
        }
        c.gw.audit.committed(&events);
    }
    if revoke {
        if let Err(e) = c.gw.tokens.revoke(&s.token_id, &p.token_id, None).await {
            tracing::error!(error = %e, "the console could not revoke a token");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the store did not take the revocation; the session's token still works",
            )
                .into_response();
        }
    }
    if replica == own {
        c.gw.sessions.end(id);
    }
    Redirect::to("/ui/sessions").into_response()
}
