//! The subjects policies and the console name: `user:<user>`, `group:<group>` and
//! `workload:<issuer>:<subject>`, each checked against the identity providers that
//! can produce it.

use super::problem::Problems;
use super::IdentityConfig;

/// A policy's subject or approver: `user:<user>` and `group:<group>` need a sign-in
/// provider, `workload:<issuer>:<subject>` its issuer (and approves nothing).
pub(super) fn check_subject(
    p: &mut Problems,
    at: &str,
    s: &str,
    identity: &IdentityConfig,
    workloads: bool,
) {
    let shapes = if workloads {
        "`user:<email>`, `group:<name>` or `workload:<issuer>:<subject>`"
    } else {
        "`user:<email>` or `group:<name>`"
    };
    if s.len() > 512 || s.chars().any(char::is_control) {
        p.push(
            at,
            &format!("a subject is {shapes}, at most 512 characters"),
        );
        return;
    }
    match s.split_once(':') {
        Some(("workload", rest)) if workloads => match rest.split_once(':') {
            Some((issuer, sub)) if !sub.is_empty() => {
                if !identity.workload.contains_key(issuer) {
                    p.push(
                        at,
                        &format!(
                            "no identity provider can produce it: declare `[identity.workload.{}]`",
                            issuer.chars().take(63).collect::<String>()
                        ),
                    );
                }
            }
            _ => p.push(at, "a workload subject is `workload:<issuer>:<subject>`"),
        },
        Some(("user" | "group", who)) if !who.is_empty() => {
            if identity.oidc.is_empty() {
                p.push(
                    at,
                    "no identity provider can produce it: people sign in through `[identity.oidc.NAME]`",
                );
            }
        }
        _ => p.push(at, &format!("a subject is {shapes}")),
    }
}
