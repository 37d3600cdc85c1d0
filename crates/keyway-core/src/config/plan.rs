//! What putting one config in place of another changes: the plan `keyway plan` shows
//! and `keyway apply` carries out.
//!
//! Whether something changed is decided on the checked [`Config`] (so `60m` and `1h`
//! are the same); what changed is shown from the file as written. Settings that the
//! running gateway cannot take over without a restart (its own listeners, its keys,
//! its data folder, the audit writer, the alert webhook) are marked, and a plan
//! holding one is not applied.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{lint, Config};

/// What a change does to a thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Add,
    Change,
    Remove,
}

/// One thing added, changed or removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Change {
    pub op: Op,
    /// `service`, `agent`, `policy`, `identity`, `detect`, `alerts` or `setting`.
    pub section: String,
    pub name: String,
    /// The keys that differ, as written (values masked where they look secret).
    pub fields: Vec<Field>,
    /// Only a restart of the gateway takes this change.
    #[serde(default)]
    pub restart: bool,
}

/// One key: its value before and after (`None`: not written, so the default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Field {
    pub key: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Plan {
    pub changes: Vec<Change>,
}

/// Settings a running gateway takes at once; every other top-level key needs a
/// restart.
const LIVE_SETTINGS: [&str; 7] = [
    "store_max_lag",
    "drain_grace",
    "max_ttl",
    "admin_token_ttl",
    "credential_max_age",
    "agent_cert_ttl",
    "revoke_tokens_in_urls",
];

/// What replacing `old` by `new` changes.
pub fn plan(old: &Config, new: &Config) -> Plan {
    let mut changes = Vec::new();
    keyed(&mut changes, ("service", "services"), (old, new), |c| {
        &c.services
    });
    keyed(&mut changes, ("agent", "agents"), (old, new), |c| &c.agents);
    keyed(&mut changes, ("policy", "policies"), (old, new), |c| {
        &c.policies
    });
    let top = |c: &Config, key: &str| c.written.value.get(key).cloned().unwrap_or(Value::Null);
    // A setting is shown under its own key.
    let keyed_top = |c: &Config, key: &str| {
        Value::Object([(key.to_owned(), top(c, key))].into_iter().collect())
    };
    if old.detect != new.detect {
        changes.push(section(
            Op::Change,
            "detect",
            "detect",
            top(old, "detect"),
            top(new, "detect"),
        ));
    }
    if old.identity != new.identity {
        changes.push(section(
            Op::Change,
            "identity",
            "identity",
            top(old, "identity"),
            top(new, "identity"),
        ));
    }
    if old.alerts != new.alerts {
        let mut c = section(
            Op::Change,
            "alerts",
            "alerts",
            top(old, "alerts"),
            top(new, "alerts"),
        );
        c.restart = true;
        changes.push(c);
    }
    // Top-level settings: a resolved difference, shown as written.
    let settings: [(&str, bool); 18] = [
        ("max_ttl", old.max_ttl != new.max_ttl),
        (
            "admin_token_ttl",
            old.admin_token_ttl != new.admin_token_ttl,
        ),
        (
            "credential_max_age",
            old.credential_max_age != new.credential_max_age,
        ),
        ("agent_cert_ttl", old.agent_cert_ttl != new.agent_cert_ttl),
        (
            "revoke_tokens_in_urls",
            old.revoke_tokens_in_urls != new.revoke_tokens_in_urls,
        ),
        ("data_dir", old.data_dir != new.data_dir),
        ("store", old.store != new.store),
        ("replica", old.replica != new.replica),
        ("store_max_lag", old.store_max_lag != new.store_max_lag),
        ("drain_grace", old.drain_grace != new.drain_grace),
        ("admin_listen", old.admin_listen != new.admin_listen),
        ("token_listen", old.token_listen != new.token_listen),
        ("token_tls", old.token_tls != new.token_tls),
        ("tunnel_listen", old.tunnel_listen != new.tunnel_listen),
        ("tunnel_tls", old.tunnel_tls != new.tunnel_tls),
        ("pepper_file", old.pepper_file != new.pepper_file),
        (
            "master_key_file",
            old.master_key_file != new.master_key_file,
        ),
        ("audit", old.audit != new.audit),
    ];
    for (key, differs) in settings {
        if differs {
            let mut c = section(
                Op::Change,
                "setting",
                key,
                keyed_top(old, key),
                keyed_top(new, key),
            );
            c.restart = !LIVE_SETTINGS.contains(&key);
            if c.fields.is_empty() {
                // Same words, another meaning (a relative path from another folder).
                c.fields.push(Field {
                    key: key.into(),
                    before: Some("(as resolved before)".into()),
                    after: Some("(as resolved now)".into()),
                });
            }
            changes.push(c);
        }
    }
    Plan { changes }
}

/// Added, changed and removed entries of a named table (`[services.*]`,
/// `[agents.*]`): `kind` as a change names it, `table` as the file does.
fn keyed<T: PartialEq>(
    out: &mut Vec<Change>,
    (kind, table): (&str, &str),
    (old, new): (&Config, &Config),
    entries: impl Fn(&Config) -> &BTreeMap<String, T>,
) {
    let written = |c: &Config, name: &str| {
        c.written
            .value
            .get(table)
            .and_then(|t| t.get(name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let (before, after) = (entries(old), entries(new));
    for (name, b) in before {
        match after.get(name) {
            None => out.push(section(
                Op::Remove,
                kind,
                name,
                written(old, name),
                Value::Null,
            )),
            Some(a) if a != b => out.push(section(
                Op::Change,
                kind,
                name,
                written(old, name),
                written(new, name),
            )),
            Some(_) => {}
        }
    }
    for name in after.keys().filter(|n| !before.contains_key(*n)) {
        out.push(section(
            Op::Add,
            kind,
            name,
            Value::Null,
            written(new, name),
        ));
    }
}

fn section(op: Op, kind: &str, name: &str, before: Value, after: Value) -> Change {
    let (mut b, mut a) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &before, &mut b);
    flatten("", &after, &mut a);
    let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
    let fields = keys
        .into_iter()
        .filter(|k| b.get(*k) != a.get(*k))
        .map(|k| Field {
            key: k.clone(),
            before: b.get(k).cloned(),
            after: a.get(k).cloned(),
        })
        .collect();
    Change {
        op,
        section: kind.into(),
        name: name.into(),
        fields,
        restart: false,
    }
}

/// Tables become dotted keys; everything else one value, as TOML-ish text.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Null => {}
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            let text = other.to_string();
            let shown = if lint::has_url_password(&text) {
                "\"***\"".to_owned()
            } else {
                lint::mask_secrets(&text)
            };
            out.insert(prefix.to_owned(), shown);
        }
    }
}

// === impl Plan ===

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The changes only a restart takes.
    pub fn needs_restart(&self) -> Vec<&Change> {
        self.changes.iter().filter(|c| c.restart).collect()
    }

    pub fn count(&self, op: Op) -> usize {
        self.changes.iter().filter(|c| c.op == op).count()
    }

    /// For people, like Terraform: `+` added, `~` changed, `-` removed.
    pub fn render(&self) -> String {
        if self.is_empty() {
            return "No changes: the gateway runs this config.\n".into();
        }
        let mut s = String::new();
        for c in &self.changes {
            let sign = match c.op {
                Op::Add => '+',
                Op::Change => '~',
                Op::Remove => '-',
            };
            let restart = if c.restart { "  (needs a restart)" } else { "" };
            if c.section == c.name {
                s.push_str(&format!("  {sign} [{}]{restart}\n", c.name));
            } else {
                s.push_str(&format!("  {sign} {} {}{restart}\n", c.section, c.name));
            }
            for f in &c.fields {
                let line = match (&f.before, &f.after) {
                    (None, Some(a)) => format!("      + {} = {a}\n", f.key),
                    (Some(b), None) => format!("      - {} = {b}\n", f.key),
                    (Some(b), Some(a)) => format!("      ~ {}: {b} -> {a}\n", f.key),
                    (None, None) => continue,
                };
                s.push_str(&line);
            }
        }
        s.push_str(&format!(
            "\nPlan: {} to add, {} to change, {} to remove.\n",
            self.count(Op::Add),
            self.count(Op::Change),
            self.count(Op::Remove)
        ));
        let restart = self.needs_restart();
        if !restart.is_empty() {
            let names: Vec<&str> = restart.iter().map(|c| c.name.as_str()).collect();
            s.push_str(&format!(
                "Not applicable to a running gateway: {} (restart it with the new config).\n",
                names.join(", ")
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BASE: &str = r#"
max_ttl = "1h"
tunnel_listen = "127.0.0.1:7443"
[services.api]
protocol = "http"
listen = "127.0.0.1:8081"
upstream = "http://127.0.0.1:9000"
max_ttl = "15m"
allow_cidrs = ["10.0.0.0/8"]

[services.cache]
protocol = "tcp"
upstream = "127.0.0.1:6379"
max_ttl = "15m"
"#;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("/etc/keyway")).expect("valid config")
    }

    #[test]
    fn the_same_config_plans_nothing() {
        let p = plan(&parse(BASE), &parse(BASE));
        assert!(p.is_empty());
        assert!(p.render().starts_with("No changes"));
    }

    #[test]
    fn a_new_spelling_of_the_same_value_is_no_change() {
        let p = plan(
            &parse(BASE),
            &parse(&BASE.replace("max_ttl = \"1h\"", "max_ttl = \"60m\"")),
        );
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn services_added_changed_and_removed_with_their_fields() {
        let new = BASE
            .replace("[\"10.0.0.0/8\"]", "[\"10.1.0.0/16\"]")
            .replace("[services.cache]", "[services.cache2]");
        let p = plan(&parse(BASE), &parse(&new));
        let text = p.render();
        assert!(
            text.contains(
                "~ service api\n      ~ allow_cidrs: [\"10.0.0.0/8\"] -> [\"10.1.0.0/16\"]"
            ),
            "{text}"
        );
        assert!(text.contains("- service cache\n"), "{text}");
        assert!(
            text.contains("+ service cache2\n      + max_ttl = \"15m\""),
            "{text}"
        );
        assert!(
            text.contains("Plan: 1 to add, 1 to change, 1 to remove."),
            "{text}"
        );
        assert!(p.needs_restart().is_empty());
    }

    #[test]
    fn own_listeners_need_a_restart_and_ttls_do_not() {
        let new = format!(
            "admin_listen = \"127.0.0.1:7071\"\n{}",
            BASE.replace("\"1h\"", "\"2h\"")
        );
        let p = plan(&parse(BASE), &parse(&new));
        let restart: Vec<&str> = p.needs_restart().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(restart, ["admin_listen"]);
        let text = p.render();
        assert!(
            text.contains("~ setting max_ttl\n      ~ max_ttl: \"1h\" -> \"2h\""),
            "{text}"
        );
        assert!(
            text.contains("Not applicable to a running gateway: admin_listen"),
            "{text}"
        );
    }

    #[test]
    fn detectors_are_shown_by_key() {
        let new = format!("{BASE}\n[detect.brute_force]\nthreshold = 3\n");
        let p = plan(&parse(BASE), &parse(&new));
        assert!(
            p.render()
                .contains("~ [detect]\n      + brute_force.threshold = 3"),
            "{}",
            p.render()
        );
    }

    #[test]
    fn a_secret_looking_value_is_masked() {
        let new = BASE.replace("127.0.0.1:9000", "127.0.0.1:9000/Zx8Qw3Lp0Rt7Yb2Nc5Vm");
        let text = plan(&parse(BASE), &parse(&new)).render();
        assert!(!text.contains("Zx8Qw3Lp0Rt7Yb2Nc5Vm"), "{text}");
        assert!(
            text.contains("~ upstream: \"http://127.0.0.1:9000\" -> \"http://127.0.0.1:9000/***\""),
            "{text}"
        );
    }
}
