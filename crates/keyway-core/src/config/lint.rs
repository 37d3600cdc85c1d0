//! What `keyway validate` checks beyond what start-up refuses: policy a reviewed
//! config must meet (every service names its token lifetime), risks worth a warning
//! (plaintext beyond this host, a service open to every address), and secrets written
//! into the file (a Keyway token anywhere, even in a comment; a value that looks like
//! a key). Findings name the key or the line, never the value.

use std::path::Path;

use super::Config;
use crate::token::{find_tokens, TOKEN_LEN};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// The key's path (`services.billing.upstream`) or `line N`.
    pub at: String,
    pub message: String,
    /// An error only because it weakens TLS on purpose (certificate verification
    /// turned off): `keyway validate --allow-insecure` and the gateway, which warns
    /// loudly at start, take it as a warning ([`allow_insecure`]).
    #[serde(skip)]
    pub insecure: bool,
}

/// `findings` with the errors that only weaken TLS on purpose made warnings.
pub fn allow_insecure(findings: &mut [Finding]) {
    for f in findings.iter_mut().filter(|f| f.insecure) {
        f.severity = Severity::Warning;
    }
}

/// Everything `keyway validate` reports about a config text, and the config when it
/// parsed: what start-up refuses, then the policy, risks and secrets [`lint`] finds.
/// Secrets are looked for even in a file that does not parse. The gateway checks a
/// config it is asked to apply with the same function.
pub fn check(text: &str, base_dir: &Path) -> (Option<Config>, Vec<Finding>) {
    match Config::parse(text, base_dir) {
        Ok(config) => {
            let findings = lint(text, &config);
            (Some(config), findings)
        }
        Err(e) => {
            let mut out: Vec<Finding> = e
                .problems
                .into_iter()
                .map(|p| {
                    let at = match (p.key, p.line) {
                        (Some(k), Some(l)) => format!("{k} (line {l})"),
                        (Some(k), None) => k,
                        (None, Some(l)) => format!("line {l}"),
                        (None, None) => "file".into(),
                    };
                    error(at, p.message)
                })
                .collect();
            out.extend(secrets_in(text));
            (None, out)
        }
    }
}

/// The findings of a config that parsed: `text` is its file, `config` what it
/// checked into.
pub fn lint(text: &str, config: &Config) -> Vec<Finding> {
    let mut out = secrets_in(text);
    let raw: toml::Table = toml::from_str(text).unwrap_or_default();
    let raw_services = raw.get("services").and_then(|s| s.as_table());
    for (name, svc) in &config.services {
        let key = |k: &str| format!("services.{name}.{k}");
        let explicit_ttl = raw_services
            .and_then(|s| s.get(name))
            .and_then(|s| s.get("max_ttl"))
            .is_some();
        if !explicit_ttl {
            out.push(error(
                key("max_ttl"),
                format!(
                    "is not set: say how long this service's tokens may live (at most the global {})",
                    crate::units::format_duration(config.max_ttl)
                ),
            ));
        }
        for (i, c) in svc.allow_cidrs.iter().enumerate() {
            if c.prefix_len() == 0 {
                out.push(warning(
                    format!("{}[{i}]", key("allow_cidrs")),
                    "lets every address in; name the networks that use this service".into(),
                ));
            }
        }
        out.extend(upstream_tls_findings(svc));
        let holds_answers = matches!(&svc.kind, super::ServiceKind::Postgres(pg) if pg.holds == super::PgHolds::Answer);
        if holds_answers && config.audit.durability == super::Durability::Commit {
            out.push(warning(
                key("audit_holds"),
                "sends each statement to the database before its audit event is committed: one whose event cannot be written may have run (its answer is withheld)".into(),
            ));
        }
    }
    // A policy promising longer than a service gives: its tokens get the service's.
    for (name, p) in &config.policies {
        for (i, g) in p.grants.iter().enumerate() {
            let Some(svc) = config.service(&g.service) else {
                continue;
            };
            let max = config.max_ttl_of(svc);
            if p.max_ttl > max {
                out.push(warning(
                    format!("policies.{name}.grants[{i}]"),
                    format!(
                        "the policy's max_ttl of {} is above the {} that `{}` allows; its tokens live {}",
                        crate::units::format_duration(p.max_ttl),
                        crate::units::format_duration(max),
                        g.service,
                        crate::units::format_duration(max),
                    ),
                ));
            }
        }
    }
    out.sort_by(|a, b| a.severity.cmp(&b.severity).then(a.at.cmp(&b.at)));
    out
}

/// Secrets written into the file: every Keyway token, a URL with a password in it,
/// and anything that looks like a key, wherever it is: a value, a key, a comment, a
/// multi-line string, a URL's path or query. Words are split at spaces, quotes and
/// the punctuation of paths, URLs and host names, so paths, hosts and names stay
/// words while a pasted key stays whole (`sk_live_…` is judged by its random part).
pub fn secrets_in(text: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    for f in find_tokens(text) {
        out.push(error(
            format!("line {}", line_of(text, f.start)),
            format!(
                "holds a Keyway token (id {}); revoke it (`keyway token revoke {}`) and never write one into the config",
                f.id, f.id
            ),
        ));
    }
    // Tokens are reported above; blank them before looking for other secrets.
    let mut masked = text.to_owned();
    for f in find_tokens(text) {
        masked.replace_range(f.start..f.start + TOKEN_LEN, &" ".repeat(TOKEN_LEN));
    }
    for (n, line) in masked.lines().enumerate() {
        let at = || format!("line {}", n + 1);
        if has_url_password(line) {
            out.push(error(
                at(),
                "holds a URL with a password in it; set the credential with `keyway secret set` and name it".into(),
            ));
        }
        let key_like = words(line).find(|w| looks_like_a_key(w) && find_tokens(w).is_empty());
        if let Some(w) = key_like {
            out.push(error(
                at(),
                format!(
                    "holds something that looks like a secret ({} characters, high entropy); set it with `keyway secret set NAME` and write only the name",
                    w.chars().count()
                ),
            ));
        }
    }
    out.sort_by_key(|f| {
        f.at.trim_start_matches("line ")
            .parse::<usize>()
            .unwrap_or(0)
    });
    out
}

/// Replaces anything key-like in `text` (a message that quotes the file) with `***`.
pub fn mask_secrets(text: &str) -> String {
    let mut out = text.to_owned();
    for w in words(text).filter(|w| looks_like_a_key(w)) {
        out = out.replace(w, "***");
    }
    out
}

fn words(line: &str) -> impl Iterator<Item = &str> {
    const SEPARATORS: &str = "\"'`=/?&@:,#.;()[]{}<>-_";
    line.split(|c: char| c.is_whitespace() || SEPARATORS.contains(c))
        .filter(|w| !w.is_empty())
}

/// `scheme://user:password@host`.
pub(crate) fn has_url_password(line: &str) -> bool {
    line.match_indices("://").any(|(i, _)| {
        let rest = &line[i + 3..];
        let authority = rest
            .split(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'') || c.is_whitespace())
            .next()
            .unwrap_or_default();
        authority
            .rsplit_once('@')
            .is_some_and(|(userinfo, _)| userinfo.contains(':'))
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset].bytes().filter(|&c| c == b'\n').count() + 1
}

/// A random-looking value: long, no spaces, a long run of letters and digits (paths,
/// hosts and names are short words between separators), dense in information, and
/// either of three kinds of character or long hex.
pub fn looks_like_a_key(v: &str) -> bool {
    if v.len() < 20 || v.len() > 4096 || v.chars().any(char::is_whitespace) {
        return false;
    }
    let longest_run = v
        .split(|c: char| !c.is_ascii_alphanumeric())
        .map(str::len)
        .max()
        .unwrap_or(0);
    if longest_run < 16 {
        return false;
    }
    let classes = [
        v.bytes().any(|c| c.is_ascii_lowercase()),
        v.bytes().any(|c| c.is_ascii_uppercase()),
        v.bytes().any(|c| c.is_ascii_digit()),
        v.bytes().any(|c| !c.is_ascii_alphanumeric()),
    ]
    .iter()
    .filter(|&&b| b)
    .count();
    let hex = v.len() >= 32 && v.bytes().all(|c| c.is_ascii_hexdigit());
    (classes >= 3 || hex) && entropy(v) >= 3.5
}

/// Shannon entropy in bits per character.
fn entropy(v: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in v.bytes() {
        counts[b as usize] += 1;
    }
    let n = v.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

fn host_of(addr: &str) -> String {
    addr.rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(addr)
        .to_owned()
}

/// What a service's TLS to its upstream risks: plaintext beyond this host, a
/// certificate not verified, a weak password method allowed in plaintext.
fn upstream_tls_findings(svc: &super::Service) -> Vec<Finding> {
    let key = |k: &str| format!("services.{}.{k}", svc.name);
    let mut out = Vec::new();
    let host = host_of(&svc.upstream_addr());
    let beyond = !super::is_loopback_host(&host);
    match svc.upstream_tls() {
        // The agent dials it inside its own network.
        None if svc.via.is_some() => {}
        None if beyond => {
            let fix = match svc.kind {
                super::ServiceKind::Http(_) => "an `https://` upstream",
                _ => "`upstream_tls = \"verify-full\"`",
            };
            out.push(warning(
                key("upstream"),
                format!(
                    "{} to {host} crosses the network in plaintext; use TLS to the upstream ({fix}), or an agent beside it (`via`)",
                    svc.protocol()
                ),
            ));
        }
        None => {}
        Some(t) if t.verify => {}
        Some(_) if matches!(svc.kind, super::ServiceKind::Http(_)) => {
            let mut f = error(
                key("upstream_insecure_skip_verify"),
                "turns certificate verification off: anyone on the path can pose as the upstream and read its credential; \
                 trust its CA with `upstream_ca` instead (or pass `--allow-insecure` to accept the risk)"
                    .into(),
            );
            f.insecure = true;
            out.push(f);
        }
        Some(_) => out.push(warning(
            key("upstream_tls"),
            "`require` encrypts but does not verify the upstream's certificate: anyone on the path can pose as it; \
             use `verify-full` with `upstream_ca`"
                .into(),
        )),
    }
    if let super::ServiceKind::Postgres(pg) = &svc.kind {
        let verified = pg.upstream_tls.as_ref().is_some_and(|t| t.verify);
        if !verified && (beyond || svc.via.is_some()) {
            for m in &pg.allow_weak_upstream_auth {
                out.push(warning(
                    key("allow_weak_upstream_auth"),
                    format!(
                        "lets the `{m}` login cross a path to the database that is not verified, where it can be read, cracked or faked"
                    ),
                ));
            }
        }
    }
    out
}

fn error(at: String, message: String) -> Finding {
    Finding {
        severity: Severity::Error,
        at,
        message,
        insecure: false,
    }
}

fn warning(at: String, message: String) -> Finding {
    Finding {
        severity: Severity::Warning,
        at,
        message,
        insecure: false,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use secrecy::ExposeSecret;

    use super::*;
    use crate::token::{IssuedToken, TokenKind};

    fn config(text: &str) -> Config {
        Config::parse(text, std::path::Path::new("/tmp")).expect("config")
    }

    #[test]
    fn policy_and_risks() {
        let text = r#"
[services.billing]
protocol = "http"
listen = "127.0.0.1:9001"
upstream = "http://10.0.0.5:8080"
allow_cidrs = ["0.0.0.0/0"]

[services.local]
protocol = "http"
listen = "127.0.0.1:9002"
upstream = "http://127.0.0.1:8080"
max_ttl = "1h"
"#;
        let f = lint(text, &config(text));
        let said: Vec<_> = f.iter().map(|f| (f.severity, f.at.as_str())).collect();
        assert_eq!(
            said,
            vec![
                (Severity::Error, "services.billing.max_ttl"),
                (Severity::Warning, "services.billing.allow_cidrs[0]"),
                (Severity::Warning, "services.billing.upstream"),
            ],
            "{f:?}"
        );
    }

    #[test]
    fn a_postgres_service_that_holds_answers_is_a_warning() {
        let text = r#"
[services.db]
protocol = "postgres"
listen = "127.0.0.1:6432"
upstream = "127.0.0.1:5432"
database = "test"
max_ttl = "1h"
roles.readonly = { user = "root", secret = "kw-ro" }
"#;
        assert!(lint(text, &config(text)).is_empty());
        let holding = format!("{text}audit_holds = \"answer\"\n");
        let f = lint(&holding, &config(&holding));
        let said: Vec<_> = f.iter().map(|f| (f.severity, f.at.as_str())).collect();
        assert_eq!(
            said,
            vec![(Severity::Warning, "services.db.audit_holds")],
            "{f:?}"
        );
        // Under `batched` no answer waits for its event: nothing to warn of.
        let batched = format!("[audit]\ndurability = \"batched\"\n{holding}");
        assert!(lint(&batched, &config(&batched)).is_empty());
    }

    #[test]
    fn a_policy_longer_than_its_service_is_a_warning() {
        let text = r#"
token_listen = "127.0.0.1:7071"

[services.billing]
protocol = "http"
listen = "127.0.0.1:9001"
upstream = "http://127.0.0.1:8080"
max_ttl = "1h"

[identity.workload.ci]
issuer = "https://ci.example"
audience = "keyway"

[policies.long]
subjects = ["workload:ci:repo:x"]
grants = [{ service = "billing" }]
max_ttl = "8h"
"#;
        let f = lint(text, &config(text));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(
            (f[0].severity, f[0].at.as_str()),
            (Severity::Warning, "policies.long.grants[0]")
        );
        assert!(
            f[0].message.contains("its tokens live 1h"),
            "{}",
            f[0].message
        );
    }

    #[test]
    fn secrets_are_found_and_never_shown() {
        let token = IssuedToken::generate(TokenKind::Access);
        let secret = "sk_live_51HxYzAbCdEfGh12345678";
        let text = format!(
            "# old token: {}\n[services.a]\nupstream = \"https://admin:hunter2@10.0.0.5/\"\nkey = \"{secret}\"\nname = \"billing-api-key\"\npath = \"/etc/keyway/tls/gateway-cert.pem\"\n\
             # the old one: {secret}\nhook = \"https://hooks.example/services/T0A1B2C3D/{secret}\"\nauth = \"Bearer {secret}\"\n\
             host = \"elasticsearch2024.internal:9200\"\ndata_dir = \"/var/lib/keyway/instance0123456789abcdef\"\nid = \"550e8400-e29b-41d4-a716-446655440000\"\n",
            token.secret().expose_secret()
        );
        let f = secrets_in(&text);
        let at: Vec<_> = f.iter().map(|f| f.at.as_str()).collect();
        assert_eq!(
            at,
            vec!["line 1", "line 3", "line 4", "line 7", "line 8", "line 9"],
            "{f:?}"
        );
        for finding in &f {
            assert!(!finding.message.contains(secret));
            assert!(!finding.message.contains("hunter2"));
            let secret_part = &token.secret().expose_secret()[22..];
            assert!(!finding.message.contains(secret_part));
        }
    }

    #[test]
    fn a_path_with_digits_is_not_a_key() {
        // Found by the property below.
        assert!(!looks_like_a_key("/a/780-a-k/b-..c0d12"));
        assert!(!looks_like_a_key("/var/lib/keyway2/tls/gateway-2026.pem"));
        assert!(looks_like_a_key("0123456789abcdef0123456789abcdef"));
        assert_eq!(
            mask_secrets("unknown field `sk_live_51HxYzAbCdEfGh12345678`"),
            "unknown field `sk_live_***`"
        );
    }

    proptest! {
        /// A token anywhere in a config is found, whatever surrounds it.
        #[test]
        fn a_token_is_found_anywhere(before in "[ -~\n]{0,40}", after in "[ -~\n]{0,40}") {
            let token = IssuedToken::generate(TokenKind::Access);
            let text = format!("{before}{}{after}", token.secret().expose_secret());
            prop_assert!(secrets_in(&text).iter().any(|f| f.message.contains(token.id())));
        }

        /// Names, paths, addresses and durations are not secrets.
        #[test]
        fn ordinary_values_are_not_secrets(
            name in "[a-z]{2,20}([_-][a-z]{2,20}){0,3}[0-9]{0,4}",
            path in "/[a-z]{1,8}(/[a-z0-9.-]{1,30}){1,5}",
            addr in "(10|192)\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}:[0-9]{2,5}",
        ) {
            for v in [name.as_str(), path.as_str(), addr.as_str()] {
                prop_assert!(secrets_in(&format!("x = \"{v}\"")).is_empty(), "{v}");
            }
        }

        /// It never panics, whatever the text.
        #[test]
        fn any_text(text in "\\PC{0,200}") {
            let _ = secrets_in(&text);
        }
    }
}
