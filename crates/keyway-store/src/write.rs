//! What both backends write the same way: a change of state and the audit events
//! it is written with, in one transaction.

use keyway_core::UnixMillis;

use crate::{
    AccessRequest, AppliedConfig, AuditEvent, RevokedToken, Sealed, Spend, TokenRecord,
    TokenRevocations,
};

/// A change of state, written in one transaction with its audit events.
pub(crate) enum Change<'a> {
    /// Only the events.
    Events,
    /// A token, spending a one-use value with it when given.
    InsertToken(&'a TokenRecord, Option<&'a Spend>),
    RevokeTokens(&'a [String], UnixMillis),
    ShortenExpiry(&'a str, UnixMillis),
    PutSecret(&'a str, &'a Sealed, UnixMillis),
    RevokeAgent(&'a str, UnixMillis),
    PutRequest(&'a AccessRequest),
    /// Over the one whose hash is given (`None`: over none).
    PutConfig(&'a AppliedConfig, Option<&'a str>),
    PutBlock(&'a str, UnixMillis),
    PutToolPin(&'a crate::ToolPin),
    /// Another replica's live session to end, `REPLICA:ID`: a change row only.
    EndSession(&'a str),
}

/// What a change found, and the events written with it.
#[derive(Default)]
pub(crate) struct Written {
    /// The token a change of one token found.
    pub(crate) token: Option<TokenRecord>,
    /// The tokens a revocation found, those it revoked first.
    pub(crate) revoked: Vec<RevokedToken>,
    /// The events made for the change ([`Events::PerRevoked`]).
    pub(crate) made: Vec<AuditEvent>,
}

/// The events a change is written with.
#[derive(Clone, Copy)]
pub(crate) enum Events<'a> {
    These(&'a [AuditEvent]),
    /// One for each token the change revoked.
    PerRevoked(&'a TokenRevocations<'a>),
}

// === impl Written ===

impl Written {
    /// The events to write with the change: those given, or one per token it
    /// revoked (made now, and kept).
    pub(crate) fn events<'a>(&'a mut self, events: Events<'a>) -> &'a [AuditEvent] {
        match events {
            Events::These(e) => e,
            Events::PerRevoked(f) => {
                self.made = self.revoked.iter().take_while(|t| t.fresh).map(f).collect();
                &self.made
            }
        }
    }
}
