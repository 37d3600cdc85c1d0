//! `keyway report`: the hygiene report, in sections for people or as JSON; exit
//! status 1 when it finds anything to revoke, rotate, narrow or close.

use std::process::ExitCode;

use anyhow::Result;

use crate::client::{self, AdminArgs, AdminClient};
use crate::table::print_table;

pub async fn run(since: &str, json: bool, admin: &AdminArgs) -> Result<ExitCode> {
    let client = AdminClient::resolve(admin)?;
    let r: keyway_core::api::Report = client
        .get(&format!("/v1/report?since={}", client::path_segment(since)))
        .await?;
    let findings = r.unused_tokens.len()
        + r.credentials_near_max_age.len()
        + r.quiet_services.len()
        + r.broad_grants.len()
        + r.agents_not_connected.len();
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("Since {}:", r.since);
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        // A token from a policy is narrowed or ended in the policy.
        let who = |principal: &str, policy: &Option<String>| match policy {
            Some(p) => format!("{principal} (policy {p})"),
            None => principal.to_owned(),
        };
        if !r.unused_tokens.is_empty() {
            println!("\nTokens not used (revoke them):");
            let rows: Vec<[String; 5]> = r
                .unused_tokens
                .iter()
                .map(|t| {
                    [
                        t.id.clone(),
                        t.kind.clone(),
                        who(&t.principal, &t.policy),
                        dash(&t.service),
                        dash(&t.last_used_at),
                    ]
                })
                .collect();
            print_table(["ID", "KIND", "PRINCIPAL", "SERVICE", "LAST USED"], &rows);
        }
        if !r.credentials_near_max_age.is_empty() {
            println!("\nClient credentials near their maximum age (rotate them):");
            let rows: Vec<[String; 3]> = r
                .credentials_near_max_age
                .iter()
                .map(|t| [t.id.clone(), t.principal.clone(), t.expires_at.clone()])
                .collect();
            print_table(["ID", "PRINCIPAL", "EXPIRES"], &rows);
        }
        if !r.quiet_services.is_empty() {
            println!("\nServices with no traffic (close them?):");
            for s in &r.quiet_services {
                println!("  {}", s.service);
            }
        }
        if !r.broad_grants.is_empty() {
            println!("\nGrants broader than their use (narrow them):");
            let all = |v: &[String], what: &str| {
                if v.is_empty() {
                    what.to_owned()
                } else {
                    v.join(",")
                }
            };
            let rows: Vec<[String; 5]> = r
                .broad_grants
                .iter()
                .map(|g| {
                    [
                        g.token_id.clone(),
                        g.service.clone(),
                        format!(
                            "{} {}",
                            all(&g.granted_methods, "ALL"),
                            all(&g.granted_paths, "/")
                        ),
                        format!("{} {}", g.used_methods.join(","), g.used_paths.join(",")),
                        who(&g.principal, &g.policy),
                    ]
                })
                .collect();
            print_table(["ID", "SERVICE", "GRANTED", "USED", "PRINCIPAL"], &rows);
        }
        if !r.agents_not_connected.is_empty() {
            println!("\nAgents not connected:");
            for a in &r.agents_not_connected {
                println!("  {a}");
            }
        }
        if findings == 0 {
            println!("nothing to revoke, narrow or close");
        }
        if r.truncated {
            eprintln!("(the audit log had more distinct uses than the report reads; older ones may be missing)");
        }
    }
    Ok(if findings > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
