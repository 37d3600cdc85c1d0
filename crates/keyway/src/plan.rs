//! `keyway plan` and `keyway apply`: a config file against the running gateway,
//! through its admin API.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use keyway_core::api::Outcome;
use keyway_core::config::lint::Severity;
use serde_json::json;

use crate::client::{AdminArgs, AdminClient};

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The config to put in place; by default the one `--config` (or
    /// `KEYWAY_CONFIG`, or `./keyway.toml`) names. It also tells where the admin API
    /// and its credential are, unless `--admin-url` is given.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
    /// The answer as JSON instead of a plan for people.
    #[arg(long)]
    json: bool,
    /// Accept certificate verification turned off on purpose
    /// (`upstream_insecure_skip_verify = true`), as `keyway validate` does.
    #[arg(long)]
    allow_insecure: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Shows what `file` would change in the running gateway (`apply` false), or
/// changes it.
pub async fn run(mut args: PlanArgs, apply: bool) -> Result<ExitCode> {
    let file = args
        .file
        .clone()
        .or_else(|| args.admin.config.clone())
        .unwrap_or_else(|| PathBuf::from("keyway.toml"));
    if args.admin.config.is_none() && args.admin.admin_url.is_none() {
        args.admin.config = Some(file.clone());
    }
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    // The same checks as `keyway validate`, here first: the gateway repeats them, but
    // warnings are only shown here.
    let here = crate::serve::config_dir(&file);
    let (_, mut findings) = keyway_core::config::lint::check(&text, &here);
    if args.allow_insecure {
        keyway_core::config::lint::allow_insecure(&mut findings);
    }
    for f in &findings {
        let level = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        eprintln!("{level}: `{}`: {}", f.at, f.message);
    }
    if findings.iter().any(|f| f.severity == Severity::Error) {
        eprintln!("{}: not valid; nothing was sent", file.display());
        return Ok(ExitCode::from(1));
    }
    let client = AdminClient::resolve(&args.admin)?;
    let path = if apply {
        "/v1/config/apply"
    } else {
        "/v1/config/plan"
    };
    let outcome: Outcome = client.post(path, &json!({ "config": text })).await?;
    // The gateway reads a file sent from another folder as if it were its own.
    let same = |a: &std::path::Path, b: &std::path::Path| match (a.canonicalize(), b.canonicalize())
    {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if !outcome.base_dir.is_empty() && !same(std::path::Path::new(&outcome.base_dir), &here) {
        eprintln!(
            "note: the gateway takes the relative paths in {} from its own config's folder, {}, not from {}",
            file.display(),
            outcome.base_dir,
            here.display()
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "The gateway runs config sha256:{}; {} is sha256:{}.\n",
        short(&outcome.previous_sha256),
        file.display(),
        short(&outcome.sha256)
    );
    print!("{}", outcome.plan.render());
    if apply
        && outcome.applied
        && outcome.plan.is_empty()
        && outcome.sha256 == outcome.previous_sha256
    {
        println!("\nRecorded as the config applied (on a shared store, every replica runs it); nothing changed here.");
    } else if apply && outcome.applied && outcome.plan.is_empty() {
        println!("\nThe text changed, not what it means: recorded as applied, nothing restarted.");
    } else if apply && outcome.applied {
        println!("\nApplied. Services listening:");
        for (name, addr) in &outcome.listening {
            println!("  {name}  {addr}");
        }
    } else if !apply && !outcome.plan.is_empty() {
        println!("\nTo apply it: keyway apply {}", file.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}
