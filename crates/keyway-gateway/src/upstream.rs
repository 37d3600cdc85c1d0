//! Dialling an upstream: directly, or through the agent a service names (the gateway
//! then never dials the upstream itself).

use std::time::Duration;

use crate::agents::Registry;
use crate::runtime::Stream;

/// Connects to a TCP or PostgreSQL service's upstream at `addr`, through the agent
/// `via` when one is named, within `timeout`.
pub(crate) async fn dial(
    agents: &Registry,
    via: Option<&str>,
    addr: &str,
    timeout: Duration,
) -> Result<Box<dyn Stream>, String> {
    match via {
        Some(agent) => agents
            .dial(agent, addr, timeout)
            .await
            .map(|s| Box::new(s) as Box<dyn Stream>)
            .map_err(|e| e.to_string()),
        None => {
            let s = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| "the upstream did not answer in time".to_owned())?
                .map_err(|e| format!("the upstream is unreachable: {e}"))?;
            let _ = s.set_nodelay(true);
            Ok(Box::new(s))
        }
    }
}
