//! The opening of a tunnel stream. `keyway connect` opens one TLS connection per
//! client connection, sends an [`Open`] frame (which service, with which token), and
//! the gateway answers with a [`Reply`] before any byte reaches the upstream. After
//! that the stream carries the client's bytes as they are.
//!
//! A frame is a 32-bit big-endian length, at most [`MAX_FRAME`], then that many bytes
//! of JSON. The length is checked before anything is allocated.

use std::fmt;

#[cfg(feature = "h2")]
mod h2stream;
#[cfg(feature = "h2")]
pub use h2stream::{relay as relay_h2, H2Stream};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 8 * 1024;

/// The buffer each direction of a relayed stream copies through, instead of tokio's
/// 8 KiB: fewer TLS records and system calls; a few percent more bulk throughput
/// here (BENCHMARKS.md).
pub const RELAY_BUFFER: usize = 64 * 1024;

/// HTTP/2 on an agent's connection, set alike at both ends. h2's defaults (16 KiB
/// frames, 1 MiB windows at the agent) cut each 64 KiB relayed read into four frames
/// and let little be in flight; with these the agent path carried 13 % more
/// (BENCHMARKS.md, issue 25). What one connection may buffer for streams that read
/// slowly is bounded by its connection window.
pub const AGENT_H2_FRAME: u32 = 256 * 1024;
pub const AGENT_H2_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
pub const AGENT_H2_CONN_WINDOW: u32 = 8 * 1024 * 1024;
/// What a stream's sender queues before it waits (hyper's default: 400 KiB).
pub const AGENT_H2_SEND_BUF: usize = 1024 * 1024;
/// The largest header block either end of an agent's connection takes (hyper's
/// default, and what the gateway's listeners take).
pub const AGENT_H2_MAX_HEADERS: u32 = 16 * 1024;
/// How often the gateway asks each agent connection `GET /health`.
pub const AGENT_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);
/// The agent takes a connection on which no request came for this long for dead.
pub const AGENT_SILENCE: std::time::Duration = std::time::Duration::from_secs(45);

/// The TLS crypto of a tunnel connection's client (`keyway connect`, the agent):
/// rustls's ring provider with the AES-128-GCM suites offered first, which the
/// gateway (honouring the client's order) picks. Both ends are Keyway, so the
/// choice is made here once: AES-128-GCM is a TLS 1.3 suite every implementation
/// must support and the first choice of BoringSSL and Go, and on one core it carries
/// about 4 % more through the tunnel than AES-256-GCM, rustls's first choice
/// (BENCHMARKS.md). Key exchange and certificates are unchanged.
#[cfg(feature = "tls")]
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite::{
        TLS13_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    };
    let mut provider = rustls::crypto::ring::default_provider();
    // A stable sort: the rest keep rustls's order.
    provider.cipher_suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            TLS13_AES_128_GCM_SHA256
                | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    provider
}

/// The first frame on a tunnel connection: what the connection is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Hello {
    /// `keyway connect`: one stream to a TCP service.
    Open(Open),
    /// An agent trades its one-use enrollment token for a certificate.
    Enroll(Enroll),
    /// An enrolled agent (its certificate presented in the TLS handshake) offers to
    /// serve; the connection then carries HTTP/2, the gateway as client.
    Agent(AgentHello),
    /// An enrolled agent asks for a fresh certificate before its own expires.
    Renew(Renew),
}

/// `Debug` leaves the token out.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enroll {
    /// The token names the agent it enrolls.
    pub token: String,
    /// A PKCS#10 request for the key the agent made (the key never leaves it).
    pub csr_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentHello {
    pub agent: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Renew {
    pub csr_pem: String,
}

/// The client's opening frame. `Debug` leaves the token out.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Open {
    pub service: String,
    pub token: String,
}

/// The gateway's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    /// A generic reason for people (`unauthorized`, `forbidden`, `unavailable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// To an enrolling or renewing agent: its certificate (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_pem: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame longer than {MAX_FRAME} bytes")]
    TooLong,
    #[error("frame is not the expected JSON")]
    Malformed,
    #[error("the connection closed before the whole frame")]
    Closed,
}

/// The frame of `v`: length, then JSON.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The body length announced by a frame's first four bytes, if acceptable.
pub fn body_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let n = u32::from_be_bytes(header) as usize;
    if n > MAX_FRAME {
        return Err(FrameError::TooLong);
    }
    Ok(n)
}

pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(body).map_err(|_| FrameError::Malformed)
}

/// Reads one frame: the length first, bounded by [`MAX_FRAME`], then the body. The
/// one frame reader of both ends, the gateway's tunnel listener and the agent; the
/// caller bounds it in time.
#[cfg(feature = "io")]
pub async fn read_frame<T, R>(r: &mut R) -> Result<T, FrameError>
where
    T: DeserializeOwned,
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; 4];
    r.read_exact(&mut header)
        .await
        .map_err(|_| FrameError::Closed)?;
    let n = body_len(header)?;
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)
        .await
        .map_err(|_| FrameError::Closed)?;
    decode(&body)
}

impl fmt::Debug for Enroll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enroll")
            .field("token", &"***")
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Open {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Open")
            .field("service", &self.service)
            .field("token", &"***")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[cfg(feature = "tls")]
    #[test]
    fn the_tunnel_offers_aes_128_first_and_drops_no_suite() {
        let ours: Vec<_> = crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(ours[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let mut stock: Vec<_> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        let mut sorted = ours.clone();
        sorted.sort_by_key(|s| u16::from(*s));
        stock.sort_by_key(|s| u16::from(*s));
        assert_eq!(sorted, stock);
    }

    #[test]
    fn round_trip_and_bounds() {
        let open = Open {
            service: "redis".into(),
            token: "kwat_secret".into(),
        };
        let frame = encode(&Hello::Open(open));
        let n = body_len(frame[..4].try_into().unwrap()).unwrap();
        let Hello::Open(back) = decode(&frame[4..4 + n]).unwrap() else {
            panic!("not an open frame");
        };
        assert_eq!(back.service, "redis");
        assert!(!format!("{back:?}").contains("secret"));
        let enroll = Hello::Enroll(Enroll {
            token: "kwae_secret".into(),
            csr_pem: String::new(),
        });
        assert!(!format!("{enroll:?}").contains("secret"));
        assert!(
            decode::<Hello>(b"{\"open\":{\"service\":\"x\",\"token\":\"y\",\"more\":1}}").is_err()
        );
        assert_eq!(body_len([0, 0, 0x20, 1]), Err(FrameError::TooLong));
        assert_eq!(decode::<Reply>(b"{\"nope\""), Err(FrameError::Malformed));
    }

    proptest! {
        #[test]
        fn decoding_never_panics(header in any::<[u8; 4]>(), body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = body_len(header);
            let _ = decode::<Hello>(&body);
            let _ = decode::<Reply>(&body);
        }
    }
}
