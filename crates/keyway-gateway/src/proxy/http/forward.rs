//! What goes upstream and what comes back: the request rewritten (normalised path,
//! no client token, no hop-by-hop headers or forwarding claims, the upstream
//! credential injected), a WebSocket bridged on purpose, the response stripped and
//! watched.

use super::body::Cut;
use super::*;

const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The headers that are hop-by-hop whatever `Connection` says (RFC 9110 §7.6.1,
/// and the proxy ones from before it).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "keep-alive",
    "proxy-connection",
];

// === impl HttpProxy ===

impl HttpProxy {
    pub(super) fn upstream_request(
        &self,
        req: Request<body::Outgoing>,
        conn: &ConnInfo,
        source: &str,
        path: &str,
        websocket: bool,
        stream: bool,
    ) -> Result<Request<body::Stalling>, DenyReason> {
        let (mut parts, body) = req.into_parts();
        // A body that stalls is cut; a gRPC stream (`stream`, [`grpc::is_stream`])
        // may rest as long as its token lives.
        let limit = (!body.is_end_stream() && !stream).then_some(self.http.body_timeout);
        let body = body::Stalling {
            inner: body,
            limit,
            timer: None,
        };
        let up = &self.http.upstream;
        let mut pq = String::with_capacity(up.base_path.len() + path.len() + 64);
        pq.push_str(&up.base_path);
        pq.push_str(path);
        if let Some(q) = parts.uri.query() {
            pq.push('?');
            pq.push_str(q);
        }
        let scheme = if self.http.upstream_tls.is_some() {
            "https"
        } else {
            "http"
        };
        parts.uri = Uri::builder()
            .scheme(scheme)
            .authority(up.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| DenyReason::BadPath)?;
        parts.version = if self.http.upstream_h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };

        let h = &mut parts.headers;
        // `TE: trailers` is the one hop-by-hop header that goes on: gRPC servers ask
        // for it, and it only says the client takes trailers.
        let trailers = lists(h, header::TE, "trailers");
        strip_hop_by_hop(h);
        if trailers {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        strip_client_claims(h);
        h.remove(header::AUTHORIZATION);
        strip_console_cookie(h);
        if !self.http.upstream_h2 {
            join_cookies(h);
        }
        if websocket {
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        if let Some(auth) = &self.http.upstream_auth {
            // Checked in `decide`; a secret removed since then fails closed here.
            let value = self
                .h
                .secrets
                .header(&auth.secret)
                .ok_or(DenyReason::UpstreamCredentialMissing)?;
            let value = if auth.prefix.is_empty() {
                value
            } else {
                let joined = [auth.prefix.as_bytes(), value.as_bytes()].concat();
                let mut v = HeaderValue::from_bytes(&joined)
                    .map_err(|_| DenyReason::UpstreamCredentialMissing)?;
                v.set_sensitive(true);
                v
            };
            h.insert(auth.header.clone(), value);
        }
        // HTTP/2 names the authority in the request's URI (`:authority`).
        if self.http.upstream_h2 {
            h.remove(header::HOST);
        } else if let Some(v) = &self.host {
            h.insert(header::HOST, v.clone());
        }
        // The client as the gateway judged it (behind trusted proxies, the first hop
        // they did not add), never what the client claimed. Most often the
        // connection's own address, whose value was made when it was accepted.
        let forwarded_for = if source == conn.peer_text() {
            conn.peer_header().cloned()
        } else {
            HeaderValue::from_str(source).ok()
        };
        if let Some(v) = forwarded_for {
            h.insert(X_FORWARDED_FOR, v);
        }
        let proto = if conn.tls { "https" } else { "http" };
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        Ok(Request::from_parts(parts, body))
    }

    /// Carries an upgraded connection (a WebSocket) both ways until either side
    /// closes, the token is revoked or expires, a reload leaves it outside the
    /// service, or the gateway stops; then audits its end (`connection.close`, as a
    /// tunnel stream's).
    pub(super) fn bridge_upgraded(
        &self,
        client: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
        entry: Arc<Entry>,
        source: IpAddr,
    ) {
        let session = crate::sessions::Session::new(&self.svc, &entry, source);
        let (live, ended) = self.h.sessions.open("websocket", entry.clone(), session);
        let service = self.svc.name.clone();
        let active = self.h.metrics.session(&service);
        let audit = self.h.audit.clone();
        self.h.sessions.spawn(async move {
            let (_active, _live) = (active, live);
            let (client, upstream) = match tokio::join!(client, upstream) {
                (Ok(c), Ok(u)) => (c, u),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::debug!(service = %service, error = %e, "an upgrade did not complete");
                    return;
                }
            };
            let mut close = audit.event(EventKind::ConnectionClose);
            close.service = Some(service);
            close.token_id = Some(entry.id().to_owned());
            close.principal = Some(entry.record.principal.clone());
            close.source = Some(source.to_string());
            close.detail = serde_json::json!({ "upgrade": "websocket" });
            let (client, upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            let meter = _live.meter();
            crate::relay::relay_audited(&audit, client, upstream, ended, close, meter).await;
        });
    }

    pub(super) fn downstream_response(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        entry: &Arc<Entry>,
        source: IpAddr,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = Cancellable::new(
            body,
            self.bytes_out.clone(),
            entry.clone(),
            self.watch(source),
        );
        Response::from_parts(parts, UnsyncBoxBody::new(body))
    }

    /// The watch of a response body sent to `source`.
    pub(super) fn watch(self: &Arc<Self>, source: IpAddr) -> body::Watch {
        body::Watch {
            proxy: self.clone(),
            source,
            config: self.h.config.watch(),
        }
    }

    /// Resolves, when a response body of `entry`'s token must end, with the error it
    /// ends with.
    pub(super) fn ending(&self, entry: Arc<Entry>, source: IpAddr) -> body::Ended {
        let ended = self.ended(entry, source);
        Box::pin(async move { why(ended.await) })
    }

    /// Resolves when a stream with `entry`'s token must end, with why. Polled only
    /// once what it waits on woke it, not at each frame the stream carries.
    pub(super) fn ended(
        &self,
        entry: Arc<Entry>,
        source: IpAddr,
    ) -> impl Future<Output = SessionEnd> + Send + 'static {
        let session = crate::sessions::Session::new(&self.svc, &entry, source);
        crate::runtime::WhenWoken::new(self.h.sessions.end_of(entry, session))
    }
}

/// The error a response body ends with, for why its session ended.
pub(super) fn why(end: SessionEnd) -> BoxError {
    Box::new(match end {
        SessionEnd::Unfit(why) => Cut::new(format!(
            "the gateway's config changed and this stream no longer fits it ({})",
            why.as_str()
        )),
        SessionEnd::Expired => Cut::new("the token of this stream expired"),
        SessionEnd::Revoked => Cut::new("the token of this stream was revoked"),
        // The rest never come from the watch (the body's own end is the stream's,
        // and a response body is not a listed session).
        SessionEnd::Shutdown
        | SessionEnd::Closed
        | SessionEnd::Error
        | SessionEnd::Terminated
        | SessionEnd::Unaudited => Cut::new("the gateway is shutting down"),
    })
}

/// Whether the comma-separated lists of header `name` hold `token` (in any case).
fn lists(h: &HeaderMap, name: HeaderName, token: &str) -> bool {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A WebSocket opening handshake: `GET` with `Upgrade: websocket` named in
/// `Connection`.
pub(super) fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    let names_upgrade = lists(h, header::CONNECTION, "upgrade");
    let websocket = h
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    req.method() == http::Method::GET && names_upgrade && websocket
}

/// The upstream's `101 Switching Protocols`, passed on with the headers that make it
/// one (`Connection`, `Upgrade`) and an empty body.
pub(super) fn upgraded_response(resp: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, _) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    Response::from_parts(parts, empty())
}

/// Removes what a client could claim that the upstream might trust: where the request
/// came from (`X-Forwarded-*`, `X-Real-IP`, `Forwarded`, …; the gateway sets
/// `X-Forwarded-For` and `-Proto` itself) and which method or URL it "really" is
/// (`X-HTTP-Method-Override`, `X-Original-URL`, …), which would step around the grant.
pub(super) fn strip_client_claims(h: &mut HeaderMap) {
    remove_where(h, |k| {
        let k = k.as_str();
        k.starts_with("x-forwarded-")
            || matches!(
                k,
                "forwarded"
                    | "x-real-ip"
                    | "true-client-ip"
                    | "x-client-ip"
                    | "x-cluster-client-ip"
                    | "cf-connecting-ip"
                    | "fastly-client-ip"
                    | "x-originating-ip"
                    | "x-http-method-override"
                    | "x-http-method"
                    | "x-method-override"
                    | "x-original-url"
                    | "x-rewrite-url"
                    | "x-original-method"
            )
    });
}

/// Removes every header `doomed` picks, in one pass over the few a message has
/// rather than one lookup for each name it might have.
fn remove_where(h: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let names: Vec<HeaderName> = h.keys().filter(|k| doomed(k)).cloned().collect();
    for n in names {
        h.remove(n);
    }
}

/// Removes the console's session cookie ([`crate::runtime::CONSOLE_COOKIE`]): a
/// browser sends it to every port of the gateway's host for paths under `/ui`, and
/// an upstream must never see it. Other cookies go on as they came.
pub(super) fn strip_console_cookie(h: &mut HeaderMap) {
    if !h.contains_key(header::COOKIE) {
        return;
    }
    // As bytes: a cookie that is not visible ASCII (any site on the host can set
    // one) must not carry the console's cookie past this filter.
    let kept: Vec<HeaderValue> = h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| {
            let rest: Vec<&[u8]> = v
                .as_bytes()
                .split(|&b| b == b';')
                .map(|c| c.trim_ascii())
                .filter(|c| !c.is_empty())
                .filter(|c| {
                    let name = c.split(|&b| b == b'=').next().unwrap_or_default();
                    name != crate::runtime::CONSOLE_COOKIE.as_bytes()
                })
                .collect();
            (!rest.is_empty()).then(|| HeaderValue::from_bytes(&rest.join(&b"; "[..])).ok())?
        })
        .collect();
    h.remove(header::COOKIE);
    for v in kept {
        h.append(header::COOKIE, v);
    }
}

/// Joins several `Cookie` fields into one, as HTTP/1.1 allows only one (an HTTP/2
/// client may split its cookies into several fields, RFC 9113 §8.2.3).
pub(super) fn join_cookies(h: &mut HeaderMap) {
    if h.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined = h
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        h.insert(header::COOKIE, v);
    }
}

/// Removes `Connection` and the headers it names, and the fixed hop-by-hop set.
pub(super) fn strip_hop_by_hop(h: &mut HeaderMap) {
    // What `Connection` names beyond the fixed set: usually nothing, since it most
    // often says `keep-alive` (no name is built or looked up for that one).
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !HOP_BY_HOP.iter().any(|f| n.eq_ignore_ascii_case(f)))
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    remove_where(h, |k| HOP_BY_HOP.contains(&k.as_str()));
}
