//! What MCP servers do that the gateway guards agents from, or carries for them,
//! with the Python SDK's FastMCP server (`tests/mcp/tickets.py`) and client: a tool
//! whose definition changes is withheld until approved (tool pinning); a stdio
//! server runs inside the private network behind an agent; the server's sampling
//! requests reach the agent only where the grant allows them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::mcp::*;
use common::*;

/// [`agent`] on a blocking thread, while the test's webhook runs on the runtime.
async fn agent_in_task(url: &str, token: &str) -> serde_json::Value {
    let (u, t) = (url.to_owned(), token.to_owned());
    tokio::task::spawn_blocking(move || agent(&u, &t))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tool_that_changes_is_withheld_until_approved() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (hook, alerts) = webhook().await;
    let (server, upstream) = tickets(dir, &[]);
    let (_gw, _admin, svc) = gateway(
        dir,
        upstream,
        &format!("[alerts.webhook]\nurl = \"http://{hook}/keyway\"\nsecret = \"hook-key\"\n"),
    );
    ok_stdout(keyway(
        dir,
        &["secret", "set", "hook-key", "--config", "keyway.toml"],
        Some("hook-secret-value"),
    ));
    let url = format!("http://127.0.0.1:{svc}/mcp");
    let token = issue(dir, "support-bot", "tickets-mcp");
    let mcp_tools = |extra: &[&str]| {
        let mut args = vec!["mcp", "tools", "tickets-mcp"];
        args.extend(extra);
        args.extend(["--config", "keyway.toml"]);
        ok_stdout(keyway(dir, &args, None))
    };
    let seen = agent_in_task(&url, &token).await;
    assert_eq!(
        seen["get"]["ok"],
        serde_json::json!(["ticket 7: printer on fire"])
    );
    let table = mcp_tools(&[]);
    assert_eq!(table.matches(" pinned ").count(), 3, "{table}");

    // The server changes what get_ticket says it does.
    let pid = server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-USR1", &pid])
        .status()
        .unwrap()
        .success());
    for _ in 0..2 {
        let seen = agent_in_task(&url, &token).await;
        assert_eq!(
            seen["tools"],
            serde_json::json!(["delete_ticket", "search_tickets"]),
            "the changed tool is withheld"
        );
        let refused = seen["get"]["error"].as_str().unwrap();
        assert!(refused.contains("changed since it was approved"), "{seen}");
    }
    assert_eq!(
        log_of(dir).matches("get_ticket").count(),
        1,
        "one call reached it, before the change"
    );
    let table = mcp_tools(&[]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("get_ticket") && l.contains(" changed ")),
        "{table}"
    );
    let json = mcp_tools(&["--json"]);
    assert!(
        json.contains("~/.ssh/id_rsa"),
        "the new definition, to read: {json}"
    );
    let changed = store_query(
        dir,
        "select count(*) from audit_events where kind = 'mcp.tool_changed' \
         and json_extract(detail, '$.tool') = 'get_ticket'",
    );
    assert_eq!(
        changed.trim(),
        "1",
        "one event per new definition, not per list"
    );
    // The alert reached the webhook (its first attempt is refused, then retried).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let got = alerts.lock().unwrap().clone();
        if got
            .iter()
            .any(|(_, _, body)| body.contains("mcp.tool_changed") && body.contains("get_ticket"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no mcp.tool_changed alert: {got:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Approved: listed and callable again, with the new definition pinned.
    let approve = || {
        let args = [
            "mcp",
            "approve",
            "tickets-mcp",
            "get_ticket",
            "--config",
            "keyway.toml",
        ];
        keyway(dir, &args, None)
    };
    // The digest of the definition read: one that does not match approves nothing.
    let stale = keyway(
        dir,
        &[
            "mcp",
            "approve",
            "tickets-mcp",
            "get_ticket",
            "--sha256",
            "0000000000000000",
            "--config",
            "keyway.toml",
        ],
        None,
    );
    assert!(!stale.status.success());
    assert!(String::from_utf8_lossy(&stale.stderr)
        .contains("changed again since the definition you read"));
    let read: serde_json::Value = serde_json::from_str(&mcp_tools(&["--json"])).unwrap();
    let seen = read["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tool"] == "get_ticket")
        .unwrap()["seen_sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let args = [
        "mcp",
        "approve",
        "tickets-mcp",
        "get_ticket",
        "--sha256",
        &seen[..16],
        "--config",
        "keyway.toml",
    ];
    ok_stdout(keyway(dir, &args, None));
    assert!(!approve().status.success(), "nothing left to approve");
    let seen = agent_in_task(&url, &token).await;
    assert_eq!(
        seen["tools"],
        serde_json::json!(["delete_ticket", "get_ticket", "search_tickets"])
    );
    assert_eq!(
        seen["get"]["ok"],
        serde_json::json!(["ticket 7: printer on fire"])
    );
    let approved = store_query(
        dir,
        "select json_extract(detail, '$.by') from audit_events where kind = 'mcp.tool_approved'",
    );
    assert!(
        !approved.trim().is_empty(),
        "the approval names who approved"
    );
}

#[test]
fn a_stdio_server_behind_an_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (admin, tunnel, svc, bridge) = (free_port(), free_port(), free_port(), free_port());
    std::fs::write(
        dir.join("keyway.toml"),
        format!(
            "data_dir = \"data\"\nadmin_listen = \"127.0.0.1:{admin}\"\ntunnel_listen = \"127.0.0.1:{tunnel}\"\n\
             [agents.inside]\nservices = [\"tickets-mcp\"]\n\
             [services.tickets-mcp]\nprotocol = \"mcp\"\nlisten = \"127.0.0.1:{svc}\"\n\
             upstream = \"http://127.0.0.1:{bridge}/mcp\"\nvia = \"inside\"\nmax_ttl = \"1h\"\n"
        ),
    )
    .unwrap();
    let _gw = start_gateway(dir, admin);
    wait_for_port(tunnel);
    // The agent runs the stdio server inside the private network; the gateway only
    // ever reaches it through the agent's tunnel.
    let stdio = format!("127.0.0.1:{bridge}=python3 {TICKETS_PY} --stdio");
    let tickets_log = dir.join("tickets.log").to_string_lossy().into_owned();
    let _agent = start_agent(
        dir,
        "inside",
        tunnel,
        &["--mcp-stdio", &stdio],
        &[("TICKETS_LOG", tickets_log)],
    );
    let token = ok_stdout(issue_as(
        dir,
        "support-bot",
        "tickets-mcp",
        None,
        &["--tools", "search_*,get_ticket"],
    ));
    let seen = agent(&format!("http://127.0.0.1:{svc}/mcp"), &token);
    assert_granted_only(&seen);
    let log = log_of(dir);
    assert!(
        log.contains("get_ticket 7") && !log.contains("delete_ticket"),
        "{log}"
    );
    let leaked = files_containing(dir, &token[5..]);
    assert!(leaked.is_empty(), "the token is in {leaked:?}");
}

#[test]
fn the_servers_sampling_requests_pass_only_where_granted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_server, upstream) = tickets(dir, &["--sampling"]);
    let (_gw, _admin, svc) = gateway(dir, upstream, "");
    let url = format!("http://127.0.0.1:{svc}/mcp");
    let summarize = |token: &str| -> serde_json::Value {
        sdk_client("python3", CLIENT_PY, &[&url, token, "summarize"])
    };
    // Not granted: the agent never sees the request, and the gateway answers the
    // server for it, so the call ends at once with the server's own error.
    let plain = issue(dir, "support-bot", "tickets-mcp");
    let started = std::time::Instant::now();
    let got = summarize(&plain);
    let error = got["ok"]["tool_error"].to_string();
    assert!(
        error.contains("sampling/createMessage is not granted to this agent's token"),
        "{got}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the server was left waiting"
    );
    let withheld = store_query(
        dir,
        "select count(*) from audit_events where reason = 'server_request_not_granted' \
         and json_extract(detail, '$.mcp_method') = 'sampling/createMessage'",
    );
    assert_eq!(withheld.trim(), "1");
    // Granted: the agent's model answers the server.
    let sampler = ok_stdout(issue_as(
        dir,
        "support-bot",
        "tickets-mcp",
        None,
        &["--allow-sampling"],
    ));
    assert_eq!(
        summarize(&sampler)["ok"],
        serde_json::json!(["summary: a fire"])
    );
}

#[test]
fn a_long_call_streams_its_progress_through_the_gateway() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_server, upstream) = tickets(dir, &["--progress"]);
    let (_gw, _admin, svc) = gateway(dir, upstream, "");
    let token = issue(dir, "support-bot", "tickets-mcp");
    let url = format!("http://127.0.0.1:{svc}/mcp");
    let got = sdk_client("python3", CLIENT_PY, &[&url, &token, "export"]);
    assert_eq!(got["result"], serde_json::json!(["exported 4"]), "{got}");
    // Each report reached the agent while the call ran (0.3 s apart), not all at
    // once with the answer: the request's stream is relayed as it comes.
    let at: Vec<f64> = got["progress_at"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(at.len(), 4, "{got}");
    let answered = got["result_at"].as_f64().unwrap();
    assert!(
        answered - at[0] >= 0.8,
        "the first report came with the answer: {got}"
    );
    let recorded = store_query(
        dir,
        "select json_extract(detail, '$.result_bytes') > 0 from audit_events \
         where json_extract(detail, '$.tool') = 'export_tickets'",
    );
    assert_eq!(recorded.trim(), "1", "the call's event, with its result");
}
