//! JSON-RPC 2.0 messages as an MCP client or server sends them, read with bounds
//! before anything else looks at them: the size of the text, how deeply it nests,
//! how long a batch is. A message that is not well-formed JSON-RPC is refused with
//! the error a JSON-RPC peer expects (`-32700` parse error, `-32600` invalid
//! request), and is never passed on.

use serde_json::{Map, Value};

/// How much a message may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of the whole text.
    pub max_bytes: usize,
    /// Arrays and objects inside one another.
    pub max_depth: usize,
    /// Messages in one batch.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 4 * 1024 * 1024,
            max_depth: 64,
            max_batch: 100,
        }
    }
}

/// One JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A call that expects an answer with the same `id`.
    Request {
        id: Value,
        method: String,
        params: Option<Value>,
    },
    /// A call without an `id`: no answer.
    Notification {
        method: String,
        params: Option<Value>,
    },
    /// An answer: `result` or `error`, never both.
    Response { id: Value, outcome: Outcome },
}

/// What a response carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Result(Value),
    Error(Value),
}

/// A text read: one message, or a batch of them.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    One(Message),
    Batch(Vec<Message>),
}

/// Why a text is not a JSON-RPC message Keyway will pass on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("the message is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the message nests deeper than {0} levels")]
    TooDeep(usize),
    #[error("the batch holds more than {0} messages")]
    BatchTooLong(usize),
    #[error("the message is not JSON")]
    NotJson,
    #[error("not a JSON-RPC 2.0 message: {0}")]
    Invalid(&'static str),
}

impl ReadError {
    /// The JSON-RPC error code to answer with.
    pub fn code(&self) -> i64 {
        match self {
            ReadError::NotJson | ReadError::TooDeep(_) => -32700,
            _ => -32600,
        }
    }
}

/// Reads `text` as JSON-RPC within `limits`.
pub fn read(text: &[u8], limits: &Limits) -> Result<Read, ReadError> {
    if text.len() > limits.max_bytes {
        return Err(ReadError::TooLarge(limits.max_bytes));
    }
    // Depth first, on the bytes: serde_json would recurse into whatever came.
    if nesting(text) > limits.max_depth {
        return Err(ReadError::TooDeep(limits.max_depth));
    }
    let value: Value = serde_json::from_slice(text).map_err(|_| ReadError::NotJson)?;
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(ReadError::Invalid("an empty batch"));
            }
            if items.len() > limits.max_batch {
                return Err(ReadError::BatchTooLong(limits.max_batch));
            }
            items
                .into_iter()
                .map(message)
                .collect::<Result<_, _>>()
                .map(Read::Batch)
        }
        v => message(v).map(Read::One),
    }
}

/// How deeply arrays and objects nest in `text`, outside strings.
fn nesting(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// One message of a text, checked against JSON-RPC 2.0.
fn message(v: Value) -> Result<Message, ReadError> {
    let Value::Object(mut m) = v else {
        return Err(ReadError::Invalid("a message is an object"));
    };
    if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(ReadError::Invalid("`jsonrpc` must be \"2.0\""));
    }
    let id = m.remove("id");
    if let Some(id) = &id {
        if !matches!(id, Value::String(_) | Value::Number(_) | Value::Null) {
            return Err(ReadError::Invalid("`id` is a string, a number or null"));
        }
    }
    let params = m.remove("params");
    if let Some(p) = &params {
        if !matches!(p, Value::Object(_) | Value::Array(_)) {
            return Err(ReadError::Invalid("`params` is an object or an array"));
        }
    }
    match (m.remove("method"), m.remove("result"), m.remove("error")) {
        (Some(Value::String(method)), None, None) => Ok(match id {
            Some(id) => Message::Request { id, method, params },
            None => Message::Notification { method, params },
        }),
        (Some(_), None, None) => Err(ReadError::Invalid("`method` is a string")),
        (None, result, error) => {
            if params.is_some() {
                return Err(ReadError::Invalid("a response has no `params`"));
            }
            let id = id.ok_or(ReadError::Invalid("a response has an `id`"))?;
            let outcome = match (result, error) {
                (Some(r), None) => Outcome::Result(r),
                (None, Some(e @ Value::Object(_))) => Outcome::Error(e),
                (None, Some(_)) => return Err(ReadError::Invalid("`error` is an object")),
                _ => {
                    return Err(ReadError::Invalid(
                        "a response has `result` or `error`, not both",
                    ))
                }
            };
            Ok(Message::Response { id, outcome })
        }
        _ => Err(ReadError::Invalid(
            "a message is a call or a response, not both",
        )),
    }
}

// === impl Message ===

impl Message {
    /// The message as JSON, as it is passed on: what was read, rebuilt, so that a
    /// peer reads exactly what Keyway judged (no duplicate key for it to read
    /// otherwise, no member Keyway did not look at).
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("jsonrpc".into(), "2.0".into());
        match self {
            Message::Request { id, method, params } => {
                m.insert("id".into(), id.clone());
                m.insert("method".into(), method.as_str().into());
                if let Some(p) = params {
                    m.insert("params".into(), p.clone());
                }
            }
            Message::Notification { method, params } => {
                m.insert("method".into(), method.as_str().into());
                if let Some(p) = params {
                    m.insert("params".into(), p.clone());
                }
            }
            Message::Response { id, outcome } => {
                m.insert("id".into(), id.clone());
                match outcome {
                    Outcome::Result(r) => m.insert("result".into(), r.clone()),
                    Outcome::Error(e) => m.insert("error".into(), e.clone()),
                };
            }
        }
        Value::Object(m)
    }

    /// The method of a request or notification.
    pub fn method(&self) -> Option<&str> {
        match self {
            Message::Request { method, .. } | Message::Notification { method, .. } => Some(method),
            Message::Response { .. } => None,
        }
    }
}

/// A JSON-RPC error response to `id` (null when the request's id is unknown).
pub fn error_response(id: &Value, code: i64, message: &str) -> Value {
    let mut error = Map::new();
    error.insert("code".into(), code.into());
    error.insert("message".into(), message.into());
    serde_json::json!({ "jsonrpc": "2.0", "id": id, "error": error })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn one(text: &str) -> Result<Message, ReadError> {
        match read(text.as_bytes(), &Limits::default())? {
            Read::One(m) => Ok(m),
            Read::Batch(_) => panic!("a batch"),
        }
    }

    #[test]
    fn calls_notifications_and_answers_are_told_apart() {
        let call =
            one(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_ticket"}}"#);
        assert_eq!(
            call.unwrap(),
            Message::Request {
                id: json!(7),
                method: "tools/call".into(),
                params: Some(json!({"name": "get_ticket"}))
            }
        );
        let note = one(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert!(matches!(note, Message::Notification { .. }));
        let answer = one(r#"{"jsonrpc":"2.0","id":"a","result":{"tools":[]}}"#).unwrap();
        assert!(matches!(
            answer,
            Message::Response {
                outcome: Outcome::Result(_),
                ..
            }
        ));
        let failed =
            one(r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no"}}"#).unwrap();
        assert!(matches!(
            failed,
            Message::Response {
                outcome: Outcome::Error(_),
                ..
            }
        ));
    }

    #[test]
    fn malformed_messages_are_refused_with_their_code() {
        for (text, code) in [
            ("not json", -32700),
            (r#"{"id":1,"method":"x"}"#, -32600),
            (r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#, -32600),
            (r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#, -32600),
            (r#"{"jsonrpc":"2.0","id":1,"method":5}"#, -32600),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"x","params":"s"}"#,
                -32600,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"x","result":1}"#,
                -32600,
            ),
            (r#"{"jsonrpc":"2.0","id":1,"result":1,"error":{}}"#, -32600),
            (r#"{"jsonrpc":"2.0","result":1}"#, -32600),
            ("[]", -32600),
            ("3", -32600),
        ] {
            let e = read(text.as_bytes(), &Limits::default()).unwrap_err();
            assert_eq!(e.code(), code, "{text}: {e}");
        }
    }

    #[test]
    fn bounds_hold() {
        let limits = Limits {
            max_bytes: 1000,
            max_depth: 8,
            max_batch: 3,
        };
        let deep = format!("{}{}", "[".repeat(9), "]".repeat(9));
        assert_eq!(read(deep.as_bytes(), &limits), Err(ReadError::TooDeep(8)));
        // Brackets inside strings do not count.
        let quoted = r#"{"jsonrpc":"2.0","id":1,"method":"[[[[[[[[[[[[\"{{{{{{{{{{"}"#;
        assert!(read(quoted.as_bytes(), &limits).is_ok());
        let call = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        let batch = format!("[{call},{call},{call},{call}]");
        assert_eq!(
            read(batch.as_bytes(), &limits),
            Err(ReadError::BatchTooLong(3))
        );
        let big = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"{}"}}"#,
            "x".repeat(1000)
        );
        assert_eq!(
            read(big.as_bytes(), &limits),
            Err(ReadError::TooLarge(1000))
        );
    }

    proptest! {
        /// Any bytes: read or refused, never a panic, and never deeper than allowed.
        #[test]
        fn any_text_is_read_or_refused(text in proptest::collection::vec(any::<u8>(), 0..512)) {
            let limits = Limits { max_bytes: 400, max_depth: 6, max_batch: 4 };
            if let Ok(read) = read(&text, &limits) {
                prop_assert!(text.len() <= 400);
                prop_assert!(nesting(&text) <= 6);
                if let Read::Batch(b) = read {
                    prop_assert!(!b.is_empty() && b.len() <= 4);
                }
            }
        }

        /// A request written by a peer reads back as the same request.
        #[test]
        fn requests_read_back(id in any::<i64>(), method in "[a-z/_]{1,20}", arg in "[ -~]{0,40}") {
            let text = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {"arg": arg}}).to_string();
            let got = read(text.as_bytes(), &Limits::default()).unwrap();
            let Read::One(msg) = &got else { panic!("one message") };
            // What is passed on reads back as what was judged.
            let again = read(msg.to_value().to_string().as_bytes(), &Limits::default()).unwrap();
            prop_assert_eq!(&again, &got);
            prop_assert_eq!(got, Read::One(Message::Request {
                id: json!(id),
                method: method.clone(),
                params: Some(json!({"arg": arg})),
            }));
        }
    }
}
