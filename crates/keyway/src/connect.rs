//! `keyway connect`: a local port (or a Unix socket only its user may open) for one
//! TCP service behind the gateway. Each connection accepted there is carried over
//! its own TLS stream to the gateway's tunnel listener, authenticated with the
//! user's token.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

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
    #[arg(long, default_value_t = 0, conflicts_with = "unix")]
    port: u16,
    /// Listen on a Unix socket at this path instead, made with mode 0600 so only
    /// your user can open it (any local user can open a port on 127.0.0.1); it
    /// must not exist yet, and is removed on Ctrl-C.
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// A client certificate (PEM) to present to the tunnel, for a token bound to it
    /// (`keyway token issue --bind-cert`); its key goes in `--key`.
    #[arg(long, value_name = "CERT.pem", requires = "key")]
    cert: Option<PathBuf>,
    /// The private key (PEM) of `--cert`.
    #[arg(long, value_name = "KEY.pem", requires = "cert")]
    key: Option<PathBuf>,
    /// A file holding your access token (else `KEYWAY_TOKEN`, else
    /// `~/.config/keyway/token`, which must be mode 0600).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

pub async fn run(a: ConnectArgs) -> Result<ExitCode> {
    let token = resolve_token(a.token_file.as_deref())?;
    let cert = a.cert.as_deref().zip(a.key.as_deref());
    let tls = keyway_gateway::tls::client_config(&a.ca, cert)?;
    let host = a
        .gateway
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_owned())
        .ok_or_else(|| anyhow!("--gateway takes HOST:PORT, like gw.example:7443"))?;
    let tunnel = Tunnel {
        tls,
        token,
        gateway: a.gateway.clone(),
        host,
        service: a.service.clone(),
    };
    if let Some(path) = &a.unix {
        let listener = private_socket(path)?;
        eprintln!(
            "listening on {} (mode 0600) for `{}` through {}; Ctrl-C stops",
            path.display(),
            a.service,
            a.gateway
        );
        println!("{}", path.display());
        let done = loop {
            let (client, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => break Err(e.into()),
                },
                _ = tokio::signal::ctrl_c() => break Ok(ExitCode::SUCCESS),
            };
            tokio::spawn(tunnel.clone().carry(client));
        };
        let _ = std::fs::remove_file(path);
        return done;
    }
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
        let (client, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        };
        let _ = client.set_nodelay(true);
        tokio::spawn(tunnel.clone().carry(client));
    }
}

/// Where each local connection goes: one TLS stream to the gateway's tunnel each.
#[derive(Clone)]
struct Tunnel {
    tls: std::sync::Arc<rustls::ClientConfig>,
    token: SecretString,
    gateway: String,
    host: String,
    service: String,
}

impl Tunnel {
    async fn carry<S: AsyncRead + AsyncWrite + Unpin>(self, mut client: S) {
        let opened = keyway_gateway::tunnel::open(
            &self.gateway,
            &self.host,
            self.tls,
            &self.service,
            self.token.expose_secret(),
        )
        .await;
        match opened {
            Ok(mut stream) => {
                let _ = tokio::io::copy_bidirectional_with_sizes(
                    &mut client,
                    &mut stream,
                    keyway_core::tunnel::RELAY_BUFFER,
                    keyway_core::tunnel::RELAY_BUFFER,
                )
                .await;
            }
            Err(e) => eprintln!("connection to `{}` not opened: {e}", self.service),
        }
    }
}

/// A Unix socket at `path` that only this user may open: bound inside a fresh
/// directory of mode 0700, made 0600, then moved into place, so it is never open to
/// others, not even for a moment.
fn private_socket(path: &Path) -> Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if path.symlink_metadata().is_ok() {
        bail!(
            "{} exists; remove it or choose another path",
            path.display()
        );
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let staging = parent.join(format!(".keyway-connect-{}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .with_context(|| format!("creating {}", staging.display()))?;
    let inside = staging.join("socket");
    let made = (|| -> Result<UnixListener> {
        let listener = UnixListener::bind(&inside)
            .with_context(|| format!("listening on {}", inside.display()))?;
        std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inside, path)
            .with_context(|| format!("moving the socket to {}", path.display()))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir(&staging);
    made
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
