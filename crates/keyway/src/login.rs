//! `keyway login` and `keyway whoami`: a person signs in with the gateway's identity
//! provider, and Keyway keeps the session it gives (never the provider's tokens) in
//! `~/.config/keyway/sessions.json`, mode 0600, one per gateway.
//!
//! The browser flow: `keyway login` listens on 127.0.0.1 (a port of its own), asks
//! the gateway for the provider's authorization URL, prints it (and opens a browser
//! when there is a display), takes the browser's redirect back, and hands the code
//! to the gateway, which redeems it with PKCE and the client secret and verifies the
//! ID token. With `--device` (an SSH session), it prints a code to confirm on any
//! device instead, and waits.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use http::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{refusal, token_endpoint, TlsArgs};

/// How long the browser may take to come back.
const BROWSER_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The gateway's token endpoint, like `http://127.0.0.1:7071` (`token_listen`).
    #[arg(long, env = "KEYWAY_GATEWAY")]
    pub gateway: String,
    /// The identity provider (`[identity.oidc.NAME]`); needed when there are several.
    #[arg(long)]
    pub provider: Option<String>,
    /// Sign in on another device (the device authorization grant): for an SSH
    /// session or a machine without a browser.
    #[arg(long)]
    pub device: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Which gateway a command talks to, as the person's session knows it.
#[derive(Debug, Args)]
pub struct SessionArgs {
    /// The gateway's token endpoint; the one you signed in to when there is one.
    #[arg(long, env = "KEYWAY_GATEWAY")]
    pub gateway: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// A session as kept on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    session_token: String,
    user: String,
    provider: String,
    #[serde(default)]
    groups: Vec<String>,
    expires_at: String,
}

/// The signed-in person's session with a gateway.
pub struct Session {
    pub gateway: String,
    pub token: SecretString,
    pub tls: TlsArgs,
}

// === impl Session ===

impl Session {
    /// The session for `args`' gateway (or the only one kept).
    pub fn load(args: SessionArgs) -> Result<Self> {
        let all = read_all()?;
        let gateway = match args.gateway {
            Some(g) => g.trim_end_matches('/').to_owned(),
            None if all.len() == 1 => all.keys().next().cloned().unwrap_or_default(),
            None if all.is_empty() => {
                bail!("you are not signed in; run `keyway login --gateway URL`")
            }
            None => bail!(
                "you are signed in to several gateways ({}); name one with --gateway",
                all.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        };
        let saved = all.get(&gateway).ok_or_else(|| {
            anyhow!("you are not signed in to {gateway}; run `keyway login --gateway {gateway}`")
        })?;
        Ok(Self {
            gateway,
            token: SecretString::from(saved.session_token.clone()),
            tls: args.tls,
        })
    }

    /// Calls the gateway with the session.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, serde_json::Value)> {
        let (status, v) = token_endpoint(
            &self.gateway,
            &self.tls,
            Some(&self.token),
            method,
            path,
            body,
        )
        .await?;
        if status == StatusCode::UNAUTHORIZED && v["error"] == "invalid_token" {
            bail!(
                "your session with {} has ended (expired or revoked); run `keyway login --gateway {}`",
                self.gateway,
                self.gateway
            );
        }
        Ok((status, v))
    }
}

/// `~/.config/keyway/sessions.json` (or under `$XDG_CONFIG_HOME`).
fn sessions_path() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(
            std::env::var_os("HOME")
                .ok_or_else(|| anyhow!("HOME is not set; cannot keep a session"))?,
        )
        .join(".config"),
    };
    Ok(base.join("keyway").join("sessions.json"))
}

fn read_all() -> Result<BTreeMap<String, Saved>> {
    let path = sessions_path()?;
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is not a sessions file; delete it and sign in again",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the sessions (folder 0700, file 0600, replaced whole).
fn write_all(all: &BTreeMap<String, Saved>) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = sessions_path()?;
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("no folder for the sessions"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".sessions.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(all)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub async fn login(args: LoginArgs) -> Result<ExitCode> {
    let gateway = args.gateway.trim_end_matches('/').to_owned();
    let answer = if args.device {
        device(&gateway, &args).await?
    } else {
        browser(&gateway, &args).await?
    };
    let saved: Saved = serde_json::from_value(answer)
        .map_err(|_| anyhow!("the gateway's answer has no session"))?;
    let mut all = read_all()?;
    eprintln!(
        "signed in to {gateway} as {} ({}{}); the session lasts until {}",
        saved.user,
        saved.provider,
        if saved.groups.is_empty() {
            String::new()
        } else {
            format!(", groups: {}", saved.groups.join(", "))
        },
        saved.expires_at
    );
    all.insert(gateway, saved);
    write_all(&all)?;
    Ok(ExitCode::SUCCESS)
}

/// The authorization code flow through the browser and a loopback redirect.
async fn browser(gateway: &str, args: &LoginArgs) -> Result<serde_json::Value> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("listening on 127.0.0.1 for the browser's redirect")?;
    let redirect_uri = format!("http://{}/callback", listener.local_addr()?);
    let (status, v) = post(
        gateway,
        &args.tls,
        "/v1/login/start",
        json!({ "provider": args.provider, "redirect_uri": redirect_uri }),
    )
    .await?;
    if !status.is_success() {
        bail!(
            "the gateway cannot start a sign-in: {} ({status})",
            refusal(&v)
        );
    }
    let (Some(login_id), Some(url)) = (v["login_id"].as_str(), v["authorization_url"].as_str())
    else {
        bail!("the gateway's answer has no authorization URL");
    };
    eprintln!(
        "Open this URL in a browser to sign in (waiting {} min):\n\n  {url}\n",
        BROWSER_WAIT.as_secs() / 60
    );
    open_browser(url);
    let (code, state) = tokio::time::timeout(BROWSER_WAIT, redirect(&listener))
        .await
        .map_err(|_| {
            anyhow!(
                "the browser did not come back within {} minutes",
                BROWSER_WAIT.as_secs() / 60
            )
        })??;
    let (status, v) = post(
        gateway,
        &args.tls,
        "/v1/login/finish",
        json!({ "login_id": login_id, "code": code.expose_secret(), "state": state }),
    )
    .await?;
    if !status.is_success() {
        bail!("the sign-in was refused: {} ({status})", refusal(&v));
    }
    Ok(v)
}

/// POSTs `body` to the gateway's `path`, before there is a session.
async fn post(
    gateway: &str,
    tls: &TlsArgs,
    path: &str,
    body: serde_json::Value,
) -> Result<(StatusCode, serde_json::Value)> {
    token_endpoint(gateway, tls, None, Method::POST, path, Some(&body)).await
}

/// Opens `url` in the person's browser when there is a display; the printed URL
/// works either way.
fn open_browser(url: &str) {
    let display =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if display {
        let _ = std::process::Command::new("xdg-open")
            .arg(url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
}

/// Waits for the browser's redirect to `/callback`: its `code` and `state`, or the
/// provider's error. Answers the browser with a line it can read.
async fn redirect(listener: &tokio::net::TcpListener) -> Result<(SecretString, String)> {
    loop {
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0u8; 8192];
        let mut n = 0;
        // The request line and headers, within 10 s and 8 KiB.
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            while n < buf.len() {
                let m = s.read(&mut buf[n..]).await?;
                if m == 0 {
                    break;
                }
                n += m;
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        if !matches!(read, Ok(Ok(()))) {
            continue;
        }
        let head = String::from_utf8_lossy(&buf[..n]);
        let target = head.split_whitespace().nth(1).unwrap_or("");
        let Some(query) = target.strip_prefix("/callback?") else {
            let _ = s
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
            continue;
        };
        let q: BTreeMap<String, String> = serde_urlencoded::from_str(query).unwrap_or_default();
        let (page, result) = match (q.get("code"), q.get("state"), q.get("error")) {
            (Some(code), Some(state), None) => (
                "Signed in to Keyway. You can close this tab.",
                Ok((SecretString::from(code.clone()), state.clone())),
            ),
            (_, _, Some(err)) => {
                let why = q.get("error_description").cloned().unwrap_or_default();
                (
                    "The sign-in was refused. See the terminal.",
                    Err(anyhow!(
                        "the identity provider refused the sign-in: {err}: {why}"
                    )),
                )
            }
            _ => (
                "Not a sign-in answer.",
                Err(anyhow!("the browser came back without a code")),
            ),
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{page}",
            page.len()
        );
        let _ = s.write_all(resp.as_bytes()).await;
        let _ = s.shutdown().await;
        return result;
    }
}

/// The device authorization grant: a code to confirm on another device.
async fn device(gateway: &str, args: &LoginArgs) -> Result<serde_json::Value> {
    let (status, v) = post(
        gateway,
        &args.tls,
        "/v1/login/start",
        json!({ "provider": args.provider }),
    )
    .await?;
    if !status.is_success() {
        bail!(
            "the gateway cannot start a sign-in: {} ({status})",
            refusal(&v)
        );
    }
    let (Some(login_id), Some(user_code), Some(uri)) = (
        v["login_id"].as_str(),
        v["user_code"].as_str(),
        v["verification_uri"].as_str(),
    ) else {
        bail!("the gateway's answer has no device code");
    };
    eprintln!("On any device, open\n\n  {uri}\n\nand enter the code {user_code}");
    if let Some(complete) = v["verification_uri_complete"].as_str() {
        eprintln!("(or open {complete})");
    }
    let mut interval = Duration::from_secs(v["interval"].as_u64().unwrap_or(5).clamp(1, 60));
    let until = Instant::now() + Duration::from_secs(v["expires_in"].as_u64().unwrap_or(600));
    loop {
        tokio::time::sleep(interval).await;
        if Instant::now() > until {
            bail!("the code expired before it was confirmed; run `keyway login --device` again");
        }
        let (status, v) = post(
            gateway,
            &args.tls,
            "/v1/login/finish",
            json!({ "login_id": login_id }),
        )
        .await?;
        match status {
            s if s.is_success() => return Ok(v),
            StatusCode::PRECONDITION_REQUIRED => {
                if let Some(i) = v["interval"].as_u64() {
                    interval = Duration::from_secs(i.clamp(1, 60));
                }
            }
            s => bail!("the sign-in was refused: {} ({s})", refusal(&v)),
        }
    }
}

/// Ends the session at the gateway (its access tokens end with it) and forgets it.
pub async fn logout(args: SessionArgs) -> Result<ExitCode> {
    let session = Session::load(args)?;
    let ended = session.call(Method::POST, "/v1/logout", None).await;
    let mut all = read_all()?;
    all.remove(&session.gateway);
    write_all(&all)?;
    match ended {
        Ok((status, _)) if status.is_success() => {
            eprintln!(
                "signed out of {}; the session and its tokens are revoked",
                session.gateway
            );
        }
        // Already ended: nothing to revoke.
        Err(e) if e.to_string().contains("has ended") => {
            eprintln!(
                "signed out of {} (the session had already ended)",
                session.gateway
            );
        }
        Ok((status, v)) => bail!("{} ({status}); the session was forgotten here", refusal(&v)),
        Err(e) => {
            return Err(e.context("the session was forgotten here, but the gateway did not end it"))
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn whoami(args: SessionArgs) -> Result<ExitCode> {
    let session = Session::load(args)?;
    let (status, v) = session.call(Method::GET, "/v1/whoami", None).await?;
    if !status.is_success() {
        bail!("{} ({status})", refusal(&v));
    }
    println!("user:     {}", v["user"].as_str().unwrap_or("-"));
    println!(
        "provider: {} ({})",
        v["provider"].as_str().unwrap_or("-"),
        v["issuer"].as_str().unwrap_or("-")
    );
    let groups: Vec<&str> = v["groups"]
        .as_array()
        .map(|a| a.iter().filter_map(|g| g.as_str()).collect())
        .unwrap_or_default();
    println!(
        "groups:   {}",
        if groups.is_empty() {
            "-".into()
        } else {
            groups.join(", ")
        }
    );
    println!(
        "session:  {} until {}",
        v["session_id"].as_str().unwrap_or("-"),
        v["expires_at"].as_str().unwrap_or("-")
    );
    let empty = vec![];
    let policies = v["policies"].as_array().unwrap_or(&empty);
    if policies.is_empty() {
        println!("\nno policy names you or your groups");
        return Ok(ExitCode::SUCCESS);
    }
    println!();
    let mut rows = Vec::new();
    for p in policies {
        let approval = match p["approval"].as_object() {
            Some(a) => format!(
                "{} of {}",
                a.get("min").and_then(|m| m.as_u64()).unwrap_or(1),
                a.get("approvers")
                    .and_then(|x| x.as_array())
                    .map(|x| x
                        .iter()
                        .filter_map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default()
            ),
            None => "-".into(),
        };
        for g in p["grants"].as_array().unwrap_or(&empty) {
            rows.push([
                p["policy"].as_str().unwrap_or("-").to_owned(),
                g["service"].as_str().unwrap_or("-").to_owned(),
                g["grant"].as_str().unwrap_or("-").to_owned(),
                p["max_ttl"].as_str().unwrap_or("-").to_owned(),
                approval.clone(),
            ]);
        }
    }
    crate::table::print_table(["POLICY", "SERVICE", "GRANT", "MAX TTL", "APPROVAL"], &rows);
    Ok(ExitCode::SUCCESS)
}
