//! The admin API's contract: an OpenAPI 3.1 document made from the handlers'
//! `#[utoipa::path]` annotations and the types they take and answer, so it cannot
//! drift from the code. Served at `/v1/openapi.json` (with the admin token, like
//! every call), printed by `keyway openapi`, and committed as `docs/openapi.json`
//! (a test fails when they differ).
//!
//! What every call shares is added here once ([`Shared`]): the bearer scheme, the
//! 401 and 503 of [`Admin`], the 413 and 415 of [`JsonBody`], the 400 of a malformed
//! query or path.

use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as Document, RefOr, Response as Answer};
use utoipa::{Modify, OpenApi};

use super::*;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Keyway admin API",
        description = "Issue, list, rotate and revoke tokens; seal upstream credentials; read the \
                       audit log and the hygiene report; plan and apply config; enroll and revoke \
                       agents; approve MCP tools. Every call but `/healthz` needs an admin token \
                       (`Authorization: Bearer …`), even on loopback.",
    ),
    paths(
        status, healthz, cluster, serve, operate::metrics,
        tokens::issue_token, tokens::list_tokens, tokens::revoke_matching,
        tokens::revoke_token, tokens::rotate_token, tokens::issue_credential,
        operate::list_secrets, operate::set_secret, operate::audit, operate::report,
        operate::current_config, operate::plan_config, operate::apply_config,
        operate::list_agents, operate::enroll_agent, operate::revoke_agent,
        mcp::list_tools, mcp::approve_tool,
    ),
    components(schemas(ApiError)),
    security(("admin_token" = [])),
    modifiers(&Shared),
)]
struct AdminApi;

/// The document, as `/v1/openapi.json` serves it.
pub fn document() -> String {
    // The document is made of the types above alone: it always serializes.
    let mut text = AdminApi::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "gateway",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub(super) async fn serve(_: Admin) -> Response {
    // Made once: it depends on nothing but the code.
    static DOCUMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(document);
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
        .into_response()
}

/// What every call shares.
struct Shared;

impl Modify for Shared {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        let refusal = |what: &str| {
            let body = Content::new(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                "ApiError",
            ))));
            RefOr::T(
                Answer::builder()
                    .description(what)
                    .content("application/json", body)
                    .build(),
            )
        };
        for item in doc.paths.paths.values_mut() {
            let ops: [(HttpMethod, &mut Option<Operation>); 3] = [
                (HttpMethod::Get, &mut item.get),
                (HttpMethod::Post, &mut item.post),
                (HttpMethod::Put, &mut item.put),
            ];
            for (method, op) in ops {
                let Some(op) = op else { continue };
                // Only `/healthz` names its own security (none); the others take the
                // document's, the admin token.
                let needs_token = op.security.is_none();
                let answers = &mut op.responses.responses;
                let mut add = |code: &str, what: &str| {
                    answers
                        .entry(code.to_owned())
                        .or_insert_with(|| refusal(what));
                };
                if needs_token {
                    add("401", "No admin token, or not a live one");
                    add(
                        "503",
                        "The store or the audit log cannot be written now; retry shortly",
                    );
                }
                if op.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
                    add("400", "A malformed query or path");
                }
                if method != HttpMethod::Get {
                    add("413", "The body is larger than 2 MiB");
                    add("415", "A body sent as something other than JSON");
                }
            }
        }
    }
}
