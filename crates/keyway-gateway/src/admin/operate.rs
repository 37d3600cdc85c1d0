//! The admin API's other calls: secrets, the audit log, the report, the config
//! (plan and apply), metrics, agents.

use super::*;

pub(super) async fn set_secret(
    admin: Admin,
    State(gw): State<Gw>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody,
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
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable: nothing was changed; see the gateway log and retry",
            )
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

pub(super) async fn list_secrets(_: Admin, State(gw): State<Gw>) -> Response {
    Json(gw.secrets.names()).into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct AuditParams {
    #[serde(default)]
    after: i64,
    #[serde(default)]
    limit: u32,
    principal: Option<String>,
    service: Option<String>,
    decision: Option<String>,
    reason: Option<String>,
    kind: Option<String>,
    /// RFC 3339, or a duration back from now (`1h`).
    since: Option<String>,
    until: Option<String>,
}

pub(super) async fn audit(
    _: Admin,
    State(gw): State<Gw>,
    Query(p): Query<AuditParams>,
) -> Response {
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
            reason: p.reason,
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
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable: see the gateway log and retry",
            )
        }
    }
}

#[derive(Deserialize)]
pub(super) struct ReportParams {
    since: Option<String>,
}

pub(super) async fn report(
    _: Admin,
    State(gw): State<Gw>,
    Query(p): Query<ReportParams>,
) -> Response {
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
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable: see the gateway log and retry",
            )
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ConfigBody {
    config: String,
}

pub(super) async fn current_config(_: Admin, State(gw): State<Gw>) -> Response {
    let c = gw.config();
    Json(json!({
        "sha256": c.written.sha256,
        "services": c.services.keys().collect::<Vec<_>>(),
    }))
    .into_response()
}

pub(super) async fn plan_config(
    admin: Admin,
    State(gw): State<Gw>,
    JsonBody(body): JsonBody,
) -> Response {
    reload(admin, gw, body, true).await
}

pub(super) async fn apply_config(
    admin: Admin,
    State(gw): State<Gw>,
    JsonBody(body): JsonBody,
) -> Response {
    reload(admin, gw, body, false).await
}

/// Checks the proposed config as `keyway validate` does (errors refuse it) and plans
/// or applies it. Relative paths in it are taken from the running config's folder.
pub(super) async fn reload(admin: Admin, gw: Gw, body: Bytes, dry_run: bool) -> Response {
    let Ok(b) = serde_json::from_slice::<ConfigBody>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected {\"config\": \"<keyway.toml text>\"}",
        );
    };
    match gw
        .propose(&b.config, &admin.principal, Some(&admin.token_id), dry_run)
        .await
    {
        Ok(outcome) => Json(outcome).into_response(),
        Err(
            e @ (crate::reloads::ApplyError::NeedsRestart(_)
            | crate::reloads::ApplyError::Conflict(_)),
        ) => error(StatusCode::CONFLICT, &e.to_string()),
        Err(e @ crate::reloads::ApplyError::Invalid(_)) => {
            error(StatusCode::BAD_REQUEST, &e.to_string())
        }
        Err(e @ crate::reloads::ApplyError::Stopped) => {
            error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
    }
}

pub(super) async fn metrics(_: Admin, State(gw): State<Gw>) -> Response {
    let text = gw.metrics.render(&gw.states());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

pub(super) async fn enroll_agent(
    admin: Admin,
    State(gw): State<Gw>,
    Path(name): Path<String>,
    _: JsonBody,
) -> Response {
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
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable: nothing was changed; see the gateway log and retry",
            )
        }
        Err(e) => error(StatusCode::NOT_FOUND, &e.to_string()),
    }
}

pub(super) async fn revoke_agent(
    admin: Admin,
    State(gw): State<Gw>,
    Path(name): Path<String>,
    _: JsonBody,
) -> Response {
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
                StatusCode::SERVICE_UNAVAILABLE,
                "the agent is disconnected, but the store (store_unavailable) failed to record the revocation; revoke again",
            )
        }
    }
}

pub(super) async fn list_agents(_: Admin, State(gw): State<Gw>) -> Response {
    Json(gw.agents.status(&gw.config())).into_response()
}
