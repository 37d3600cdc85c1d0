//! The shape of the code, checked: inside `keyway-gateway` no module imports from a
//! layer above its own, and no source file of the workspace passes 600 lines.
//!
//! The layers, bottom to top, are [`LAYERS`]; ARCHITECTURE.md says what each is for.
//! A new module must be given a layer here before the test passes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The most lines a source file may have.
const MAX_LINES: usize = 600;

/// `keyway-gateway`'s top-level modules by layer, bottom first. A module may import
/// from its own layer and those below.
const LAYERS: &[(&str, &[&str])] = &[
    ("runtime", &["runtime", "reloads"]),
    ("tokens and sessions", &["index", "sessions"]),
    ("audit", &["audit", "telemetry", "admission"]),
    (
        "authorization and token lifecycle",
        &["authz", "tokens", "identity", "secrets", "people", "pins"],
    ),
    (
        "network",
        &["listener", "tls", "relay", "agents", "upstream"],
    ),
    ("protocol proxies", &["proxy", "tunnel", "token_api"]),
    (
        "control",
        &[
            "control", "detect", "alerts", "portscan", "report", "admin", "console",
        ],
    ),
    ("supervisor", &["gateway", "reload", "lib"]),
];

/// Items of the crate root that other modules name, and the module that defines each.
const ROOT_ITEMS: &[(&str, &str)] = &[
    ("Gateway", "gateway"),
    ("IssueRequest", "gateway"),
    ("Stream", "runtime"),
    ("DATA_CAPS", "runtime"),
    ("Listeners", "lib"),
    ("BindError", "lib"),
    ("TOKEN_LISTENER", "lib"),
    ("TUNNEL_LISTENER", "lib"),
    ("run", "lib"),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The layer of a top-level module.
fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|(_, mods)| mods.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` has no layer: add it to LAYERS"))
}

/// The first path segment of each item of a `{…}` group that starts `group`, nested
/// groups included: `{a, b::{c, d}, e}` gives `a`, `b`, `e`.
fn group_heads(group: &str) -> Vec<&str> {
    let mut heads = Vec::new();
    let (mut depth, mut start) = (0usize, 1usize);
    for (i, c) in group.char_indices() {
        match c {
            '{' => {
                depth += 1;
            }
            '}' | ',' if depth == 1 => {
                let item = group[start..i].trim();
                let head = item.split("::").next().unwrap_or("").trim();
                heads.push(head.trim_start_matches('{').trim());
                start = i + 1;
                if c == '}' {
                    break;
                }
            }
            '}' => depth -= 1,
            _ => {}
        }
    }
    heads
}

/// The top-level modules a file names through `crate::`, and, from a top-level
/// file (whose parent is the crate root), through `super::`.
fn imported(text: &str, top_level: bool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let prefixes: &[&str] = if top_level {
        &["crate::", "super::"]
    } else {
        &["crate::"]
    };
    for prefix in prefixes {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            rest = &rest[at + prefix.len()..];
            let names: Vec<&str> = if rest.starts_with('{') {
                group_heads(rest)
            } else {
                let end = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                vec![&rest[..end]]
            };
            for name in names.into_iter().filter(|n| !n.is_empty() && *n != "*") {
                let module = ROOT_ITEMS
                    .iter()
                    .find(|(item, _)| *item == name)
                    .map_or(name, |(_, m)| m);
                out.insert(module.to_owned());
            }
        }
    }
    out
}

#[test]
fn nested_groups_and_super_are_read() {
    let text = "use crate::{authz::{Ask, Attempt}, tokens, Gateway};
use super::reload;";
    let modules: Vec<_> = imported(text, true).into_iter().collect();
    assert_eq!(modules, ["authz", "gateway", "reload", "tokens"]);
    let modules: Vec<_> = imported(text, false).into_iter().collect();
    assert_eq!(modules, ["authz", "gateway", "tokens"]);
}

/// Each top-level module of the gateway and the modules it imports.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = workspace().join("crates/keyway-gateway/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 10, "found the gateway's sources in {src:?}");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        let text = std::fs::read_to_string(file).unwrap();
        let top_level = rel.components().count() == 1 && module != "lib";
        let imports = graph.entry(module.clone()).or_default();
        imports.extend(
            imported(&text, top_level)
                .into_iter()
                .filter(|m| *m != module),
        );
    }
    graph
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let graph = import_graph();
    for (_, mods) in LAYERS {
        for m in *mods {
            assert!(
                graph.contains_key(*m),
                "LAYERS names `{m}`, which is not a module"
            );
        }
    }
    let mut upward = BTreeSet::new();
    for (module, imports) in &graph {
        for to in imports {
            if layer_of(to) > layer_of(module) {
                upward.insert((module.clone(), to.clone()));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that run up a layer (module, imported): {upward:?}; pass what is needed down \
         as a handle instead"
    );
}

#[test]
fn no_modules_import_each_other_in_a_circle() {
    // Depth-first search from every module; a module met again on the current path
    // closes a circle.
    fn visit<'a>(
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        at: &'a str,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|m| *m == at) {
            return Some(path[i..].iter().map(|m| (*m).to_owned()).collect());
        }
        if !done.insert(at) {
            return None;
        }
        path.push(at);
        for to in graph.get(at).into_iter().flatten() {
            if let Some(circle) = visit(graph, to, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        None
    }
    let graph = import_graph();
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        let circle = visit(&graph, module, &mut Vec::new(), &mut done);
        assert!(
            circle.is_none(),
            "modules that import each other in a circle: {circle:?}"
        );
    }
}

#[test]
fn no_source_file_passes_600_lines() {
    let root = workspace();
    let mut files = Vec::new();
    for dir in ["crates", "bench", "fuzz/fuzz_targets"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(
        files.len() > 50,
        "found the workspace's sources in {root:?}"
    );
    let mut over = BTreeMap::new();
    for file in &files {
        let lines = std::fs::read_to_string(file).unwrap().lines().count();
        if lines > MAX_LINES {
            let rel = file
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            over.insert(rel, lines);
        }
    }
    assert!(
        over.is_empty(),
        "files above {MAX_LINES} lines (path, lines): {over:?}; split them by what each part \
         is for"
    );
}

#[test]
fn only_the_token_lifecycle_writes_tokens() {
    // The index's and the store's writers of tokens; `tokens.rs` (and `tokens/`) is
    // the one module that calls them, so every token is stored, indexed and audited
    // alike.
    const WRITERS: [&str; 9] = [
        "index.insert(",
        "index.revoke(",
        "index.revoke_first(",
        "index.revoke_matching(",
        "index.prune_expired(",
        ".insert_token(",
        ".revoke_tokens(",
        ".shorten_expiry(",
        ".shorten(",
    ];
    let src = workspace().join("crates/keyway-gateway/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel == "tokens.rs" || rel.starts_with("tokens/") || rel == "index.rs" {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for w in WRITERS {
            if text.contains(w) {
                found.push((rel.clone(), w));
            }
        }
    }
    assert!(
        found.is_empty(),
        "tokens written outside the token lifecycle (file, call): {found:?}; go through \
         tokens::Tokens"
    );
}
