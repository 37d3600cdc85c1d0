//! The HTTP reverse proxy of one service.
//!
//! hyper parses; Keyway decides. hyper refuses ambiguous framing (differing
//! `Content-Length`s are a 400; with `Transfer-Encoding` the chunked framing wins and
//! the connection closes after the answer, RFC 9112 §6.3) and bounds the header block
//! in size and time. Each request on a connection is then decided on its own: a token
//! leaked into the URL (refused and revoked), the method (no TRACE), the source
//! address, the token, the service, the normalised path and the method against the
//! grant, the rate limit, room in the audit queue. An allowed request is forwarded with
//! the normalised path, without the client's token, hop-by-hop headers or forwarding
//! claims, with the upstream credential injected, over a pooled keep-alive
//! connection. Bodies stream both ways; a response body stops the moment its token is
//! revoked or expires, or a reload leaves it outside its service.
//!
//! A reload that changes the service starts a new proxy on the same port and hands it
//! this one's connections ([`HttpProxy::hand_over`]): a request that arrives on one of
//! them is decided and forwarded by the new proxy, and its answer says
//! `Connection: close`, so the client's next request opens a connection to the new
//! proxy. A request already in flight finishes here and closes its connection the
//! same way. No request is refused or cut for the swap: each is served by the old
//! service or the new, whole.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use keyway_core::config::{HttpService, Service, ServiceKind};
use keyway_core::path::percent_decode_lossy;
use keyway_core::token::redact;
use keyway_core::DenyReason;
use keyway_core::EventKind;
use keyway_store::AuditEvent;
use tokio::net::TcpListener;

use crate::authz::{Admitted, Ask, Attempt, Protocol, Reached};
use crate::index::Entry;
use crate::listener::{serve_http, ConnInfo, Limits, Stop};
use crate::proxy::Handles;
use crate::sessions::SessionEnd;

mod answers;
mod body;
mod forward;
mod grpc;
mod mcp;

/// Where a request came from, as proxies in front say it (believed only from
/// `trusted_proxies`).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

use answers::{empty, json, plain, refusal, whole};
use body::Cancellable;
use forward::{is_websocket_upgrade, upgraded_response};
use keyway_core::head::bearer;

pub use crate::runtime::BoxError;
/// The body of every response the proxy sends.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// The proxy of one HTTP service.
pub struct HttpProxy {
    h: Handles,
    svc: Service,
    http: HttpService,
    client: Upstream,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    /// The upstream's `Host` value, made once (over HTTP/1.1).
    host: Option<HeaderValue>,
    /// `keyway_bytes_total{direction="out"}` of the service, registered once.
    bytes_out: metrics::Counter,
    /// The proxy a reload put in this one's place ([`HttpProxy::hand_over`]).
    successor: OnceLock<Arc<HttpProxy>>,
}

/// The pooled keep-alive client to the upstream: direct or through an agent, in TLS
/// for an `https://` upstream ([`crate::upstream::HttpConnector`]).
type Upstream = Client<crate::upstream::HttpConnector, body::Stalling>;

// === impl HttpProxy ===

impl HttpProxy {
    /// The proxy of `svc`, if it is an HTTP service.
    pub fn new(h: Handles, svc: Service) -> Option<Arc<Self>> {
        let ServiceKind::Http(http) = svc.kind.clone() else {
            return None;
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .http2_only(http.upstream_h2);
        if http.upstream_tls.as_ref().is_some_and(|t| !t.verify) {
            tracing::warn!(
                service = %svc.name,
                upstream = %http.upstream.authority,
                "CERTIFICATE VERIFICATION IS OFF for this upstream (upstream_insecure_skip_verify): \
                 anyone on the path can pose as it and read the credential Keyway sends"
            );
        }
        let client = builder.build(crate::upstream::HttpConnector {
            dialer: h.dialer.clone(),
            svc: Arc::new(svc.clone()),
            timeout: http.connect_timeout,
        });
        let limiter = svc.rate_limit.map(|r| {
            let count = r.count.get().min(1_000_000);
            let period = r.per / count;
            let burst = NonZeroU32::new(count).unwrap_or(NonZeroU32::MIN);
            let quota = Quota::with_period(period)
                .unwrap_or_else(|| Quota::per_second(burst))
                .allow_burst(burst);
            RateLimiter::keyed(quota)
        });
        let bytes_out = h.metrics.bytes(&svc.name, "out");
        let host = HeaderValue::from_str(http.upstream.authority.as_str()).ok();
        Some(Arc::new(Self {
            h,
            svc,
            http,
            client,
            limiter,
            host,
            bytes_out,
            successor: OnceLock::new(),
        }))
    }

    /// Hands this proxy's connections to `next`, the proxy a reload started in its
    /// place: their next requests go to it, and each connection closes after its
    /// next answer. Once only; the caller then retires this proxy's listener.
    pub fn hand_over(&self, next: Arc<HttpProxy>) {
        if self.successor.set(next).is_err() {
            tracing::warn!(service = %self.svc.name, "a proxy was handed over twice");
        }
    }

    /// The proxy in force for this one's connections: the last it was handed over to,
    /// or itself.
    fn in_force(self: &Arc<Self>) -> &Arc<Self> {
        let mut p = self;
        while let Some(next) = p.successor.get() {
            p = next;
        }
        p
    }

    /// One request on a connection this proxy accepted: handled by the proxy in force,
    /// and answered with `Connection: close` once this one was handed over (a request
    /// in flight then included), so that the client's next request reaches the proxy
    /// in force on a connection of its own. A switch of protocols keeps its
    /// connection: it is a session, which the reload's rule judges.
    async fn answer(
        self: &Arc<Self>,
        conn: &ConnInfo,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let grpc = grpc::is_grpc(req.headers());
        let http1 = req.version() < Version::HTTP_2;
        let mcp_base = match self.mcp_front(&req, conn) {
            Ok(base) => base,
            Err(metadata) => return *metadata,
        };
        let mut resp = self.in_force().handle(conn, req).await;
        self.mcp_challenge(&mut resp, mcp_base);
        if grpc && resp.extensions().get::<grpc::OwnAnswer>().is_some() {
            resp = grpc::as_grpc(resp);
        }
        // HTTP/2 has no `Connection`; its clients stay with the proxy in force.
        if http1
            && self.successor.get().is_some()
            && resp.status() != StatusCode::SWITCHING_PROTOCOLS
        {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        // HTTP/2 has no `Connection: close`: the connection is told to go instead,
        // unless it is a trusted proxy's, which carries other clients' streams.
        let shared = !http1
            && self
                .http
                .trusted_proxies
                .iter()
                .any(|n| n.contains(&conn.peer.ip()));
        if !shared
            && resp
                .headers()
                .get(header::CONNECTION)
                .is_some_and(|v| v == "close")
        {
            conn.close.cancel();
        }
        resp
    }

    /// Accepts connections on `listener` until `stop` retires it (its connections are
    /// then served until each has its last answer) or drains it (in-flight requests
    /// finish, bounded).
    pub async fn serve(
        self: Arc<Self>,
        listener: Arc<TcpListener>,
        tls: Option<tokio_rustls::TlsAcceptor>,
        stop: Stop,
    ) {
        if let Some(this) = self.limiter.is_some().then(|| self.clone()) {
            // Until retired: a proxy handed over no longer decides requests.
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tokio::select! {
                        () = stop.no_more_connections() => break,
                        _ = tick.tick() => {}
                    }
                    if let Some(l) = &this.limiter {
                        l.retain_recent();
                    }
                }
            });
        }
        let limits = Limits {
            caps: crate::DATA_CAPS,
            header_timeout: self.http.header_timeout,
            first_request: None,
            max_header_bytes: self.http.max_header_bytes,
            max_headers: self.http.max_headers,
            http2: Some(crate::listener::Http2 { h2c: self.http.h2c }),
        };
        let name = self.svc.name.clone();
        let this = self.clone();
        serve_http(
            self.h.admission.clone(),
            &name,
            listener,
            limits,
            tls.map(crate::tls::Renewable::new),
            stop,
            move |conn: ConnInfo| {
                let this = this.clone();
                service_fn(move |req| {
                    let (this, conn) = (this.clone(), conn.clone());
                    async move { Ok::<_, Infallible>(this.answer(&conn, req).await) }
                })
            },
        )
        .await;
    }

    /// Decides one request and, if allowed, forwards it.
    pub async fn handle(
        self: &Arc<Self>,
        conn: &ConnInfo,
        mut req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let peer = conn.peer;
        let peer_ip = peer.ip().to_canonical();
        let h = &self.h;
        let mut ev = h.audit.event(EventKind::Request);
        ev.service = Some(self.svc.name.clone());
        // Behind proxies the service trusts, the first hop they did not add.
        let forwarded = if self.http.trusted_proxies.is_empty() {
            Some(peer_ip)
        } else {
            let forwarded = req
                .headers()
                .get_all(X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok());
            keyway_core::forwarded::client_address(peer.ip(), forwarded, &self.http.trusted_proxies)
        };
        // A trusted proxy that names no client: the client is unknown, not the proxy.
        // Its event names no source (no detector counts it against the proxy, which
        // carries everyone's requests), and it is refused wherever networks are
        // named; the proxy's address is still the hop the upstream is told of.
        let source = forwarded.unwrap_or(peer_ip);
        // For the event and the upstream's `X-Forwarded-For`: the connection's own,
        // written out once, unless a trusted proxy named another.
        let source_text: std::borrow::Cow<'_, str> = if source == peer_ip {
            std::borrow::Cow::Borrowed(conn.peer_text())
        } else {
            std::borrow::Cow::Owned(source.to_string())
        };
        ev.source = forwarded.map(|_| source_text.to_string());
        // Blocked while this keep-alive connection was open: refused, not audited (a
        // blocked flood must not fill the log), counted, and the connection closed.
        if h.admission.is_blocked_now(source) {
            h.metrics.blocked_connection();
            let mut resp = plain(StatusCode::FORBIDDEN, "forbidden\n");
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
        // What every request records is typed (`AuditEvent::http`); the map holds the
        // rest (an unknown client, the MCP steps' findings).
        ev.http_mut().set_method(req.method().as_str());
        let mut detail = serde_json::Map::new();
        if forwarded.is_none() {
            detail.insert("forwarded_for".into(), "unknown".into());
            detail.insert("peer".into(), source_text.to_string().into());
        }
        let decision = self.decide(&req, conn, forwarded, &mut ev);
        let (entry, path) = match decision {
            Ok(x) => x,
            Err((reason, retry_after)) => return self.deny(ev, detail, reason, retry_after).await,
        };
        // Reserve the audit event before forwarding: with `fail_closed`, no request
        // goes on unless its event can be recorded.
        let Ok(reservation) = h.audit.reserve() else {
            return self
                .deny(ev, detail, DenyReason::AuditUnavailable, None)
                .await;
        };

        let started = Instant::now();
        let grpc = grpc::is_stream(&req, self.http.upstream_h2);
        // A WebSocket upgrade, on purpose: the one upgrade passed through (never h2c).
        let client_upgrade = is_websocket_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let (req, mut call, path) = match &self.http.mcp {
            None => (req.map(body::Outgoing::Streamed), None, path.as_str()),
            // The MCP steps' futures and the call are boxed: kept inline, they would
            // make every request's future (moved into hyper's box per request) twice
            // the size, MCP or not.
            Some(_) => match Box::pin(self.mcp_request(
                req,
                &path,
                mcp::Asker {
                    entry: &entry,
                    conn,
                    source,
                },
                &mut detail,
            ))
            .await
            {
                // The endpoint is the upstream's path, which the forwarding prepends.
                Ok((r, c)) => (
                    r,
                    Some(Box::new(c)),
                    mcp::forwarded_path(&self.http.upstream),
                ),
                Err(refused) => {
                    drop(reservation);
                    return Box::pin(self.mcp_refuse(ev, detail, refused)).await;
                }
            },
        };
        let upstream_req = match self.upstream_request(
            req,
            conn,
            &source_text,
            path,
            client_upgrade.is_some(),
            grpc,
        ) {
            Ok(r) => r,
            Err(reason) => {
                drop(reservation);
                return self.deny(ev, detail, reason, None).await;
            }
        };
        let request = self.client.request(upstream_req);
        let mut finish = None;
        // A gRPC server may send its headers only with its first message or its
        // status, after a client stream of any length: no time limit until then,
        // but the call ends when its token does (revoked, expired).
        let result = if grpc {
            // Boxed, as the MCP steps are: the two futures would double this one's size.
            let ended = self.ended(entry.clone(), source);
            Box::pin(async move {
                tokio::select! {
                    r = request => Ok(r),
                    _ = ended => Err(Waited::Ended),
                }
            })
            .await
        } else {
            tokio::time::timeout(self.http.upstream_timeout, request)
                .await
                .map_err(|_| Waited::TooLong)
        };
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        ev.http_mut().upstream_ms = Some((elapsed * 10.0).round() / 10.0);
        ev.allow();
        let response = match result {
            Ok(Ok(mut resp)) => {
                ev.http_mut().status = Some(resp.status().as_u16());
                match client_upgrade {
                    Some(client) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                        let upstream = hyper::upgrade::on(&mut resp);
                        self.bridge_upgraded(client, upstream, entry.clone(), source);
                        upgraded_response(resp)
                    }
                    _ => match call.take() {
                        Some(c) => {
                            let (resp, f) =
                                Box::pin(self.mcp_respond(resp, *c, &entry, source, &mut detail))
                                    .await;
                            finish = f;
                            resp
                        }
                        None => self.downstream_response(resp, &entry, source),
                    },
                }
            }
            Ok(Err(e)) if cause::<body::Stalled>(&e).is_some() => {
                ev.http_mut().failed(408, "body_stalled");
                let mut resp = plain(StatusCode::REQUEST_TIMEOUT, "request body timed out\n");
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                resp
            }
            Ok(Err(e)) => {
                let dial = cause::<crate::upstream::DialError>(&e);
                let reason = dial.map_or("upstream_unreachable", |d| d.reason);
                match dial {
                    Some(d) => {
                        tracing::warn!(service = %self.svc.name, reason, why = %d.why, "upstream request failed")
                    }
                    None => {
                        tracing::warn!(service = %self.svc.name, error = %e, "upstream request failed")
                    }
                }
                ev.http_mut().failed(502, reason);
                plain(StatusCode::BAD_GATEWAY, "bad gateway\n")
            }
            Err(Waited::TooLong) => {
                tracing::warn!(service = %self.svc.name, timeout = ?self.http.upstream_timeout, "upstream timed out");
                ev.http_mut().failed(504, "upstream_timeout");
                plain(StatusCode::GATEWAY_TIMEOUT, "gateway timeout\n")
            }
            Err(Waited::Ended) => {
                ev.http_mut().failed(401, "token_ended");
                refusal(DenyReason::Revoked, None)
            }
        };
        ev.detail = detail.into();
        // An MCP answer streamed: its event goes when the stream reaches the answer.
        if let Some(f) = finish {
            drop(reservation);
            let _ = f.send(ev);
            return response;
        }
        // Under `durability = "commit"` the answer waits for its event's commit.
        if !reservation.send(ev).wait().await {
            return refusal(DenyReason::AuditUnavailable, None);
        }
        response
    }

    /// Every check, in order: the HTTP-only refusals first (a token in the URL,
    /// TRACE), then the [`Authorizer`](crate::authz::Authorizer)'s, then the rate limit
    /// and the upstream credential. On success: the token's entry and the normalised
    /// path.
    #[allow(clippy::type_complexity)]
    fn decide(
        &self,
        req: &Request<Incoming>,
        conn: &ConnInfo,
        source: Option<std::net::IpAddr>,
        ev: &mut AuditEvent,
    ) -> Result<(Arc<Entry>, String), (DenyReason, Option<Duration>)> {
        let h = &self.h;
        let raw_path = req.uri().path();
        // A refusal before the path is normalised records it as sent, but decoded and
        // redacted: a token hidden in the path (even as `kwat%5F…`) must not reach the
        // log through the audit event. Once admitted, the normalised path is recorded
        // instead (written out once, not first as sent and then again).
        let as_sent = |ev: &mut AuditEvent| {
            // At most 512 bytes, cut at a character's edge: a path may hold UTF-8.
            let shown = percent_decode_lossy(keyway_core::text::prefix(raw_path, 512));
            ev.http_mut().path = Some(redact(&shown).into_owned());
        };
        // First, so that a token leaked into a URL is revoked whoever sent it.
        if h.tokens.refuse_token_in_url(req.uri(), ev) {
            as_sent(ev);
            return Err((DenyReason::TokenInUrl, None));
        }
        // TRACE echoes the request, injected credential included; CONNECT and TRACK
        // have no business on a reverse proxy.
        if matches!(req.method().as_str(), "TRACE" | "TRACK" | "CONNECT") {
            as_sent(ev);
            return Err((DenyReason::MethodNotAllowed, None));
        }
        let attempt = Attempt {
            protocol: Protocol::Http,
            service: Reached::Served(&self.svc),
            source,
            token: bearer(req.headers()),
            cert: conn.cert_thumbprint.as_deref(),
            ask: Ask::Request {
                method: req.method().as_str(),
                path: raw_path,
            },
        };
        let admitted = h.authz.admit(&attempt).map_err(|r| {
            ev.token_id = r.token_id;
            ev.principal = r.principal;
            as_sent(ev);
            (r.reason, None)
        })?;
        let Admitted { entry, path, .. } = admitted;
        ev.token_id = Some(entry.id().to_owned());
        ev.principal = Some(entry.record.principal.clone());
        let path = path.unwrap_or_default();
        // At most 512 characters of it.
        ev.http_mut().path = Some(redact(keyway_core::text::first_chars(&path, 512)).into_owned());
        if let Some(limiter) = &self.limiter {
            if let Err(not_until) = limiter.check_key(&entry.record.id) {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Err((DenyReason::RateLimited, Some(wait)));
            }
        }
        if let Some(auth) = &self.http.upstream_auth {
            if h.secrets.header(&auth.secret).is_none() {
                return Err((DenyReason::UpstreamCredentialMissing, None));
            }
        }
        entry.mark_used(h.now());
        Ok((entry, path))
    }

    /// Audits a refusal and answers it (once its event is committed, under
    /// `durability = "commit"`; a 503 if the store did not take it).
    async fn deny(
        &self,
        mut ev: AuditEvent,
        detail: serde_json::Map<String, serde_json::Value>,
        reason: DenyReason,
        retry_after: Option<Duration>,
    ) -> Response<ProxyBody> {
        let status = StatusCode::from_u16(reason.status()).unwrap_or(StatusCode::FORBIDDEN);
        ev.http_mut().status = Some(status.as_u16());
        ev.deny(reason);
        ev.detail = detail.into();
        tracing::debug!(service = %self.svc.name, reason = reason.as_str(), token_id = ?ev.token_id, "request denied");
        if !self.h.audit.record(ev).wait().await {
            return refusal(DenyReason::AuditUnavailable, None);
        }
        refusal(reason, retry_after)
    }
}

/// Why the wait for an upstream's answer ended without one.
enum Waited {
    /// Past `upstream_timeout`.
    TooLong,
    /// The request's token was revoked or expired (a gRPC call waits no longer).
    Ended,
}

/// The first error of type `E` among `e`'s causes: the dialler's account of a
/// failed connection (unreachable, a certificate refused, …), a stalled body.
fn cause<E: std::error::Error + 'static>(e: &hyper_util::client::legacy::Error) -> Option<&E> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(d) = s.downcast_ref::<E>() {
            return Some(d);
        }
        source = s.source();
    }
    None
}

#[cfg(test)]
mod tests;
