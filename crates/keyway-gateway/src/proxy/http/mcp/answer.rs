//! The server's answer to a forwarded request: its JSON-RPC response (JSON read
//! whole, or the server-sent events of its stream relayed as they come,
//! `stream.rs`), lists cut to the grant and to the tools still as pinned, the
//! server's requests to the agent withheld where not granted, the call's result
//! measured for its audit event.

use super::*;

mod stream;

pub(in crate::proxy::http) use stream::Finish;

/// The largest answer read from the server for one request (a list, a result), and
/// the largest event of a stream.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// How a message of the server's is read: one, within the answer's bounds.
const ANSWER_LIMITS: jsonrpc::Limits = jsonrpc::Limits {
    max_bytes: MAX_ANSWER,
    max_depth: 128,
    max_batch: 1,
};

// === impl HttpProxy ===

impl HttpProxy {
    /// An MCP server's answer, as the client gets it, with the session id bound to
    /// the token. A request's answer: a stream of events relayed as it comes
    /// ([`HttpProxy::mcp_stream`], which records the call's event when it reaches
    /// the answer: the `Finish` it gives back takes the event), or JSON read whole
    /// ([`HttpProxy::mcp_answer`]). Anything else streamed as HTTP is (the server's
    /// own stream withholding what the grant does not allow), and ends when the
    /// token does.
    pub(in crate::proxy::http) async fn mcp_respond(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        call: Call,
        entry: &Arc<Entry>,
        source: IpAddr,
        detail: &mut serde_json::Map<String, Value>,
    ) -> (Response<ProxyBody>, Option<Finish>) {
        let ok = resp.status().is_success();
        let kind = media_type(resp.headers());
        let stream = ok && kind == Some(EVENT_STREAM);
        let request = call.id.is_some();
        // What has no answer of its own (a notification's 202, DELETE's answer)
        // carries no message: whatever came with it stays here.
        if ok && !request && !stream {
            let (mut parts, _) = resp.into_parts();
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.remove(header::CONTENT_TYPE);
            forward::strip_hop_by_hop(&mut parts.headers);
            let mut resp = Response::from_parts(parts, empty());
            self.bind_session_of(&mut resp, entry);
            return (resp, None);
        }
        // A successful answer to a request the gateway cannot read is not passed on
        // unread: it is JSON or a stream.
        let readable = !ok || stream || kind == Some(JSON);
        if !readable {
            tracing::warn!(service = %self.svc.name, "the MCP server answered in a type the gateway does not read; refused");
            return (answer_refused(detail), None);
        }
        let (mut resp, finish) = match call {
            c if request && stream => {
                let (r, f) = self.mcp_stream(resp, c, entry, source);
                (r, Some(f))
            }
            c if request => match self.mcp_answer(resp, &c, entry, source, detail).await {
                Ok(r) => (r, None),
                Err(resp) => (self.downstream_response(resp, entry, source), None),
            },
            c if stream => {
                // The server's own stream (GET): its requests to the agent pass only
                // where the grant allows them, and are answered for it otherwise.
                let resp = self.downstream_response(resp, entry, source);
                let resp = resp.map(|inner| {
                    Withholding {
                        inner,
                        reader: sse::Reader::new(MAX_ANSWER),
                        proxy: self.clone(),
                        call: c,
                    }
                    .boxed_unsync()
                });
                (resp, None)
            }
            _ => (self.downstream_response(resp, entry, source), None),
        };
        self.bind_session_of(&mut resp, entry);
        (resp, finish)
    }

    /// The server's session id in `resp`, bound to `entry`'s token.
    fn bind_session_of(&self, resp: &mut Response<ProxyBody>, entry: &Entry) {
        if let Some(theirs) = resp.headers().get(MCP_SESSION_ID) {
            match self.bind_session(theirs, entry.id()) {
                Some(bound) => resp.headers_mut().insert(MCP_SESSION_ID, bound),
                None => resp.headers_mut().remove(MCP_SESSION_ID),
            };
        }
    }

    /// A JSON answer to a forwarded request, read whole (bounded in size and by
    /// `upstream_timeout`), its lists cut to the grant; its size and error go into
    /// `detail`. An answer that is not JSON (202 to a notification, an HTTP error)
    /// is given back, to pass as any HTTP answer does.
    async fn mcp_answer(
        &self,
        resp: Response<Incoming>,
        call: &Call,
        entry: &Arc<Entry>,
        source: IpAddr,
        detail: &mut serde_json::Map<String, Value>,
    ) -> Result<Response<ProxyBody>, Response<Incoming>> {
        let json = media_type(resp.headers()) == Some(JSON);
        if !json || !resp.status().is_success() {
            return Err(resp);
        }
        let (mut parts, body) = resp.into_parts();
        let reading = tokio::time::timeout(
            self.http.upstream_timeout,
            Limited::new(body, MAX_ANSWER).collect(),
        );
        // A call waits no longer than its token lives (revoked, expired).
        let read = tokio::select! {
            r = reading => r,
            _ = self.ended(entry.clone(), source) => {
                detail.insert("status".into(), 401.into());
                detail.insert("error".into(), "token_ended".into());
                return Ok(refusal(DenyReason::Revoked, None));
            }
        };
        let mut seen = false;
        let out = match read {
            Ok(Ok(whole)) => match self
                .mcp_message(&whole.to_bytes(), call, detail, &mut seen)
                .await
            {
                Ok(Some(v)) if seen => v.to_string().into_bytes(),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        if !seen {
            tracing::warn!(service = %self.svc.name, "the MCP server's answer was not its response, whole and in time; refused");
            return Ok(answer_refused(detail));
        }
        self.bytes_out.increment(out.len() as u64);
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
        forward::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, whole(out)))
    }

    /// One message of the server's answer, as it goes to the client: `None` when it
    /// is not a JSON-RPC message (dropped). The response to `call` is cut to the
    /// grant and to the tools whose definitions are still those pinned (a list), and
    /// measured. An error when a pin could not be stored: the list is not answered.
    pub(super) async fn mcp_message(
        &self,
        text: &[u8],
        call: &Call,
        detail: &mut serde_json::Map<String, Value>,
        seen: &mut bool,
    ) -> Result<Option<Value>, &'static str> {
        let msg = match jsonrpc::read(text, &ANSWER_LIMITS) {
            Ok(Read::One(m)) => m,
            _ => {
                tracing::warn!(service = %self.svc.name, "the MCP server sent a message that is not JSON-RPC; dropped");
                return Ok(None);
            }
        };
        if let Some(method) = self.withholds(call, &msg) {
            detail.insert("withheld_server_request".into(), method.into());
            return Ok(None);
        }
        let Message::Response { id, outcome } = msg else {
            return Ok(Some(msg.to_value()));
        };
        if call.id.as_ref() != Some(&id) {
            // On a request's stream only its own answer belongs; another would pass
            // unjudged (a list, unfiltered).
            tracing::warn!(service = %self.svc.name, "the MCP server answered another id than the request's; withheld");
            return Ok(None);
        }
        *seen = true;
        let outcome = match outcome {
            Outcome::Result(mut r) => {
                if let Some(kind) = call.lists {
                    let hidden = cut_list(&mut r, kind, &call.grant);
                    detail.insert("hidden".into(), hidden.into());
                }
                if call.lists == Some(McpKind::Tool) {
                    let withheld = self.withhold_changed(&mut r).await?;
                    detail.insert("withheld".into(), withheld.into());
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
        Ok(Some(Message::Response { id, outcome }.to_value()))
    }

    /// Removes from a list of tools those whose definitions differ from their pins
    /// (pinning those seen for the first time); how many were removed.
    async fn withhold_changed(&self, result: &mut Value) -> Result<usize, &'static str> {
        let Some(Value::Array(tools)) = result.get_mut("tools") else {
            return Ok(0);
        };
        let total = tools.len();
        let mut kept = Vec::with_capacity(total);
        for tool in tools.drain(..) {
            match self.h.pins.judge(&self.svc.name, &tool).await {
                Ok(Listed::Shown) => kept.push(tool),
                Ok(Listed::Withheld) => {}
                Err(e) => {
                    tracing::error!(service = %self.svc.name, error = %e, "an MCP tool's pin could not be stored; the list is not answered");
                    return Err("a tool's pin could not be stored");
                }
            }
        }
        let withheld = total - kept.len();
        *tools = kept;
        Ok(withheld)
    }
}

impl HttpProxy {
    /// Whether `msg` is a request of the server's to the agent that `call`'s grant
    /// does not allow (sampling, elicitation): then it is withheld, answered for the
    /// agent, and its method returned.
    fn withholds(&self, call: &Call, msg: &Message) -> Option<String> {
        let Message::Request { id, method, .. } = msg else {
            return None;
        };
        if call.grant.mcp.allows_server_request(method) {
            return None;
        }
        tracing::info!(service = %self.svc.name, method, "a request of the server to the agent is not granted; withheld");
        self.answer_server(call, id, method);
        Some(method.clone())
    }

    /// Answers a request of the server's that the agent is not granted, on the
    /// agent's behalf, so the server does not wait for it: a JSON-RPC error, sent as
    /// the agent's own messages go (its session, the server's credential). In the
    /// background: the server finishes the call only once it has this answer.
    fn answer_server(&self, call: &Call, id: &Value, method: &str) {
        let why = format!("{method} is not granted to this agent's token by the gateway");
        let mut headers = call.headers.clone();
        let body = super::rebuilt(&mut headers, jsonrpc::error_response(id, -1, &why));
        let mut req = Request::new(body);
        *req.method_mut() = http::Method::POST;
        *req.headers_mut() = headers;
        let h = req.headers_mut();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        for stale in [MCP_METHOD, MCP_NAME, LAST_EVENT_ID] {
            h.remove(stale);
        }
        let path = super::forwarded_path(&self.http.upstream);
        let source = call.source.to_string();
        let Ok(up) = self.upstream_request(req, &call.conn, &source, path, false, false) else {
            return;
        };
        let (client, service) = (self.client.clone(), self.svc.name.clone());
        let within = self.http.upstream_timeout;
        // Audited as a refusal of the agent's token, like a call it was not granted.
        let mut ev = self.h.audit.event(EventKind::Request);
        ev.service = Some(service.clone());
        ev.token_id = Some(call.who.0.clone());
        ev.principal = Some(call.who.1.clone());
        ev.source = Some(source);
        ev.deny(DenyReason::ServerRequestNotGranted);
        ev.detail = serde_json::json!({ "mcp_method": method, "from": "server" });
        let recorded = self.h.audit.record(ev);
        tokio::spawn(async move {
            if !recorded.wait().await {
                tracing::warn!(%service, "the audit log did not take a withheld request's event; the server gets no answer for the agent");
                return;
            }
            match tokio::time::timeout(within, client.request(up)).await {
                Ok(Ok(r)) if r.status().is_success() => {}
                Ok(Ok(r)) => {
                    tracing::warn!(%service, status = %r.status(), "the server refused the gateway's answer to its request")
                }
                _ => {
                    tracing::warn!(%service, "the gateway's answer to the server's request did not reach it")
                }
            }
        });
    }
}

const EVENT_STREAM: &str = "text/event-stream";
const JSON: &str = "application/json";

/// An answer's media type, lower-cased, without its parameters (`charset`).
fn media_type(h: &HeaderMap) -> Option<&'static str> {
    let v = h.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let t = v.split(';').next()?.trim();
    [EVENT_STREAM, JSON]
        .into_iter()
        .find(|m| t.eq_ignore_ascii_case(m))
}

/// The server's own stream (GET), passed event by event: what is not a JSON-RPC
/// message, a response (the stream of a request is not resumed through the gateway,
/// so none belongs here), and a request for sampling or elicitation the grant does
/// not allow are withheld.
struct Withholding {
    inner: ProxyBody,
    reader: sse::Reader,
    proxy: Arc<HttpProxy>,
    /// The GET's: the grant, and how to answer the server for the agent.
    call: Call,
}

impl Withholding {
    /// The event as it goes on, its message rebuilt from what was judged; `None`
    /// when it is withheld.
    fn judged(&self, ev: &sse::Event) -> Option<sse::Event> {
        let Some(data) = ev.data.as_deref().filter(|d| !d.is_empty()) else {
            return Some(ev.clone());
        };
        let msg = match jsonrpc::read(data.as_bytes(), &ANSWER_LIMITS) {
            Ok(Read::One(m @ (Message::Notification { .. } | Message::Request { .. }))) => m,
            _ => {
                tracing::warn!(service = %self.proxy.svc.name, "the MCP server's stream carried what is not a notification or request; withheld");
                return None;
            }
        };
        if self.proxy.withholds(&self.call, &msg).is_some() {
            return None;
        }
        Some(sse::Event {
            data: Some(msg.to_value().to_string()),
            ..ev.clone()
        })
    }
}

impl Body for Withholding {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let events = match this.reader.push(&data) {
                Ok(e) => e,
                Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
            };
            let out: String = events
                .iter()
                .filter_map(|ev| this.judged(ev))
                .map(|ev| sse::write(&ev))
                .collect();
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
        }
    }
}

/// A 502 for an answer of the server's that the gateway does not pass on.
fn answer_refused(detail: &mut serde_json::Map<String, Value>) -> Response<ProxyBody> {
    detail.insert("status".into(), 502.into());
    detail.insert("error".into(), "upstream_answer_refused".into());
    plain(StatusCode::BAD_GATEWAY, "bad gateway\n")
}

/// Removes from a list result what the grant does not name; how many were removed.
/// An entry without the name it is judged by is removed too.
fn cut_list(result: &mut Value, kind: McpKind, grant: &Grant) -> usize {
    // Each list of the result, and the member its entries are judged by.
    let lists: &[(&str, &str)] = match kind {
        McpKind::Tool => &[("tools", "name")],
        McpKind::Prompt => &[("prompts", "name")],
        McpKind::Resource => &[("resources", "uri"), ("resourceTemplates", "uriTemplate")],
    };
    let mut hidden = 0;
    for (list, by) in lists {
        let Some(Value::Array(items)) = result.get_mut(*list) else {
            continue;
        };
        let before = items.len();
        items.retain(|item| {
            item.get(*by)
                .and_then(Value::as_str)
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
    fn media_types_are_told_whatever_their_case() {
        let mut h = HeaderMap::new();
        for (v, want) in [
            ("Application/JSON; charset=UTF-8", Some(JSON)),
            ("text/Event-Stream", Some(EVENT_STREAM)),
            ("application/jsonx", None),
            ("text/html", None),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            assert_eq!(media_type(&h), want, "{v}");
        }
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
}
