//! MCP tools' pins: list a service's tools with their states, approve a changed one.

use super::*;

/// An MCP service's tools as the gateway pinned them.
#[derive(Serialize, ToSchema)]
pub(super) struct Tools {
    service: String,
    tools: Vec<Tool>,
}

/// One tool: the definition approved (`pinned_sha256`) and the one seen last.
#[derive(Serialize, ToSchema)]
pub(super) struct Tool {
    tool: String,
    /// `pinned`, or `changed` while a changed definition waits for approval.
    state: String,
    pinned_sha256: String,
    seen_sha256: String,
    first_seen: String,
    changed_at: Option<String>,
    /// The definition seen last (name, description, input schema), to read before
    /// approving it.
    definition: serde_json::Value,
}

/// Which definition the person approving read.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Approve {
    /// All of its SHA-256 (hex), or its first 16 hex digits or more; without it, the
    /// definition seen last.
    sha256: Option<String>,
}

/// A tool approved: pinned anew.
#[derive(Serialize, ToSchema)]
pub(super) struct Approved {
    service: String,
    tool: String,
    state: String,
    pinned_sha256: String,
}

/// A service's tools as the gateway pinned them.
#[utoipa::path(get, path = "/v1/mcp/{service}/tools", tag = "mcp",
    params(("service" = String, Path, description = "An MCP service in the config")),
    responses((status = 200, body = Tools), (status = 404, description = "No MCP service with that name", body = ApiError)))]
pub(super) async fn list_tools(
    _: Admin,
    State(gw): State<Gw>,
    Segments(service): Segments<String>,
) -> Response {
    if !gw.config().service(&service).is_some_and(|s| s.is_mcp()) {
        return error(
            StatusCode::NOT_FOUND,
            "no mcp service with that name in the config",
        );
    }
    let tools: Vec<_> = gw
        .pins
        .list(Some(&service))
        .into_iter()
        .map(|p| Tool {
            state: p.state().into(),
            first_seen: format_ms(p.first_seen),
            changed_at: p.changed_at.map(format_ms),
            definition: serde_json::from_str::<serde_json::Value>(&p.definition)
                .unwrap_or_else(|_| p.definition.clone().into()),
            tool: p.tool,
            pinned_sha256: p.pinned,
            seen_sha256: p.seen,
        })
        .collect();
    Json(Tools { service, tools }).into_response()
}

/// Approves a changed tool's new definition: it is pinned anew, listed and callable.
#[utoipa::path(post, path = "/v1/mcp/{service}/tools/{tool}/approve", tag = "mcp",
    params(
        ("service" = String, Path, description = "An MCP service in the config"),
        ("tool" = String, Path, description = "The tool's name"),
    ),
    request_body(content = Option<Approve>, description = "Optional"),
    responses(
        (status = 200, body = Approved), (status = 400, body = ApiError),
        (status = 404, description = "No such tool", body = ApiError),
        (status = 409, description = "Unchanged, or changed again since it was read", body = ApiError),
    ))]
pub(super) async fn approve_tool(
    admin: Admin,
    State(gw): State<Gw>,
    Segments((service, tool)): Segments<(String, String)>,
    body: JsonBody,
) -> Response {
    let Ok(read) = body.or_default::<Approve>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be JSON: {\"sha256\": \"…\"} or nothing",
        );
    };
    match gw
        .pins
        .approve(&service, &tool, read.sha256.as_deref(), &admin.principal)
        .await
    {
        Ok(p) => Json(Approved {
            state: p.state().into(),
            pinned_sha256: p.pinned,
            service,
            tool,
        })
        .into_response(),
        Err(e @ crate::pins::ApproveError::Unknown(..)) => {
            error(StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(
            e @ (crate::pins::ApproveError::Unchanged(..) | crate::pins::ApproveError::Moved(..)),
        ) => error(StatusCode::CONFLICT, &e.to_string()),
        Err(crate::pins::ApproveError::Store(e)) => {
            tracing::error!(error = %e, "could not record a tool's approval");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the store (store_unavailable) did not take the approval; the tool stays withheld; approve again",
            )
        }
    }
}
