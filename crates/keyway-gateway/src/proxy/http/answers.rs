//! The answers the proxy makes itself: a refusal (its status, a generic body, the
//! headers that go with it), a plain one, a JSON one, a whole or empty body.

use super::*;

/// The answer to a refused request.
pub(super) fn refusal(reason: DenyReason, retry_after: Option<Duration>) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(reason.status()).unwrap_or(StatusCode::FORBIDDEN);
    let body = match status {
        StatusCode::UNAUTHORIZED => "unauthorized\n",
        StatusCode::FORBIDDEN => "forbidden\n",
        StatusCode::TOO_MANY_REQUESTS => "too many requests\n",
        StatusCode::BAD_REQUEST => "bad request\n",
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed\n",
        _ => "service unavailable\n",
    };
    let mut resp = plain(status, body);
    let h = resp.headers_mut();
    match status {
        StatusCode::UNAUTHORIZED => {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keyway\""),
            );
        }
        StatusCode::TOO_MANY_REQUESTS => {
            let secs = retry_after.map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64);
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        StatusCode::BAD_REQUEST => {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
    if reason == DenyReason::UnknownService {
        // This connection belongs to a removed proxy: nothing serves it any more.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    } else if reason == DenyReason::AuditUnavailable {
        h.insert(header::RETRY_AFTER, HeaderValue::from(1));
    }
    resp
}

/// A body with nothing in it.
pub(super) fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// A body of these bytes, whole.
pub(super) fn whole(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// An answer of JSON text (an MCP refusal, a metadata document).
pub(super) fn json(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut resp = Response::new(whole(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub(super) fn plain(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(whole(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.extensions_mut().insert(grpc::OwnAnswer);
    resp
}
