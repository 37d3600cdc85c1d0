//! `keyway scan`: finds Keyway tokens in files and, with `--git`, in a repository's
//! whole history, by their prefix and checksum (random strings do not match). Reports
//! where, the public id and whether the token is still live; never the secret.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::Args;
use keyway_core::api::TokenInfo;
use keyway_core::token::find_tokens;
use serde::Serialize;
use serde_json::json;

use crate::client::{self, AdminArgs, AdminClient};

/// Files larger than this are skipped (and said so).
const MAX_FILE: u64 = 64 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Files or folders to scan (default: the current folder).
    paths: Vec<PathBuf>,
    /// Also scan every commit of the git repository at each path (`git log -p --all`).
    #[arg(long)]
    git: bool,
    /// Revoke the live tokens found, through the admin API.
    #[arg(long)]
    revoke: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

/// One token found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub file: String,
    pub line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    pub kind: String,
    pub id: String,
    /// `active`, `expired`, `revoked`, `revoked_now` (by this scan), or `unknown`
    /// (no gateway to ask, or not a token of this gateway).
    pub state: String,
}

pub async fn run(args: ScanArgs) -> Result<ExitCode> {
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.paths.clone()
    };
    let mut findings = Vec::new();
    let mut files = Vec::new();
    for p in &paths {
        collect_files(p, &mut files).with_context(|| format!("reading {}", p.display()))?;
    }
    let bar = progress(files.len() as u64, "files");
    for f in &files {
        scan_file(f, &mut findings);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if args.git {
        for p in &paths {
            scan_git(p, &mut findings)?;
        }
    }

    // Which of them are live: the gateway knows, when we can reach it.
    let client = match AdminClient::resolve(&args.admin) {
        Ok(c) => Some(c),
        Err(e) if args.revoke => return Err(e.context("--revoke needs the admin API")),
        Err(_) => None,
    };
    let listing = match &client {
        Some(c) => match c.get::<Vec<TokenInfo>>("/v1/tokens").await {
            Ok(t) => Some(t),
            Err(e) if args.revoke => return Err(e.context("--revoke needs the admin API")),
            Err(e) => {
                eprintln!("cannot ask the gateway which tokens are live ({e:#}); reporting them as unknown");
                None
            }
        },
        None => None,
    };
    if let (Some(c), Some(tokens)) = (&client, listing) {
        let state: HashMap<&str, &str> = tokens
            .iter()
            .map(|t| (t.id.as_str(), t.state.as_str()))
            .collect();
        for f in &mut findings {
            f.state = state.get(f.id.as_str()).map_or("unknown", |s| s).to_owned();
        }
        if args.revoke {
            let mut done: HashMap<String, bool> = HashMap::new();
            // Admin tokens last: the one this scan uses may be among them.
            findings.sort_by_key(|f| f.kind == "admin");
            for f in findings.iter_mut().filter(|f| f.state == "active") {
                if !done.contains_key(&f.id) {
                    let path = format!("/v1/tokens/{}/revoke", client::path_segment(&f.id));
                    // A leaked admin token is revoked even when it is this scan's own.
                    let body = json!({ "own_token": f.kind == "admin" });
                    let ok = match c.post::<TokenInfo>(&path, &body).await {
                        Ok(_) => true,
                        Err(e) => {
                            eprintln!("could not revoke {}: {e:#}", f.id);
                            false
                        }
                    };
                    done.insert(f.id.clone(), ok);
                }
                if done[&f.id] {
                    f.state = "revoked_now".into();
                    if f.kind == "admin" {
                        eprintln!("an admin token was revoked; restart the gateway to get a new data_dir/admin.token");
                    }
                }
            }
        }
    }

    let live = findings
        .iter()
        .any(|f| matches!(f.state.as_str(), "active" | "unknown" | "revoked_now"));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        print_table(&findings);
        let n = findings.len();
        match (n, live) {
            (0, _) => eprintln!("no Keyway tokens found in {} file(s)", files.len()),
            (_, true) => eprintln!(
                "{n} Keyway token(s) found; live or unknown ones must be revoked and removed"
            ),
            (_, false) => eprintln!("{n} Keyway token(s) found, none live; remove them anyway"),
        }
    }
    Ok(if live {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Every regular file under `path`, skipping `.git`. What cannot be read is said and
/// passed over, so one unreadable folder does not hide the rest.
fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        eprintln!(
            "skipped {} (a symbolic link; scan its target)",
            path.display()
        );
    } else if meta.is_file() {
        out.push(path.to_path_buf());
    } else if meta.is_dir() {
        let mut entries: Vec<_> = match std::fs::read_dir(path) {
            Ok(rd) => rd.filter_map(|e| e.ok()).collect(),
            Err(e) => {
                eprintln!("skipped {} ({e})", path.display());
                return Ok(());
            }
        };
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            if e.file_name() == ".git" {
                continue;
            }
            if let Err(err) = collect_files(&e.path(), out) {
                eprintln!("skipped {} ({err})", e.path().display());
            }
        }
    }
    Ok(())
}

fn scan_file(path: &Path, findings: &mut Vec<Finding>) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.len() > MAX_FILE {
        eprintln!("skipped {} (larger than 64 MiB)", path.display());
        return;
    }
    let Ok(bytes) = std::fs::read(path) else {
        return;
    };
    let text = String::from_utf8_lossy(&bytes);
    scan_text(&text, &path.display().to_string(), None, findings);
}

fn scan_text(text: &str, file: &str, commit: Option<&str>, findings: &mut Vec<Finding>) {
    for (n, line) in text.lines().enumerate() {
        for f in find_tokens(line).into_iter().filter(|f| f.checksum_ok) {
            findings.push(Finding {
                file: file.to_owned(),
                line: n + 1,
                commit: commit.map(str::to_owned),
                kind: f.kind.as_str().to_owned(),
                id: f.id,
                state: "unknown".into(),
            });
        }
    }
}

/// Every token ever added in the repository at `path`, in any commit of any ref.
fn scan_git(path: &Path, findings: &mut Vec<Finding>) -> Result<()> {
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("."))
    };
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "log",
            "--all",
            "-p",
            "--no-color",
            "--no-ext-diff",
            "--format=commit %H",
        ])
        .output()
        .context("running git (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "{} is not in a git repository (git log failed)",
            dir.display()
        );
    }
    let log = String::from_utf8_lossy(&out.stdout);
    let (mut commit, mut file, mut line) = (String::new(), String::new(), 0usize);
    let bar = progress(log.lines().count() as u64, "history lines");
    for l in log.lines() {
        bar.inc(1);
        if let Some(c) = l.strip_prefix("commit ") {
            commit = c.to_owned();
        } else if let Some(f) = l.strip_prefix("+++ b/") {
            file = f.to_owned();
        } else if let Some(f) = l.strip_prefix("+++ \"b/") {
            // A name git had to quote (spaces, tabs, quotes).
            file = f.strip_suffix('"').unwrap_or(f).to_owned();
        } else if let Some(hunk) = l.strip_prefix("@@ ") {
            // `@@ -a,b +c,d @@`: new-file lines start at c.
            line = hunk
                .split_whitespace()
                .find_map(|p| p.strip_prefix('+'))
                .and_then(|p| p.split(',').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
        } else if let Some(added) = l.strip_prefix('+') {
            let before = findings.len();
            scan_text(added, &file, Some(&commit), findings);
            for f in &mut findings[before..] {
                f.line = line;
            }
            line += 1;
        } else if l.starts_with(' ') {
            line += 1;
        }
    }
    bar.finish_and_clear();
    Ok(())
}

pub(crate) fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    if len < 2_000 || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {what}"))
    {
        bar.set_style(style);
    }
    bar
}

fn print_table(findings: &[Finding]) {
    for f in findings {
        let place = match &f.commit {
            Some(c) => format!("{}:{} (commit {})", f.file, f.line, &c[..c.len().min(12)]),
            None => format!("{}:{}", f.file, f.line),
        };
        println!("{place}  {}  {}  {}", f.kind, f.id, f.state);
    }
}
