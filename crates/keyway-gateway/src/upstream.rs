//! Dialling an upstream: directly, or through the agent a service names (the gateway
//! then never dials the upstream itself), and in TLS where the service asks for it
//! ([`tls`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use keyway_core::config::Service;

use crate::agents::Registry;
use crate::runtime::Stream;

pub mod tls;

pub use tls::UpstreamTlsCache;

/// Why an upstream could not be reached, as an audit event's `error` says it
/// (`upstream_unreachable`, `upstream_certificate_expired`, …) and in words.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{why}")]
pub struct DialError {
    pub reason: &'static str,
    pub why: String,
}

/// What dials upstreams: the agents' connections and each service's TLS.
#[derive(Clone)]
pub struct Dialer {
    pub agents: Arc<Registry>,
    pub tls: Arc<UpstreamTlsCache>,
}

// === impl Dialer ===

impl Dialer {
    /// Connects to `addr`, through the agent `via` when one is named, within
    /// `timeout`: the bytes as they are, for a protocol that asks for TLS itself.
    pub(crate) async fn plain(
        &self,
        via: Option<&str>,
        addr: &str,
        timeout: Duration,
    ) -> Result<Box<dyn Stream>, DialError> {
        let unreachable = |why: String| DialError {
            reason: "upstream_unreachable",
            why,
        };
        match via {
            Some(agent) => self
                .agents
                .dial(agent, addr, timeout)
                .await
                .map(|s| Box::new(s) as Box<dyn Stream>)
                .map_err(|e| unreachable(e.to_string())),
            None => {
                let s = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
                    .await
                    .map_err(|_| DialError {
                        reason: "upstream_timeout",
                        why: "the upstream did not answer in time".into(),
                    })?
                    .map_err(|e| unreachable(format!("the upstream is unreachable: {e}")))?;
                let _ = s.set_nodelay(true);
                Ok(Box::new(s))
            }
        }
    }

    /// Connects to `svc`'s upstream at `addr` and, when the service says so, opens
    /// TLS on it (verified against its CA, with its client certificate) within the
    /// same `timeout`.
    pub(crate) async fn dial(
        &self,
        svc: &Service,
        addr: &str,
        timeout: Duration,
    ) -> Result<Box<dyn Stream>, DialError> {
        let stream = self.plain(svc.via.as_deref(), addr, timeout).await?;
        if svc.upstream_tls().is_none() {
            return Ok(stream);
        }
        Ok(Box::new(
            self.wrap(svc, host_of(addr), stream, timeout).await?,
        ))
    }

    /// Opens TLS to `host` on `stream` as `svc` says, within `timeout`: for
    /// [`Self::dial`], and for PostgreSQL once the database has agreed to TLS.
    pub(crate) async fn wrap(
        &self,
        svc: &Service,
        host: &str,
        stream: Box<dyn Stream>,
        timeout: Duration,
    ) -> Result<tls::TlsStream, DialError> {
        tokio::time::timeout(timeout, self.tls.connect(svc, host, stream))
            .await
            .map_err(|_| DialError {
                reason: "upstream_timeout",
                why: "the upstream's TLS handshake did not finish in time".into(),
            })?
    }
}

/// The host of `host:port` (an IPv6 address without its brackets).
pub(crate) fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The connector of an HTTP service's pooled client: each new connection dialled
/// as [`Dialer::dial`] does, so TLS, agents and renewed certificates hold for it.
#[derive(Clone)]
pub struct HttpConnector {
    pub dialer: Dialer,
    pub svc: Arc<Service>,
    pub timeout: Duration,
}

/// An upstream connection as hyper's client pool holds it.
pub struct HttpConnection(TokioIo<Box<dyn Stream>>);

impl tower_service::Service<http::Uri> for HttpConnector {
    type Response = HttpConnection;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpConnection, DialError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), DialError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = dst.host().unwrap_or_default();
            let default = if this.svc.upstream_tls().is_some() {
                443
            } else {
                80
            };
            let port = dst.port_u16().unwrap_or(default);
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let addr = if bare.contains(':') {
                format!("[{bare}]:{port}")
            } else {
                format!("{bare}:{port}")
            };
            let stream = this.dialer.dial(&this.svc, &addr, this.timeout).await?;
            Ok(HttpConnection(TokioIo::new(stream)))
        })
    }
}

impl Connection for HttpConnection {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for HttpConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for HttpConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}
