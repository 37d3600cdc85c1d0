//! The MCP tests' parts: the tickets server (the Python SDK's FastMCP,
//! `tests/mcp/tickets.py`), a gateway in front of it, the SDK clients, curl.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use super::*;

pub const TICKETS_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/mcp/tickets.py");
pub const CLIENT_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/mcp/client.py");
pub const CLIENT_MJS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/mcp/client.mjs");
/// The credential Keyway injects for the server; a canary for leaks.
pub const SERVER_SECRET: &str = "tickets-server-credential-canary-52";

/// The tickets server with `args`, its calls logged to `<dir>/tickets.log`: the
/// server and its port.
pub fn tickets(dir: &Path, args: &[&str]) -> (KillOnDrop, u16) {
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
pub fn gateway(dir: &Path, upstream: u16, extra: &str) -> (KillOnDrop, u16, u16) {
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

/// What the Python SDK's client saw through the gateway, as JSON.
pub fn agent(url: &str, token: &str) -> serde_json::Value {
    sdk_client("python3", CLIENT_PY, &[url, token])
}

/// The JSON an SDK client script (`client.py` with python3, `client.mjs` with node)
/// prints, after checking it ran to its end.
pub fn sdk_client(program: &str, script: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(program)
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} (scripts/test installs tests/mcp's packages): {e}"));
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// curl's status, headers and body for a POST of `body` to the MCP endpoint.
pub fn post(port: u16, token: Option<&str>, headers: &[&str], body: &str) -> (u16, String, String) {
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

pub fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("tickets.log")).unwrap_or_default()
}

/// What an agent with the grant `--tools "search_*,get_ticket"` sees: those tools
/// listed and answered, `delete_ticket` neither.
pub fn assert_granted_only(seen: &serde_json::Value) {
    assert_eq!(
        seen["tools"],
        serde_json::json!(["get_ticket", "search_tickets"]),
        "{seen}"
    );
    assert_eq!(
        seen["get"]["ok"],
        serde_json::json!(["ticket 7: printer on fire"]),
        "{seen}"
    );
    let refused = seen["delete"]["error"].as_str().unwrap_or_default();
    assert!(refused.contains("`delete_ticket` is not granted"), "{seen}");
}
