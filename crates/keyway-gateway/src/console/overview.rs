//! The console's first page: the figures an operator glances at during an incident
//! (live sessions, tokens, agents, the audit log's health), each service's last hour
//! drawn by the server as SVG (no script, no chart library), and recent alerts.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use keyway_core::clock::format_ms;
use maud::{html, Markup};

use super::pages::page;
use super::{Console, Person};
use crate::telemetry::traffic::{Minute, MINUTES};

/// Alerts the overview lists, newest first.
const ALERTS: usize = 5;
/// The chart's size in its own units: one bar a minute.
const BAR: u32 = 5;
const HEIGHT: u32 = 48;

pub(super) async fn overview(State(c): State<Console>, p: Person) -> Response {
    let now = c.gw.now();
    let config = c.gw.config();
    let live = c.gw.sessions.list().len();
    let tokens =
        c.gw.index
            .entries()
            .into_iter()
            .filter(|e| e.check_live(now).is_ok())
            .count();
    let agents = c.gw.agents.status(&config);
    let connected = agents.iter().filter(|a| a.state == "connected").count();
    // Every configured service has a chart, traffic or not.
    let traffic = c.gw.metrics.traffic.last_hour(now);
    let hours: Vec<(String, [Minute; MINUTES])> = config
        .services
        .keys()
        .map(|name| {
            let hour = traffic
                .iter()
                .find(|(n, _)| n == name)
                .map_or([Minute::default(); MINUTES], |(_, h)| *h);
            (name.clone(), hour)
        })
        .collect();
    let (allowed, denied) = hours
        .iter()
        .flat_map(|(_, h)| h.iter())
        .fold((0u64, 0u64), |(a, d), m| {
            (a + u64::from(m.allowed), d + u64::from(m.denied))
        });
    let alerts =
        c.gw.store
            .audit_events(&keyway_store::AuditQuery {
                limit: 1_000,
                since: Some(now - 3_600_000),
                kind: Some("detect.alert".into()),
                ..Default::default()
            })
            .await
            .unwrap_or_default();
    let verified = match c.verified.try_lock() {
        Ok(v) => v.clone(),
        // A walk under way: the page does not wait for it.
        Err(_) => None,
    };
    let stats = c.gw.audit.stats();
    let failing = stats.failing.load(Ordering::Relaxed);
    let written = stats.written.load(Ordering::Relaxed);
    let dropped = stats.dropped.load(Ordering::Relaxed);
    page(
        "Overview",
        Some(&p),
        html! {
            dl class="figures" {
                div { dt { a href="/ui/sessions" { "Live sessions" } } dd { (live) } }
                div { dt { a href="/ui/tokens" { "Live tokens" } } dd { (tokens) } }
                div { dt { a href="/ui/agents" { "Agents connected" } } dd { (connected) " of " (agents.len()) } }
                div { dt { "Let through, last hour" } dd { (allowed) } }
                div { dt { a href="/ui/audit?decision=deny" { "Refused, last hour" } } dd { (denied) } }
            }
            h2 { "Audit log" }
            @if failing {
                p class="error" role="alert" { "The store refuses the audit log's writes: requests that need an event are refused until it takes them again. See the gateway's log." }
            } @else {
                p { "Writing: " (written) " events since the gateway started, " (dropped) " dropped. " }
            }
            @match verified {
                Some((at, keyway_store::Verdict::Intact { events, checkpoints, .. })) => {
                    p { "Hash chain intact at " (format_ms(at)) ": " (events) " events, " (checkpoints) " signed checkpoints match." }
                }
                Some((at, keyway_store::Verdict::Broken { seq, kind, what })) => {
                    p class="error" role="alert" { "Hash chain BROKEN at " (format_ms(at)) ": event " (seq) " (" (kind) ") " (what) ". See " code { "keyway audit verify" } "." }
                }
                None => { p class="hint" { "The hash chain has not been verified from the console since the gateway started." } }
            }
            form method="post" action="/ui/audit/verify" {
                input type="hidden" name="csrf" value=(p.csrf);
                button type="submit" { "Verify the chain now" }
                span class="hint" { " (reads the whole log, as " code { "keyway audit verify" } " does)" }
            }
            h2 { "Traffic, last hour" }
            p class="hint" { "Requests and connections per minute on this gateway since it started, at most the last hour: let through in blue, refused in red." }
            div class="charts" {
                @for (name, hour) in &hours { (chart(name, hour)) }
            }
            h2 { "Recent alerts" }
            @if alerts.is_empty() { p { "None in the last hour." } }
            ul {
                @for a in alerts.iter().rev().take(ALERTS) {
                    li { (format_ms(a.event.at)) " — " (a.event.detail["summary"].as_str().unwrap_or("")) }
                }
            }
            p class="hint" { "Config sha256:" code { (config.written.sha256.get(..12).unwrap_or("")) } }
        },
    )
}

/// One service's hour as bars, one a minute: the let-through part below, the
/// refused part on top, scaled to the busiest minute.
fn chart(name: &str, hour: &[Minute; MINUTES]) -> Markup {
    let peak = hour
        .iter()
        .map(|m| u64::from(m.allowed) + u64::from(m.denied))
        .max()
        .unwrap_or(0)
        .max(1);
    let (allowed, denied) = hour.iter().fold((0u64, 0u64), |(a, d), m| {
        (a + u64::from(m.allowed), d + u64::from(m.denied))
    });
    let scale = |n: u64| (n * u64::from(HEIGHT) / peak) as u32;
    let summary = format!("{name}: {allowed} let through, {denied} refused in the last hour");
    let width = BAR * MINUTES as u32;
    html! {
        figure {
            svg viewBox={ "0 0 " (width) " " (HEIGHT) } role="img" aria-label=(summary) preserveAspectRatio="none" {
                title { (summary) }
                line x1="0" y1=(HEIGHT) x2=(width) y2=(HEIGHT) stroke="#d0d7de" {}
                @for (i, m) in hour.iter().enumerate() {
                    @let total = scale(u64::from(m.allowed) + u64::from(m.denied));
                    @let refused = scale(u64::from(m.denied));
                    @let x = i as u32 * BAR;
                    @if total > refused {
                        rect x=(x) y=(HEIGHT - total + refused) width=(BAR - 1) height=(total - refused) fill="#0b5cad" {}
                    }
                    @if refused > 0 {
                        rect x=(x) y=(HEIGHT - total) width=(BAR - 1) height=(refused) fill="#b42318" {}
                    }
                }
            }
            figcaption { strong { (name) } " " (allowed) " let through, " (denied) " refused" }
        }
    }
}

/// Walks the audit chain now (one walk at a time), and shows the overview with the
/// verdict. Reading only: any signed-in person may.
pub(super) async fn verify(
    State(c): State<Console>,
    p: Person,
    axum::Form(f): axum::Form<super::Csrf>,
) -> Response {
    if !p.checks(&f.csrf) {
        return super::forged();
    }
    let Ok(mut last) = c.verified.try_lock() else {
        return (
            axum::http::StatusCode::CONFLICT,
            "a verification of the chain is running; its verdict will be on the overview",
        )
            .into_response();
    };
    let key = secrecy::ExposeSecret::expose_secret(&*c.gw.chain_key);
    match c.gw.store.verify_audit(key).await {
        Ok(v) => {
            if let keyway_store::Verdict::Broken { seq, what, .. } = &v {
                tracing::error!(seq, what = %what, "the audit chain is broken (verified from the console)");
            }
            *last = Some((c.gw.now(), v));
        }
        Err(e) => {
            tracing::error!(error = %e, "the console could not verify the audit chain");
            return (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "the audit log cannot be read now; retry shortly",
            )
                .into_response();
        }
    }
    axum::response::Redirect::to("/ui/").into_response()
}
