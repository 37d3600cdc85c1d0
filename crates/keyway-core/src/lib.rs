//! Keyway's pure core: the token format, the configuration, the policy model and the
//! decisions taken on it. Nothing here does IO, so everything here is cheap to test and
//! to fuzz.
//!
//! # Layout
//!
//! - [`token`]: the token format (`kw<kind>_<id>_<secret><crc32>`), generation, parsing,
//!   keyed hashing, and finding tokens in text (redaction, leak scanning).
//! - [`path`]: request path normalisation, so a grant's prefix cannot be escaped.
//! - [`grant`]: what a token may do, and the reasons a request is denied.
//! - [`jsonrpc`]: JSON-RPC 2.0 messages (MCP's), read with bounds.
//! - [`sse`]: server-sent events (MCP streams), read with a bound per event.
//! - [`event`]: the kinds of audit event and the decisions, typed.
//! - [`forwarded`]: the client address behind trusted proxies (`X-Forwarded-For`).
//! - [`head`]: what is read of an HTTP request head: the bearer token, a token in
//!   the target.
//! - [`pgwire`]: what the PostgreSQL proxy reads of a client by hand: the start-up
//!   packet, the password, a cancel key, the statement capture.
//! - [`api`]: the admin API's requests and answers, shared by the gateway and the CLI.
//! - [`config`]: `keyway.toml` in two stages: a raw, strictly parsed shape, then a
//!   checked configuration with real types.
//! - [`units`]: durations (`15m`, `24h`) and rates (`50/s`).
//! - [`clock`]: the clock every expiry decision reads, so tests can move time.
//! - [`tunnel`]: the bounded opening frames of a `keyway connect` stream.
//! - [`text`]: text cut to a size at a character's edge.

#![forbid(unsafe_code)]

pub mod api;
pub mod clock;
pub mod config;
pub mod event;
pub mod forwarded;
pub mod grant;
pub mod head;
pub mod jsonrpc;
pub mod jwt;
pub mod path;
pub mod pgwire;
pub mod sse;
pub mod text;
pub mod token;
pub mod tunnel;
pub mod units;

pub use clock::{Clock, ManualClock, SystemClock, UnixMillis};
pub use event::{Decision, EventKind};
pub use grant::{DenyReason, Grant, Mcp, McpKind};
pub use token::{IssuedToken, Pepper, PresentedToken, TokenHash, TokenKind};
