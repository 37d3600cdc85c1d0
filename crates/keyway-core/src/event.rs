//! The names the audit log uses: what kind of thing happened ([`EventKind`]) and what
//! was decided ([`Decision`]). Typed everywhere inside Keyway; written out as the
//! strings below only where an event is stored or shown.

/// What an audit event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// One HTTP request to a service.
    Request,
    /// A tunnel stream or database session opened (or refused).
    ConnectionOpen,
    /// How a tunnel stream, database session or WebSocket ended.
    ConnectionClose,
    /// A database statement.
    DbStatement,
    /// A database cancel request.
    DbCancel,
    TokenIssued,
    TokenRevoked,
    TokenRotated,
    /// A token's expiry brought forward: its policy's `max_ttl` was lowered.
    TokenShortened,
    /// A client credential traded for an access token at the token endpoint.
    TokenExchange,
    /// A person's sign-in through an identity provider (`keyway login`).
    Login,
    /// A person's ask for access (`keyway access`): given, filed for approval, or
    /// refused.
    Access,
    /// An access request filed, awaiting approval.
    AccessRequested,
    /// An approver approved an access request.
    AccessApproved,
    /// An approver rejected an access request.
    AccessRejected,
    CredentialIssued,
    CredentialNearMaxAge,
    AdminDenied,
    AdminTokenCreated,
    /// `keyway admin reset`: the admin tokens revoked and a new one written, with
    /// the gateway stopped.
    AdminReset,
    SecretSet,
    AgentEnrollmentIssued,
    AgentEnroll,
    AgentRenew,
    AgentConnect,
    AgentDisconnect,
    AgentRevoked,
    ConfigApplied,
    DetectAlert,
    PortsAudit,
    AuditPruned,
    /// A replica fell behind the shared store (it refuses requests), or caught up.
    StoreLag,
    /// A person signed in to the console, or was refused.
    ConsoleSignIn,
    ConsoleSignOut,
    /// A live session ended from the console (or the admin API).
    SessionTerminated,
    /// Audit events were exported from the console: who took which filter.
    AuditExported,
    /// An MCP tool's definition seen for the first time, and pinned.
    McpToolPinned,
    /// An MCP tool's definition differs from its pin: withheld until approved.
    McpToolChanged,
    /// A changed MCP tool's definition approved by a person: pinned anew.
    McpToolApproved,
}

/// What was decided about an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
}

// === impl EventKind ===

impl EventKind {
    pub const ALL: [Self; 39] = [
        Self::Request,
        Self::ConnectionOpen,
        Self::ConnectionClose,
        Self::DbStatement,
        Self::DbCancel,
        Self::TokenIssued,
        Self::TokenRevoked,
        Self::TokenRotated,
        Self::TokenShortened,
        Self::TokenExchange,
        Self::Login,
        Self::Access,
        Self::AccessRequested,
        Self::AccessApproved,
        Self::AccessRejected,
        Self::CredentialIssued,
        Self::CredentialNearMaxAge,
        Self::AdminDenied,
        Self::AdminTokenCreated,
        Self::AdminReset,
        Self::SecretSet,
        Self::AgentEnrollmentIssued,
        Self::AgentEnroll,
        Self::AgentRenew,
        Self::AgentConnect,
        Self::AgentDisconnect,
        Self::AgentRevoked,
        Self::ConfigApplied,
        Self::DetectAlert,
        Self::PortsAudit,
        Self::AuditPruned,
        Self::StoreLag,
        Self::ConsoleSignIn,
        Self::ConsoleSignOut,
        Self::SessionTerminated,
        Self::AuditExported,
        Self::McpToolPinned,
        Self::McpToolChanged,
        Self::McpToolApproved,
    ];

    /// As the audit log names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::ConnectionOpen => "connection.open",
            Self::ConnectionClose => "connection.close",
            Self::DbStatement => "db.statement",
            Self::DbCancel => "db.cancel",
            Self::TokenIssued => "token.issued",
            Self::TokenRevoked => "token.revoked",
            Self::TokenRotated => "token.rotated",
            Self::TokenShortened => "token.shortened",
            Self::TokenExchange => "token.exchange",
            Self::Login => "login",
            Self::Access => "access",
            Self::AccessRequested => "access.requested",
            Self::AccessApproved => "access.approved",
            Self::AccessRejected => "access.rejected",
            Self::CredentialIssued => "credential.issued",
            Self::CredentialNearMaxAge => "credential.near_max_age",
            Self::AdminDenied => "admin.denied",
            Self::AdminTokenCreated => "admin.token_created",
            Self::AdminReset => "admin.reset",
            Self::SecretSet => "secret.set",
            Self::AgentEnrollmentIssued => "agent.enrollment_issued",
            Self::AgentEnroll => "agent.enroll",
            Self::AgentRenew => "agent.renew",
            Self::AgentConnect => "agent.connect",
            Self::AgentDisconnect => "agent.disconnect",
            Self::AgentRevoked => "agent.revoked",
            Self::ConfigApplied => "config.applied",
            Self::DetectAlert => "detect.alert",
            Self::PortsAudit => "ports.audit",
            Self::AuditPruned => "audit.pruned",
            Self::StoreLag => "store.lag",
            Self::ConsoleSignIn => "console.signin",
            Self::ConsoleSignOut => "console.signout",
            Self::SessionTerminated => "session.terminated",
            Self::AuditExported => "audit.exported",
            Self::McpToolPinned => "mcp.tool_pinned",
            Self::McpToolChanged => "mcp.tool_changed",
            Self::McpToolApproved => "mcp.tool_approved",
        }
    }

    /// The kind an audit log names, back (a match, not a scan: the metrics and the
    /// detectors read every event's kind).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "request" => Self::Request,
            "connection.open" => Self::ConnectionOpen,
            "connection.close" => Self::ConnectionClose,
            "db.statement" => Self::DbStatement,
            "db.cancel" => Self::DbCancel,
            "token.issued" => Self::TokenIssued,
            "token.revoked" => Self::TokenRevoked,
            "token.rotated" => Self::TokenRotated,
            "token.shortened" => Self::TokenShortened,
            "token.exchange" => Self::TokenExchange,
            "login" => Self::Login,
            "access" => Self::Access,
            "access.requested" => Self::AccessRequested,
            "access.approved" => Self::AccessApproved,
            "access.rejected" => Self::AccessRejected,
            "credential.issued" => Self::CredentialIssued,
            "credential.near_max_age" => Self::CredentialNearMaxAge,
            "admin.denied" => Self::AdminDenied,
            "admin.token_created" => Self::AdminTokenCreated,
            "admin.reset" => Self::AdminReset,
            "secret.set" => Self::SecretSet,
            "agent.enrollment_issued" => Self::AgentEnrollmentIssued,
            "agent.enroll" => Self::AgentEnroll,
            "agent.renew" => Self::AgentRenew,
            "agent.connect" => Self::AgentConnect,
            "agent.disconnect" => Self::AgentDisconnect,
            "agent.revoked" => Self::AgentRevoked,
            "config.applied" => Self::ConfigApplied,
            "detect.alert" => Self::DetectAlert,
            "ports.audit" => Self::PortsAudit,
            "audit.pruned" => Self::AuditPruned,
            "store.lag" => Self::StoreLag,
            "console.signin" => Self::ConsoleSignIn,
            "console.signout" => Self::ConsoleSignOut,
            "session.terminated" => Self::SessionTerminated,
            "audit.exported" => Self::AuditExported,
            "mcp.tool_pinned" => Self::McpToolPinned,
            "mcp.tool_changed" => Self::McpToolChanged,
            "mcp.tool_approved" => Self::McpToolApproved,
            _ => return None,
        })
    }
}

// === impl Decision ===

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "allow" => Some(Decision::Allow),
            "deny" => Some(Decision::Deny),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_name_and_reads_back() {
        let mut names = std::collections::HashSet::new();
        for k in EventKind::ALL {
            assert!(names.insert(k.as_str()), "{} named twice", k.as_str());
            assert_eq!(EventKind::from_name(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::from_name("checkpoint"), None);
        for d in [Decision::Allow, Decision::Deny] {
            assert_eq!(Decision::from_name(d.as_str()), Some(d));
        }
    }
}
