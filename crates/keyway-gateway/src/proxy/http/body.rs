//! A response body that ends with an error when its token is revoked or expires, a
//! reload leaves it outside its service, or the gateway stops; the bytes it carries
//! are counted as they pass.

use super::*;

/// A response body that ends with an error when its token is revoked or expires, a
/// reload leaves it outside its service, or the gateway stops (once its listener has
/// drained).
pub(super) struct Cancellable {
    pub(super) inner: Incoming,
    /// `keyway_bytes_total{direction="out"}` of the service.
    pub(super) bytes: metrics::Counter,
    /// Resolves with why the stream must end.
    pub(super) ended: Pin<Box<dyn Future<Output = BoxError> + Send>>,
}

/// The error a stream ends with when a reload leaves it outside its service.
#[derive(Debug, thiserror::Error)]
#[error("the gateway's config changed and this stream no longer fits it ({0})")]
pub(super) struct Unfit(pub(super) &'static str);

/// The error a revoked stream ends with.
#[derive(Debug, thiserror::Error)]
#[error("the token of this stream was revoked")]
pub(super) struct Revoked;

/// The error a stream ends with when its token expires.
#[derive(Debug, thiserror::Error)]
#[error("the token of this stream expired")]
pub(super) struct Expired;

/// The error a stream ends with when the gateway stops.
#[derive(Debug, thiserror::Error)]
#[error("the gateway is shutting down")]
pub(super) struct ShuttingDown;

impl Body for Cancellable {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(why) = this.ended.as_mut().poll(cx) {
            return Poll::Ready(Some(Err(why)));
        }
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &frame {
            if let Some(data) = f.data_ref() {
                this.bytes.increment(data.len() as u64);
            }
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
