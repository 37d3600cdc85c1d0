//! `keyway validate` and `keyway schema`: the config file checked as CI and editors
//! need it, without starting anything.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use keyway_core::config::lint::{self, Severity};
use keyway_core::config::RawConfig;

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The config file.
    #[arg(env = "KEYWAY_CONFIG", default_value = "keyway.toml")]
    file: PathBuf,
    /// Fail on warnings too.
    #[arg(long)]
    deny_warnings: bool,
    /// One JSON object per finding instead of lines for people.
    #[arg(long)]
    json: bool,
    /// Accept certificate verification turned off on purpose
    /// (`upstream_insecure_skip_verify = true`) as a warning, not an error.
    #[arg(long)]
    allow_insecure: bool,
}

pub fn run(args: ValidateArgs) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let (_, mut findings) = lint::check(&text, &crate::serve::config_dir(&args.file));
    if args.allow_insecure {
        lint::allow_insecure(&mut findings);
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    for f in &findings {
        if args.json {
            println!("{}", serde_json::to_string(f)?);
        } else {
            let level = match f.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            println!("{level}: `{}`: {}", f.at, f.message);
        }
    }
    if !args.json {
        let verdict = if errors == 0 { "valid" } else { "not valid" };
        eprintln!(
            "{}: {verdict} ({errors} errors, {warnings} warnings)",
            args.file.display()
        );
    }
    let fail = errors > 0 || (args.deny_warnings && warnings > 0);
    Ok(if fail {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The JSON Schema of `keyway.toml`.
pub fn schema() -> Result<ExitCode> {
    let schema = schemars::schema_for!(RawConfig);
    println!("{}", serde_json::to_string_pretty(&schema)?);
    Ok(ExitCode::SUCCESS)
}
