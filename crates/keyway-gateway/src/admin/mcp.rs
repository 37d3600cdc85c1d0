//! MCP tools' pins: list a service's tools with their states, approve a changed one.

use super::*;

/// A service's tools as the gateway pinned them.
pub(super) async fn list_tools(
    _: Admin,
    State(gw): State<Gw>,
    Path(service): Path<String>,
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
        .map(|p| {
            json!({
                "tool": p.tool,
                "state": p.state(),
                "pinned_sha256": p.pinned,
                "seen_sha256": p.seen,
                "first_seen": keyway_core::clock::format_ms(p.first_seen),
                "changed_at": p.changed_at.map(keyway_core::clock::format_ms),
                "definition": serde_json::from_str::<serde_json::Value>(&p.definition)
                    .unwrap_or_else(|_| p.definition.clone().into()),
            })
        })
        .collect();
    Json(json!({ "service": service, "tools": tools })).into_response()
}

/// Approves a changed tool's new definition: it is pinned anew, listed and callable.
pub(super) async fn approve_tool(
    admin: Admin,
    State(gw): State<Gw>,
    Path((service, tool)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Response {
    // `{"sha256": "…"}`: the definition the person read (all of its digest, or 16
    // hex digits or more); without it, the one seen last.
    let read: Option<String> = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("sha256").and_then(|s| s.as_str()).map(str::to_owned));
    match gw.pins.approve(&service, &tool, read.as_deref(), &admin.principal).await {
        Ok(p) => Json(json!({ "service": service, "tool": tool, "state": p.state(), "pinned_sha256": p.pinned }))
            .into_response(),
        Err(e @ crate::pins::ApproveError::Unknown(..)) => error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e @ (crate::pins::ApproveError::Unchanged(..) | crate::pins::ApproveError::Moved(..))) => {
            error(StatusCode::CONFLICT, &e.to_string())
        }
        Err(crate::pins::ApproveError::Store(e)) => {
            tracing::error!(error = %e, "could not record a tool's approval");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the store (store_unavailable) did not take the approval; the tool stays withheld; approve again",
            )
        }
    }
}
