//! What the audit keeps of a statement: the text of `Q` and `P` frames (after a
//! `P`'s statement name), capped and redacted, with its whole length; a function
//! call's OID. Never a `B` frame's parameters.

use super::*;

/// Who the statements of a session belong to.
pub(super) struct StatementAudit {
    pub(super) sink: AuditSink,
    pub(super) service: String,
    pub(super) token_id: String,
    pub(super) principal: String,
    pub(super) role: String,
    /// The live listing's view of the session: its latest statement.
    pub(super) meter: std::sync::Arc<crate::sessions::Meter>,
}

impl StatementAudit {
    /// Queues the statement's event; the statement goes to the server once the
    /// returned commit resolves.
    pub(super) fn record(
        &self,
        reservation: crate::audit::Reservation,
        c: &Capture,
    ) -> crate::audit::Committed {
        let detail = if c.kind == b'F' {
            let oid = (c.kept.len() == 4)
                .then(|| u32::from_be_bytes([c.kept[0], c.kept[1], c.kept[2], c.kept[3]]));
            json!({ "role": self.role, "protocol": "function_call", "function_oid": oid })
        } else {
            let text = String::from_utf8_lossy(&c.kept);
            // Redact first, then cut: a token across the cut is still found whole.
            let text = keyway_core::token::redact(&text);
            self.meter.set_statement(&text);
            let mut cut = text.len().min(MAX_STATEMENT);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            json!({
                "role": self.role,
                "protocol": if c.kind == b'Q' { "simple" } else { "extended" },
                "statement": &text[..cut],
                "length": c.len,
                "truncated": c.len > MAX_STATEMENT,
            })
        };
        let mut ev = self.sink.event(EventKind::DbStatement);
        ev.service = Some(self.service.clone());
        ev.token_id = Some(self.token_id.clone());
        ev.principal = Some(self.principal.clone());
        ev.detail = detail;
        reservation.send(ev)
    }
}

/// What the audit keeps of a `Q`, `P` or `F` frame as it streams through: the
/// statement text (for `P`, after the statement name, whatever its length) up to a
/// cap, and its whole length; for `F`, the function's OID.
pub(super) struct Capture {
    pub(super) kind: u8,
    pub(super) skip_name: bool,
    pub(super) done: bool,
    pub(super) kept: Vec<u8>,
    pub(super) len: usize,
}

impl Capture {
    pub(super) fn new(kind: u8) -> Self {
        Self {
            kind,
            skip_name: kind == b'P',
            done: false,
            kept: Vec::new(),
            len: 0,
        }
    }

    pub(super) fn feed(&mut self, mut chunk: &[u8]) {
        if self.kind == b'F' {
            let need = 4usize.saturating_sub(self.kept.len()).min(chunk.len());
            self.kept.extend_from_slice(&chunk[..need]);
            return;
        }
        if self.done {
            return;
        }
        if self.skip_name {
            let Some(i) = chunk.iter().position(|&b| b == 0) else {
                return;
            };
            self.skip_name = false;
            chunk = &chunk[i + 1..];
        }
        let (text, end) = match chunk.iter().position(|&b| b == 0) {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        self.len += text.len();
        let room = (MAX_STATEMENT + REDACT_SLACK).saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&text[..text.len().min(room)]);
        self.done = end;
    }
}
