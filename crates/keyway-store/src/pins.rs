//! MCP tools' pinned definitions: what a tool of an MCP service looked like the
//! first time the gateway saw it (or when a person last approved it), and what it
//! looks like now. A tool whose definition changed is withheld until approved.

use keyway_core::UnixMillis;

/// One tool of one MCP service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolPin {
    pub service: String,
    pub tool: String,
    /// SHA-256 (hex) of the approved definition: the first seen, or one approved since.
    pub pinned: String,
    /// SHA-256 (hex) of the definition last seen; differs from `pinned` while a
    /// change waits for approval.
    pub seen: String,
    /// The definition last seen (its name, description and input schema, as JSON),
    /// for a person to read before approving it.
    pub definition: String,
    pub first_seen: UnixMillis,
    /// When the definition last changed away from the pinned one.
    pub changed_at: Option<UnixMillis>,
}

/// Both backends read the pins with this query, and each row with [`ToolPin::from_row`].
pub(crate) const SELECT: &str =
    "SELECT service, tool, pinned, seen, definition, first_seen, changed_at
     FROM tool_pins ORDER BY service, tool";

// === impl ToolPin ===

impl ToolPin {
    /// `pinned`, or `changed` while a changed definition waits for approval.
    pub fn state(&self) -> &'static str {
        if self.seen == self.pinned {
            "pinned"
        } else {
            "changed"
        }
    }

    /// A row of [`SELECT`], from either backend.
    pub(crate) fn from_row<'r, R>(r: &'r R) -> Self
    where
        R: sqlx::Row,
        usize: sqlx::ColumnIndex<R>,
        String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        Self {
            service: r.get(0),
            tool: r.get(1),
            pinned: r.get(2),
            seen: r.get(3),
            definition: r.get(4),
            first_seen: r.get(5),
            changed_at: r.get(6),
        }
    }

    /// The key other replicas are told of a change by: `SERVICE/TOOL`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.service, self.tool)
    }
}
