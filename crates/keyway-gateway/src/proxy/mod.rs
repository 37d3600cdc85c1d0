//! The data plane: one module per protocol.

pub mod http;
pub mod postgres;
