//! The admin API's other calls: secrets, the audit log, the report, the config
//! (plan and apply), metrics, agents.

use super::*;

/// An upstream credential's value, sealed before it is stored.
#[derive(Deserialize, ToSchema)]
pub(super) struct SecretValue {
    #[schema(value_type = String, format = Password)]
    value: SecretString,
}

/// Seals and stores an upstream credential.
#[utoipa::path(put, path = "/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "The name the config's `upstream_auth` gives")),
    request_body = SecretValue,
    responses((status = 204, description = "Stored"), (status = 400, body = ApiError)))]
pub(super) async fn set_secret(
    admin: Admin,
    State(gw): State<Gw>,
    Segments(name): Segments<String>,
    body: JsonBody,
) -> Response {
    // Parse errors of this body are not echoed: they could quote the value.
    let Ok(b) = body.object::<SecretValue>() else {
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

/// The names of the upstream credentials that are set, never their values.
#[utoipa::path(get, path = "/v1/secrets", tag = "secrets", responses((status = 200, body = Vec<String>)))]
pub(super) async fn list_secrets(_: Admin, State(gw): State<Gw>) -> Response {
    Json(gw.secrets.names()).into_response()
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditParams {
    /// Only events after this sequence number.
    #[serde(default)]
    after: i64,
    /// At most this many, up to 10,000 (0: 1,000).
    #[serde(default)]
    #[param(maximum = 10_000)] // AuditQuery::MAX_LIMIT (asserted below)
    limit: u32,
    principal: Option<String>,
    service: Option<String>,
    /// `allow` or `deny`.
    decision: Option<String>,
    reason: Option<String>,
    /// Like `request` or `token.issued`.
    kind: Option<String>,
    /// RFC 3339, or a duration back from now (`1h`).
    since: Option<String>,
    /// RFC 3339, or a duration back from now (`1h`).
    until: Option<String>,
}

const _: () = assert!(AuditQuery::MAX_LIMIT == 10_000);

/// Audit events in order, each with its sequence number; every filter given must match.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = Vec<keyway_store::StoredEvent>), (status = 400, body = ApiError)))]
pub(super) async fn audit(
    _: Admin,
    State(gw): State<Gw>,
    Params(p): Params<AuditParams>,
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
    if p.limit > AuditQuery::MAX_LIMIT {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "limit is at most {}; page on with after",
                AuditQuery::MAX_LIMIT
            ),
        );
    }
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ReportParams {
    /// How far back, like `30d` (the default).
    since: Option<String>,
}

/// The hygiene report: unused tokens, quiet services, broad grants, agents away.
#[utoipa::path(get, path = "/v1/report", tag = "audit", params(ReportParams),
    responses((status = 200, body = keyway_core::api::Report), (status = 400, body = ApiError)))]
pub(super) async fn report(
    _: Admin,
    State(gw): State<Gw>,
    Params(p): Params<ReportParams>,
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

/// A config, as the text of a `keyway.toml`.
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct ConfigBody {
    config: String,
}

/// The config in force.
#[derive(Serialize, ToSchema)]
pub(super) struct ConfigInForce {
    /// The SHA-256 of its text, hex.
    sha256: String,
    services: Vec<String>,
}

/// The config in force: its digest and its services.
#[utoipa::path(get, path = "/v1/config", tag = "config", responses((status = 200, body = ConfigInForce)))]
pub(super) async fn current_config(_: Admin, State(gw): State<Gw>) -> Response {
    let c = gw.config();
    Json(ConfigInForce {
        sha256: c.written.sha256.clone(),
        services: c.services.keys().cloned().collect(),
    })
    .into_response()
}

/// What a config would change in the running gateway, changing nothing.
#[utoipa::path(post, path = "/v1/config/plan", tag = "config", request_body = ConfigBody,
    responses(
        (status = 200, body = keyway_core::api::Outcome), (status = 400, description = "Invalid", body = ApiError),
        (status = 409, description = "Needs a restart, or another change came first", body = ApiError),
        (status = 422, body = ApiError),
    ))]
pub(super) async fn plan_config(admin: Admin, State(gw): State<Gw>, body: JsonBody) -> Response {
    reload(admin, gw, body, true).await
}

/// Applies a config as one atomic change, audited as `config.applied`.
#[utoipa::path(post, path = "/v1/config/apply", tag = "config", request_body = ConfigBody,
    responses(
        (status = 200, body = keyway_core::api::Outcome), (status = 400, description = "Invalid", body = ApiError),
        (status = 409, description = "Needs a restart, or another change came first", body = ApiError),
        (status = 422, body = ApiError),
    ))]
pub(super) async fn apply_config(admin: Admin, State(gw): State<Gw>, body: JsonBody) -> Response {
    reload(admin, gw, body, false).await
}

/// Checks the proposed config as `keyway validate` does (errors refuse it) and plans
/// or applies it. Relative paths in it are taken from the running config's folder.
pub(super) async fn reload(admin: Admin, gw: Gw, body: JsonBody, dry_run: bool) -> Response {
    let Ok(b) = body.object::<ConfigBody>() else {
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

/// The gateway's metrics, in Prometheus' text format.
#[utoipa::path(get, path = "/metrics", tag = "gateway",
    responses((status = 200, body = String, content_type = "text/plain")))]
pub(super) async fn metrics(_: Admin, State(gw): State<Gw>) -> Response {
    let text = gw.metrics.render(&gw.states());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// A one-use enrollment for an agent: its token and the CA pin, given once.
#[utoipa::path(post, path = "/v1/agents/{name}/enroll", tag = "agents",
    params(("name" = String, Path, description = "The agent's name in the config")),
    responses(
        (status = 201, body = Enrollment), (status = 404, description = "No agent with that name", body = ApiError),
        (status = 409, description = "The gateway has no local CA", body = ApiError),
    ))]
pub(super) async fn enroll_agent(
    admin: Admin,
    State(gw): State<Gw>,
    Segments(name): Segments<String>,
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

/// An agent disconnected, and how many of its connections closed.
#[derive(Serialize, ToSchema)]
pub(super) struct AgentRevoked {
    agent: String,
    connections_closed: usize,
}

/// Disconnects an agent now and refuses its certificates.
#[utoipa::path(post, path = "/v1/agents/{name}/revoke", tag = "agents",
    params(("name" = String, Path, description = "The agent's name in the config")),
    responses((status = 200, body = AgentRevoked), (status = 404, description = "No agent with that name", body = ApiError)))]
pub(super) async fn revoke_agent(
    admin: Admin,
    State(gw): State<Gw>,
    Segments(name): Segments<String>,
    _: JsonBody,
) -> Response {
    if !gw.config().agents.contains_key(&name) {
        return error(
            StatusCode::NOT_FOUND,
            "no agent with that name in the config",
        );
    }
    match gw.revoke_agent(&name, &admin.token_id).await {
        Ok(connections_closed) => Json(AgentRevoked {
            agent: name,
            connections_closed,
        })
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "could not record an agent revocation");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the agent is disconnected, but the store (store_unavailable) failed to record the revocation; revoke again",
            )
        }
    }
}

/// Each agent's state, version, last heartbeat and services.
#[utoipa::path(get, path = "/v1/agents", tag = "agents",
    responses((status = 200, body = Vec<keyway_core::api::AgentStatus>)))]
pub(super) async fn list_agents(_: Admin, State(gw): State<Gw>) -> Response {
    Json(gw.agents.status(&gw.config())).into_response()
}
