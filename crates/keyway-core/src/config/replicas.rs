//! Replicas of one cluster (several gateways on one shared store) run one config,
//! applied to all of them, except what says how one process starts and where it
//! listens:
//!
//! - the top-level settings of [`PER_PROCESS`] are always the replica's own, from the
//!   file it started with ([`for_this_process`]);
//! - `[replicas.NAME.listen]` gives the replica named NAME its own address for a
//!   service (several replicas on one host cannot share a port).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::problem::Problems;
use super::RawService;

/// Top-level settings a replica keeps from its own file whatever config the cluster
/// runs: where its data and keys are, which store and name it has, and its own
/// listeners (which only a restart changes).
pub const PER_PROCESS: &[&str] = &[
    "data_dir",
    "store",
    "replica",
    "admin_listen",
    "token_listen",
    "token_tls",
    "tunnel_listen",
    "tunnel_tls",
    "pepper_file",
    "master_key_file",
];

/// One replica's own settings in the shared config.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawReplica {
    /// Service name → the address this replica listens on for it (instead of the
    /// service's `listen`).
    #[serde(default)]
    pub listen: BTreeMap<String, String>,
}

/// Checks every `[replicas.NAME]` (names, services, addresses) and gives the
/// services the addresses of the one named `this`.
pub(super) fn apply(
    p: &mut Problems,
    replicas: &BTreeMap<String, RawReplica>,
    this: &str,
    services: &mut BTreeMap<String, RawService>,
) {
    for (name, r) in replicas {
        if !super::valid_replica(name) {
            p.push(
                &format!("replicas.{name}"),
                "a replica's name is 1 to 63 characters of a-z, 0-9, `-`, `_` and `.`",
            );
        }
        for (svc, addr) in &r.listen {
            let key = format!("replicas.{name}.listen.{svc}");
            let Some(service) = services.get_mut(svc) else {
                p.push(&key, "names no service of `[services]`");
                continue;
            };
            if p.addr(&key, addr).is_some() && name == this {
                service.listen = Some(addr.clone());
            }
        }
    }
}

/// The config a replica runs when the cluster applies `shared` (a config's text):
/// `shared` with the [`PER_PROCESS`] settings of `local` (the replica's config as
/// written, [`super::Written::value`]) in place of its own. A text that does not
/// parse comes back as it is, for the usual checks to say why.
pub fn for_this_process(shared: &str, local: &serde_json::Value) -> String {
    let Ok(mut table) = toml::from_str::<toml::Table>(shared) else {
        return shared.to_owned();
    };
    for key in PER_PROCESS {
        table.remove(*key);
        let Some(v) = local.get(*key) else { continue };
        if let Ok(v) = toml::Value::try_from(v) {
            table.insert((*key).to_owned(), v);
        }
    }
    toml::to_string(&table).unwrap_or_else(|_| shared.to_owned())
}
