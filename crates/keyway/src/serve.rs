//! `keyway gateway`, and the start-up it shares with the demo.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use keyway_core::config::Config;
use keyway_core::SystemClock;
use keyway_gateway::gateway::Start;
use keyway_gateway::{Gateway, Listeners};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init_logging(filter: &str, format: LogFormat) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| anyhow!("log filter `{filter}` (--log, KEYWAY_LOG or RUST_LOG): {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never into a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Reads and checks a config file; relative paths in it are relative to its folder.
pub fn load_config(path: &Path) -> Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config = Config::parse(&text, &config_dir(path))
        .map_err(|e| anyhow!("{} is not valid:\n{e}", path.display()))?;
    Ok(config)
}

/// The folder relative paths in the config at `path` are taken from, absolute (for
/// `keyway.toml`, the working directory).
pub fn config_dir(path: &Path) -> std::path::PathBuf {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

pub async fn gateway(config_path: &Path, init: bool) -> Result<ExitCode> {
    let config = load_config(config_path)?;
    crate::host::raise_open_files(open_files_needed(&config));
    // Open first, bind second: once a port accepts, the gateway (and the admin
    // credential the CLI reads) is ready.
    let start = if init { Start::Init } else { Start::Normal };
    let gw = Arc::new(Gateway::open_with(config, Arc::new(SystemClock), start).await?);
    let listeners = Listeners::bind(&gw.config()).await?;
    announce(&gw, &listeners);
    let mut ev = gw.event(keyway_core::EventKind::ConfigApplied);
    ev.principal = Some("(start-up)".into());
    ev.detail = serde_json::json!({
        "sha256": gw.config().written.sha256,
        "services": gw.config().services.keys().collect::<Vec<_>>(),
        "detectors": gw.config().detect.detectors.keys().map(|d| d.as_str()).collect::<Vec<_>>(),
    });
    if !gw.audit.record_reliably(ev).await.wait().await {
        anyhow::bail!("cannot write the audit log; refusing to serve unaudited");
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal_draining(shutdown.clone(), Some(gw.clone())));
    tokio::spawn(reload_on_hangup(
        gw.clone(),
        config_path.to_path_buf(),
        shutdown.clone(),
    ));
    keyway_gateway::run(gw, listeners, shutdown).await;
    tracing::info!("gateway stopped");
    Ok(ExitCode::SUCCESS)
}

/// The descriptors the gateway may hold at its connection caps: two a connection
/// (client and upstream) on every data listener, one on the admin API and the token
/// endpoint, and some for the store and the logs.
fn open_files_needed(config: &keyway_core::config::Config) -> u64 {
    use keyway_gateway::runtime::{CONTROL_CAPS, DATA_CAPS};
    let data = config.services.len() + usize::from(config.tunnel_listen.is_some());
    (2 * data * DATA_CAPS.total + 2 * CONTROL_CAPS.total + 256) as u64
}

/// Says where everything listens, and where the admin credential is.
pub fn announce(gw: &Gateway, l: &Listeners) {
    gw.secrets.warn_missing(&gw.config());
    let scheduler = match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => "current_thread",
        _ => "multi_thread",
    };
    tracing::info!(scheduler, "runtime");
    crate::host::log_hints();
    if let Some(path) = &gw.admin_token_written {
        tracing::info!(path = %path.display(), "wrote a new admin credential (mode 0600); the CLI finds it through --config");
    }
    if let Some(a) = l.admin_addr() {
        if !a.ip().is_loopback() {
            tracing::warn!(addr = %a, "the admin API listens beyond loopback; every call still needs the admin token");
        }
        tracing::info!(addr = %a, "admin API listening");
    }
    if let Some(a) = l.tunnel_addr() {
        tracing::info!(addr = %a, ca = %gw.config().data_dir.join("ca.pem").display(), "tunnel listening (keyway connect)");
    }
    if let Some(a) = l.token_addr() {
        tracing::info!(addr = %a, "token endpoint listening (POST /v1/token/exchange)");
    }
    for name in l.services.keys() {
        if let Some(a) = l.service_addr(name) {
            tracing::info!(service = %name, addr = %a, "service listening");
        }
    }
}

/// On SIGHUP, reads the config file again and applies it as `keyway apply` would
/// (on a shared store, applies the cluster's config again: [`Gateway::hangup`]); a
/// config that does not check, or needs a restart, is refused and logged, and the
/// running one stays.
async fn reload_on_hangup(gw: Arc<Gateway>, path: std::path::PathBuf, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload with `keyway apply`");
        return;
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = hup.recv() => {}
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(path = %path.display(), "SIGHUP: cannot read the config, the running one stays: {e}");
                continue;
            }
        };
        match gw.hangup(&text).await {
            Ok(o) if !o.applied || o.plan.is_empty() => {
                tracing::info!(sha256 = %o.sha256, applied = o.applied, "SIGHUP: no changes")
            }
            Ok(o) => tracing::info!("SIGHUP: config applied\n{}", o.plan.render()),
            Err(e) => tracing::error!("SIGHUP: reload refused, the running config stays: {e}"),
        }
    }
}

/// Fires `shutdown` on Ctrl-C or SIGTERM.
pub async fn stop_on_signal(shutdown: CancellationToken) {
    stop_on_signal_draining(shutdown, None).await
}

/// [`stop_on_signal`]; on SIGTERM with `gw`, first drains: `/healthz` answers 503
/// while requests are still served for `drain_grace`, so a load balancer moves
/// away before the listeners close. Ctrl-C stops at once.
pub async fn stop_on_signal_draining(
    shutdown: CancellationToken,
    gw: Option<std::sync::Arc<keyway_gateway::Gateway>>,
) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    let terminated = tokio::select! {
        _ = tokio::signal::ctrl_c() => false,
        () = term => true,
    };
    if let Some(gw) = gw.filter(|_| terminated) {
        let grace = gw.config().drain_grace;
        if !grace.is_zero() {
            gw.authz.health().start_draining();
            tracing::info!(
                grace_ms = grace.as_millis() as u64,
                "SIGTERM: /healthz answers 503; still serving for the drain grace"
            );
            tokio::time::sleep(grace).await;
        }
    }
    tracing::info!("shutting down: draining connections, flushing the audit log");
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_folder_is_absolute() {
        let cwd = std::env::current_dir().expect("a working directory");
        assert_eq!(config_dir(Path::new("keyway.toml")), cwd);
        assert_eq!(config_dir(Path::new("./keyway.toml")), cwd);
        assert_eq!(config_dir(Path::new("etc/keyway.toml")), cwd.join("etc"));
        assert_eq!(
            config_dir(Path::new("/etc/keyway/keyway.toml")),
            Path::new("/etc/keyway")
        );
    }
}
