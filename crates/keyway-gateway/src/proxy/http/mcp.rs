//! An MCP server behind the HTTP proxy (`protocol = "mcp"`, Streamable HTTP).
//!
//! The service has one endpoint, the upstream URL's path, on the gateway's port as
//! on the server. A POST's JSON-RPC message is read whole, with bounds
//! ([`keyway_core::jsonrpc`]), before anything is forwarded: malformed, a batch, or
//! `Mcp-Method` / `Mcp-Name` headers that disagree with the body are answered with
//! a JSON-RPC error and never reach the server. `tools/call`, `resources/read` and
//! `prompts/get` are judged against the grant's tools, resources and prompts; a
//! refusal is a JSON-RPC error (the tool, for this token, does not exist). What is
//! forwarded is the message as Keyway read it, rebuilt, so the server reads what was
//! judged. The answer to a request is read whole too (JSON, or the server-sent
//! events of its stream up to the answer), lists are cut to what the grant names,
//! and the call's audit event gets its result's size and error. GET (the server's
//! stream of notifications) and DELETE (end of a session) pass as they are.

use http::Method;
use http_body_util::Limited;
use keyway_core::jsonrpc::{self, Message, Outcome, Read};
use keyway_core::{sse, Grant, McpKind};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::body::Outgoing;
use super::*;

/// The largest answer read from the server for one request (a list, a result).
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// The stateless revision's headers: the body's method, and the tool, resource or
/// prompt it names.
const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");

/// The path of the protected-resource metadata (RFC 9728).
const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// What a forwarded request asked, to read its answer by.
pub(super) struct Call {
    id: Value,
    /// The token's grant, which lists are cut to.
    grant: Grant,
    /// For `tools/list` and the like: the kind of thing the answer lists.
    lists: Option<McpKind>,
}

/// A message refused before it reached the server.
pub(super) struct Refused {
    pub(super) reason: DenyReason,
    /// 400 for a malformed message; 200 for one refused by the grant (a JSON-RPC
    /// error is the answer).
    pub(super) status: StatusCode,
    pub(super) answer: Value,
}

// === impl HttpProxy ===

impl HttpProxy {
    /// The MCP endpoint's path on the gateway and on the server.
    pub(super) fn mcp_endpoint(&self) -> &str {
        match self.http.upstream.base_path.as_str() {
            "" => "/",
            p => p,
        }
    }

    /// Reads and judges an MCP request: the body to forward, and what to read the
    /// answer by (for a POST carrying a request).
    pub(super) async fn mcp_request(
        &self,
        req: Request<Incoming>,
        path: &str,
        entry: &Entry,
        detail: &mut serde_json::Map<String, Value>,
    ) -> Result<(Request<Outgoing>, Option<Call>), Refused> {
        // Every token admitted to a service has its grant; without one, nothing.
        let grant = entry.record.grant.as_ref().ok_or(Refused {
            reason: DenyReason::WrongKind,
            status: StatusCode::FORBIDDEN,
            answer: jsonrpc::error_response(&Value::Null, -32600, "forbidden"),
        })?;
        let malformed = |why: &str| Refused {
            reason: DenyReason::BadMcpMessage,
            status: StatusCode::BAD_REQUEST,
            answer: jsonrpc::error_response(&Value::Null, -32600, why),
        };
        if path != self.mcp_endpoint() {
            return Err(Refused {
                reason: DenyReason::PathNotGranted,
                status: StatusCode::NOT_FOUND,
                answer: jsonrpc::error_response(
                    &Value::Null,
                    -32600,
                    "this MCP service answers at its endpoint only",
                ),
            });
        }
        if *req.method() != Method::POST {
            // The server's stream (GET) and a session's end (DELETE) carry no message
            // of the client's.
            return Ok((req.map(Outgoing::Streamed), None));
        }
        let (mut parts, body) = req.into_parts();
        let limits = jsonrpc::Limits::default();
        let read = tokio::time::timeout(
            self.http.body_timeout,
            Limited::new(body, limits.max_bytes).collect(),
        )
        .await;
        let text = match read {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e))
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return Err(malformed(&format!(
                    "the message is larger than {} bytes",
                    limits.max_bytes
                )))
            }
            _ => return Err(malformed("the message did not arrive whole")),
        };
        let msg = match jsonrpc::read(&text, &limits) {
            Ok(Read::One(m)) => m,
            Ok(Read::Batch(_)) => {
                return Err(malformed(
                    "a batch is not an MCP message (MCP has none since 2025-06-18)",
                ))
            }
            Err(e) => {
                return Err(Refused {
                    answer: jsonrpc::error_response(&Value::Null, e.code(), &e.to_string()),
                    ..malformed("")
                })
            }
        };
        let header = |h: &HeaderName| {
            parts
                .headers
                .get(h)
                .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        };
        if let (Some(said), Some(method)) = (header(&MCP_METHOD), msg.method()) {
            if said != method {
                return Err(malformed(
                    "the Mcp-Method header names another method than the body",
                ));
            }
        }
        if let Some(m) = msg.method() {
            detail.insert(
                "mcp_method".into(),
                m.chars().take(128).collect::<String>().into(),
            );
        }
        let mut call = None;
        if let Message::Request { id, method, params } = &msg {
            let asked = asked(method, params.as_ref());
            if let Some((kind, name)) = &asked {
                let name = match name {
                    Some(n) => n.as_str(),
                    None => return Err(malformed("the call names no tool, resource or prompt")),
                };
                detail.insert(
                    kind_key(*kind).into(),
                    name.chars().take(256).collect::<String>().into(),
                );
                if header(&MCP_NAME).is_some_and(|said| said != name) {
                    return Err(malformed("the Mcp-Name header names another than the body"));
                }
                if *kind == McpKind::Tool {
                    let args = params
                        .as_ref()
                        .and_then(|p| p.get("arguments"))
                        .map(|a| serde_json::to_vec(a).unwrap_or_default())
                        .unwrap_or_else(|| b"{}".to_vec());
                    detail.insert(
                        "arguments_sha256".into(),
                        hex::encode(Sha256::digest(&args)).into(),
                    );
                    detail.insert("arguments_bytes".into(), args.len().into());
                    if self.http.mcp.as_ref().is_some_and(|m| m.audit_arguments) {
                        let shown =
                            String::from_utf8_lossy(&args[..args.len().min(4096)]).into_owned();
                        detail.insert("arguments".into(), redact(&shown).into_owned().into());
                    }
                }
                if !grant.mcp.allows(*kind, name) {
                    let reason = match kind {
                        McpKind::Tool => DenyReason::ToolNotGranted,
                        McpKind::Resource => DenyReason::ResourceNotGranted,
                        McpKind::Prompt => DenyReason::PromptNotGranted,
                    };
                    let what = match kind {
                        McpKind::Tool => "tool",
                        McpKind::Resource => "resource",
                        McpKind::Prompt => "prompt",
                    };
                    let shown: String = name.chars().take(128).collect();
                    return Err(Refused {
                        reason,
                        status: StatusCode::OK,
                        answer: jsonrpc::error_response(
                            id,
                            -32602,
                            &format!("{what} `{shown}` is not granted to this token"),
                        ),
                    });
                }
            }
            call = Some(Call {
                id: id.clone(),
                grant: grant.clone(),
                lists: lists(method),
            });
        }
        let body = Bytes::from(msg.to_value().to_string());
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        Ok((
            Request::from_parts(parts, Outgoing::Read(Full::new(body))),
            call,
        ))
    }

    /// The answer to a forwarded request, read up to its JSON-RPC response, with
    /// lists cut to the grant; its size and error go into `detail`. An answer that is
    /// neither JSON nor a stream of events (202 to a notification, an HTTP error)
    /// is given back, to pass as any HTTP answer does.
    pub(super) async fn mcp_answer(
        &self,
        resp: Response<Incoming>,
        call: &Call,
        detail: &mut serde_json::Map<String, Value>,
    ) -> Result<Response<ProxyBody>, Response<Incoming>> {
        let sse = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let json = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !(sse || json) || !resp.status().is_success() {
            return Err(resp);
        }
        let (mut parts, mut body) = resp.into_parts();
        let mut out = Vec::new();
        let mut seen = false;
        let mut reader = sse::Reader::new(MAX_ANSWER);
        let mut whole = Vec::new();
        let read = tokio::time::timeout(self.http.upstream_timeout, async {
            while !seen {
                let Some(frame) = body.frame().await else {
                    break;
                };
                let Ok(data) = frame.map(|f| f.into_data()) else {
                    return Err("the server's answer broke off");
                };
                let Ok(data) = data else { continue };
                if !sse {
                    if whole.len() + data.len() > MAX_ANSWER {
                        return Err("the server's answer is too large");
                    }
                    whole.extend_from_slice(&data);
                    continue;
                }
                let events = reader
                    .push(&data)
                    .map_err(|_| "a server-sent event is too large")?;
                for mut ev in events {
                    if let Some(text) = &ev.data {
                        match self.mcp_message(text.as_bytes(), call, detail, &mut seen) {
                            Some(v) => ev.data = Some(v.to_string()),
                            None if text.is_empty() => {}
                            None => continue,
                        }
                    }
                    out.extend_from_slice(sse::write(&ev).as_bytes());
                    if out.len() > MAX_ANSWER {
                        return Err("the server's answer is too large");
                    }
                }
            }
            Ok(())
        })
        .await;
        let failed = match read {
            Ok(Ok(())) => None,
            Ok(Err(why)) => Some(why),
            Err(_) => Some("the server did not finish its answer within upstream_timeout"),
        };
        if let Some(why) = failed {
            tracing::warn!(service = %self.svc.name, why, "MCP answer refused");
            detail.insert("status".into(), 502.into());
            detail.insert("error".into(), "upstream_answer_refused".into());
            return Ok(plain(StatusCode::BAD_GATEWAY, "bad gateway\n"));
        }
        if json {
            out = match self.mcp_message(&whole, call, detail, &mut seen) {
                Some(v) => v.to_string().into_bytes(),
                None => {
                    detail.insert("status".into(), 502.into());
                    detail.insert("error".into(), "upstream_answer_refused".into());
                    return Ok(plain(StatusCode::BAD_GATEWAY, "bad gateway\n"));
                }
            };
        }
        self.bytes_out.increment(out.len() as u64);
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
        forward::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(
            parts,
            Full::new(Bytes::from(out))
                .map_err(|e| match e {})
                .boxed_unsync(),
        ))
    }

    /// One message of the server's answer, as it goes to the client: `None` when it
    /// is not a JSON-RPC message (dropped). The response to `call` is cut to the
    /// grant (a list) and measured.
    fn mcp_message(
        &self,
        text: &[u8],
        call: &Call,
        detail: &mut serde_json::Map<String, Value>,
        seen: &mut bool,
    ) -> Option<Value> {
        let limits = jsonrpc::Limits {
            max_bytes: MAX_ANSWER,
            max_depth: 128,
            max_batch: 1,
        };
        let msg = match jsonrpc::read(text, &limits) {
            Ok(Read::One(m)) => m,
            _ => {
                tracing::warn!(service = %self.svc.name, "the MCP server sent a message that is not JSON-RPC; dropped");
                return None;
            }
        };
        let Message::Response { id, outcome } = msg else {
            return Some(msg.to_value());
        };
        if id != call.id {
            return Some(Message::Response { id, outcome }.to_value());
        }
        *seen = true;
        let outcome = match outcome {
            Outcome::Result(mut r) => {
                if let Some(kind) = call.lists {
                    let hidden = cut_list(&mut r, kind, &call.grant);
                    detail.insert("hidden".into(), hidden.into());
                }
                detail.insert(
                    "result_bytes".into(),
                    serde_json::to_vec(&r).map_or(0, |v| v.len()).into(),
                );
                if r.get("isError").and_then(Value::as_bool) == Some(true) {
                    detail.insert("error".into(), "tool_error".into());
                }
                Outcome::Result(r)
            }
            Outcome::Error(e) => {
                let code = e.get("code").and_then(Value::as_i64).unwrap_or(0);
                detail.insert("error".into(), format!("jsonrpc {code}").into());
                Outcome::Error(e)
            }
        };
        Some(Message::Response { id, outcome }.to_value())
    }

    /// Before an MCP service's request is decided: where the client reached the
    /// gateway (for the 401's challenge), or, for the metadata's path, the metadata
    /// itself (public, like the token endpoint it names).
    pub(super) fn mcp_front(
        &self,
        req: &Request<Incoming>,
        conn: &ConnInfo,
    ) -> Result<Option<String>, Box<Response<ProxyBody>>> {
        if self.http.mcp.is_none() {
            return Ok(None);
        }
        let base = reached_at(req, conn.tls, self.svc.listen);
        if req.method() == Method::GET && req.uri().path().starts_with(METADATA_PATH) {
            return Err(Box::new(self.mcp_metadata(&base)));
        }
        Ok(Some(base))
    }

    /// A 401 from an MCP service says where its metadata is (RFC 9728 §5.1), so a
    /// client can find where to get a token.
    pub(super) fn mcp_challenge(&self, resp: &mut Response<ProxyBody>, base: Option<String>) {
        let Some(base) = base.filter(|_| resp.status() == StatusCode::UNAUTHORIZED) else {
            return;
        };
        if let Some(v) = challenge(&base, self.mcp_endpoint()) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
    }

    /// Audits a message refused before it reached the server, and answers it with
    /// its JSON-RPC error (once its event is committed, under `durability =
    /// "commit"`).
    pub(super) async fn mcp_refuse(
        &self,
        mut ev: AuditEvent,
        mut detail: serde_json::Map<String, Value>,
        refused: Refused,
    ) -> Response<ProxyBody> {
        detail.insert("status".into(), refused.status.as_u16().into());
        ev.deny(refused.reason);
        ev.detail = detail.into();
        tracing::debug!(service = %self.svc.name, reason = refused.reason.as_str(), "MCP message refused");
        if !self.h.audit.record(ev).wait().await {
            return refusal(DenyReason::AuditUnavailable, None);
        }
        let mut resp = Response::new(
            Full::new(Bytes::from(refused.answer.to_string()))
                .map_err(|e| match e {})
                .boxed_unsync(),
        );
        *resp.status_mut() = refused.status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }

    /// The protected-resource metadata (RFC 9728) for this service at `base` (its
    /// scheme and authority as the client reached it): the resource, and Keyway's
    /// token endpoint as the server that issues tokens for it.
    pub(super) fn mcp_metadata(&self, base: &str) -> Response<ProxyBody> {
        let config = self.h.config();
        let mut doc = serde_json::json!({
            "resource": format!("{base}{}", self.mcp_endpoint()),
            "bearer_methods_supported": ["header"],
            "resource_name": self.svc.name,
        });
        if let Some(addr) = config.token_listen {
            let scheme = if config.token_tls.is_some() {
                "https"
            } else {
                "http"
            };
            let host = base.split("://").nth(1).unwrap_or_default();
            let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
            doc["authorization_servers"] =
                serde_json::json!([format!("{scheme}://{host}:{}", addr.port())]);
        }
        let mut resp = Response::new(
            Full::new(Bytes::from(doc.to_string()))
                .map_err(|e| match e {})
                .boxed_unsync(),
        );
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

/// The scheme and authority the client reached the gateway by, for the URLs the
/// metadata names; the listener's address when the client named none usable.
fn reached_at(req: &Request<Incoming>, tls: bool, listen: Option<std::net::SocketAddr>) -> String {
    let scheme = if tls { "https" } else { "http" };
    let named = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .filter(|h| h.parse::<http::uri::Authority>().is_ok() && !h.contains('@'));
    match (named, listen) {
        (Some(h), _) => format!("{scheme}://{h}"),
        (None, Some(a)) => format!("{scheme}://{a}"),
        (None, None) => format!("{scheme}://localhost"),
    }
}

/// The path forwarded for a request to the endpoint: the forwarding prepends the
/// upstream's path, which is the endpoint.
pub(super) fn forwarded_path(up: &keyway_core::config::HttpUpstream) -> &'static str {
    if up.base_path.is_empty() {
        "/"
    } else {
        ""
    }
}

/// The 401's challenge for an MCP service: where its metadata is.
fn challenge(base: &str, endpoint: &str) -> Option<HeaderValue> {
    let endpoint = if endpoint == "/" { "" } else { endpoint };
    HeaderValue::from_str(&format!(
        "Bearer realm=\"keyway\", resource_metadata=\"{base}{METADATA_PATH}{endpoint}\""
    ))
    .ok()
}

/// What a request reaches: a tool (by `params.name`), a resource (`params.uri`) or a
/// prompt (`params.name`); `Some((kind, None))` when the call names none.
fn asked(method: &str, params: Option<&Value>) -> Option<(McpKind, Option<String>)> {
    let (kind, field) = match method {
        "tools/call" => (McpKind::Tool, "name"),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            (McpKind::Resource, "uri")
        }
        "prompts/get" => (McpKind::Prompt, "name"),
        _ => return None,
    };
    let name = params
        .and_then(|p| p.get(field))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Some((kind, name))
}

/// The kind of thing a list method's answer lists.
fn lists(method: &str) -> Option<McpKind> {
    match method {
        "tools/list" => Some(McpKind::Tool),
        "resources/list" | "resources/templates/list" => Some(McpKind::Resource),
        "prompts/list" => Some(McpKind::Prompt),
        _ => None,
    }
}

/// The audit detail's key for the name a call reaches.
fn kind_key(kind: McpKind) -> &'static str {
    match kind {
        McpKind::Tool => "tool",
        McpKind::Resource => "resource",
        McpKind::Prompt => "prompt",
    }
}

/// Removes from a list result what the grant does not name; how many were removed.
/// An entry without the name it is judged by is removed too.
fn cut_list(result: &mut Value, kind: McpKind, grant: &Grant) -> usize {
    let (key, field): (&[&str], &str) = match kind {
        McpKind::Tool => (&["tools"], "name"),
        McpKind::Prompt => (&["prompts"], "name"),
        McpKind::Resource => (&["resources", "resourceTemplates"], ""),
    };
    let mut hidden = 0;
    for k in key {
        let Some(Value::Array(items)) = result.get_mut(*k) else {
            continue;
        };
        let before = items.len();
        items.retain(|item| {
            let name = match (kind, *k) {
                (McpKind::Resource, "resourceTemplates") => item.get("uriTemplate"),
                (McpKind::Resource, _) => item.get("uri"),
                _ => item.get(field),
            };
            name.and_then(Value::as_str)
                .is_some_and(|n| grant.mcp.allows(kind, n))
        });
        hidden += before - items.len();
    }
    hidden
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(tools: &[&str]) -> Grant {
        let t: Vec<String> = tools.iter().map(|s| s.to_string()).collect();
        Grant::new("t", &[], &[])
            .unwrap()
            .with_mcp(&t, &[], &[])
            .unwrap()
    }

    #[test]
    fn lists_are_cut_to_the_grant() {
        let mut r = serde_json::json!({"tools": [
            {"name": "search_tickets"}, {"name": "delete_ticket"}, {"name": "get_ticket"}, {"title": "no name"}
        ], "nextCursor": "2"});
        let hidden = cut_list(&mut r, McpKind::Tool, &grant(&["search_*", "get_ticket"]));
        assert_eq!(hidden, 2);
        assert_eq!(r["tools"].as_array().unwrap().len(), 2);
        assert_eq!(r["nextCursor"], "2", "pagination passes");
        let mut r = serde_json::json!({"resources": [{"uri": "tickets://1"}]});
        assert_eq!(
            cut_list(&mut r, McpKind::Resource, &grant(&["x"])),
            1,
            "tools named: no resources"
        );
    }

    #[test]
    fn calls_name_what_they_reach() {
        let p = serde_json::json!({"name": "get_ticket", "uri": "u"});
        assert_eq!(
            asked("tools/call", Some(&p)),
            Some((McpKind::Tool, Some("get_ticket".into())))
        );
        assert_eq!(
            asked("resources/read", Some(&p)),
            Some((McpKind::Resource, Some("u".into())))
        );
        assert_eq!(asked("tools/call", None), Some((McpKind::Tool, None)));
        assert_eq!(asked("tools/list", Some(&p)), None);
    }
}
