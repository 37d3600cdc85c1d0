//! One audit event, as the gateway records it and the stores keep it.

use std::borrow::Cow;

use keyway_core::UnixMillis;

/// One audit event. Never holds a secret: callers put public ids and redacted text in.
// (The doc comments of this type and its fields are the admin API's schema. In
// memory, an HTTP request's detail is split between `detail` and `http`, and a
// database statement's between `detail` and `statement`; it is written out, by
// `detail_json` for the store and the chain and by `Serialize`, as the one object
// the schema describes.)
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, utoipa::ToSchema)]
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
    // For an HTTP request or a statement in memory, what `http` or `statement` does
    // not hold.
    #[serde(default)]
    pub detail: serde_json::Value,
    /// What every HTTP request records, typed: no map to build, search and free for
    /// each request. Its fields join `detail`'s in the one object written out, in
    /// key order; a key in both is `detail`'s (written there later, it says more).
    /// An event read back from a store has it in `detail`.
    #[serde(skip)]
    #[schema(ignore)]
    pub http: Option<Box<HttpDetail>>,
    /// What every database statement records, typed, as `http` is for a request.
    /// An event has at most one of the two.
    #[serde(skip)]
    #[schema(ignore)]
    pub statement: Option<Box<StatementDetail>>,
}

/// An HTTP request's own detail ([`AuditEvent::http`]): each field a key of the
/// detail's object when set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpDetail {
    pub method: Cow<'static, str>,
    /// Decoded and redacted, at most 512 characters.
    pub path: Option<String>,
    pub status: Option<u16>,
    /// How long the upstream took to answer, in milliseconds, to a tenth.
    pub upstream_ms: Option<f64>,
    /// Why the request failed past the checks (`upstream_timeout`, …).
    pub error: Option<Cow<'static, str>>,
}

/// A database statement's own detail ([`AuditEvent::statement`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StatementDetail {
    /// The role of the grant the session runs as.
    pub role: String,
    /// The statement itself.
    pub call: StatementCall,
}

/// What a statement's frame asked.
#[derive(Debug, Clone, PartialEq)]
pub enum StatementCall {
    /// A query's text (a `Q` frame, or a `P` frame when `extended`): redacted, cut
    /// when longer than the audit keeps, with the length it had.
    Text {
        extended: bool,
        text: String,
        length: usize,
        truncated: bool,
    },
    /// A function call (`F`), by the function's OID when the frame held one.
    Function { oid: Option<u32> },
}

/// One value of a typed detail, as `serde_json::Value` would write it.
enum Field<'a> {
    Text(&'a str),
    Int(u64),
    Float(f64),
    Bool(bool),
    Null,
}

/// A typed detail's fields that are set, in key order.
type Fields<'a> = [Option<(&'static str, Field<'a>)>; 5];

/// An event's detail as the one object it is written out as.
struct Detail<'a>(&'a AuditEvent);

// === impl AuditEvent ===

impl serde::Serialize for AuditEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = s.serialize_struct("AuditEvent", 9)?;
        out.serialize_field("at", &self.at)?;
        out.serialize_field("kind", &self.kind)?;
        for (name, value) in self.named() {
            match value {
                Some(v) => out.serialize_field(name, v)?,
                None => out.skip_field(name)?,
            }
        }
        out.serialize_field("detail", &Detail(self))?;
        out.end()
    }
}

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
        let strings = self
            .named()
            .iter()
            .map(|(_, s)| s.as_ref().map_or(0, String::len))
            .sum::<usize>();
        std::mem::size_of::<Self>()
            + self.kind.len()
            + strings
            + value(&self.detail)
            + self.http.as_ref().map_or(0, |h| h.approx_bytes())
            + self.statement.as_ref().map_or(0, |s| s.approx_bytes())
    }

    /// The fields that are text or absent, by name: written out when present, and
    /// counted in the event's bytes.
    fn named(&self) -> [(&'static str, &Option<String>); 6] {
        [
            ("decision", &self.decision),
            ("reason", &self.reason),
            ("principal", &self.principal),
            ("service", &self.service),
            ("token_id", &self.token_id),
            ("source", &self.source),
        ]
    }

    /// The detail as the stores keep it and the chain hashes it: compact JSON,
    /// serialised straight into one buffer. (`Value`'s `Display`, the same text, goes
    /// through `fmt::Write` a token at a time, at over three times the instructions.)
    pub fn detail_json(&self) -> String {
        // Keys are strings and numbers finite: it always serialises. (Never reached:
        // the map's text alone, as before the typed detail.)
        serde_json::to_string(&Detail(self)).unwrap_or_else(|_| self.detail.to_string())
    }

    /// `upstream_ms` of the detail, if it has one.
    pub fn upstream_ms(&self) -> Option<f64> {
        match self.detail.get("upstream_ms") {
            Some(v) => v.as_f64(),
            None => self.http.as_ref().and_then(|h| h.upstream_ms),
        }
    }

    /// The typed detail of an HTTP request ([`AuditEvent::http`]), made empty the
    /// first time.
    pub fn http_mut(&mut self) -> &mut HttpDetail {
        self.http.get_or_insert_with(Box::default)
    }

    /// The typed part of the detail, if the event has one.
    fn typed(&self) -> Option<Fields<'_>> {
        match (&self.http, &self.statement) {
            (Some(h), _) => Some(h.fields()),
            (None, Some(s)) => Some(s.fields()),
            (None, None) => None,
        }
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

// === impl HttpDetail ===

impl HttpDetail {
    /// Records the method: a standard one's name without an allocation.
    pub fn set_method(&mut self, name: &str) {
        const STANDARD: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];
        self.method = match STANDARD.iter().find(|m| **m == name) {
            Some(m) => Cow::Borrowed(m),
            None => Cow::Owned(name.to_owned()),
        };
    }

    /// Records the status of a request that failed past the checks, and why.
    pub fn failed(&mut self, status: u16, error: &'static str) {
        self.status = Some(status);
        self.error = Some(Cow::Borrowed(error));
    }

    /// The fields that are set, in key order.
    fn fields(&self) -> Fields<'_> {
        [
            self.error.as_deref().map(|e| ("error", Field::Text(e))),
            Some(("method", Field::Text(&self.method))),
            self.path.as_deref().map(|p| ("path", Field::Text(p))),
            self.status.map(|c| ("status", Field::Int(c.into()))),
            self.upstream_ms.map(|ms| ("upstream_ms", Field::Float(ms))),
        ]
    }

    fn approx_bytes(&self) -> usize {
        let text = |s: Option<&str>| s.map_or(0, str::len);
        std::mem::size_of::<Self>()
            + self.method.len()
            + text(self.path.as_deref())
            + text(self.error.as_deref())
    }
}

// === impl StatementDetail ===

impl StatementDetail {
    /// The fields, in key order.
    fn fields(&self) -> Fields<'_> {
        let role = Some(("role", Field::Text(&self.role)));
        match &self.call {
            StatementCall::Text {
                extended,
                text,
                length,
                truncated,
            } => [
                Some(("length", Field::Int(*length as u64))),
                Some((
                    "protocol",
                    Field::Text(if *extended { "extended" } else { "simple" }),
                )),
                role,
                Some(("statement", Field::Text(text))),
                Some(("truncated", Field::Bool(*truncated))),
            ],
            StatementCall::Function { oid } => [
                Some((
                    "function_oid",
                    oid.map_or(Field::Null, |o| Field::Int(o.into())),
                )),
                Some(("protocol", Field::Text("function_call"))),
                role,
                None,
                None,
            ],
        }
    }

    fn approx_bytes(&self) -> usize {
        let text = match &self.call {
            StatementCall::Text { text, .. } => text.len(),
            StatementCall::Function { .. } => 0,
        };
        std::mem::size_of::<Self>() + self.role.len() + text
    }
}

// === impl Field ===

impl serde::Serialize for Field<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Field::Text(t) => s.serialize_str(t),
            Field::Int(n) => s.serialize_u64(n),
            Field::Bool(b) => s.serialize_bool(b),
            Field::Null => s.serialize_unit(),
            // `Value::from(f64)` is null for a number JSON cannot write.
            Field::Float(f) if f.is_finite() => s.serialize_f64(f),
            Field::Float(_) => s.serialize_unit(),
        }
    }
}

// === impl Detail ===

impl serde::Serialize for Detail<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let e = self.0;
        let Some(typed) = e.typed() else {
            return e.detail.serialize(s);
        };
        let mut more = e.detail.as_object().into_iter().flatten().peekable();
        let mut out = s.serialize_map(None)?;
        for (key, value) in typed.into_iter().flatten() {
            while let Some((k, v)) = more.next_if(|(k, _)| k.as_str() < key) {
                out.serialize_entry(k, v)?;
            }
            if more.peek().is_some_and(|(k, _)| k.as_str() == key) {
                continue;
            }
            out.serialize_entry(key, &value)?;
        }
        for (k, v) in more {
            out.serialize_entry(k, v)?;
        }
        out.end()
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

    fn request(http: HttpDetail, detail: serde_json::Value) -> AuditEvent {
        AuditEvent {
            kind: "request".into(),
            detail,
            http: Some(Box::new(http)),
            ..AuditEvent::default()
        }
    }

    /// An HTTP request's typed detail is written out as the map it replaced was, byte
    /// for byte: the chain hashes this text and readers parse it.
    #[test]
    fn a_typed_detail_is_the_text_the_map_was() {
        let cases = [
            (
                HttpDetail {
                    method: "GET".into(),
                    path: Some("/invoices/1".into()),
                    status: Some(200),
                    upstream_ms: Some(0.4),
                    error: None,
                },
                serde_json::json!({ "method": "GET", "path": "/invoices/1", "status": 200, "upstream_ms": 0.4 }),
            ),
            (
                HttpDetail {
                    method: "PROPFIND".into(),
                    path: Some("/a b/\"q\"/\\/\u{1}/é/🔑/kwat_abc***".into()),
                    status: Some(504),
                    upstream_ms: Some(30000.0),
                    error: Some("upstream_timeout".into()),
                },
                serde_json::json!({
                    "method": "PROPFIND",
                    "path": "/a b/\"q\"/\\/\u{1}/é/🔑/kwat_abc***",
                    "status": 504,
                    "upstream_ms": 30000.0,
                    "error": "upstream_timeout",
                }),
            ),
            // Refused before the path was read: a method and a status only.
            (
                HttpDetail {
                    method: "TRACE".into(),
                    status: Some(405),
                    ..HttpDetail::default()
                },
                serde_json::json!({ "method": "TRACE", "status": 405 }),
            ),
            // A number JSON cannot write is null, as `Value::from(f64)` makes it.
            (
                HttpDetail {
                    method: "GET".into(),
                    upstream_ms: Some(f64::NAN),
                    ..HttpDetail::default()
                },
                serde_json::json!({ "method": "GET", "upstream_ms": null }),
            ),
        ];
        for (http, map) in cases {
            let typed = request(http, serde_json::json!({}));
            assert_eq!(typed.detail_json(), map.to_string());
        }
    }

    /// The map's keys go in among the typed ones in order, and a key in both is the
    /// map's (an MCP step that answered 502 after the upstream's 200).
    #[test]
    fn the_map_joins_the_typed_detail_and_wins_a_shared_key() {
        let http = HttpDetail {
            method: "POST".into(),
            path: Some("/mcp".into()),
            status: Some(200),
            upstream_ms: Some(1.5),
            error: None,
        };
        let map = serde_json::json!({
            "arguments_bytes": 12,
            "error": "upstream_answer_refused",
            "forwarded_for": "unknown",
            "mcp_method": "tools/call",
            "status": 502,
            "tool": "search",
            "zz": [1, {"b": null}],
        });
        let e = request(http, map);
        let want = serde_json::json!({
            "arguments_bytes": 12,
            "error": "upstream_answer_refused",
            "forwarded_for": "unknown",
            "mcp_method": "tools/call",
            "method": "POST",
            "path": "/mcp",
            "status": 502,
            "tool": "search",
            "upstream_ms": 1.5,
            "zz": [1, {"b": null}],
        });
        assert_eq!(e.detail_json(), want.to_string());
        assert_eq!(e.upstream_ms(), Some(1.5));

        // Serialised whole, the event has the one object as its detail, and read
        // back it is that object (the typed part is only ever in memory).
        let value = serde_json::to_value(&e).unwrap();
        assert_eq!(value["detail"], want);
        assert!(value.get("http").is_none(), "{value}");
        let back: AuditEvent = serde_json::from_value(value).unwrap();
        assert_eq!(back.detail, want);
        assert_eq!(back.http, None);
        assert_eq!(back.upstream_ms(), Some(1.5));
    }

    /// A statement's typed detail is written out as the map it replaced was, byte
    /// for byte, and a key the map adds later (a withheld answer) goes in its place.
    #[test]
    fn a_typed_statement_is_the_text_the_map_was() {
        let statement = |call| AuditEvent {
            kind: "db.statement".into(),
            statement: Some(Box::new(StatementDetail {
                role: "read\"only".into(),
                call,
            })),
            ..AuditEvent::default()
        };
        let cases = [
            (
                StatementCall::Text {
                    extended: false,
                    text: "SELECT 'é', '🔑' FROM t WHERE a = \"b\"\n".into(),
                    length: 38,
                    truncated: false,
                },
                serde_json::json!({
                    "role": "read\"only",
                    "protocol": "simple",
                    "statement": "SELECT 'é', '🔑' FROM t WHERE a = \"b\"\n",
                    "length": 38,
                    "truncated": false,
                }),
            ),
            (
                StatementCall::Text {
                    extended: true,
                    text: "x".repeat(8),
                    length: 1 << 40,
                    truncated: true,
                },
                serde_json::json!({
                    "role": "read\"only",
                    "protocol": "extended",
                    "statement": "x".repeat(8),
                    "length": 1u64 << 40,
                    "truncated": true,
                }),
            ),
            (
                StatementCall::Function {
                    oid: Some(u32::MAX),
                },
                serde_json::json!({ "role": "read\"only", "protocol": "function_call", "function_oid": u32::MAX }),
            ),
            (
                StatementCall::Function { oid: None },
                serde_json::json!({ "role": "read\"only", "protocol": "function_call", "function_oid": null }),
            ),
        ];
        for (call, map) in cases {
            let mut e = statement(call);
            assert_eq!(e.detail_json(), map.to_string());
            assert_eq!(serde_json::to_value(&e).unwrap()["detail"], map);
            let mut withheld = map.clone();
            withheld["withheld"] = "audit_unavailable".into();
            e.detail = serde_json::json!({ "withheld": "audit_unavailable" });
            assert_eq!(e.detail_json(), withheld.to_string());
        }
    }

    /// The audit queue is bounded by bytes: the typed detail's path, and a
    /// statement's text and role, count.
    #[test]
    fn a_typed_path_counts_toward_the_events_bytes() {
        let statement = |role: &str, text: &str| AuditEvent {
            statement: Some(Box::new(StatementDetail {
                role: role.into(),
                call: StatementCall::Text {
                    extended: false,
                    text: text.into(),
                    length: text.len(),
                    truncated: false,
                },
            })),
            ..AuditEvent::default()
        };
        let short = statement("ro", "SELECT 1").approx_bytes();
        assert!(statement("ro", &"x".repeat(500)).approx_bytes() >= short + 490);
        assert!(statement(&"r".repeat(300), "SELECT 1").approx_bytes() >= short + 298);

        let short = request(HttpDetail::default(), serde_json::json!({}));
        let long = request(
            HttpDetail {
                path: Some("x".repeat(500)),
                ..HttpDetail::default()
            },
            serde_json::json!({}),
        );
        assert!(long.approx_bytes() >= short.approx_bytes() + 500);
    }
}
