//! `keyway token`: issue, list, revoke, rotate access tokens (through the admin
//! API), and exchange a client credential for one at the token endpoint.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use keyway_core::api::{Issued, TokenInfo};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::client::{self, AdminArgs, AdminClient};
use crate::table::print_table;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue an access token for one service. Prints the token alone on stdout (so
    /// `TOKEN=$(keyway token issue …)` works) and its details on stderr.
    Issue(IssueArgs),
    /// List tokens (never their secrets).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only tokens not used (nor issued) within this long, like `30d`: forgotten
        /// credentials to revoke.
        #[arg(long, value_name = "DURATION")]
        unused: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke a token by its id, or every token matching all the filters given. A
    /// revoked token stops working on its next request and its live streams end.
    Revoke {
        /// The token's public id (from `token issue` or `token list`).
        #[arg(required_unless_present_any = ["principal", "service", "issued_before"])]
        id: Option<String>,
        /// Every token of this principal.
        #[arg(long, conflicts_with = "id")]
        principal: Option<String>,
        /// Every token for this service.
        #[arg(long, conflicts_with = "id")]
        service: Option<String>,
        /// Every token issued before this time (RFC 3339, like `2026-11-28T10:00:00Z`):
        /// the panic button after an incident.
        #[arg(long, conflicts_with = "id", value_name = "TIME")]
        issued_before: Option<String>,
        /// The token is the admin token this command calls the gateway with (a
        /// leaked one, say): revoke it all the same. Without it the gateway refuses,
        /// so no one locks themselves out by mistake.
        #[arg(long, requires = "id")]
        own_token: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Trade a client credential, or a JWT the workload's platform signed for it (a
    /// CI job's OIDC token, a Kubernetes service-account token), for an access token
    /// at the gateway's token endpoint. With a JWT, a policy in the gateway's config
    /// decides what the token may do. Prints the access token alone on stdout; when
    /// to refresh it on stderr.
    Exchange {
        /// The token endpoint, like `http://127.0.0.1:7071` (`token_listen`).
        #[arg(long, env = "KEYWAY_GATEWAY")]
        gateway: String,
        /// A file holding the client credential.
        #[arg(long, required_unless_present = "id_token_file")]
        credential_file: Option<PathBuf>,
        /// A file holding the workload's JWT (`[identity.workload.*]` and
        /// `[policies.*]` in the gateway's config decide what it gets).
        #[arg(long, conflicts_with = "credential_file", value_name = "FILE")]
        id_token_file: Option<PathBuf>,
        /// The service to get a token for.
        #[arg(long)]
        service: String,
        /// Lifetime, like `10m` (default 15m; never above the service's maximum).
        #[arg(long)]
        ttl: Option<String>,
        #[command(flatten)]
        tls: client::TlsArgs,
    },
    /// Rotate an access token or a client credential: prints a successor (alone on
    /// stdout) with the same principal and grant (or scope); the old one keeps working
    /// for the overlap, then dies.
    Rotate {
        /// The token's public id.
        id: String,
        /// How long the old token keeps working (`0` ends it now).
        #[arg(long, default_value = "5m")]
        overlap: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// The service the token is for (exactly one).
    #[arg(long)]
    service: String,
    /// Who holds it: a person, a service account, an AI agent.
    #[arg(long)]
    principal: String,
    /// Lifetime, like `15m` or `8h`; never above the service's `max_ttl`.
    #[arg(long, default_value = "15m")]
    ttl: String,
    /// Allowed HTTP methods, comma-separated (default: any).
    #[arg(long, value_delimiter = ',')]
    methods: Vec<String>,
    /// Allowed path prefix; repeat for several (default: any path).
    #[arg(long = "path")]
    paths: Vec<String>,
    /// For a database service: the role the token connects as (one of the service's
    /// `roles`); read-only is enforced by the database role.
    #[arg(long)]
    role: Option<String>,
    /// For an MCP service: the tools the token may list and call, comma-separated;
    /// `*` stands for any run of characters (`search_*,get_ticket`). Once tools,
    /// resources or prompts are named, what is not named is denied.
    #[arg(long, value_delimiter = ',', value_name = "PATTERNS")]
    tools: Vec<String>,
    /// For an MCP service: the resource URIs the token may read (`tickets://*`).
    #[arg(long, value_delimiter = ',', value_name = "PATTERNS")]
    resources: Vec<String>,
    /// For an MCP service: the prompts the token may get.
    #[arg(long, value_delimiter = ',', value_name = "PATTERNS")]
    prompts: Vec<String>,
    /// For an MCP service: let the server ask the agent's model for completions
    /// (`sampling/createMessage`); withheld from the agent otherwise.
    #[arg(long)]
    allow_sampling: bool,
    /// For an MCP service: let the server ask the agent's user for input
    /// (`elicitation/create`); withheld from the agent otherwise.
    #[arg(long)]
    allow_elicitation: bool,
    /// Bind the token to this client certificate (PEM): it is then accepted only
    /// over mTLS with that certificate, so a stolen token alone is useless.
    #[arg(long, value_name = "CERT.pem")]
    bind_cert: Option<PathBuf>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// The answer to a rotation.
#[derive(serde::Deserialize)]
struct Rotated {
    token: String,
    predecessor_expires_at: String,
    info: TokenInfo,
}

pub async fn run(cmd: TokenCommand) -> Result<ExitCode> {
    match cmd {
        TokenCommand::Issue(a) => {
            let client = AdminClient::resolve(&a.admin)?;
            let body = json!({
                "service": a.service,
                "principal": a.principal,
                "ttl": a.ttl,
                "methods": a.methods,
                "paths": a.paths,
                "cert_thumbprint": thumbprint(a.bind_cert.as_deref())?,
                "role": a.role,
                "tools": a.tools,
                "resources": a.resources,
                "prompts": a.prompts,
                "sampling": a.allow_sampling,
                "elicitation": a.allow_elicitation,
            });
            let issued: Issued = client.post("/v1/tokens", &body).await?;
            let i = &issued.info;
            let grant = describe(i);
            eprintln!(
                "issued {} for {} on {} ({grant}), expires {}",
                i.id,
                i.principal,
                i.service.as_deref().unwrap_or("-"),
                i.expires_at
            );
            println!("{}", issued.token);
        }
        TokenCommand::List {
            json,
            unused,
            admin,
        } => {
            let client = AdminClient::resolve(&admin)?;
            let path = match &unused {
                Some(u) => format!("/v1/tokens?unused={}", client::path_segment(u)),
                None => "/v1/tokens".to_owned(),
            };
            let tokens: Vec<TokenInfo> = client.get(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                print_tokens(&tokens);
            }
        }
        TokenCommand::Revoke {
            id: Some(id),
            own_token,
            admin,
            ..
        } => {
            let client = AdminClient::resolve(&admin)?;
            let path = format!("/v1/tokens/{}/revoke", client::path_segment(&id));
            let info: TokenInfo = client
                .post(&path, &json!({ "own_token": own_token }))
                .await?;
            eprintln!(
                "revoked {} ({} on {}) at {}",
                info.id,
                info.principal,
                info.service.as_deref().unwrap_or("-"),
                info.revoked_at.as_deref().unwrap_or("-")
            );
        }
        TokenCommand::Revoke {
            id: None,
            principal,
            service,
            issued_before,
            admin,
            ..
        } => {
            if let Some(t) = &issued_before {
                if keyway_core::clock::parse_time(t).is_none() {
                    bail!("--issued-before takes an RFC 3339 time, like 2026-11-28T10:00:00Z");
                }
            }
            let client = AdminClient::resolve(&admin)?;
            let body = json!({ "principal": principal, "service": service, "issued_before": issued_before });
            let revoked: Vec<TokenInfo> = client.post("/v1/tokens/revoke", &body).await?;
            // One write for the whole list: after an incident it can be 100,000 lines.
            let mut lines = String::with_capacity(revoked.len() * 48);
            for info in &revoked {
                lines.push_str(&format!(
                    "revoked {} ({} on {})\n",
                    info.id,
                    info.principal,
                    info.service.as_deref().unwrap_or("-")
                ));
            }
            std::io::Write::write_all(&mut std::io::stderr().lock(), lines.as_bytes())?;
            let cascade = if revoked.iter().any(|t| t.kind == "client_credential") {
                " (and with each credential, the access tokens obtained with it)"
            } else {
                ""
            };
            eprintln!("{} token(s) revoked{cascade}", revoked.len());
        }
        TokenCommand::Exchange {
            gateway,
            credential_file,
            id_token_file,
            service,
            ttl,
            tls,
        } => {
            let mut body = json!({ "service": service });
            if let Some(t) = ttl {
                body["ttl"] = json!(t);
            }
            let credential = match (credential_file, id_token_file) {
                (Some(f), _) => Some(client::read_token(&f)?),
                (None, Some(f)) => {
                    let jwt = client::read_token(&f)?;
                    body["subject_token"] = json!(jwt.expose_secret());
                    body["subject_token_type"] = json!("urn:ietf:params:oauth:token-type:jwt");
                    None
                }
                (None, None) => anyhow::bail!("give --credential-file or --id-token-file"),
            };
            let answer = client::exchange(&gateway, &tls, credential.as_ref(), &body).await?;
            let policy = answer["policy"]
                .as_str()
                .map(|p| {
                    format!(
                        " (policy {p}, {})",
                        answer["subject"].as_str().unwrap_or("-")
                    )
                })
                .unwrap_or_default();
            eprintln!(
                "access token {} for {service}{policy}, expires {}; refresh after {}",
                answer["id"].as_str().unwrap_or("-"),
                answer["expires_at"].as_str().unwrap_or("-"),
                answer["refresh_after"].as_str().unwrap_or("-"),
            );
            if let Some(w) = answer["warning"].as_str() {
                eprintln!("warning: {w}");
            }
            let token = answer["access_token"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("the token endpoint answered without a token"))?;
            println!("{token}");
        }
        TokenCommand::Rotate { id, overlap, admin } => {
            let client = AdminClient::resolve(&admin)?;
            let path = format!("/v1/tokens/{}/rotate", client::path_segment(&id));
            let rotated: Rotated = client.post(&path, &json!({ "overlap": overlap })).await?;
            eprintln!(
                "rotated {id} -> {} ({} on {}); {id} works until {}, {} until {}",
                rotated.info.id,
                rotated.info.principal,
                rotated.info.service.as_deref().unwrap_or("-"),
                rotated.predecessor_expires_at,
                rotated.info.id,
                rotated.info.expires_at,
            );
            println!("{}", rotated.token);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The RFC 8705 thumbprint of a PEM certificate file, for binding.
pub fn thumbprint(cert: Option<&std::path::Path>) -> Result<Option<String>> {
    cert.map(|p| keyway_gateway::tls::thumbprint_of_pem(p).map_err(anyhow::Error::from))
        .transpose()
}

/// A token's grant in a few words: the database role, the methods and paths, or the
/// whole service.
pub fn describe(t: &TokenInfo) -> String {
    if t.kind == "admin" {
        return "admin API".to_owned();
    }
    if t.kind == "session" {
        return "sign-in: obtains access by policy".to_owned();
    }
    if let Some(role) = &t.role {
        return format!("role {role}");
    }
    if !t.mcp.is_empty() {
        return t.mcp.describe();
    }
    match (t.methods.is_empty(), t.paths.is_empty()) {
        (true, true) => "whole service".to_owned(),
        (false, true) => format!("{} any path", t.methods.join(",")),
        (true, false) => format!("any method {}", t.paths.join(" ")),
        (false, false) => format!("{} {}", t.methods.join(","), t.paths.join(" ")),
    }
}

fn print_tokens(tokens: &[TokenInfo]) {
    if tokens.is_empty() {
        eprintln!("no tokens match");
        return;
    }
    let rows: Vec<[String; 8]> = tokens
        .iter()
        .map(|t| {
            [
                t.id.clone(),
                match t.kind.as_str() {
                    "client_credential" => "credential".to_owned(),
                    k => k.to_owned(),
                },
                t.principal.clone(),
                t.service.clone().unwrap_or_else(|| "-".into()),
                match &t.policy {
                    Some(p) => format!("{} (policy {p})", describe(t)),
                    None => describe(t),
                },
                t.state.clone(),
                t.expires_at.clone(),
                t.last_used_at.clone().unwrap_or_else(|| "never".into()),
            ]
        })
        .collect();
    print_table(
        [
            "ID",
            "KIND",
            "PRINCIPAL",
            "SERVICE",
            "GRANT",
            "STATE",
            "EXPIRES",
            "LAST USED",
        ],
        &rows,
    );
}
