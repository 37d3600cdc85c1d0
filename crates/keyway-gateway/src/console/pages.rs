//! The console's pages, rendered on the server with maud (which escapes every value
//! it is given). Forms post to the routes in `console.rs`; the only script,
//! `console.js`, refreshes the live sessions' rows every second.

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use keyway_core::clock::format_ms;
use maud::{html, Markup, DOCTYPE};

use super::{AuditFilter, Console, Person};

/// Audit events on one page.
const AUDIT_PAGE: u32 = 100;

pub(super) fn page(title: &str, p: Option<&Person>, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Keyway" }
                link rel="stylesheet" href="/ui/console.css";
                link rel="icon" href="/ui/favicon.ico";
                script src="/ui/console.js" defer {}
            }
            body {
                header {
                    strong { "Keyway" }
                    @if let Some(p) = p {
                        nav aria-label="Pages" {
                            a href="/ui/" { "Overview" }
                            a href="/ui/sessions" { "Live sessions" }
                            a href="/ui/tokens" { "Tokens" }
                            a href="/ui/requests" { "Requests" }
                            a href="/ui/audit" { "Audit" }
                            a href="/ui/agents" { "Agents" }
                            a href="/ui/config" { "Config" }
                        }
                        form method="post" action="/ui/logout" class="signout" {
                            input type="hidden" name="csrf" value=(p.csrf);
                            span { (p.principal) @if !p.admin { " (viewer)" } }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    };
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

pub(super) async fn not_found() -> Response {
    let mut r = page(
        "Not found",
        None,
        html! { p { a href="/ui/" { "To the console" } } },
    );
    *r.status_mut() = axum::http::StatusCode::NOT_FOUND;
    r
}

#[derive(serde::Deserialize, Default)]
pub(super) struct TokenFilter {
    #[serde(default)]
    pub(super) principal: String,
    #[serde(default)]
    pub(super) service: String,
    /// The policy a person's token came through.
    #[serde(default)]
    pub(super) policy: String,
    /// `live` (when empty), `revoked`, `expired` or `all`.
    #[serde(default)]
    pub(super) state: String,
}

impl TokenFilter {
    /// The state asked for: `live` when none is.
    fn state(&self) -> &str {
        if self.state.is_empty() {
            "live"
        } else {
            &self.state
        }
    }
}

/// The tokens the filter matches at `now`: what the tokens page lists, and exactly
/// what its "revoke every" button revokes.
pub(super) fn matching(
    c: &Console,
    f: &TokenFilter,
    now: keyway_core::UnixMillis,
) -> Vec<std::sync::Arc<crate::index::Entry>> {
    let state = f.state();
    c.gw.index
        .entries()
        .into_iter()
        .filter(|e| state == "all" || state_of(e, now) == state)
        .filter(|e| {
            f.policy.is_empty()
                || e.record
                    .origin
                    .as_ref()
                    .is_some_and(|o| o.policy == f.policy)
        })
        .filter(|e| f.principal.is_empty() || e.record.principal == f.principal)
        .filter(|e| {
            f.service.is_empty()
                || e.record
                    .grant
                    .as_ref()
                    .is_some_and(|g| g.service == f.service)
        })
        .collect()
}

/// A token's state at `now`, as the tokens page names it.
fn state_of(e: &crate::index::Entry, now: keyway_core::UnixMillis) -> &'static str {
    match e.check_live(now) {
        Ok(()) => "live",
        Err(keyway_core::DenyReason::Revoked) => "revoked",
        Err(_) => "expired",
    }
}

pub(super) async fn tokens(
    State(c): State<Console>,
    p: Person,
    Query(f): Query<TokenFilter>,
) -> Response {
    let now = c.gw.now();
    let state = f.state();
    let mut entries = matching(&c, &f, now);
    entries.sort_by_key(|e| std::cmp::Reverse(e.record.created_at));
    page(
        "Tokens",
        Some(&p),
        html! {
            @if p.admin { p { a href="/ui/tokens/new" { "Issue a token" } } }
            form method="get" action="/ui/tokens" class="filters" {
                label { "Principal " input name="principal" value=(f.principal); }
                label { "Service " input name="service" value=(f.service); }
                label { "Policy " input name="policy" value=(f.policy); }
                label { "State "
                    select name="state" {
                        @for s in ["live", "revoked", "expired", "all"] {
                            option value=(s) selected[s == state] { (s) }
                        }
                    }
                }
                button type="submit" { "Filter" }
            }
            @if p.admin && state == "live" && (!f.principal.is_empty() || !f.service.is_empty() || !f.policy.is_empty()) && !entries.is_empty() {
                form method="post" action="/ui/tokens/revoke" {
                    input type="hidden" name="csrf" value=(p.csrf);
                    input type="hidden" name="principal" value=(f.principal);
                    input type="hidden" name="service" value=(f.service);
                    input type="hidden" name="policy" value=(f.policy);
                    button type="submit" class="danger" { "Revoke these " (entries.len()) " live tokens (and their children)" }
                }
            }
            table {
                thead { tr { th { "Id" } th { "Kind" } th { "Principal" } th { "Service" } th { "State" } th { "Expires" } th { "" } } }
                tbody {
                    @if entries.is_empty() { tr { td colspan="7" { "No token matches." } } }
                    @for e in entries.iter().take(500) {
                        tr {
                            td { code { (e.record.id) } }
                            td { (e.record.kind.as_str()) }
                            td { (e.record.principal) }
                            td { (e.record.grant.as_ref().map(|g| g.service.as_str()).unwrap_or("—")) }
                            td { (state_of(e, now)) }
                            td { (format_ms(e.expires_at())) }
                            td {
                                @if p.admin && state_of(e, now) == "live" {
                                    form method="post" action={ "/ui/tokens/" (e.record.id) "/revoke" } {
                                        input type="hidden" name="csrf" value=(p.csrf);
                                        button type="submit" class="danger" aria-label={ "Revoke token " (e.record.id) } { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub(super) async fn audit(
    State(c): State<Console>,
    p: Person,
    Query(f): Query<AuditFilter>,
) -> Response {
    let query = match f.query(AUDIT_PAGE) {
        Ok(q) => q,
        Err(which) => return bad_time(which),
    };
    let events = match c.gw.store.audit_events(&query).await {
        Ok(e) => e,
        Err(e) => return unreadable(&e),
    };
    let next = (events.len() == AUDIT_PAGE as usize)
        .then(|| events.last().map(|e| e.seq))
        .flatten();
    let link = |after: i64| f.link(after);
    page(
        "Audit",
        Some(&p),
        html! {
            form method="get" action="/ui/audit" class="filters" {
                label { "Principal " input name="principal" value=(f.principal); }
                label { "Service " input name="service" value=(f.service); }
                label { "Decision "
                    select name="decision" {
                        option value="" selected[f.decision.is_empty()] { "any" }
                        option value="allow" selected[f.decision == "allow"] { "allow" }
                        option value="deny" selected[f.decision == "deny"] { "deny" }
                    }
                }
                label { "Reason " input name="reason" value=(f.reason) placeholder="revoked"; }
                label { "Kind " input name="kind" value=(f.kind) placeholder="request"; }
                label { "From (UTC) " input type="datetime-local" step="1" name="from" value=(f.from); }
                label { "To (UTC) " input type="datetime-local" step="1" name="to" value=(f.to); }
                button type="submit" { "Search" }
                a href={ "/ui/audit/export?" (link(0)) } { "Export as JSON lines" }
                span class="hint" { "(at most 100,000 events a file; the next starts after the last one's seq)" }
            }
            table {
                thead { tr { th { "Seq" } th { "Time" } th { "Kind" } th { "Decision" } th { "Principal" } th { "Service" } th { "Detail" } } }
                tbody {
                    @if events.is_empty() { tr { td colspan="7" { "No event matches." } } }
                    @for e in &events {
                        tr {
                            td { a href={ "/ui/audit/" (e.seq) } aria-label={ "Event " (e.seq) } { (e.seq) } }
                            td { (format_ms(e.event.at)) }
                            td { (e.event.kind) }
                            td { (e.event.decision.as_deref().unwrap_or("")) " " (e.event.reason.as_deref().unwrap_or("")) }
                            td { (e.event.principal.as_deref().unwrap_or("")) }
                            td { (e.event.service.as_deref().unwrap_or("")) }
                            td { code { (e.event.detail.to_string()) } }
                        }
                    }
                }
            }
            @if let Some(after) = next { p { a href={ "/ui/audit?" (link(after)) } rel="next" { "Next page" } } }
        },
    )
}

/// One event, every field of it.
pub(super) async fn event(
    State(c): State<Console>,
    p: Person,
    axum::extract::Path(seq): axum::extract::Path<i64>,
) -> Response {
    let q = keyway_store::AuditQuery {
        after_seq: seq.saturating_sub(1).max(0),
        limit: 1,
        ..Default::default()
    };
    let e = match c.gw.store.audit_events(&q).await {
        Ok(e) => e.into_iter().find(|e| e.seq == seq),
        Err(e) => return unreadable(&e),
    };
    let Some(e) = e else {
        let mut r = page(
            "No such event",
            Some(&p),
            html! { p { a href="/ui/audit" { "To the audit log" } } },
        );
        *r.status_mut() = axum::http::StatusCode::NOT_FOUND;
        return r;
    };
    let v = &e.event;
    let row = |k: &'static str, val: Option<&str>| (k, val.unwrap_or("—").to_owned());
    let rows = [
        ("Seq", e.seq.to_string()),
        ("Time", format_ms(v.at)),
        ("Kind", v.kind.clone()),
        row("Decision", v.decision.as_deref()),
        row("Reason", v.reason.as_deref()),
        row("Principal", v.principal.as_deref()),
        row("Token", v.token_id.as_deref()),
        row("Service", v.service.as_deref()),
        row("Source", v.source.as_deref()),
    ];
    page(
        &format!("Event {seq}"),
        Some(&p),
        html! {
            dl class="event" {
                @for (k, val) in &rows { dt { (k) } dd { (val) } }
            }
            h2 { "Detail" }
            pre { code { (serde_json::to_string_pretty(&v.detail).unwrap_or_default()) } }
            p { a href={ "/ui/audit?after=" (seq.saturating_sub(51).max(0)) } { "Around it in the log" } }
        },
    )
}

/// Events in one export; past it, export again with `after` the last line's `seq`.
const EXPORT_MAX: usize = 100_000;
/// Events read from the store at a time while exporting.
const EXPORT_PAGE: u32 = 5_000;

/// The matching events as JSON lines, streamed page by page from the store (the
/// gateway holds one page at a time), at most [`EXPORT_MAX`] a download. The export
/// is an audit event first: who took which events. A store error part-way ends the
/// download with an error, never a short file that looks whole.
pub(super) async fn export(
    State(c): State<Console>,
    p: Person,
    Query(f): Query<AuditFilter>,
) -> Response {
    if let Err(which) = f.query(1) {
        return bad_time(which);
    }
    let mut ev = c.gw.event(keyway_core::EventKind::AuditExported);
    ev.detail = serde_json::json!({
        "principal": f.principal, "service": f.service, "decision": f.decision,
        "reason": f.reason, "kind": f.kind, "from": f.from, "to": f.to,
        "after": f.after, "max": EXPORT_MAX,
    });
    if !super::record(&c, ev, &p).await {
        return super::unaudited();
    }
    // The first page before the answer: a store that cannot be read is a 503, not
    // an empty file.
    let (first, store) = (f.query(EXPORT_PAGE), c.gw.store.clone());
    let first = match first {
        Ok(q) => store.audit_events(&q).await,
        Err(which) => return bad_time(which),
    };
    let first = match first {
        Ok(page) => page,
        Err(e) => return unreadable(&e),
    };
    let lines = |page: &[keyway_store::StoredEvent]| {
        let mut out = String::new();
        for e in page {
            out.push_str(&serde_json::to_string(e).unwrap_or_default());
            out.push('\n');
        }
        bytes::Bytes::from(out)
    };
    let sent = first.len();
    let mut next = f.clone();
    next.after = first.last().map_or(next.after, |e| e.seq);
    let more = first.len() == EXPORT_PAGE as usize;
    let head = futures_util::stream::iter([Ok::<_, std::io::Error>(lines(&first))]);
    // Then page after page while pages are full; a store error part-way ends the
    // download with an error.
    let rest = futures_util::stream::unfold((next, sent, more), move |(mut f, sent, more)| {
        let store = store.clone();
        async move {
            if !more || sent >= EXPORT_MAX {
                return None;
            }
            let want = EXPORT_PAGE.min((EXPORT_MAX - sent) as u32);
            let page = match f.query(want) {
                Ok(q) => store.audit_events(&q).await,
                Err(_) => return None,
            };
            match page {
                Ok(page) => {
                    let last = page.last()?.seq;
                    f.after = last;
                    let full = page.len() == want as usize;
                    Some((Ok(lines(&page)), (f, sent + page.len(), full)))
                }
                Err(e) => {
                    tracing::error!(error = %e, "the console's export could not read the audit log");
                    let cut = std::io::Error::other("the audit log cannot be read now");
                    Some((Err(cut), (f, sent, false)))
                }
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"keyway-audit.jsonl\"",
            ),
        ],
        [("x-keyway-export-max", EXPORT_MAX.to_string())],
        axum::body::Body::from_stream(futures_util::StreamExt::chain(head, rest)),
    )
        .into_response()
}

/// A time in the filter that is not one.
fn bad_time(which: &str) -> Response {
    (
        axum::http::StatusCode::BAD_REQUEST,
        format!("`{which}` is not a time like 2026-12-06T09:30 (UTC)"),
    )
        .into_response()
}

/// The audit log could not be read: logged, and said without the store's words.
fn unreadable(e: &keyway_store::StoreError) -> Response {
    tracing::error!(error = %e, "the console cannot read the audit log");
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "the audit log cannot be read now; retry shortly",
    )
        .into_response()
}

pub(super) async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
        .into_response()
}

pub(super) async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("console.js"),
    )
        .into_response()
}
