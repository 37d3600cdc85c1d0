//! gRPC through the HTTP proxy: a gRPC client is told a refusal the way it
//! understands one, a gRPC status (`grpc-status`, `grpc-message`) in a
//! trailers-only answer, not an HTTP status with a text body it would report as
//! "unexpected content-type". Everything else about gRPC is HTTP/2 passing through:
//! its method is the path (`/billing.v1.Invoices/Get`), granted by path prefix, and
//! its status travels in trailers, which pass as they are.

use super::*;

/// Marks an answer the gateway made itself (a refusal, 502, 504), which a gRPC
/// client gets as a gRPC status instead.
#[derive(Debug, Clone, Copy)]
pub(super) struct OwnAnswer;

/// Whether a request is gRPC: `content-type: application/grpc` (or `+proto`, …).
pub(super) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.strip_prefix("application/grpc").is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('+') || rest.starts_with(';')
            })
        })
}

/// Whether a request is a gRPC call that may stream without time limits (ended by
/// its token instead): gRPC over HTTP/2 to an HTTP/2 upstream. A client's
/// `content-type` alone over HTTP/1 buys no exemption.
pub(super) fn is_stream<B>(req: &Request<B>, upstream_h2: bool) -> bool {
    upstream_h2 && req.version() == Version::HTTP_2 && is_grpc(req.headers())
}

/// The gRPC form of one of the gateway's own answers: `200`, no body, the status
/// code of the HTTP status (RFC: gRPC over HTTP/2, "HTTP to gRPC status code
/// mapping", with 401 and 403 told apart), its words in `grpc-message`. The
/// `WWW-Authenticate` of a 401 stays.
pub(super) fn as_grpc(resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let (code, message) = match resp.status() {
        StatusCode::UNAUTHORIZED => (16, "unauthenticated: Keyway refused the token"),
        StatusCode::FORBIDDEN => (7, "permission denied: the token does not grant this method"),
        StatusCode::TOO_MANY_REQUESTS => (8, "rate limited by Keyway"),
        StatusCode::BAD_REQUEST => (13, "bad request"),
        StatusCode::METHOD_NOT_ALLOWED => (12, "method not allowed"),
        StatusCode::GATEWAY_TIMEOUT => (4, "the upstream did not answer in time"),
        _ => (14, "unavailable: Keyway could not serve this call"),
    };
    let mut out = Response::new(empty());
    let h = out.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code));
    h.insert("grpc-message", HeaderValue::from_static(message));
    if let Some(challenge) = resp.headers().get(header::WWW_AUTHENTICATE) {
        h.insert(header::WWW_AUTHENTICATE, challenge.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_requests_are_told_by_their_content_type() {
        let mut h = HeaderMap::new();
        for (ct, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc; charset=utf-8", true),
            ("application/grpc-web", false),
            ("application/json", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(is_grpc(&h), grpc, "{ct}");
        }
    }

    #[test]
    fn refusals_become_grpc_statuses() {
        for (status, code) in [(401, "16"), (403, "7"), (429, "8"), (502, "14"), (504, "4")] {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let resp = as_grpc(plain(status, "no\n"));
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.headers()["grpc-status"], code);
            assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/grpc");
        }
    }
}
