//! One audit event, as the gateway records it and the stores keep it.

use keyway_core::UnixMillis;

/// One audit event. Never holds a secret: callers put public ids and redacted text in.
#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct AuditEvent {
    /// When, in Unix milliseconds.
    #[schema(value_type = i64)]
    pub at: UnixMillis,
    /// `request`, `token.issued`, `token.revoked`, `secret.set`, `admin.denied`, …
    pub kind: String,
    /// `allow` or `deny`, for decisions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// The source address of the connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Anything else (method, path, status, …), as a JSON object.
    #[serde(default)]
    pub detail: serde_json::Value,
}

// === impl AuditEvent ===

impl AuditEvent {
    /// A fresh event of `kind` at `at`.
    pub fn new(kind: keyway_core::EventKind, at: UnixMillis) -> Self {
        Self {
            at,
            kind: kind.as_str().to_owned(),
            ..Self::default()
        }
    }

    /// About how many bytes the event holds in memory: itself, its strings and its
    /// detail. What bounds the audit queue by size, not only by count.
    pub fn approx_bytes(&self) -> usize {
        fn value(v: &serde_json::Value) -> usize {
            use serde_json::Value;
            match v {
                Value::Null | Value::Bool(_) | Value::Number(_) => 0,
                Value::String(s) => s.len(),
                Value::Array(a) => a.iter().map(|v| 32 + value(v)).sum(),
                // A map entry: its key, its value, and its share of the tree's node.
                Value::Object(m) => m.iter().map(|(k, v)| k.len() + 64 + value(v)).sum(),
            }
        }
        let strings = [
            &self.decision,
            &self.reason,
            &self.principal,
            &self.service,
            &self.token_id,
            &self.source,
        ]
        .iter()
        .map(|s| s.as_ref().map_or(0, String::len))
        .sum::<usize>();
        std::mem::size_of::<Self>() + self.kind.len() + strings + value(&self.detail)
    }

    /// The detail as the stores keep it and the chain hashes it: compact JSON,
    /// serialised straight into one buffer. (`Value`'s `Display`, the same text, goes
    /// through `fmt::Write` a token at a time, at over three times the instructions.)
    pub fn detail_json(&self) -> String {
        // A `Value` always serialises (its keys are strings); never reached.
        serde_json::to_string(&self.detail).unwrap_or_else(|_| self.detail.to_string())
    }

    /// Records the decision.
    pub fn decide(&mut self, decision: keyway_core::Decision) {
        self.decision = Some(decision.as_str().to_owned());
    }

    /// Records a refusal and why.
    pub fn deny(&mut self, reason: keyway_core::DenyReason) {
        self.decide(keyway_core::Decision::Deny);
        self.reason = Some(reason.as_str().to_owned());
    }

    /// Records a refusal for a reason of one part's own (an agent's enrollment, the
    /// token endpoint's request), outside [`keyway_core::DenyReason`].
    pub fn deny_with(&mut self, reason: &str) {
        self.decide(keyway_core::Decision::Deny);
        self.reason = Some(reason.to_owned());
    }

    /// Records that the attempt was let through.
    pub fn allow(&mut self) {
        self.decide(keyway_core::Decision::Allow);
    }

    /// Whether the event records a refusal.
    pub fn denied(&self) -> bool {
        self.decision.as_deref() == Some(keyway_core::Decision::Deny.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events written before [`AuditEvent::detail_json`] were hashed over `Display`'s
    /// text: the two must stay the same, byte for byte.
    #[test]
    fn the_detail_is_the_same_text_as_before() {
        let details = [
            serde_json::Value::Null,
            serde_json::json!({}),
            serde_json::json!({ "method": "GET", "path": "/invoices/1", "status": 200 }),
            serde_json::json!({
                "path": "/a b/\"q\"/\\/\u{7f}/\u{1}/é/日本/🔑",
                "nested": { "list": [1, -2, 3.5, true, null, "x"], "empty": [] },
                "big": u64::MAX,
                "small": i64::MIN,
                "float": 1e-300,
            }),
        ];
        for detail in details {
            let e = AuditEvent {
                detail: detail.clone(),
                ..AuditEvent::default()
            };
            assert_eq!(e.detail_json(), detail.to_string());
        }
    }
}
