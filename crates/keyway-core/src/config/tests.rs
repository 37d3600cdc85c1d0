//! The config, parsed and checked: every refusal names its key, and no error quotes
//! the file.

use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

use super::*;

const CONTRACT: &str = r#"
data_dir = "keyway-data"
admin_listen = "127.0.0.1:7070"
max_ttl = "24h"

[services.billing]
protocol = "http"
listen = "127.0.0.1:9001"
upstream = "http://127.0.0.1:8080"
max_ttl = "1h"
allow_cidrs = ["127.0.0.0/8"]
rate_limit = "50/s"
upstream_auth = { header = "X-Api-Key", secret = "billing-key" }
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/keyway"))
}

#[test]
fn the_contract_shape_parses() {
    let c = parse(CONTRACT).unwrap();
    assert_eq!(c.data_dir, Path::new("/etc/keyway/keyway-data"));
    assert_eq!(
        c.pepper_file,
        Path::new("/etc/keyway/keyway-data/pepper.key")
    );
    assert_eq!(c.max_ttl, Duration::from_secs(86400));
    let b = c.service("billing").unwrap();
    assert_eq!(b.listen.unwrap().port(), 9001);
    assert_eq!(b.max_ttl, Duration::from_secs(3600));
    assert_eq!(b.allow_cidrs, vec!["127.0.0.0/8".parse::<IpNet>().unwrap()]);
    assert_eq!(b.rate_limit.unwrap().to_string(), "50/s");
    let ServiceKind::Http(h) = &b.kind else {
        panic!("http")
    };
    assert_eq!(h.upstream.authority.as_str(), "127.0.0.1:8080");
    let auth = h.upstream_auth.as_ref().unwrap();
    assert_eq!(
        (auth.header.as_str(), auth.secret.as_str()),
        ("x-api-key", "billing-key")
    );
}

#[test]
fn an_empty_file_gives_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
    assert_eq!(c.audit.on_full, OnFull::FailClosed);
    assert!(c.services.is_empty());
}

#[test]
fn unknown_keys_name_their_path_and_line() {
    let text = CONTRACT.replace("rate_limit", "rate_limt");
    let e = parse(&text).unwrap_err().to_string();
    assert!(e.contains("services.billing"), "{e}");
    assert!(e.contains("rate_limt"), "{e}");
    assert!(e.contains("line 12"), "{e}");
}

#[test]
fn errors_never_repeat_the_file() {
    let text = "max_ttl = \"24h\"\nsecret_value = \"hunter2-very-secret\"\n";
    let e = parse(text).unwrap_err().to_string();
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn type_errors_do_not_quote_the_value() {
    let text = CONTRACT.replace(
        "upstream_auth = { header = \"X-Api-Key\", secret = \"billing-key\" }",
        "upstream_auth = \"sk_live_pasted_by_mistake\"",
    );
    let e = parse(&text).unwrap_err().to_string();
    assert!(!e.contains("sk_live"), "{e}");
    assert!(
        e.contains("services.billing.upstream_auth") && e.contains("expected"),
        "{e}"
    );
    let e = parse(&CONTRACT.replace("\"1h\"", "\"sk_live_zzz\""))
        .unwrap_err()
        .to_string();
    assert!(!e.contains("sk_live"), "{e}");
}

#[test]
fn every_problem_is_reported() {
    let text = CONTRACT
        .replace("max_ttl = \"1h\"", "max_ttl = \"48h\"")
        .replace("127.0.0.0/8", "127.0.0.0/99")
        .replace("50/s", "fast")
        .replace("billing-key", "not a name!");
    let e = parse(&text).unwrap_err();
    let all = e.to_string();
    assert_eq!(e.problems.len(), 4, "{all}");
    assert!(
        all.contains("`services.billing.max_ttl`: 2days is longer than the global max_ttl of 1day"),
        "{all}"
    );
    assert!(all.contains("`services.billing.allow_cidrs[0]`"), "{all}");
    assert!(all.contains("`services.billing.rate_limit`"), "{all}");
    assert!(
        all.contains("`services.billing.upstream_auth.secret`"),
        "{all}"
    );
}

#[test]
fn two_services_on_one_port_are_refused() {
    let text = format!("{CONTRACT}\n[services.other]\nprotocol = \"http\"\nlisten = \"127.0.0.1:9001\"\nupstream = \"http://127.0.0.1:8081\"\n");
    let e = parse(&text).unwrap_err().to_string();
    assert!(
        e.contains("already used by `services.billing.listen`"),
        "{e}"
    );
}

#[test]
fn upstream_urls_are_checked() {
    for (bad, why) in [
        ("ftp://10.0.0.1", "`http://` or `https://`"),
        ("http://user:pw@10.0.0.1", "credentials"),
        ("http://10.0.0.1/?a=b", "query"),
        ("not a url", "is not a URL"),
    ] {
        let e = parse(&CONTRACT.replace("http://127.0.0.1:8080", bad))
            .unwrap_err()
            .to_string();
        assert!(e.contains(why), "{bad}: {e}");
        assert!(!e.contains("pw@"), "{e}");
    }
    let c =
        parse(&CONTRACT.replace("http://127.0.0.1:8080", "http://127.0.0.1:8080/api/")).unwrap();
    let ServiceKind::Http(h) = &c.service("billing").unwrap().kind else {
        panic!("http")
    };
    assert_eq!(h.upstream.base_path, "/api");
}

#[test]
fn unsupported_protocols_say_so() {
    let e = parse(&CONTRACT.replace("protocol = \"http\"", "protocol = \"mysql\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not supported yet"), "{e}");
}

#[test]
fn shipped_example_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            Config::parse(&text, &dir).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 1, "no example config found in {}", dir.display());
}

#[test]
fn client_certificates_need_tls_and_a_ca() {
    let e = parse(&format!("{CONTRACT}client_ca = \"ca.pem\"\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("services.billing.client_ca") && e.contains("tls ="),
        "{e}"
    );
    let e = parse(&format!(
        "{CONTRACT}tls = {{ cert = \"c.pem\", key = \"k.pem\" }}\nrequire_client_cert = true\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("require_client_cert") && e.contains("client_ca"),
        "{e}"
    );
    let c = parse(&format!(
        "{CONTRACT}tls = {{ cert = \"c.pem\", key = \"k.pem\" }}\nclient_ca = \"ca.pem\"\nrequire_client_cert = true\n"
    ))
    .unwrap();
    let tls = c.service("billing").unwrap().tls.clone().unwrap();
    assert_eq!(tls.cert, Path::new("/etc/keyway/c.pem"));
    assert_eq!(
        tls.client_ca.as_deref(),
        Some(Path::new("/etc/keyway/ca.pem"))
    );
    assert!(tls.require_client_cert);
}

#[test]
fn tcp_services_are_reached_through_the_tunnel() {
    let tcp =
        "[services.cache]\nprotocol = \"tcp\"\nupstream = \"127.0.0.1:6379\"\nmax_ttl = \"1h\"\n";
    let e = parse(tcp).unwrap_err().to_string();
    assert!(e.contains("tunnel_listen"), "{e}");
    let c = parse(&format!("tunnel_listen = \"127.0.0.1:7443\"\n{tcp}")).unwrap();
    let svc = c.service("cache").unwrap();
    assert!(svc.listen.is_none());
    let ServiceKind::Tcp(t) = &svc.kind else {
        panic!("tcp")
    };
    assert_eq!(t.upstream, "127.0.0.1:6379");
    let with_listen = format!(
        "tunnel_listen = \"127.0.0.1:7443\"\n{tcp}listen = \"127.0.0.1:1\"\nrate_limit = \"1/s\"\n"
    );
    let e = parse(&with_listen).unwrap_err().to_string();
    assert!(
        e.contains("services.cache.listen") && e.contains("services.cache.rate_limit"),
        "{e}"
    );
    let bad = format!(
        "tunnel_listen = \"127.0.0.1:7443\"\n{}",
        tcp.replace("127.0.0.1:6379", "http://x")
    );
    assert!(parse(&bad).unwrap_err().to_string().contains("host:port"));
}

#[test]
fn agents_and_their_services_name_each_other() {
    let base = "tunnel_listen = \"127.0.0.1:7443\"\n\
                [services.cache]\nprotocol = \"tcp\"\nupstream = \"10.0.0.7:6379\"\n";
    let c = parse(&format!(
        "{base}via = \"eu\"\n[agents.eu]\nservices = [\"cache\"]\n"
    ))
    .unwrap();
    assert_eq!(c.service("cache").unwrap().via.as_deref(), Some("eu"));
    assert_eq!(c.agents["eu"].services, ["cache"]);

    // A service through an agent that does not exist, or does not list it.
    let e = parse(&format!("{base}via = \"nowhere\"\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("services.cache.via") && e.contains("names no agent"),
        "{e}"
    );
    let e = parse(&format!("{base}via = \"eu\"\n[agents.eu]\nservices = []\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("agents.eu.services"), "{e}");
    // An agent listing a service the gateway would still dial itself.
    let e = parse(&format!(
        "{base}[agents.eu]\nservices = [\"cache\", \"ghost\"]\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("set `via = \"eu\"` on `services.cache`"), "{e}");
    assert!(
        e.contains("agents.eu.services[1]") && e.contains("names no service"),
        "{e}"
    );
    // Agents need the tunnel, with the gateway's own CA.
    let e = parse(
        "tunnel_tls = { cert = \"c.pem\", key = \"k.pem\" }\ntunnel_listen = \"127.0.0.1:7443\"\n[agents.eu]\nservices = []\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("tunnel_tls"), "{e}");
    let e = parse("[agents.eu]\nservices = []\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("tunnel_listen"), "{e}");
}

#[test]
fn key_files_follow_a_relative_config_folder_once() {
    let c = Config::parse("data_dir = \"data\"\n", Path::new("deploy")).unwrap();
    assert_eq!(c.data_dir, Path::new("deploy/data"));
    assert_eq!(c.pepper_file, Path::new("deploy/data/pepper.key"));
    assert_eq!(c.master_key_file, Path::new("deploy/data/master.key"));
    let c = Config::parse("pepper_file = \"keys/pepper\"\n", Path::new("deploy")).unwrap();
    assert_eq!(c.pepper_file, Path::new("deploy/keys/pepper"));
}

#[test]
fn a_wildcard_listener_holds_its_port_on_every_address() {
    let text = "[services.a]\nprotocol = \"http\"\nlisten = \"0.0.0.0:9001\"\nupstream = \"http://127.0.0.1:8080\"\n\
                [services.b]\nprotocol = \"http\"\nlisten = \"127.0.0.1:9001\"\nupstream = \"http://127.0.0.1:8081\"\n";
    let e = Config::parse(text, std::path::Path::new("/tmp")).expect_err("refused");
    assert!(e.to_string().contains("services.b.listen"), "{e}");
    assert!(e.to_string().contains("services.a.listen"), "{e}");
}

#[test]
fn the_port_audit_hosts_are_checked() {
    let e = Config::parse(
        "[audit.ports]\nevery = \"7d\"\nhosts = [\"10.0.0.0/8\", \"db.internal\", \"not a host\"]\n",
        std::path::Path::new("/tmp"),
    )
    .expect_err("refused");
    let e = e.to_string();
    assert!(
        e.contains("audit.ports.hosts[0]") && e.contains("audit.ports.hosts[2]"),
        "{e}"
    );
    assert!(!e.contains("hosts[1]"), "{e}");
}

const ACCESS: &str = r#"
token_listen = "127.0.0.1:7071"
tunnel_listen = "127.0.0.1:7443"

[services.billing]
protocol = "http"
listen = "127.0.0.1:9001"
upstream = "http://127.0.0.1:8080"
max_ttl = "1h"

[services.cache]
protocol = "tcp"
upstream = "127.0.0.1:6379"

[services.orders-db]
protocol = "postgres"
listen = "127.0.0.1:6432"
upstream = "127.0.0.1:5432"
database = "test"
roles.readonly = { user = "root", secret = "kw-ro" }

[identity.workload.github]
issuer = "https://token.actions.githubusercontent.com"
audience = "keyway"
"#;

#[test]
fn policies_and_workload_issuers_parse() {
    let text = format!(
        "{ACCESS}\n[policies.deploy-from-ci]\nsubjects = [\"workload:github:repo:acme/billing:ref:refs/heads/main\"]\n\
         grants = [{{ service = \"billing\", methods = [\"post\"], paths = [\"/deploys/\"] }}, {{ service = \"orders-db\", role = \"readonly\" }}]\n\
         max_ttl = \"15m\"\n"
    );
    let c = parse(&text).unwrap();
    let gh = &c.identity.workload["github"];
    assert_eq!(gh.subject_claim, "sub");
    assert!(!gh.algorithms.iter().any(|a| a.starts_with("HS")));
    let p = &c.policies["deploy-from-ci"];
    assert_eq!(p.max_ttl, Duration::from_secs(900));
    let subject = "workload:github:repo:acme/billing:ref:refs/heads/main";
    let (found, grant) = policy_for(&c.policies, subject, "billing").unwrap();
    assert_eq!(found.name, "deploy-from-ci");
    assert_eq!(grant.methods, vec!["POST".to_owned()]);
    assert_eq!(
        policy_for(&c.policies, subject, "orders-db")
            .unwrap()
            .1
            .role
            .as_deref(),
        Some("readonly")
    );
    assert!(policy_for(&c.policies, subject, "cache").is_none());
    assert!(policy_for(&c.policies, "workload:github:repo:x", "billing").is_none());
}

#[test]
fn people_sign_in_providers_and_approvals_parse() {
    let text = format!(
        "{ACCESS}\n[identity.oidc.corp]\nissuer = \"https://login.example.com\"\nclient_id = \"keyway\"\nclient_secret = \"oidc-corp\"\n\
         [policies.orders-db-write]\nsubjects = [\"group:sre\", \"user:alice@example.com\"]\ngrants = [{{ service = \"orders-db\", role = \"readonly\" }}]\n\
         max_ttl = \"1h\"\napproval = {{ approvers = [\"group:db-owners\"], min = 2, request_ttl = \"30m\" }}\n"
    );
    let c = parse(&text).unwrap();
    let corp = &c.identity.oidc["corp"];
    assert_eq!(corp.client_secret.as_deref(), Some("oidc-corp"));
    assert_eq!(
        (corp.groups_claim.as_str(), corp.user_claim.as_str()),
        ("groups", "email")
    );
    assert_eq!(corp.session_ttl, Duration::from_secs(12 * 3600));
    let p = &c.policies["orders-db-write"];
    let a = p.approval.as_ref().unwrap();
    assert_eq!((a.min, a.request_ttl), (2, Duration::from_secs(1800)));
    let bob = person_subjects("bob@example.com", &["sre".into()]);
    assert!(p.names_any(&bob));
    assert!(!a.approver(&bob));
    assert!(a.approver(&person_subjects("carol@example.com", &["db-owners".into()])));
    assert!(!p.names_any(&person_subjects("eve@example.com", &["finance".into()])));
}

#[test]
fn policies_are_refused_with_the_key_and_the_fix() {
    let cases = [
        (
            "[policies.p]\nsubjects = [\"workload:github:x\"]\ngrants = [{ service = \"nope\" }]",
            "policies.p.grants[0].service",
            "names no service",
        ),
        (
            "[policies.p]\nsubjects = [\"workload:gitlab:x\"]\ngrants = [{ service = \"billing\" }]",
            "policies.p.subjects[0]",
            "[identity.workload.gitlab]",
        ),
        (
            "[policies.p]\nsubjects = [\"group:sre\"]\ngrants = [{ service = \"billing\" }]",
            "policies.p.subjects[0]",
            "[identity.oidc.NAME]",
        ),
        (
            "[policies.p]\nsubjects = [\"workload:github:x\"]\ngrants = [{ service = \"billing\" }]\napproval = { approvers = [\"workload:github:y\"] }",
            "policies.p.approval.approvers[0]",
            "`user:<email>` or `group:<name>`",
        ),
        (
            "[identity]\nconsole_admins = [\"workload:github:x\"]",
            "identity.console_admins[0]",
            "`user:<email>` or `group:<name>`",
        ),
        (
            "[identity]\nconsole_admins = [\"group:sre\"]",
            "identity.console_admins[0]",
            "[identity.oidc.NAME]",
        ),
        (
            "[identity.oidc.corp]\nissuer = \"https://login.example.com\"\nclient_id = \"keyway\"\nclient_secret = \"s3cr3t value\"",
            "identity.oidc.corp.client_secret",
            "names a secret",
        ),
        (
            "[identity.oidc.corp]\nissuer = \"https://login.example.com\"\nclient_id = \"keyway\"\nscopes = [\"email\"]",
            "identity.oidc.corp.scopes",
            "must include `openid`",
        ),
        (
            "[policies.p]\nsubjects = [\"workload:github:x\"]\ngrants = [{ service = \"orders-db\" }]",
            "policies.p.grants[0].role",
            "names its role",
        ),
        (
            "[policies.p]\nsubjects = [\"workload:github:x\"]\ngrants = [{ service = \"orders-db\", role = \"admin\" }]",
            "policies.p.grants[0].role",
            "it has: readonly",
        ),
        (
            "[policies.p]\nsubjects = [\"workload:github:x\"]\ngrants = [{ service = \"cache\", paths = [\"/x\"] }]",
            "policies.p.grants[0]",
            "narrow HTTP services only",
        ),
        (
            "[policies.p]\nsubjects = []\ngrants = [{ service = \"billing\" }]",
            "policies.p.subjects",
            "at least one",
        ),
        (
            "[identity.workload.k8s]\nissuer = \"http://kubernetes.example\"\naudience = \"keyway\"",
            "identity.workload.k8s.issuer",
            "must be https",
        ),
        (
            "[identity.workload.other]\nissuer = \"https://token.actions.githubusercontent.com\"\naudience = \"other\"",
            "identity.workload.other.issuer",
            "one entry per issuer",
        ),
        (
            "[identity.workload.k8s]\nissuer = \"https://k8s.example\"\naudience = \"keyway\"\nalgorithms = [\"HS256\"]",
            "identity.workload.k8s.algorithms[0]",
            "public-key signatures only",
        ),
    ];
    for (extra, key, says) in cases {
        let e = parse(&format!("{ACCESS}\n{extra}\n")).unwrap_err();
        let p = e
            .problems
            .iter()
            .find(|p| p.key.as_deref() == Some(key))
            .unwrap_or_else(|| panic!("{key}: {e}"));
        assert!(p.message.contains(says), "{key}: {}", p.message);
    }
    // Workloads reach the token endpoint.
    let e = parse(&ACCESS.replace("token_listen = \"127.0.0.1:7071\"", "")).unwrap_err();
    assert!(e.to_string().contains("set `token_listen`"), "{e}");
}

#[test]
fn a_shared_store_is_a_postgres_url_without_a_password() {
    let c =
        parse("store = \"postgres://keyway@db.internal/keyway\"\nreplica = \"gw-1\"\n").unwrap();
    assert_eq!(
        c.store.as_deref(),
        Some("postgres://keyway@db.internal/keyway")
    );
    assert_eq!(c.replica, "gw-1");
    let c = parse("").unwrap();
    assert_eq!(c.store, None, "SQLite in the data folder by default");
    assert!(
        valid_replica(&c.replica),
        "the host's name, made a replica's: {}",
        c.replica
    );
    for (text, says) in [
        (
            "store = \"postgres://keyway:hunter2@db/keyway\"",
            "holds a password",
        ),
        (
            "store = \"postgres://keyway@db/keyway?sslmode=require&password=x\"",
            "holds a password",
        ),
        ("store = \"mysql://db/keyway\"", "is a PostgreSQL URL"),
        ("replica = \"GW 1\"", "a replica's name"),
    ] {
        let e = parse(text).unwrap_err();
        assert!(e.to_string().contains(says), "{text}: {e}");
    }
}

#[test]
fn a_replica_listens_where_its_section_says() {
    let text = |me: &str| {
        format!(
            "replica = \"{me}\"\n{CONTRACT}\n[replicas.gw-2.listen]\nbilling = \"127.0.0.1:9002\"\n"
        )
    };
    let port = |me: &str| parse(&text(me)).unwrap().service("billing").unwrap().listen;
    assert_eq!(port("gw-1").unwrap().port(), 9001);
    assert_eq!(port("gw-2").unwrap().port(), 9002);

    let bad = format!(
        "{CONTRACT}\n[replicas.gw-2.listen]\nledger = \"127.0.0.1:9002\"\nbilling = \"nine\"\n"
    );
    let e = parse(&bad).unwrap_err();
    let keys: Vec<_> = e.problems.iter().filter_map(|p| p.key.clone()).collect();
    assert!(
        keys.contains(&"replicas.gw-2.listen.ledger".to_owned()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"replicas.gw-2.listen.billing".to_owned()),
        "{keys:?}"
    );
}

#[test]
fn a_replica_keeps_its_own_process_settings_under_the_clusters_config() {
    let local = parse(&format!(
        "replica = \"gw-2\"\nstore = \"postgres://keyway@db/keyway\"\n{}",
        CONTRACT.replace("127.0.0.1:7070", "127.0.0.1:7072")
    ))
    .unwrap();
    // The cluster's config, applied from gw-1's file, with a service more.
    let shared = format!(
        "replica = \"gw-1\"\n{CONTRACT}\n[services.ledger]\nprotocol = \"http\"\nlisten = \"127.0.0.1:9003\"\nupstream = \"http://127.0.0.1:8081\"\nmax_ttl = \"1h\"\n"
    );
    let mine = parse(&for_this_process(&shared, &local.written.value)).unwrap();
    assert_eq!(mine.replica, "gw-2");
    assert_eq!(mine.admin_listen.port(), 7072);
    assert_eq!(mine.store.as_deref(), Some("postgres://keyway@db/keyway"));
    assert!(mine.service("ledger").is_some());
    // A text that does not parse is left for the checks to refuse.
    assert_eq!(
        for_this_process("max_ttl = ", &local.written.value),
        "max_ttl = "
    );
}

#[test]
fn mcp_services_and_policies_that_grant_tools() {
    let text = format!(
        "{ACCESS}\n[services.tickets-mcp]\nprotocol = \"mcp\"\nlisten = \"127.0.0.1:9100\"\n\
         upstream = \"http://127.0.0.1:8000/mcp\"\nmax_ttl = \"1h\"\naudit_arguments = true\n\
         upstream_auth = {{ header = \"Authorization\", secret = \"tickets\", prefix = \"Bearer \" }}\n\
         [policies.support]\nsubjects = [\"workload:github:repo:acme/support-bot\"]\n\
         grants = [{{ service = \"tickets-mcp\", tools = [\"search_*\", \"get_ticket\"], sampling = true }}]\n"
    );
    let c = parse(&text).unwrap();
    let svc = c.service("tickets-mcp").unwrap();
    assert!(svc.is_mcp());
    assert_eq!(svc.protocol(), "mcp");
    let g = &c.policies["support"].grants[0];
    assert_eq!(g.mcp.tools, ["search_*", "get_ticket"]);
    assert!(g.mcp.sampling && !g.mcp.elicitation);
    assert!(g.mcp.allows(crate::McpKind::Tool, "search_tickets"));
    assert!(!g.mcp.allows(crate::McpKind::Tool, "delete_ticket"));
    // Tools narrow mcp services only; an http service would take them as all.
    let wrong = format!(
        "{ACCESS}\n[policies.x]\nsubjects = [\"workload:github:repo:acme/x\"]\ngrants = [{{ service = \"billing\", tools = [\"a\"] }}]\n"
    );
    let e = parse(&wrong).unwrap_err().to_string();
    assert!(e.contains("narrow mcp services only"), "{e}");
    // audit_arguments belongs to mcp services.
    let e = parse(&format!("{ACCESS}\n[services.x]\nprotocol = \"http\"\nlisten = \"127.0.0.1:9102\"\nupstream = \"http://127.0.0.1:1\"\naudit_arguments = true\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("applies to mcp services only"), "{e}");
}
