//! The hygiene report (`GET /v1/report?since=30d`, `keyway report`): what to revoke,
//! narrow or close. Tokens not used within the window, credentials near their
//! maximum age, services with no traffic within it (candidates to close), grants
//! broader than what was used (methods and path prefixes never used), and declared
//! agents that are not connected.

use std::collections::{BTreeMap, BTreeSet};

use keyway_core::clock::{duration_ms, format_ms};
use keyway_core::{TokenKind, UnixMillis};

pub use keyway_core::api::{BroadGrant, QuietService, Report, Unused};

use crate::control::Control;

/// Rows of the audit log the report reads at most.
const MAX_USAGE_ROWS: u32 = 100_000;

/// Builds the report over the window that starts at `since`.
pub async fn build(gw: &Control, since: UnixMillis) -> Result<Report, keyway_store::StoreError> {
    let now = gw.now();
    let usage = gw.store.audit_usage(since, MAX_USAGE_ROWS).await?;
    // Per token: methods used, and paths used (whole).
    let mut by_token: BTreeMap<&str, (BTreeSet<String>, BTreeSet<&str>)> = BTreeMap::new();
    let mut busy: BTreeSet<&str> = BTreeSet::new();
    for u in &usage {
        busy.insert(u.service.as_str());
        let Some(id) = u.token_id.as_deref() else {
            continue;
        };
        let e = by_token.entry(id).or_default();
        if let Some(m) = &u.method {
            e.0.insert(m.clone());
        }
        if let Some(p) = &u.path {
            e.1.insert(p.as_str());
        }
    }

    let mut report = Report {
        since: format_ms(since),
        unused_tokens: Vec::new(),
        credentials_near_max_age: Vec::new(),
        quiet_services: Vec::new(),
        broad_grants: Vec::new(),
        agents_not_connected: Vec::new(),
        truncated: usage.len() >= MAX_USAGE_ROWS as usize,
    };
    for e in gw.index.entries() {
        if e.check_live(now).is_err() {
            continue;
        }
        let r = &e.record;
        let unused = || Unused {
            id: r.id.clone(),
            kind: r.kind.as_str().to_owned(),
            principal: r.principal.clone(),
            service: r.grant.as_ref().map(|g| g.service.clone()),
            expires_at: format_ms(e.expires_at()),
            last_used_at: e.last_used().map(format_ms),
            policy: r
                .origin
                .as_ref()
                .map(|o| o.policy.clone())
                .filter(|p| !p.is_empty()),
        };
        match r.kind {
            TokenKind::Access | TokenKind::ClientCredential => {}
            _ => continue,
        }
        if r.kind == TokenKind::ClientCredential && e.near_max_age(now) {
            report.credentials_near_max_age.push(unused());
        }
        let last = e.last_used().unwrap_or(r.created_at);
        if last < since {
            report.unused_tokens.push(unused());
            continue;
        }
        let (Some(grant), Some((methods, paths))) = (&r.grant, by_token.get(r.id.as_str())) else {
            continue;
        };
        let unused_methods = if grant.methods.is_empty() {
            !methods.is_empty()
        } else {
            grant.methods.iter().any(|m| !methods.contains(m))
        };
        let segments: BTreeSet<String> = paths.iter().map(|p| first_segment(p)).collect();
        // A whole-service grant used only under some paths; or granted prefixes
        // nothing was asked under.
        let whole_but_narrow =
            grant.paths.is_empty() && !segments.is_empty() && !segments.contains("/");
        let unused_paths: Vec<String> = grant
            .paths
            .iter()
            .filter(|prefix| {
                !paths
                    .iter()
                    .any(|p| keyway_core::path::under_prefix(p, prefix))
            })
            .cloned()
            .collect();
        // A database token has no methods or paths to narrow.
        let is_http = methods.iter().any(|m| !m.is_empty()) || !paths.is_empty();
        if is_http && (unused_methods || whole_but_narrow || !unused_paths.is_empty()) {
            report.broad_grants.push(BroadGrant {
                token_id: r.id.clone(),
                principal: r.principal.clone(),
                service: grant.service.clone(),
                granted_methods: grant.methods.clone(),
                granted_paths: grant.paths.clone(),
                used_methods: methods.iter().cloned().collect(),
                used_paths: segments.into_iter().collect(),
                unused_paths,
                policy: r
                    .origin
                    .as_ref()
                    .map(|o| o.policy.clone())
                    .filter(|p| !p.is_empty()),
            });
        }
    }
    for name in gw.config().services.keys() {
        if !busy.contains(name.as_str()) {
            report.quiet_services.push(QuietService {
                service: name.clone(),
            });
        }
    }
    for a in gw.agents.status(&gw.config()) {
        if a.state != "connected" {
            report.agents_not_connected.push(a.name);
        }
    }
    Ok(report)
}

/// The window's start for `since` (like `30d`) at `now`.
pub fn window_start(now: UnixMillis, since: std::time::Duration) -> UnixMillis {
    now - duration_ms(since)
}

/// `/invoices/42` → `/invoices`; `/` stays.
fn first_segment(path: &str) -> String {
    let rest = path.trim_start_matches('/');
    match rest.split('/').next() {
        Some(s) if !s.is_empty() => format!("/{s}"),
        _ => "/".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_segments() {
        assert_eq!(first_segment("/invoices/42"), "/invoices");
        assert_eq!(first_segment("/invoices"), "/invoices");
        assert_eq!(first_segment("/"), "/");
    }
}
