//! An MCP grant: the tools, resources and prompts a token reaches, as patterns
//! where `*` stands for any run of characters, and the server's requests to the
//! agent (sampling, elicitation) it lets through.

use super::DenyReason;

/// What an MCP grant names: patterns of tool names, resource URIs and prompt names.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct Mcp {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<String>,
    /// The server may ask the agent's model for a completion (`sampling/createMessage`).
    /// Denied unless granted, whatever else the grant names.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sampling: bool,
    /// The server may ask the agent's user for input (`elicitation/create`). Denied
    /// unless granted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub elicitation: bool,
}

/// The kinds of thing an MCP grant names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McpKind {
    Tool,
    Resource,
    Prompt,
}

// === impl McpKind ===

impl McpKind {
    /// `tool`, `resource` or `prompt`, as messages and the audit log name it.
    pub fn as_str(self) -> &'static str {
        match self {
            McpKind::Tool => "tool",
            McpKind::Resource => "resource",
            McpKind::Prompt => "prompt",
        }
    }

    /// Why a call to one not named in the grant is refused.
    pub fn not_granted(self) -> DenyReason {
        match self {
            McpKind::Tool => DenyReason::ToolNotGranted,
            McpKind::Resource => DenyReason::ResourceNotGranted,
            McpKind::Prompt => DenyReason::PromptNotGranted,
        }
    }
}

// === impl Mcp ===

impl Mcp {
    /// Whether no tool, resource or prompt is named: the grant narrows no call to
    /// the server. (Sampling and elicitation, the server's requests to the agent, are
    /// granted apart.)
    pub fn is_open(&self) -> bool {
        self.tools.is_empty() && self.resources.is_empty() && self.prompts.is_empty()
    }

    /// Whether nothing is written for this grant: no tool, resource or prompt named,
    /// nothing of the server's granted.
    pub fn is_empty(&self) -> bool {
        self.is_open() && !self.sampling && !self.elicitation
    }

    /// Whether a request the server sends to the agent passes: sampling and
    /// elicitation only where granted, anything else (`roots/list`, `ping`) always.
    pub fn allows_server_request(&self, method: &str) -> bool {
        match method {
            "sampling/createMessage" => self.sampling,
            "elicitation/create" => self.elicitation,
            _ => true,
        }
    }

    /// What is named, for people: `tools search_*,get_ticket; prompts triage`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (granted, what) in [
            (self.sampling, "sampling"),
            (self.elicitation, "elicitation"),
        ] {
            if granted {
                parts.push(what.to_owned());
            }
        }
        for (kind, list) in [
            ("tools", &self.tools),
            ("resources", &self.resources),
            ("prompts", &self.prompts),
        ] {
            if !list.is_empty() {
                parts.push(format!("{kind} {}", list.join(",")));
            }
        }
        parts.join("; ")
    }

    /// Whether `name` (a tool or prompt name, a resource URI) is granted.
    pub fn allows(&self, kind: McpKind, name: &str) -> bool {
        if self.is_open() {
            return true;
        }
        self.patterns(kind).iter().any(|p| glob(p, name))
    }

    fn patterns(&self, kind: McpKind) -> &[String] {
        match kind {
            McpKind::Tool => &self.tools,
            McpKind::Resource => &self.resources,
            McpKind::Prompt => &self.prompts,
        }
    }

    /// Whether everything this allows, `wider` allows too. A pattern is within
    /// another when the other matches it as text: the wider one's `*` then covers
    /// whatever the narrower's `*` stands for.
    pub(super) fn within(&self, wider: &Mcp) -> bool {
        if (self.sampling && !wider.sampling) || (self.elicitation && !wider.elicitation) {
            return false;
        }
        if wider.is_open() {
            return true;
        }
        if self.is_open() {
            return false;
        }
        [McpKind::Tool, McpKind::Resource, McpKind::Prompt]
            .into_iter()
            .all(|k| {
                self.patterns(k)
                    .iter()
                    .all(|p| wider.patterns(k).iter().any(|w| glob(w, p)))
            })
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters and
/// every other character for itself. Linear in practice: the last `*` is retried,
/// never a tree of them.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Grant;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn mcp_grants() {
        let open = Grant::new("tickets", &[], &[]).unwrap();
        assert!(
            open.mcp.allows(McpKind::Tool, "delete_ticket"),
            "nothing named: all"
        );
        let g = open
            .clone()
            .with_mcp(&s(&["search_*,get_ticket"]), &[], &[])
            .unwrap();
        assert_eq!(g.mcp.tools, s(&["search_*", "get_ticket"]));
        assert!(g.mcp.allows(McpKind::Tool, "search_tickets"));
        assert!(g.mcp.allows(McpKind::Tool, "get_ticket"));
        assert!(!g.mcp.allows(McpKind::Tool, "get_tickets"));
        assert!(!g.mcp.allows(McpKind::Tool, "delete_ticket"));
        assert!(
            !g.mcp.allows(McpKind::Resource, "tickets://1"),
            "tools named: resources denied"
        );
        assert!(!g.mcp.allows(McpKind::Prompt, "triage"));
        assert_eq!(g.describe(), "tools search_*,get_ticket");
        assert!(g.within(&open) && !open.within(&g));
        let narrower = open.clone().with_mcp(&s(&["search_t*"]), &[], &[]).unwrap();
        assert!(narrower.within(&g));
        let other = open.clone().with_mcp(&s(&["delete_*"]), &[], &[]).unwrap();
        assert!(!other.within(&g));
        assert!(open.clone().with_mcp(&s(&["a b"]), &[], &[]).is_err());
        assert!(open.clone().with_mcp(&s(&[""]), &[], &[]).is_err());
        // The server's requests to the agent: denied unless granted, apart from tools.
        assert!(!open.mcp.allows_server_request("sampling/createMessage"));
        assert!(!open.mcp.allows_server_request("elicitation/create"));
        assert!(open.mcp.allows_server_request("roots/list"));
        let mut sampling = g.clone();
        sampling.mcp.sampling = true;
        assert!(sampling.mcp.allows_server_request("sampling/createMessage"));
        assert!(!sampling.within(&g) && g.within(&sampling));
        assert_eq!(sampling.describe(), "sampling; tools search_*,get_ticket");
        let json = serde_json::to_value(&g).unwrap();
        assert_eq!(json["mcp"]["tools"][0], "search_*");
        assert!(serde_json::to_value(&open).unwrap().get("mcp").is_none());
    }

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("a*c", "abbbc"));
        assert!(glob("a*c", "ac"));
        assert!(!glob("a*c", "acb"));
        assert!(glob("*x*", "yyxyy"));
        assert!(glob("tickets://*/comments", "tickets://7/comments"));
        assert!(!glob("get", "get_ticket"));
    }

    proptest::proptest! {
        /// What a pattern within another matches, the other matches too.
        #[test]
        fn within_is_sound(w in "[ab*]{0,6}", p in "[ab*]{0,6}", t in "[ab]{0,8}") {
            if glob(&w, &p) && glob(&p, &t) {
                proptest::prop_assert!(glob(&w, &t));
            }
        }
    }
}
