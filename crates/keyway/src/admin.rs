//! `keyway admin reset`: a new admin credential when the old one is lost, leaked or
//! revoked, made from the data folder and the keys with the gateway stopped.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Subcommand;
use keyway_core::SystemClock;
use keyway_gateway::gateway::Start;
use keyway_gateway::Gateway;

use crate::serve;

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Revoke every admin token and write a new one to `<data_dir>/admin.token` (mode
    /// 0600), audited as `admin.reset`: the way back when the admin token is lost,
    /// leaked or revoked (one sent in a URL is revoked at once). It needs the data
    /// folder and the keys, and the gateway stopped: it refuses while a process holds
    /// the data folder's lock (`keyway.lock`, held by a running gateway) or while
    /// something answers on `admin_listen`.
    Reset {
        /// The gateway's config file.
        #[arg(long, short, env = "KEYWAY_CONFIG", default_value = "keyway.toml")]
        config: PathBuf,
    },
}

pub async fn run(cmd: AdminCommand) -> Result<ExitCode> {
    let AdminCommand::Reset { config: path } = cmd;
    let config = serve::load_config(&path)?;
    // The lock says it for a gateway of this version; the port also for an older
    // one, or one started with another copy of the config.
    let mut addr = config.admin_listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let probe = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr));
    if let Ok(Ok(_)) = probe.await {
        bail!(
            "something answers on admin_listen ({addr}): is the gateway running? Stop it first; \
             `keyway admin reset` works on the data folder alone"
        );
    }
    let mut gw = Gateway::open_with(config, Arc::new(SystemClock), Start::Recovery).await?;
    let revoked = gw.reset_admin().await;
    // Whatever happened, what was recorded reaches the log, and the log the database.
    gw.close().await;
    keyway_gateway::audit::checkpoint(&*gw.store, gw.now()).await;
    gw.store.close().await?;
    let revoked = revoked?;
    let path = gw.config().data_dir.join("admin.token");
    eprintln!(
        "revoked {} admin token{}{}; wrote a new one to {} (mode 0600), audited as admin.reset. \
         Start the gateway: the CLI finds the token through --config",
        revoked.len(),
        if revoked.len() == 1 { "" } else { "s" },
        if revoked.is_empty() {
            String::new()
        } else {
            format!(" ({})", revoked.join(", "))
        },
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}
