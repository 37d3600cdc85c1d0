//! The PostgreSQL wire, as far as the proxy reads and writes it by hand: bounded
//! messages, frames and error responses. Messages the gateway sends as a client
//! upstream are `postgres-protocol`'s.

use super::*;

/// A typed message: type byte, length (bounded), body.
pub(super) async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Option<(u8, Vec<u8>)> {
    let kind = r.read_u8().await.ok()?;
    let len = r.read_i32().await.ok()?;
    let len = pgwire::message_len(len, max)?;
    let mut body = vec![0u8; len - 4];
    r.read_exact(&mut body).await.ok()?;
    Some((kind, body))
}

pub(super) fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(kind);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// An `ErrorResponse` a client shows: severity, SQLSTATE, message.
pub(super) fn error_response(severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    frame(b'E', &body)
}

/// The `M` field of an upstream `ErrorResponse`.
pub(super) fn error_text(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find(|f| f.first() == Some(&b'M'))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .unwrap_or_default()
}
