//! `keyway secret`: set and list upstream credentials (through the admin API); the
//! gateway seals each value before it stores it.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::json;

use crate::client::{self, AdminArgs, AdminClient};

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Set an upstream credential. Reads the value from stdin (one line, or all of it
    /// without the final newline); it is sealed before it is stored.
    Set {
        /// The secret's name, as config files refer to it.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the names of the secrets that are set.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub async fn run(cmd: SecretCommand) -> Result<ExitCode> {
    match cmd {
        SecretCommand::Set { name, admin } => {
            let client = AdminClient::resolve(&admin)?;
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("Type the value of `{name}`, then Enter and Ctrl-D:");
            }
            let mut value = zeroize::Zeroizing::new(String::new());
            stdin
                .lock()
                .take(64 * 1024)
                .read_to_string(&mut value)
                .context("reading the value from stdin")?;
            let trimmed = value.strip_suffix('\n').unwrap_or(&value);
            let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
            if trimmed.is_empty() {
                bail!("no value on stdin; pipe it in: `printf %s \"$VALUE\" | keyway secret set {name}`");
            }
            let body = zeroize::Zeroizing::new(json!({ "value": trimmed }).to_string());
            client
                .put_raw(
                    &format!("/v1/secrets/{}", client::path_segment(&name)),
                    body.as_bytes(),
                )
                .await?;
            eprintln!("secret `{name}` set (stored encrypted)");
        }
        SecretCommand::List { admin } => {
            let client = AdminClient::resolve(&admin)?;
            let names: Vec<String> = client.get("/v1/secrets").await?;
            if names.is_empty() {
                eprintln!("no secrets are set");
            }
            for n in names {
                println!("{n}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
