//! A request's answer that is a stream of server-sent events, relayed as it comes:
//! progress, log messages and the server's requests to the agent (sampling,
//! elicitation, where granted) reach the client while the call runs, and the
//! client's answers to them reach the server. Each event is judged as it passes
//! (`mcp_message`). The call's audit event is recorded when the stream reaches the
//! response, and the response goes to the client once that event is committed; a
//! stream that ends without one is recorded with why. The stream ends with the
//! response (the request's stream has nothing after it), when the token ends, or
//! when the client leaves.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use super::*;

/// Takes the call's audit event (and its slot in the queue) from the request's
/// handler: the stream records it when it reaches the answer.
pub(in crate::proxy::http) type Finish = oneshot::Sender<AuditEvent>;

/// Why a request's stream ended without its answer.
type Ended = &'static str;

// === impl HttpProxy ===

impl HttpProxy {
    /// Relays the stream `resp` of the request `call` in a task of its own: the
    /// client's response, and where the handler hands the call's event.
    pub(in crate::proxy::http) fn mcp_stream(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        call: Call,
        entry: &Arc<Entry>,
        source: IpAddr,
    ) -> (Response<ProxyBody>, Finish) {
        let (mut parts, body) = resp.into_parts();
        let (finish, event) = oneshot::channel();
        let (tx, rx) = mpsc::channel(16);
        let ended = self.ended(entry.clone(), source);
        let this = self.clone();
        tokio::spawn(async move { this.relay(body, call, event, tx, ended).await });
        parts.headers.remove(header::CONTENT_LENGTH);
        forward::strip_hop_by_hop(&mut parts.headers);
        // What is queued for the client stops too the moment the token ends.
        let body = Cancellable::new(
            Channel(rx).boxed_unsync(),
            self.bytes_out.clone(),
            entry.clone(),
            self.watch(source),
        );
        (
            Response::from_parts(parts, UnsyncBoxBody::new(body)),
            finish,
        )
    }

    async fn relay(
        self: Arc<Self>,
        mut body: Incoming,
        call: Call,
        event: oneshot::Receiver<AuditEvent>,
        tx: mpsc::Sender<Result<Bytes, BoxError>>,
        ended: impl Future<Output = SessionEnd>,
    ) {
        let mut event = Some(event);
        let mut detail = serde_json::Map::new();
        let mut reader = sse::Reader::new(MAX_ANSWER);
        let mut seen = false;
        tokio::pin!(ended);
        let outcome: Result<(), Ended> = 'read: loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                _ = &mut ended => break Err("token_ended"),
                () = tx.closed() => break Err("client_left"),
            };
            let data = match frame {
                None => break Err("no_answer"),
                Some(Err(_)) => break Err("upstream_broke_off"),
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
            };
            let Ok(events) = reader.push(&data) else {
                break Err("event_too_large");
            };
            let mut out = String::new();
            for mut ev in events {
                if let Some(text) = ev.data.as_deref().filter(|t| !t.is_empty()) {
                    match self
                        .mcp_message(text.as_bytes(), &call, &mut detail, &mut seen)
                        .await
                    {
                        Ok(Some(v)) => ev.data = Some(v.to_string()),
                        Ok(None) => continue,
                        Err(_) => break 'read Err("pin_not_stored"),
                    }
                }
                out.push_str(&sse::write(&ev));
                if seen {
                    break;
                }
            }
            // The answer goes once its event is committed.
            if seen && !record(&self.h.audit, event.take(), detail.clone(), None).await {
                break Err("audit_unavailable");
            }
            if !out.is_empty() {
                let sent = tokio::select! {
                    r = tx.send(Ok(Bytes::from(out))) => r.is_ok(),
                    _ = &mut ended => break Err("token_ended"),
                };
                if !sent {
                    break Err("client_left");
                }
            }
            if seen {
                break Ok(());
            }
        };
        if let Err(why) = outcome {
            tracing::debug!(service = %self.svc.name, why, "an MCP request's stream ended without its answer");
            record(&self.h.audit, event.take(), detail, Some(why)).await;
            let cut: BoxError = if why == "token_ended" {
                forward::why(SessionEnd::Revoked)
            } else {
                format!("the MCP request's stream ended: {why}").into()
            };
            let _ = tx.send(Err(cut)).await;
        }
    }
}

/// Records the call's event with what the stream saw; whether it was committed.
/// The slot reserved in the audit queue when the call came was given back when the
/// stream began (a long call must not hold one); the answer takes one anew, and
/// without room it does not go (`fail_closed`).
async fn record(
    audit: &crate::audit::AuditSink,
    event: Option<oneshot::Receiver<AuditEvent>>,
    detail: serde_json::Map<String, Value>,
    error: Option<Ended>,
) -> bool {
    let Some(Ok(mut ev)) = (match event {
        Some(e) => Some(e.await),
        None => None,
    }) else {
        return false;
    };
    let Ok(reservation) = audit.reserve() else {
        return false;
    };
    if let Value::Object(m) = &mut ev.detail {
        m.extend(detail);
        if let Some(e) = error {
            m.insert("error".into(), e.into());
        }
    }
    reservation.send(ev).wait().await
}

/// The client's body of a relayed stream.
struct Channel(mpsc::Receiver<Result<Bytes, BoxError>>);

impl Body for Channel {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|m| m.map(|r| r.map(Frame::data)))
    }
}
