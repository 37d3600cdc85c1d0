//! The console's pages about what runs: the agents (revoke one), and the config in
//! force with the history of its changes and the plan of a proposed one (anyone
//! signed in may plan; an admin may then apply what was planned).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use keyway_core::clock::format_ms;
use maud::html;

use super::pages::page;
use super::{Console, Csrf, Person};

/// The largest config the page plans.
const MAX_PROPOSED: usize = 1 << 20;
/// `config.applied` events the config page lists, newest first.
const HISTORY: usize = 20;

pub(super) async fn agents(State(c): State<Console>, p: Person) -> Response {
    let agents = c.gw.agents.status(&c.gw.config());
    page(
        "Agents",
        Some(&p),
        html! {
            p class="hint" { "Agents dial out from private networks and carry the services assigned to them." }
            table {
                thead { tr { th { "Agent" } th { "State" } th { "Connections" } th { "Version" } th { "Last heartbeat" } th { "Services" } th { "" } } }
                tbody {
                    @if agents.is_empty() { tr { td colspan="7" { "No agent in the config." } } }
                    @for a in &agents {
                        tr {
                            td { (a.name) }
                            td { (a.state) }
                            td { (a.connections) }
                            td { (a.version.as_deref().unwrap_or("—")) }
                            td { (a.last_heartbeat.as_deref().unwrap_or("—")) }
                            td { (a.services.join(", ")) }
                            td {
                                @if a.state != "revoked" && p.admin {
                                    form method="post" action={ "/ui/agents/" (a.name) "/revoke" } {
                                        input type="hidden" name="csrf" value=(p.csrf);
                                        button type="submit" class="danger" aria-label={ "Revoke agent " (a.name) } { "Revoke" }
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

/// Disconnects an agent and refuses its certificates from now on.
pub(super) async fn revoke_agent(
    State(c): State<Console>,
    p: Person,
    Path(name): Path<String>,
    Form(f): Form<Csrf>,
) -> Response {
    if let Some(refused) = p.refusal(&f.csrf) {
        return refused;
    }
    if !c.gw.config().agents.contains_key(&name) {
        return (StatusCode::NOT_FOUND, "no such agent in the config").into_response();
    }
    match c
        .gw
        .revoke_agent(&name, &format!("console:{}", p.principal))
        .await
    {
        Ok(_) => Redirect::to("/ui/agents").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "the console could not revoke an agent");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the store did not take the revocation",
            )
                .into_response()
        }
    }
}

pub(super) async fn config(State(c): State<Console>, p: Person) -> Response {
    let config = c.gw.config();
    let now = c.gw.now();
    let text = serde_json::to_string_pretty(&config.written.value).unwrap_or_default();
    let history =
        c.gw.store
            .audit_events(&keyway_store::AuditQuery {
                kind: Some("config.applied".into()),
                since: Some(now - 90 * 24 * 3_600_000),
                limit: keyway_store::AuditQuery::MAX_LIMIT,
                ..Default::default()
            })
            .await
            .unwrap_or_default();
    page(
        "Config",
        Some(&p),
        html! {
            p { "In force: sha256:" code { (config.written.sha256) } }
            h2 { "Changes" }
            table {
                thead { tr { th { "Time" } th { "By" } th { "sha256" } th { "Added" } th { "Changed" } th { "Removed" } } }
                tbody {
                    @if history.is_empty() { tr { td colspan="6" { "None recorded in the last 90 days." } } }
                    @for e in history.iter().rev().take(HISTORY) {
                        tr {
                            td { (format_ms(e.event.at)) }
                            td { (e.event.principal.as_deref().unwrap_or("")) }
                            td { code { (e.event.detail["sha256"].as_str().unwrap_or("").get(..12).unwrap_or("")) } }
                            td { (list(&e.event.detail["added"])) }
                            td { (list(&e.event.detail["changed"])) }
                            td { (list(&e.event.detail["removed"])) }
                        }
                    }
                }
            }
            h2 { "As written (secrets masked)" }
            pre { code { (keyway_core::config::lint::mask_secrets(&text)) } }
            h2 { "Plan a change" }
            form method="post" action="/ui/config/plan" class="stacked" {
                input type="hidden" name="csrf" value=(p.csrf);
                label for="proposed" { "A whole keyway.toml, as " code { "keyway plan" } " takes it" }
                textarea id="proposed" name="config" rows="12" required spellcheck="false" {}
                button type="submit" { "Plan" }
            }
            p class="hint" { "Or from a shell: " code { "keyway plan" } " and " code { "keyway apply" } "." }
        },
    )
}

/// A JSON array of strings, as one line.
fn list(v: &serde_json::Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

#[derive(serde::Deserialize)]
pub(super) struct Proposed {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    config: String,
    /// On apply: the hash of the config the plan was made over.
    #[serde(default)]
    over: String,
}

/// What a proposed config would change, as `keyway plan` says it; for an admin,
/// with the button that applies it.
pub(super) async fn plan(State(c): State<Console>, p: Person, Form(f): Form<Proposed>) -> Response {
    if !p.checks(&f.csrf) {
        return super::forged();
    }
    // A browser sends a textarea's lines with CRLF: planned as the file is written.
    let text = f.config.replace("\r\n", "\n");
    if text.len() > MAX_PROPOSED {
        return refused_plan(&p, "a config of more than 1 MiB");
    }
    let outcome =
        c.gw.propose(&text, &p.principal, Some(&p.token_id), true)
            .await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return refused_plan(&p, &e.to_string()),
    };
    page(
        "Plan",
        Some(&p),
        html! {
            p { "Over sha256:" code { (outcome.previous_sha256.get(..12).unwrap_or("")) } " → sha256:" code { (outcome.sha256.get(..12).unwrap_or("")) } }
            pre { code { (keyway_core::config::lint::mask_secrets(&outcome.plan.render())) } }
            @if p.admin && !outcome.plan.changes.is_empty() {
                form method="post" action="/ui/config/apply" {
                    input type="hidden" name="csrf" value=(p.csrf);
                    input type="hidden" name="over" value=(outcome.previous_sha256);
                    // The newline a textarea's first line loses, given back.
                    textarea name="config" hidden aria-label="The planned config" { "\n" (text) }
                    button type="submit" class="danger" { "Apply this plan" }
                }
            }
            p { a href="/ui/config" { "Back to the config" } }
        },
    )
}

fn refused_plan(p: &Person, why: &str) -> Response {
    let mut r = page(
        "Plan",
        Some(p),
        html! {
            p class="error" role="alert" { "Refused: " (why) }
            p { a href="/ui/config" { "Back to the config" } }
        },
    );
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r
}

/// Applies a planned config, as `keyway apply` does, if the config in force is
/// still the one it was planned over.
pub(super) async fn apply(
    State(c): State<Console>,
    p: Person,
    Form(f): Form<Proposed>,
) -> Response {
    if let Some(refused) = p.refusal(&f.csrf) {
        return refused;
    }
    if f.over != c.gw.config().written.sha256 {
        return refused_plan(
            &p,
            "the config in force changed since this plan; plan again",
        );
    }
    let text = f.config.replace("\r\n", "\n");
    match c
        .gw
        .propose(&text, &p.principal, Some(&p.token_id), false)
        .await
    {
        Ok(_) => Redirect::to("/ui/config").into_response(),
        Err(e) => refused_plan(&p, &e.to_string()),
    }
}
