//! Giving access from the console: issuing a token from a form (its secret shown
//! once, on the answer to the form, never again), and the inbox of access requests
//! that policies make wait for approvers.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use keyway_core::api::IssueRequest;
use keyway_core::clock::format_ms;
use maud::html;
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::pages::page;
use super::{Console, Person};
use crate::people::RequestError;
use crate::tokens::IssueError;

fn viewer_page(p: &Person, title: &str) -> Response {
    let mut r = page(
        title,
        Some(p),
        html! { p { "You signed in as a viewer: only the people " code { "identity.console_admins" } " names, or an admin token, can do this." } },
    );
    *r.status_mut() = StatusCode::FORBIDDEN;
    r
}

/// The form that issues a token.
pub(super) async fn new_token(State(c): State<Console>, p: Person) -> Response {
    if !p.admin {
        return viewer_page(&p, "Issue a token");
    }
    issue_form(&c, &p, &Issue::default(), None)
}

fn issue_form(c: &Console, p: &Person, f: &Issue, error: Option<&str>) -> Response {
    let config = c.gw.config();
    page(
        "Issue a token",
        Some(p),
        html! {
            @if let Some(e) = error { p class="error" role="alert" { (e) } }
            form method="post" action="/ui/tokens/new" class="stacked" {
                input type="hidden" name="csrf" value=(p.csrf);
                label for="service" { "Service" }
                select id="service" name="service" required {
                    @for name in config.services.keys() {
                        option value=(name) selected[*name == f.service] { (name) }
                    }
                }
                label for="principal" { "Principal (who the token is for)" }
                input id="principal" name="principal" value=(f.principal) required maxlength="256";
                label for="ttl" { "Lifetime" }
                input id="ttl" name="ttl" value=(f.ttl) placeholder="15m";
                label for="methods" { "HTTP methods (comma-separated; all when empty)" }
                input id="methods" name="methods" value=(f.methods) placeholder="GET, HEAD";
                label for="paths" { "Path prefixes (comma-separated; all when empty)" }
                input id="paths" name="paths" value=(f.paths) placeholder="/invoices/";
                label for="role" { "Database role (database services)" }
                input id="role" name="role" value=(f.role);
                p class="hint" { "Within the service's " code { "max_ttl" } " and the gateway's. The secret is shown once, on the next page." }
                button type="submit" { "Issue" }
            }
        },
    )
}

#[derive(Deserialize, Default)]
pub(super) struct Issue {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    service: String,
    #[serde(default)]
    principal: String,
    #[serde(default)]
    ttl: String,
    #[serde(default)]
    methods: String,
    #[serde(default)]
    paths: String,
    #[serde(default)]
    role: String,
}

/// Issues the token the form asks for, as the admin API does, and shows its
/// secret this once.
pub(super) async fn issue(State(c): State<Console>, p: Person, Form(f): Form<Issue>) -> Response {
    if let Some(refused) = p.refusal(&f.csrf) {
        return refused;
    }
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
    let req = IssueRequest {
        service: f.service.trim().to_owned(),
        principal: f.principal.trim().to_owned(),
        ttl: some(&f.ttl),
        methods: list(&f.methods),
        paths: list(&f.paths),
        cert_thumbprint: None,
        role: some(&f.role),
        ..Default::default()
    };
    let (token, record) = match c.gw.tokens.issue(&req, &p.token_id).await {
        Ok(x) => x,
        Err(IssueError::Store(e)) => {
            tracing::error!(error = %e, "the console could not store a new token");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the store did not take the token; nothing was issued",
            )
                .into_response();
        }
        Err(e) => {
            let mut r = issue_form(&c, &p, &f, Some(&e.to_string()));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return r;
        }
    };
    let grant = record.grant.as_ref().map(crate::people::describe);
    page(
        "Token issued",
        Some(&p),
        html! {
            p { "Copy the token now: it is shown this once, and the gateway keeps only its hash." }
            label for="secret" { "Token" }
            input id="secret" readonly value=(token.secret().expose_secret()) size="60";
            dl class="event" {
                dt { "Id" } dd { code { (record.id) } }
                dt { "Principal" } dd { (record.principal) }
                dt { "Grant" } dd { (grant.unwrap_or_default()) }
                dt { "Expires" } dd { (format_ms(record.expires_at)) }
            }
            p { a href="/ui/tokens" { "To the tokens" } }
        },
    )
}

/// The access requests of the last day, newest first.
pub(super) async fn inbox(State(c): State<Console>, p: Person) -> Response {
    let Some(entry) = c.gw.index.get(&p.token_id) else {
        return Redirect::to("/ui/login").into_response();
    };
    let mut listed = match c.people.inbox(&entry).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "the console cannot read the access requests");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the access requests cannot be read now; retry shortly",
            )
                .into_response();
        }
    };
    listed.sort_by_key(|l| std::cmp::Reverse(l.request.created_at));
    let pending = listed.iter().filter(|l| l.state == "pending").count();
    page(
        "Access requests",
        Some(&p),
        html! {
            p class="hint" { (pending) " pending. Policies with " code { "approval" } " file these; the approvers they name decide (never the requester)." }
            table {
                thead { tr { th { "Filed" } th { "Who" } th { "What" } th { "Why" } th { "Policy" } th { "State" } th { "" } } }
                tbody {
                    @if listed.is_empty() { tr { td colspan="7" { "No access request in the last day." } } }
                    @for l in &listed {
                        @let r = &l.request;
                        tr {
                            td { (format_ms(r.created_at)) }
                            td { (r.origin.subject) }
                            td { (crate::people::describe(&r.grant)) }
                            td { (r.reason.as_deref().unwrap_or("—")) }
                            td { (r.origin.policy) }
                            td { (l.state) " (" (r.approvals.len()) " of " (l.needed) ")" }
                            td {
                                @if l.can_decide && p.admin && l.state == "pending" {
                                    form method="post" action={ "/ui/requests/" (r.id) "/approve" } {
                                        input type="hidden" name="csrf" value=(p.csrf);
                                        label { "Note " input name="reason" maxlength="512"; }
                                        button type="submit" aria-label={ "Approve request " (r.id) } { "Approve" }
                                        button type="submit" class="danger" formaction={ "/ui/requests/" (r.id) "/reject" } aria-label={ "Reject request " (r.id) } { "Reject" }
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

#[derive(Deserialize)]
pub(super) struct Decision {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

/// An approver's decision, as `keyway requests approve|reject` makes it.
pub(super) async fn decide(
    State(c): State<Console>,
    p: Person,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<Decision>,
) -> Response {
    if let Some(refused) = p.refusal(&f.csrf) {
        return refused;
    }
    let approve = match action.as_str() {
        "approve" => true,
        "reject" => false,
        _ => return (StatusCode::NOT_FOUND, "approve or reject").into_response(),
    };
    let Some(entry) = c.gw.index.get(&p.token_id) else {
        return Redirect::to("/ui/login").into_response();
    };
    let reason = (!f.reason.trim().is_empty()).then(|| f.reason.trim().to_owned());
    match c.people.decide(&entry, &id, approve, reason).await {
        Ok(_) => Redirect::to("/ui/requests").into_response(),
        Err(RequestError::Store(e)) => {
            tracing::error!(error = %e, "the console could not record a decision");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the store did not take the decision; retry shortly",
            )
                .into_response()
        }
        Err(RequestError::Unknown) => {
            (StatusCode::NOT_FOUND, RequestError::Unknown.to_string()).into_response()
        }
        Err(e) => (StatusCode::CONFLICT, e.to_string()).into_response(),
    }
}
