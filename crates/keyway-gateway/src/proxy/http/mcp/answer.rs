//! The server's answer to a forwarded request: read up to its JSON-RPC response
//! (JSON, or the server-sent events of its stream), lists cut to the grant and to
//! the tools still as pinned, the call's result measured for its audit event.

use super::*;

/// The largest answer read from the server for one request (a list, a result).
const MAX_ANSWER: usize = 16 * 1024 * 1024;

// === impl HttpProxy ===

impl HttpProxy {
    /// An MCP server's answer, as the client gets it: a request's read and judged
    /// ([`HttpProxy::mcp_answer`]), anything else streamed as HTTP is (the server's
    /// stream of notifications ends when the token does); a session id bound to
    /// the token.
    pub(in crate::proxy::http) async fn mcp_respond(
        &self,
        resp: Response<Incoming>,
        call: Option<&Call>,
        entry: &Arc<Entry>,
        source: IpAddr,
        detail: &mut serde_json::Map<String, Value>,
    ) -> Response<ProxyBody> {
        let mut resp = match call {
            Some(c) => match self.mcp_answer(resp, c, entry, source, detail).await {
                Ok(r) => r,
                Err(resp) => self.downstream_response(resp, entry, source),
            },
            None => self.downstream_response(resp, entry, source),
        };
        if let Some(theirs) = resp.headers().get(MCP_SESSION_ID) {
            match self.bind_session(theirs, entry.id()) {
                Some(bound) => resp.headers_mut().insert(MCP_SESSION_ID, bound),
                None => resp.headers_mut().remove(MCP_SESSION_ID),
            };
        }
        resp
    }

    /// The answer to a forwarded request, read up to its JSON-RPC response, with
    /// lists cut to the grant; its size and error go into `detail`. An answer that is
    /// neither JSON nor a stream of events (202 to a notification, an HTTP error)
    /// is given back, to pass as any HTTP answer does.
    async fn mcp_answer(
        &self,
        resp: Response<Incoming>,
        call: &Call,
        entry: &Arc<Entry>,
        source: IpAddr,
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
        let reading = tokio::time::timeout(self.http.upstream_timeout, async {
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
                        match self
                            .mcp_message(text.as_bytes(), call, detail, &mut seen)
                            .await?
                        {
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
        });
        // A call waits no longer than its token lives (revoked, expired).
        let read = tokio::select! {
            r = reading => r,
            _ = self.ended(entry.clone(), source) => {
                detail.insert("status".into(), 401.into());
                detail.insert("error".into(), "token_ended".into());
                return Ok(refusal(DenyReason::Revoked, None));
            }
        };
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
            out = match self.mcp_message(&whole, call, detail, &mut seen).await {
                Ok(Some(v)) => v.to_string().into_bytes(),
                Ok(None) | Err(_) => {
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
    /// grant and to the tools whose definitions are still those pinned (a list), and
    /// measured. An error when a pin could not be stored: the list is not answered.
    async fn mcp_message(
        &self,
        text: &[u8],
        call: &Call,
        detail: &mut serde_json::Map<String, Value>,
        seen: &mut bool,
    ) -> Result<Option<Value>, &'static str> {
        let limits = jsonrpc::Limits {
            max_bytes: MAX_ANSWER,
            max_depth: 128,
            max_batch: 1,
        };
        let msg = match jsonrpc::read(text, &limits) {
            Ok(Read::One(m)) => m,
            _ => {
                tracing::warn!(service = %self.svc.name, "the MCP server sent a message that is not JSON-RPC; dropped");
                return Ok(None);
            }
        };
        let Message::Response { id, outcome } = msg else {
            return Ok(Some(msg.to_value()));
        };
        if id != call.id {
            return Ok(Some(Message::Response { id, outcome }.to_value()));
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
}
