//! The MCP gateway with MCP stacks no one here wrote: the Python SDK's FastMCP server
//! (`tests/mcp/tickets.py`) behind Keyway, reached by the Python SDK's client
//! (`tests/mcp/client.py`) and the TypeScript SDK's (`tests/mcp/client.mjs`) with a
//! Keyway token whose grant names tools. What the agent sees (the granted tools
//! only; a call to another is a JSON-RPC error), what reached the server (the
//! injected credential, never the Keyway token, never the refused call), what the
//! audit log and the metrics say; malformed messages, a batch, headers that disagree
//! with the body, other methods and upgrades refused before the server; sessions
//! bound to their token and ended with it; a tokenless request learns where the
//! metadata names Keyway's token endpoint. `mcp_servers.rs` has what servers do:
//! tools that change, stdio servers behind an agent, the server's own requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};

use common::mcp::*;
use common::*;

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
    assert_granted_only(&seen);
    assert_eq!(
        seen["search"]["ok"],
        serde_json::json!(["printer on fire", "printer jam"])
    );
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
    // The query's value ("printer") is in no event: not as arguments, not anywhere.
    let detail = store_query(dir, "select group_concat(detail) from audit_events");
    assert!(
        !detail.contains("printer"),
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
    // This service records tool arguments themselves (redacted like statements).
    let (_gw, _admin, svc) = gateway(dir, upstream, "audit_arguments = true\n");
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
    let args = store_query(
        dir,
        "select json_extract(detail, '$.arguments') from audit_events \
         where decision = 'allow' and json_extract(detail, '$.tool') = 'get_ticket'",
    );
    assert_eq!(args.trim(), r#"{"id":3}"#, "audit_arguments = true");

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
        (
            "an id the server could read as another (1.0 as 1)",
            vec![],
            r#"{"jsonrpc":"2.0","id":1.0,"method":"tools/list"}"#.to_owned(),
            -32600,
            400,
        ),
        (
            "a call without an id (a notification runs unanswered)",
            vec![],
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"delete_ticket","arguments":{"id":3}}}"#.to_owned(),
            -32600,
            400,
        ),
        (
            "completing a prompt's arguments, not granted",
            vec![],
            r#"{"jsonrpc":"2.0","id":6,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"triage"},"argument":{"name":"ticket","value":"pr"}}}"#.to_owned(),
            -32602,
            200,
        ),
    ] {
        let (got, _, answer) = post(svc, Some(&token), &headers, &body);
        assert_eq!(got, status, "{what}: {answer}");
        let v: serde_json::Value =
            serde_json::from_str(&answer).unwrap_or_else(|_| panic!("{what}: {answer}"));
        assert_eq!(v["error"]["code"], code, "{what}: {answer}");
    }
    // Nothing passes that is not a message read: another method, a body on GET, an
    // upgrade to another protocol.
    let url = format!("http://127.0.0.1:{svc}/mcp");
    let auth = format!("Authorization: Bearer {token}");
    for (what, args, status) in [
        ("PUT", vec!["-X", "PUT", "--data-binary", "{}"], 405),
        (
            "a GET with a body",
            vec!["-X", "GET", "--data-binary", "{}"],
            400,
        ),
        (
            "an upgrade",
            vec![
                "-H",
                "Connection: Upgrade",
                "-H",
                "Upgrade: websocket",
                "-H",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "-H",
                "Sec-WebSocket-Version: 13",
            ],
            400,
        ),
    ] {
        let mut a = vec!["-H", auth.as_str()];
        a.extend(args);
        assert_eq!(curl_status(&url, &a), status, "{what}");
    }
    let log = log_of(dir);
    assert_eq!(log.trim(), "get_ticket 3", "only the good call ran: {log}");
    let reasons = store_query(
        dir,
        "select reason, count(*) from audit_events where decision = 'deny' group by reason order by reason",
    );
    assert_eq!(
        reasons.trim(),
        "bad_mcp_message|10\nmethod_not_allowed|1\nprompt_not_granted|1\ntool_not_granted|1\ntool_not_listed|1",
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
    let url = format!("http://127.0.0.1:{svc}/mcp");
    let seen = sdk_client("node", CLIENT_MJS, &[&url, &token]);
    assert_granted_only(&seen);
    // The session the SDK held was bound to its token.
    let session = seen["session"].as_str().unwrap();
    assert_eq!(session.rsplit_once('.').unwrap().1.len(), 32, "{session}");
    let log = log_of(dir);
    assert!(
        log.contains("get_ticket 7") && !log.contains("delete_ticket"),
        "{log}"
    );
}
