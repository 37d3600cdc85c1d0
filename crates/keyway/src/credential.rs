//! `keyway credential`: issue client credentials (through the admin API), which
//! workloads trade for short-lived access tokens with `keyway token exchange`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use keyway_core::api::Issued;
use serde_json::json;

use crate::client::{AdminArgs, AdminClient};
use crate::token::{describe, thumbprint};

#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Issue a client credential for a service principal (a CI job, an AI agent, a
    /// service). It calls nothing itself; `keyway token exchange` trades it for an
    /// access token. Prints it alone on stdout, once.
    Issue {
        /// The service principal that holds it.
        #[arg(long)]
        principal: String,
        /// A service it may get access tokens for; repeat for several. Give one its own
        /// narrowest grant as `NAME:METHODS:PATH[,PATH]`, like
        /// `billing:GET,HEAD:/invoices/`.
        #[arg(
            long = "service",
            required = true,
            value_name = "SERVICE[:METHODS[:PATHS]]"
        )]
        services: Vec<String>,
        /// Narrow every access token to these methods (comma-separated).
        #[arg(long, value_delimiter = ',')]
        methods: Vec<String>,
        /// Narrow every access token to this path prefix; repeat for several.
        #[arg(long = "path")]
        paths: Vec<String>,
        /// Source networks it may be used from; repeat for several (default: any).
        #[arg(long = "cidr")]
        cidrs: Vec<String>,
        /// How long it is accepted, like `90d` (default and ceiling: the config's
        /// `credential_max_age`).
        #[arg(long)]
        max_age: Option<String>,
        /// Bind the credential, and every access token it gets, to this client
        /// certificate (PEM); the exchange must then use mTLS with it.
        #[arg(long, value_name = "CERT.pem")]
        bind_cert: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub async fn run(cmd: CredentialCommand) -> Result<ExitCode> {
    match cmd {
        CredentialCommand::Issue {
            bind_cert,
            principal,
            services,
            methods,
            paths,
            cidrs,
            max_age,
            admin,
        } => {
            let client = AdminClient::resolve(&admin)?;
            let body = json!({
                "principal": principal,
                "services": services,
                "methods": methods,
                "paths": paths,
                "cidrs": cidrs,
                "max_age": max_age,
                "cert_thumbprint": thumbprint(bind_cert.as_deref())?,
            });
            let issued: Issued = client.post("/v1/credentials", &body).await?;
            let i = &issued.info;
            eprintln!(
                "issued client credential {} for {} on {} ({}), accepted until {}",
                i.id,
                i.principal,
                i.service.as_deref().unwrap_or("-"),
                describe(i),
                i.expires_at
            );
            println!("{}", issued.token);
        }
    }
    Ok(ExitCode::SUCCESS)
}
