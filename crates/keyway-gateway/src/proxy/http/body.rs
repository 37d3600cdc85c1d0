//! A response body that ends with an error when its token is revoked or expires, a
//! reload leaves it outside its service, or the gateway stops; the bytes it carries
//! are counted as they pass.

use super::*;

/// A response body that ends with an error when its token is revoked or expires, a
/// reload leaves it outside its service, or the gateway stops (once its listener has
/// drained).
///
/// The watch that says so (a timer, the config's channel, the token's cancellation)
/// is armed only once the body has to wait, or has more to come after its first
/// frame: a small answer, whole in its first frame, goes without it. Before such a
/// frame goes, what the watch would see is read directly ([`Watch::now`]): the token
/// revoked, cut or expired, or the gateway stopping, end the body at once; a reload
/// since the answer began arms the watch, which judges the body against the new
/// config. Most answers are of that kind.
pub(super) struct Cancellable<B = Incoming> {
    inner: B,
    /// `keyway_bytes_total{direction="out"}` of the service.
    bytes: metrics::Counter,
    entry: Arc<Entry>,
    watch: Watch,
    ended: Option<Ended>,
}

/// Resolves with why a stream must end.
pub(super) type Ended = Pin<Box<dyn Future<Output = BoxError> + Send>>;

/// What a response body needs of its proxy: how to arm its watch, and whether a frame
/// may go before it is armed.
pub(super) struct Watch {
    pub(super) proxy: Arc<HttpProxy>,
    pub(super) source: IpAddr,
    /// The config in force when the answer began: a reload since then arms the
    /// watch, which judges the body against the new one.
    pub(super) config: tokio::sync::watch::Receiver<Arc<keyway_core::config::Config>>,
}

/// What [`Watch::now`] finds.
enum Now {
    /// Nothing the armed watch would see.
    Quiet,
    /// The body must end, with this.
    Ended(BoxError),
    /// A reload since the answer began: the armed watch judges.
    Judge,
}

impl Watch {
    /// What the armed watch would see at once ([`Sessions::ended_now`]), or a
    /// reload since the answer began.
    ///
    /// [`Sessions::ended_now`]: crate::sessions::Sessions::ended_now
    fn now(&self, entry: &Entry) -> Now {
        if let Some(end) = self.proxy.h.sessions.ended_now(entry) {
            Now::Ended(forward::why(end))
        } else if self.config.has_changed().unwrap_or(true) {
            Now::Judge
        } else {
            Now::Quiet
        }
    }
}

impl<B> Cancellable<B> {
    pub(super) fn new(inner: B, bytes: metrics::Counter, entry: Arc<Entry>, watch: Watch) -> Self {
        Self {
            inner,
            bytes,
            entry,
            watch,
            ended: None,
        }
    }

    /// The watch, armed now if it was not yet.
    fn armed(&mut self) -> &mut Ended {
        let (watch, entry) = (&self.watch, &self.entry);
        self.ended
            .get_or_insert_with(|| watch.proxy.ending(entry.clone(), watch.source))
    }
}

/// The error a stream the gateway cut ends with: why, and beneath it HTTP/2's
/// CANCEL, which hyper finds there and resets the stream with (a gRPC client reads
/// CANCELLED, not the INTERNAL error of a server that failed). HTTP/1 closes the
/// connection.
#[derive(Debug, thiserror::Error)]
#[error("{why}")]
pub(super) struct Cut {
    why: std::borrow::Cow<'static, str>,
    #[source]
    reset: h2::Error,
}

impl Cut {
    pub(super) fn new(why: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        Self {
            why: why.into(),
            reset: h2::Reason::CANCEL.into(),
        }
    }
}

impl<B> Body for Cancellable<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        // Unarmed: what the watch would see is read directly, and a reload arms it.
        if this.ended.is_none() {
            match this.watch.now(&this.entry) {
                Now::Quiet => {}
                Now::Ended(why) => return Poll::Ready(Some(Err(why))),
                Now::Judge => {
                    this.armed();
                }
            }
        }
        let was_armed = match &mut this.ended {
            Some(ended) => {
                if let Poll::Ready(why) = ended.as_mut().poll(cx) {
                    return Poll::Ready(Some(Err(why)));
                }
                true
            }
            None => false,
        };
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            Poll::Pending if !was_armed => {
                // The body waits: from now on, so does the watch.
                if let Poll::Ready(why) = this.armed().as_mut().poll(cx) {
                    return Poll::Ready(Some(Err(why)));
                }
            }
            Poll::Pending => {}
            Poll::Ready(Some(Ok(f))) => {
                if let Some(data) = f.data_ref() {
                    this.bytes.increment(data.len() as u64);
                }
                if this.ended.is_none() && !this.inner.is_end_stream() {
                    // More to come: watched from the next poll on.
                    this.armed();
                }
            }
            Poll::Ready(_) => {}
        }
        frame.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body on its way upstream, cut when it stalls: no frame from the client
/// for `limit` (the service's `body_timeout`) ends it with an error, so a client
/// that starts a body and stops holds neither the upstream connection nor its slot.
pub(super) struct Stalling {
    pub(super) inner: Outgoing,
    /// `None`: no limit (no body, or a gRPC stream, ended by its token instead).
    pub(super) limit: Option<Duration>,
    pub(super) timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A request body as it goes upstream: the client's, streamed as it comes, or one
/// the gateway read whole and judged (an MCP message, rebuilt).
pub(super) enum Outgoing {
    Streamed(Incoming),
    Read(Full<Bytes>),
}

impl Body for Outgoing {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Outgoing::Streamed(b) => Pin::new(b).poll_frame(cx),
            Outgoing::Read(b) => Pin::new(b).poll_frame(cx).map_err(|e| match e {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Outgoing::Streamed(b) => b.is_end_stream(),
            Outgoing::Read(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Outgoing::Streamed(b) => b.size_hint(),
            Outgoing::Read(b) => b.size_hint(),
        }
    }
}

/// The error a stalled request body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled for longer than body_timeout")]
pub(super) struct Stalled;

impl Body for Stalling {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let (Some(limit), Some(timer)) = (this.limit, this.timer.as_mut()) {
                    timer.as_mut().reset(tokio::time::Instant::now() + limit);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let Some(limit) = this.limit else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Stalled)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
