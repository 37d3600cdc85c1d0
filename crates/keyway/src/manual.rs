//! Shell completions and man pages, generated from the CLI's own definition so
//! that they cannot drift from it: `keyway completions bash|zsh|fish|elvish|powershell`
//! prints a script, `keyway man DIR` writes keyway(1) and a page per subcommand.
//! And the admin API's contract, from its handlers: `keyway openapi`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory;

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<ExitCode> {
    let mut cmd = crate::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "keyway", &mut out);
    std::io::stdout()
        .write_all(&out)
        .context("cannot write the completion script to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// Prints the admin API's OpenAPI document on stdout.
pub fn openapi() -> Result<ExitCode> {
    std::io::stdout()
        .write_all(keyway_gateway::admin::openapi::document().as_bytes())
        .context("cannot write the OpenAPI document to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// Writes the man pages into `dir` (created if missing) and names each on stdout:
/// keyway(1), and one per subcommand at every depth (keyway-token-issue(1)).
pub fn man(dir: &Path) -> Result<ExitCode> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the folder {}", dir.display()))?;
    clap_mangen::generate_to(crate::Cli::command(), dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
    let mut names = Vec::new();
    page_names(&crate::Cli::command(), "keyway", &mut names);
    names.sort();
    for name in names {
        // Only what was written here: the folder may hold other programs' pages.
        let page = dir.join(format!("{name}.1"));
        if page.is_file() {
            println!("{}", page.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The page names of `cmd` (called `name`) and its subcommands, as clap_mangen
/// names them; clap's own `help` has none.
fn page_names(cmd: &clap::Command, name: &str, out: &mut Vec<String>) {
    out.push(name.to_owned());
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        page_names(sub, &format!("{name}-{}", sub.get_name()), out);
    }
}
