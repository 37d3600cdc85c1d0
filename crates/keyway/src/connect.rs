//! `keyway connect`: a local port for one TCP service behind the gateway. Each
//! connection accepted on `127.0.0.1:PORT` is carried over its own TLS stream to the
//! gateway's tunnel listener, authenticated with the user's token.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The TCP service to reach.
    service: String,
    /// The gateway's tunnel listener, `HOST:PORT` (its `tunnel_listen`).
    #[arg(long, env = "KEYWAY_GATEWAY_TUNNEL")]
    gateway: String,
    /// The CA of the gateway's tunnel certificate (the gateway's `<data_dir>/ca.pem`
    /// on its embedded default).
    #[arg(long, value_name = "CA.pem")]
    ca: PathBuf,
    /// The local port to listen on, on 127.0.0.1 (default: any free one, printed).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// A file holding your access token (else `KEYWAY_TOKEN`, else
    /// `~/.config/keyway/token`, which must be mode 0600).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

pub async fn run(a: ConnectArgs) -> Result<ExitCode> {
    let token = resolve_token(a.token_file.as_deref())?;
    let tls = keyway_gateway::tls::client_config(&a.ca)?;
    let host = a
        .gateway
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_owned())
        .ok_or_else(|| anyhow!("--gateway takes HOST:PORT, like gw.example:7443"))?;
    let listener = TcpListener::bind(("127.0.0.1", a.port))
        .await
        .with_context(|| format!("listening on 127.0.0.1:{}", a.port))?;
    let local = listener.local_addr()?;
    eprintln!(
        "listening on {local} for `{}` through {}; Ctrl-C stops",
        a.service, a.gateway
    );
    println!("{local}");
    loop {
        let (mut client, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        };
        let _ = client.set_nodelay(true);
        let (tls, token, gateway, host, service) = (
            tls.clone(),
            token.clone(),
            a.gateway.clone(),
            host.clone(),
            a.service.clone(),
        );
        tokio::spawn(async move {
            match keyway_gateway::tunnel::open(
                &gateway,
                &host,
                tls,
                &service,
                token.expose_secret(),
            )
            .await
            {
                Ok(mut stream) => {
                    let _ = tokio::io::copy_bidirectional_with_sizes(
                        &mut client,
                        &mut stream,
                        keyway_core::tunnel::RELAY_BUFFER,
                        keyway_core::tunnel::RELAY_BUFFER,
                    )
                    .await;
                }
                Err(e) => eprintln!("connection to `{service}` not opened: {e}"),
            }
        });
    }
}

fn resolve_token(file: Option<&Path>) -> Result<SecretString> {
    if let Some(f) = file {
        return crate::client::read_token(f);
    }
    if let Ok(t) = std::env::var("KEYWAY_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(SecretString::from(t.trim().to_owned()));
        }
    }
    let dir = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .ok_or_else(|| anyhow!("no token: set KEYWAY_TOKEN or pass --token-file"))?;
    let path = dir.join("keyway/token");
    let meta = std::fs::metadata(&path).map_err(|_| {
        anyhow!(
            "no token: set KEYWAY_TOKEN, pass --token-file, or write it to {}",
            path.display()
        )
    })?;
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!("{} is readable by others; chmod 600 it", path.display());
    }
    crate::client::read_token(&path)
}
