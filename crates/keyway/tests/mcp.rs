//! The MCP gateway with MCP stacks no one here wrote: the Python SDK's FastMCP server
//! (`tests/mcp/tickets.py`, over Streamable HTTP or stdio behind an agent) behind
//! Keyway, reached by the Python SDK's client (`tests/mcp/client.py`) and the
//! TypeScript SDK's (`tests/mcp/client.mjs`) with a Keyway token whose grant names
//! tools. What the
//! agent sees (the granted tools only; a call to another is a JSON-RPC error), what
//! reached the server (the injected credential, never the Keyway token, never the
//! refused call), what the audit log and the metrics say; malformed messages, a
//! batch and headers that disagree with the body are refused before the server; a
//! tokenless request learns where the metadata names Keyway's token endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

const TICKETS_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/mcp/tickets.py");
const CLIENT_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/mcp/client.py");
const CLIENT_MJS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/mcp/client.mjs");
/// The credential Keyway injects for the server; a canary for leaks.
const SERVER_SECRET: &str = "tickets-server-credential-canary-52";

/// The tickets server with `args`, its calls logged to `<dir>/tickets.log`: the
/// server and its port.
fn tickets(dir: &Path, args: &[&str]) -> (KillOnDrop, u16) {
    let mut child = Command::new("python3")
        .arg(TICKETS_PY)
        .args(args)
        .env("TICKETS_SECRET", SERVER_SECRET)
        .env("TICKETS_LOG", dir.join("tickets.log"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map(KillOnDrop)
        .expect("python3 with mcp (scripts/test installs tests/requirements.txt)");
    let mut line = String::new();
    BufReader::new(child.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("tickets.py said {line:?}"))
        .parse()
        .unwrap();
    (child, port)
}

/// A gateway in `dir` with `tickets-mcp` on its own port in front of the server on
/// `upstream`, the server's credential set: the gateway, its admin and service ports.
fn gateway(dir: &Path, upstream: u16, extra: &str) -> (KillOnDrop, u16, u16) {
    let (admin, svc, token) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.join("keyway.toml"),
        format!(
            "data_dir = \"data\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             token_listen = \"127.0.0.1:{token}\"\n\
             [services.tickets-mcp]\nprotocol = \"mcp\"\nlisten = \"127.0.0.1:{svc}\"\n\
             upstream = \"http://127.0.0.1:{upstream}/mcp\"\nmax_ttl = \"1h\"\n\
             upstream_auth = {{ header = \"Authorization\", secret = \"tickets-mcp-token\", prefix = \"Bearer \" }}\n{extra}"
        ),
    )
    .unwrap();
    let gw = start_gateway(dir, admin);
    ok_stdout(keyway(
        dir,
        &[
            "secret",
            "set",
            "tickets-mcp-token",
            "--config",
            "keyway.toml",
        ],
        Some(SERVER_SECRET),
    ));
    (gw, admin, svc)
}

/// What the SDK's client saw through the gateway, as JSON.
fn agent(url: &str, token: &str) -> serde_json::Value {
    let out = Command::new("python3")
        .args([CLIENT_PY, url, token])
        .output()
        .expect("python3 with mcp");
    assert!(
        out.status.success(),
        "client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// curl's status, headers and body for a POST of `body` to the MCP endpoint.
fn post(port: u16, token: Option<&str>, headers: &[&str], body: &str) -> (u16, String, String) {
    let mut c = Command::new("curl");
    c.args([
        "-s",
        "-D",
        "-",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
    ]);
    c.args(["-H", "Content-Type: application/json"]);
    c.args(["-H", "Accept: application/json, text/event-stream"]);
    c.args(["-H", "MCP-Protocol-Version: 2025-11-25"]);
    if let Some(t) = token {
        c.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    for h in headers {
        c.args(["-H", h]);
    }
    let out = c
        .args(["--data-binary", body])
        .arg(format!("http://127.0.0.1:{port}/mcp"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, status) = text.rsplit_once('\n').unwrap();
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    (
        status.trim().parse().unwrap(),
        head.to_owned(),
        body.to_owned(),
    )
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("tickets.log")).unwrap_or_default()
}

#[test]
fn an_agent_sees_and_calls_only_its_granted_tools() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_server, upstream) = tickets(dir, &[]);
    let (_gw, admin, svc) = gateway(dir, upstream, "");
    let url = format!("http://127.0.0.1:{svc}/mcp");
    let narrow = ok_stdout(issue_as(
        dir,
        "support-bot",
        "tickets-mcp",
        None,
        &["--tools", "search_*,get_ticket", "--ttl", "15m"],
    ));

    let seen = agent(&url, &narrow);
    assert_eq!(seen["server"], "tickets");
    assert_eq!(
        seen["tools"],
        serde_json::json!(["get_ticket", "search_tickets"])
    );
    assert_eq!(
        seen["search"]["ok"],
        serde_json::json!(["printer on fire", "printer jam"])
    );
    assert_eq!(
        seen["get"]["ok"],
        serde_json::json!(["ticket 7: printer on fire"])
    );
    let refused = seen["delete"]["error"].as_str().unwrap();
    assert!(refused.contains("`delete_ticket` is not granted"), "{seen}");
    // Tools named only: resources and prompts are denied, and listed as none.
    assert_eq!(seen["resources"], serde_json::json!([]));
    assert!(
        seen["read"]["error"]
            .as_str()
            .unwrap()
            .contains("not granted"),
        "{seen}"
    );
    assert_eq!(seen["prompts"], serde_json::json!([]));

    // The server ran the granted calls only, each with the injected credential
    // (it refuses any other), and never saw the Keyway token.
    let log = log_of(dir);
    assert!(log.contains("search_tickets printer"), "{log}");
    assert!(log.contains("get_ticket 7"), "{log}");
    assert!(
        !log.contains("delete_ticket"),
        "a refused call reached the server: {log}"
    );
    assert!(!log.contains("REFUSED"), "{log}");

    // Every call is in the audit log: the tool, the arguments' digest and size (not
    // their values), the result's size; the refusal with its reason.
    let rows = store_query(
        dir,
        "select decision, coalesce(reason, ''), json_extract(detail, '$.tool'), \
         json_extract(detail, '$.arguments_bytes'), coalesce(json_extract(detail, '$.result_bytes') > 0, ''), \
         length(json_extract(detail, '$.arguments_sha256')) \
         from audit_events where kind = 'request' and json_extract(detail, '$.tool') is not null \
         order by seq",
    );
    assert_eq!(
        rows.trim(),
        "allow||search_tickets|19|1|64\nallow||get_ticket|8|1|64\ndeny|tool_not_granted|delete_ticket|8||64",
        "{rows}"
    );
    let detail = store_query(dir, "select group_concat(detail) from audit_events");
    assert!(
        !detail.contains("printer\""),
        "argument values are not audited: {detail}"
    );
    let listed = store_query(
        dir,
        "select json_extract(detail, '$.hidden') from audit_events \
         where json_extract(detail, '$.mcp_method') = 'tools/list'",
    );
    assert_eq!(listed.trim(), "1", "delete_ticket was cut from the list");

    let m = metrics(dir, admin);
    for line in [
        "keyway_mcp_calls_total{service=\"tickets-mcp\",tool=\"search_tickets\",decision=\"allow\"} 1",
        "keyway_mcp_calls_total{service=\"tickets-mcp\",tool=\"(refused)\",decision=\"deny\"} 1",
    ] {
        assert!(m.contains(line), "{line} not in\n{m}");
    }

    // A token naming no tool narrows nothing: the whole server, as for any service.
    let whole = issue(dir, "admin-bot", "tickets-mcp");
    let seen = agent(&url, &whole);
    assert_eq!(
        seen["tools"],
        serde_json::json!(["delete_ticket", "get_ticket", "search_tickets"])
    );
    assert_eq!(seen["delete"]["ok"], serde_json::json!(["deleted 7"]));
    assert_eq!(seen["read"]["ok"], "printer on fire");
    assert_eq!(seen["prompts"], serde_json::json!(["triage"]));

    // The server's credential is sealed in the store, in no log and no event; no
    // token is written anywhere either.
    for secret in [SERVER_SECRET, &narrow[5..], &whole[5..]] {
        let leaked = files_containing(dir, secret);
        assert!(leaked.is_empty(), "a secret is in {leaked:?}");
    }
}

#[test]
fn malformed_messages_never_reach_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_server, upstream) = tickets(dir, &["--stateless", "--json"]);
    let (_gw, _admin, svc) = gateway(dir, upstream, "");
    let token = ok_stdout(issue_as(
        dir,
        "support-bot",
        "tickets-mcp",
        None,
        &["--tools", "get_ticket"],
    ));
    let call = |name: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{{"name":"{name}","arguments":{{"id":3}}}}}}"#
        )
    };

    // A call to a tool no list through the gateway has shown: nothing is pinned yet.
    let (status, _, body) = post(svc, Some(&token), &[], &call("get_ticket"));
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("has not been listed through Keyway yet"),
        "{body}"
    );
    let list = r#"{"jsonrpc":"2.0","id":4,"method":"tools/list"}"#;
    let (status, _, body) = post(svc, Some(&token), &["Mcp-Method: tools/list"], list);
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<_> = listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["get_ticket"], "{body}");

    // A stateless call (2026-07-28's headers), granted: the server's answer.
    let (status, _, body) = post(
        svc,
        Some(&token),
        &["Mcp-Method: tools/call", "Mcp-Name: get_ticket"],
        &call("get_ticket"),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ticket 3: printer on fire"), "{body}");

    for (what, headers, body, code, status) in [
        ("not JSON", vec![], "{\"jsonrpc\":".to_owned(), -32700, 400),
        (
            "a batch",
            vec![],
            format!("[{}]", call("get_ticket")),
            -32600,
            400,
        ),
        (
            "no jsonrpc member",
            vec![],
            r#"{"id":1,"method":"tools/list"}"#.to_owned(),
            -32600,
            400,
        ),
        (
            "Mcp-Name names another tool",
            vec!["Mcp-Name: get_ticket"],
            call("delete_ticket"),
            -32600,
            400,
        ),
        (
            "Mcp-Method names another method",
            vec!["Mcp-Method: tools/list"],
            call("get_ticket"),
            -32600,
            400,
        ),
        (
            "a tool not granted",
            vec![],
            call("delete_ticket"),
            -32602,
            200,
        ),
        (
            "nesting past the bound",
            vec![],
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"get_ticket","arguments":{}1{}}}}}"#,
                "[".repeat(100),
                "]".repeat(100)
            ),
            -32700,
            400,
        ),
    ] {
        let (got, _, answer) = post(svc, Some(&token), &headers, &body);
        assert_eq!(got, status, "{what}: {answer}");
        let v: serde_json::Value =
            serde_json::from_str(&answer).unwrap_or_else(|_| panic!("{what}: {answer}"));
        assert_eq!(v["error"]["code"], code, "{what}: {answer}");
    }
    let log = log_of(dir);
    assert_eq!(log.trim(), "get_ticket 3", "only the good call ran: {log}");
    let reasons = store_query(
        dir,
        "select reason, count(*) from audit_events where decision = 'deny' group by reason order by reason",
    );
    assert_eq!(
        reasons.trim(),
        "bad_mcp_message|6\ntool_not_granted|1\ntool_not_listed|1",
        "{reasons}"
    );

    // No token: 401, and where the metadata is; the metadata names the token endpoint.
    let (status, head, _) = post(svc, None, &[], &call("get_ticket"));
    assert_eq!(status, 401);
    let expected = format!(
        "resource_metadata=\"http://127.0.0.1:{svc}/.well-known/oauth-protected-resource/mcp\""
    );
    assert!(head.contains(&expected), "{head}");
    let out = Command::new("curl")
        .args([
            "-s",
            &format!("http://127.0.0.1:{svc}/.well-known/oauth-protected-resource/mcp"),
        ])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["resource"], format!("http://127.0.0.1:{svc}/mcp"));
    let config = std::fs::read_to_string(dir.join("keyway.toml")).unwrap();
    let token_port = config
        .lines()
        .find_map(|l| l.strip_prefix("token_listen = \"127.0.0.1:"))
        .unwrap()
        .trim_end_matches('"');
    assert_eq!(
        doc["authorization_servers"],
        serde_json::json!([format!("http://127.0.0.1:{token_port}")])
    );
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
    let (u, t) = (url.clone(), token.clone());
    let seen = tokio::task::spawn_blocking(move || agent(&u, &t))
        .await
        .unwrap();
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
        let (u, t) = (url.clone(), token.clone());
        let seen = tokio::task::spawn_blocking(move || agent(&u, &t))
            .await
            .unwrap();
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
    ok_stdout(approve());
    assert!(!approve().status.success(), "nothing left to approve");
    let (u, t) = (url.clone(), token.clone());
    let seen = tokio::task::spawn_blocking(move || agent(&u, &t))
        .await
        .unwrap();
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
fn a_session_is_bound_to_its_token_and_its_stream_ends_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_server, upstream) = tickets(dir, &[]);
    let (_gw, _admin, svc) = gateway(dir, upstream, "");
    let (alice, mallory) = (
        issue(dir, "alice-bot", "tickets-mcp"),
        issue(dir, "mallory-bot", "tickets-mcp"),
    );
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}"#;
    let (status, head, body) = post(svc, Some(&alice), &[], init);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"serverInfo\""), "{body}");
    let session = head
        .lines()
        .find_map(|l| l.strip_prefix("mcp-session-id: "))
        .unwrap_or_else(|| panic!("no session id in {head}"))
        .trim()
        .to_owned();
    // The client holds the server's id bound to its token, never the bare id.
    let (theirs, mac) = session.rsplit_once('.').unwrap();
    assert_eq!(mac.len(), 32, "{session}");
    assert!(!theirs.is_empty());
    let with = |s: &str| format!("Mcp-Session-Id: {s}");
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let (status, _, body) = post(svc, Some(&alice), &[&with(&session)], initialized);
    assert_eq!(status, 202, "{body}");
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let (status, _, body) = post(svc, Some(&alice), &[&with(&session)], list);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("get_ticket"), "{body}");

    // Another token's client, or the bare id: a session the server does not know.
    for (token, id) in [(&mallory, session.as_str()), (&alice, theirs)] {
        let (status, _, body) = post(svc, Some(token), &[&with(id)], list);
        assert_eq!(status, 404, "{body}");
        assert!(!body.contains("get_ticket"), "{body}");
    }
    let refused = store_query(
        dir,
        "select count(*) from audit_events where reason = 'mcp_session_not_granted'",
    );
    assert_eq!(refused.trim(), "2");

    // The server's stream of notifications (GET) ends when the token is revoked.
    let mut stream = Command::new("curl")
        .args(["-sN", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["-H", "Accept: text/event-stream"])
        .args(["-H", "MCP-Protocol-Version: 2025-11-25"])
        .arg("-H")
        .arg(format!("Authorization: Bearer {alice}"))
        .arg("-H")
        .arg(with(&session))
        .arg(format!("http://127.0.0.1:{svc}/mcp"))
        .stdout(Stdio::piped())
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(stream.0.try_wait().unwrap().is_none(), "the stream is open");
    ok_stdout(keyway(
        dir,
        &["token", "revoke", &alice[5..21], "--config", "keyway.toml"],
        None,
    ));
    let status = wait_exit(
        &mut stream.0,
        std::time::Duration::from_secs(10),
        "the stream outlived its token",
    );
    let mut code = String::new();
    std::io::Read::read_to_string(stream.0.stdout.as_mut().unwrap(), &mut code).unwrap();
    assert_eq!(code, "200", "the stream was open, then cut");
    assert!(
        !status.success(),
        "curl saw the stream cut, not ended cleanly"
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
    let cfg = ["--config", "keyway.toml"];
    let enrollment = ok_stdout(keyway(
        dir,
        &[&["agent", "enroll", "inside"][..], &cfg].concat(),
        None,
    ));
    std::fs::write(dir.join("enroll.tok"), &enrollment).unwrap();
    // The agent runs the stdio server inside the private network; the gateway only
    // ever reaches it through the agent's tunnel.
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let _agent = Command::new(BIN)
        .args(["agent", "run", "--gateway", &format!("127.0.0.1:{tunnel}")])
        .args(["--enroll-token-file", "enroll.tok", "--data-dir", "agent"])
        .arg("--mcp-stdio")
        .arg(format!("127.0.0.1:{bridge}=python3 {TICKETS_PY} --stdio"))
        .env("TICKETS_LOG", dir.join("tickets.log"))
        .current_dir(dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let list = ok_stdout(keyway(
            dir,
            &[&["agent", "list", "--json"][..], &cfg].concat(),
            None,
        ));
        if list.contains("\"connected\"") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never connected: {list}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let token = ok_stdout(issue_as(
        dir,
        "support-bot",
        "tickets-mcp",
        None,
        &["--tools", "search_*,get_ticket"],
    ));
    let seen = agent(&format!("http://127.0.0.1:{svc}/mcp"), &token);
    assert_eq!(
        seen["tools"],
        serde_json::json!(["get_ticket", "search_tickets"])
    );
    assert_eq!(
        seen["get"]["ok"],
        serde_json::json!(["ticket 7: printer on fire"])
    );
    assert!(
        seen["delete"]["error"]
            .as_str()
            .unwrap()
            .contains("not granted"),
        "{seen}"
    );
    let log = log_of(dir);
    assert!(
        log.contains("get_ticket 7") && !log.contains("delete_ticket"),
        "{log}"
    );
    let leaked = files_containing(dir, &token[5..]);
    assert!(leaked.is_empty(), "the token is in {leaked:?}");
}

#[test]
fn the_typescript_sdks_client_sees_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_server, upstream) = tickets(dir, &[]);
    let (_gw, _admin, svc) = gateway(dir, upstream, "");
    let token = ok_stdout(issue_as(
        dir,
        "support-bot",
        "tickets-mcp",
        None,
        &["--tools", "search_*,get_ticket"],
    ));
    let out = Command::new("node")
        .args([CLIENT_MJS, &format!("http://127.0.0.1:{svc}/mcp"), &token])
        .output()
        .expect("node (scripts/test installs tests/mcp's packages)");
    assert!(
        out.status.success(),
        "client.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        seen["tools"],
        serde_json::json!(["get_ticket", "search_tickets"])
    );
    assert_eq!(
        seen["get"]["ok"],
        serde_json::json!(["ticket 7: printer on fire"])
    );
    let refused = seen["delete"]["error"].as_str().unwrap();
    assert!(refused.contains("`delete_ticket` is not granted"), "{seen}");
    // The session the SDK held was bound to its token.
    let session = seen["session"].as_str().unwrap();
    assert_eq!(session.rsplit_once('.').unwrap().1.len(), 32, "{session}");
    let log = log_of(dir);
    assert!(
        log.contains("get_ticket 7") && !log.contains("delete_ticket"),
        "{log}"
    );
}
