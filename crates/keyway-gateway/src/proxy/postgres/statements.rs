//! What the audit keeps of a statement: the text of `Q` and `P` frames (after a
//! `P`'s statement name), capped and redacted, with its whole length; a function
//! call's OID. Never a `B` frame's parameters. The capture itself, as frames stream
//! through, is `keyway_core::pgwire::Capture`.

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
    /// returned commit resolves (under `audit_holds = "answer"`, its answer does).
    pub(super) fn record(
        &self,
        reservation: crate::audit::Reservation,
        c: &Capture,
    ) -> crate::audit::Committed {
        use keyway_store::{StatementCall, StatementDetail};
        let call = if c.kind == b'F' {
            let oid = (c.kept.len() == 4)
                .then(|| u32::from_be_bytes([c.kept[0], c.kept[1], c.kept[2], c.kept[3]]));
            StatementCall::Function { oid }
        } else {
            let text = String::from_utf8_lossy(&c.kept);
            // Redact first, then cut: a token across the cut is still found whole.
            let text = keyway_core::token::redact(&text);
            self.meter.set_statement(&text);
            StatementCall::Text {
                extended: c.kind != b'Q',
                text: keyway_core::text::prefix(&text, MAX_STATEMENT).to_owned(),
                length: c.len,
                truncated: c.len > MAX_STATEMENT,
            }
        };
        let mut ev = self.sink.event(EventKind::DbStatement);
        ev.service = Some(self.service.clone());
        ev.token_id = Some(self.token_id.clone());
        ev.principal = Some(self.principal.clone());
        ev.statement = Some(Box::new(StatementDetail {
            role: self.role.clone(),
            call,
        }));
        reservation.send(ev)
    }
}
