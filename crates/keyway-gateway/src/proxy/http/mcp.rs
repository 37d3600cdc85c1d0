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
//! judged. The server's answers are judged too (`mcp/answer.rs`): lists cut to what
//! the grant names and to the tools still as pinned, its requests to the agent
//! withheld where not granted, the call's audit event given its result's size and
//! error. GET (the server's stream) and DELETE (end of a session) carry no body.

use http::Method;
use http_body_util::Limited;
use keyway_core::jsonrpc::{self, Message, Outcome, Read};
use keyway_core::{sse, Grant, McpKind};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::body::Outgoing;
use super::*;
use crate::pins::{Listed, Uncallable};
use subtle::ConstantTimeEq;

mod answer;

/// The stateless revision's headers: the body's method, and the tool, resource or
/// prompt it names.
const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");
/// A session of the 2025-11-25 revision: the server's id, which the gateway binds to
/// the token whose client it was handed to (`<server's id>.<MAC>`).
const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
/// Where a client asks a stream to resume.
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// The path of the protected-resource metadata (RFC 9728).
const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// Who asks: the token's entry, and the connection the request came on.
pub(super) struct Asker<'a> {
    pub(super) entry: &'a Entry,
    pub(super) conn: &'a ConnInfo,
    pub(super) source: IpAddr,
}

/// What a forwarded request asked, to read its answer by.
pub(super) struct Call {
    /// The request's id; `None` for what has no answer of its own (a notification,
    /// the client's response, the server's stream asked with GET, DELETE).
    id: Option<Value>,
    /// The token's grant, which lists are cut to.
    grant: Grant,
    /// For `tools/list` and the like: the kind of thing the answer lists.
    lists: Option<McpKind>,
    /// How the request came, to answer the server on the agent's behalf (a request
    /// of the server's that the grant withholds from the agent).
    headers: HeaderMap,
    conn: ConnInfo,
    source: IpAddr,
    /// The token's id and principal, for the events of what is withheld.
    who: (String, String),
}

// === impl Call ===

impl Call {
    fn new(id: Option<Value>, grant: &Grant, headers: &HeaderMap, asker: &Asker<'_>) -> Self {
        Self {
            id,
            grant: grant.clone(),
            lists: None,
            headers: headers.clone(),
            conn: asker.conn.clone(),
            source: asker.source,
            who: (
                asker.entry.id().to_owned(),
                asker.entry.record.principal.clone(),
            ),
        }
    }
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
        asker: Asker<'_>,
        detail: &mut serde_json::Map<String, Value>,
    ) -> Result<(Request<Outgoing>, Call), Refused> {
        // Every token admitted to a service has its grant; without one, nothing.
        let grant =
            asker.entry.record.grant.as_ref().ok_or_else(|| {
                refused(DenyReason::WrongKind, StatusCode::FORBIDDEN, "forbidden")
            })?;
        if path != self.mcp_endpoint() {
            return Err(refused(
                DenyReason::PathNotGranted,
                StatusCode::NOT_FOUND,
                "this MCP service answers at its endpoint only",
            ));
        }
        let mut req = req;
        if let Some(bound) = req.headers().get(MCP_SESSION_ID) {
            let theirs = self.unbind_session(bound, asker.entry.id())?;
            req.headers_mut().insert(MCP_SESSION_ID, theirs);
        }
        // Nothing passes that is not a message read here: no other method, no
        // upgrade to another protocol, no body on GET or DELETE.
        if !matches!(*req.method(), Method::POST | Method::GET | Method::DELETE) {
            return Err(refused(
                DenyReason::MethodNotAllowed,
                StatusCode::METHOD_NOT_ALLOWED,
                "MCP takes POST, GET and DELETE",
            ));
        }
        if req.headers().contains_key(header::UPGRADE) {
            return Err(malformed("MCP is not upgraded to another protocol"));
        }
        if *req.method() != Method::POST {
            if !req.body().is_end_stream() {
                return Err(malformed("GET and DELETE carry no body"));
            }
            // The server's stream (GET) and a session's end (DELETE) carry no message
            // of the client's. A request's stream is not resumed through the gateway:
            // its replay would pass unjudged.
            req.headers_mut().remove(LAST_EVENT_ID);
            let (parts, _) = req.into_parts();
            let call = Call::new(None, grant, &parts.headers, &asker);
            let none = Outgoing::Read(Full::new(Bytes::new()));
            return Ok((Request::from_parts(parts, none), call));
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
        if parts.headers.get_all(MCP_METHOD).iter().count() > 1
            || parts.headers.get_all(MCP_NAME).iter().count() > 1
        {
            return Err(malformed("Mcp-Method and Mcp-Name are sent once"));
        }
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
        // What the server may route by goes on only as judged (`judge` keeps
        // `Mcp-Name` where it checked it).
        if msg.method().is_none() {
            parts.headers.remove(MCP_METHOD);
        }
        let call = self.judge(&msg, grant, &mut parts.headers, &asker, detail)?;
        parts.headers.remove(LAST_EVENT_ID);
        let body = rebuilt(&mut parts.headers, msg.to_value());
        Ok((Request::from_parts(parts, body), call))
    }

    /// The server's session id in a value the gateway handed to a client of the
    /// token `token_id`; a value it did not hand to one is refused as the server
    /// refuses a session it does not know (404: the client starts a new one).
    fn unbind_session(&self, bound: &HeaderValue, token_id: &str) -> Result<HeaderValue, Refused> {
        let not_granted = || Refused {
            reason: DenyReason::McpSessionNotGranted,
            status: StatusCode::NOT_FOUND,
            answer: jsonrpc::error_response(&Value::Null, -32001, "session not found"),
        };
        let text = bound.to_str().map_err(|_| not_granted())?;
        let (theirs, mac) = text.rsplit_once('.').ok_or_else(not_granted)?;
        let expected = self.h.authz.binding(token_id, theirs);
        if !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
            return Err(not_granted());
        }
        HeaderValue::from_str(theirs).map_err(|_| not_granted())
    }

    /// The server's session id as the client of `token_id` is given it.
    fn bind_session(&self, theirs: &HeaderValue, token_id: &str) -> Option<HeaderValue> {
        let theirs = theirs.to_str().ok()?;
        let mac = self.h.authz.binding(token_id, theirs);
        HeaderValue::from_str(&format!("{theirs}.{mac}")).ok()
    }

    /// Judges a request against the grant and the pins: what it reaches (a tool, a
    /// resource, a prompt) must be named in the grant (and in `Mcp-Name`, when
    /// sent; a message that reaches nothing goes on without it), and a tool must be
    /// callable as pinned. A tool call's arguments are audited by digest and size.
    /// What to read the answer by.
    fn judge(
        &self,
        msg: &Message,
        grant: &Grant,
        headers: &mut HeaderMap,
        asker: &Asker<'_>,
        detail: &mut serde_json::Map<String, Value>,
    ) -> Result<Call, Refused> {
        let reaches = match msg {
            Message::Request { method, params, .. } | Message::Notification { method, params } => {
                asked(method, params.as_ref())
            }
            Message::Response { .. } => None,
        };
        if reaches.is_none() {
            headers.remove(MCP_NAME);
        }
        let no_answer = || Ok(Call::new(None, grant, headers, asker));
        let (id, method, params) = match msg {
            Message::Request { id, method, params } => (id, method, params),
            // A notification runs its method too, unanswered: one that reaches
            // something must be a request, to be judged and answered.
            Message::Notification { .. } => {
                if reaches.is_some() {
                    return Err(malformed(
                        "a call that reaches a tool, resource or prompt has an id",
                    ));
                }
                return no_answer();
            }
            Message::Response { .. } => return no_answer(),
        };
        // The answer is matched by its id: one a server could write back otherwise
        // (`1.0` read as `1`) would pass unjudged.
        if id.as_f64().is_some() && id.as_i64().is_none() && id.as_u64().is_none() {
            return Err(malformed("an id is a string or an integer"));
        }
        let mut call = Call::new(Some(id.clone()), grant, headers, asker);
        call.lists = lists(method);
        let Some((kind, name)) = reaches else {
            return Ok(call);
        };
        let Some(name) = name.filter(|n| n.len() <= 1024) else {
            return Err(malformed(
                "the call names no tool, resource or prompt (of at most 1024 bytes)",
            ));
        };
        let shown: String = name.chars().take(128).collect();
        detail.insert(kind.as_str().into(), shown.clone().into());
        let said = headers
            .get(MCP_NAME)
            .map(|v| v.to_str().unwrap_or("\u{fffd}"));
        if said.is_some_and(|said| said != name) {
            return Err(malformed("the Mcp-Name header names another than the body"));
        }
        if kind == McpKind::Tool {
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
                let text = String::from_utf8_lossy(&args[..args.len().min(4096)]).into_owned();
                detail.insert("arguments".into(), redact(&text).into_owned().into());
            }
        }
        // A refusal is the answer a server gives for what does not exist (-32602).
        let refuse = |reason: DenyReason, why: String| Refused {
            reason,
            status: StatusCode::OK,
            answer: jsonrpc::error_response(id, -32602, &why),
        };
        if !grant.mcp.allows(kind, &name) {
            let why = format!("{} `{shown}` is not granted to this token", kind.as_str());
            return Err(refuse(kind.not_granted(), why));
        }
        if kind == McpKind::Tool {
            match self.h.pins.callable(&self.svc.name, &name) {
                Ok(()) => {}
                Err(Uncallable::NotListed) => {
                    let why = format!("tool `{shown}` has not been listed through Keyway yet; list the tools first");
                    return Err(refuse(DenyReason::ToolNotListed, why));
                }
                Err(Uncallable::Changed) => {
                    let why = format!("tool `{shown}` changed since it was approved; it is withheld until an operator approves it");
                    return Err(refuse(DenyReason::ToolChanged, why));
                }
            }
        }
        Ok(call)
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
        json(refused.status, refused.answer.to_string())
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
            let reached = base.split("://").nth(1).unwrap_or_default();
            let host = reached
                .parse::<http::uri::Authority>()
                .map_or_else(|_| "localhost".to_owned(), |a| a.host().to_owned());
            doc["authorization_servers"] =
                serde_json::json!([format!("{scheme}://{host}:{}", addr.port())]);
        }
        json(StatusCode::OK, doc.to_string())
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
    let named = |v: Option<&Value>, field: &str| {
        v.and_then(|p| p.get(field))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    match method {
        "tools/call" => Some((McpKind::Tool, named(params, "name"))),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            Some((McpKind::Resource, named(params, "uri")))
        }
        "prompts/get" => Some((McpKind::Prompt, named(params, "name"))),
        // Completing a prompt's or a resource template's arguments reveals them.
        "completion/complete" => {
            let r = params.and_then(|p| p.get("ref"));
            match r.and_then(|r| r.get("type")).and_then(Value::as_str) {
                Some("ref/prompt") => Some((McpKind::Prompt, named(r, "name"))),
                Some("ref/resource") => Some((McpKind::Resource, named(r, "uri"))),
                _ => Some((McpKind::Prompt, None)),
            }
        }
        _ => None,
    }
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

/// A message refused before anything of it was judged: a JSON-RPC error with no id.
fn refused(reason: DenyReason, status: StatusCode, why: &str) -> Refused {
    Refused {
        reason,
        status,
        answer: jsonrpc::error_response(&Value::Null, -32600, why),
    }
}

/// A message that is not MCP as Keyway passes it on: 400, and a JSON-RPC error.
fn malformed(why: &str) -> Refused {
    refused(DenyReason::BadMcpMessage, StatusCode::BAD_REQUEST, why)
}

/// The body of a message Keyway sends the server, rebuilt from what was judged:
/// JSON in UTF-8 whatever the client said of its own (a charset the server decodes
/// otherwise would be a message unjudged), its headers set to match.
fn rebuilt(headers: &mut HeaderMap, msg: Value) -> Outgoing {
    let body = Bytes::from(msg.to_string());
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::CONTENT_ENCODING);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Outgoing::Read(Full::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;

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
