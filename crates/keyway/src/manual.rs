//! Shell completions and man pages, generated from the CLI's own definition so
//! that they cannot drift from it: `keyway completions bash|zsh|fish|elvish|powershell`
//! prints a script, `keyway man DIR` writes keyway(1) and a page per subcommand.

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

/// Writes the man pages into `dir` (created if missing) and names each on stdout.
pub fn man(dir: &Path) -> Result<ExitCode> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the folder {}", dir.display()))?;
    clap_mangen::generate_to(crate::Cli::command(), dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
    let mut pages: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    for p in pages {
        println!("{}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}
