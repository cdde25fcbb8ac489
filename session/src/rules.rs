//! The rules a peer must keep, one enum: each violation ends the session
//! with a `ProtocolError` naming the rule ([`Rule::name`]), and fails every
//! pending call with that reason. The shm rings' own rules are
//! `osmos_shm::Rule`; a link's framing rules (`stream.*`, `link.*`) are here.

/// A rule the peer must keep. See the table in the session module's docs
/// for what each means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Every frame decodes as a message.
    FrameDecodable,
    /// A batch holds at least one message and no batch.
    FrameBatchFlat,
    /// No frame exceeds our `max_payload`.
    FrameMaxPayload,
    /// The handshake comes first.
    HandshakeHelloFirst,
    /// The handshake happens once.
    HandshakeOnce,
    /// Ids the peer creates have the peer's parity.
    IdParity,
    /// Messages name open connections.
    ConnKnown,
    /// A new connection id is new.
    ConnUnique,
    /// At most 4096 virtual connections.
    ConnLimit,
    /// A request id is not reused while in flight.
    RequestUnique,
    /// At most our `max_concurrent_requests` calls at once.
    RequestLimit,
    /// A peer reads its answers (at most 65,536 queued).
    PeerReadsItsAnswers,
    /// A peer makes room in its link within the keepalive timeout.
    PeerDrainsItsLink,
    /// A peer releases our slots within the keepalive timeout.
    PeerReleasesItsSlots,
    /// Responses answer calls we made.
    ResponseKnownRequest,
    /// A response's metadata keeps within
    /// [`MAX_RESPONSE_METADATA_ENTRIES`](crate::MAX_RESPONSE_METADATA_ENTRIES)
    /// and [`MAX_RESPONSE_METADATA_BYTES`](crate::MAX_RESPONSE_METADATA_BYTES).
    ResponseMetadataBounded,
    /// Channel traffic names open channels.
    ChannelKnown,
    /// A new channel id is new.
    ChannelUnique,
    /// At most 65,536 open channels.
    ChannelLimit,
    /// No item after `Close`.
    ChannelNoDataAfterClose,
    /// A channel is closed once.
    ChannelCloseOnce,
    /// Items fit the credit granted.
    CreditNoOverrun,
    /// Grants stay within bounds.
    CreditGrantBounded,
    /// A link with a shared credit table carries no `GrantCredit`.
    CreditMode,
    /// A channel the peer opens uses a free credit-table entry.
    ChannelTableIndexFree,
    /// A stream link's length prefix is within bounds.
    StreamLengthInBounds,
    /// The peer wakes this side at most 1000 + 2 × frames times a second
    /// without publishing a frame (shm link).
    LinkEmptyWakes,
    /// A stable conduit's frames are well formed.
    StableFrameWellFormed,
    /// A stable conduit's frames come in order, each once.
    StableSequenceInOrder,
    /// A stable conduit's acks name frames that were sent.
    StableAckInBounds,
}

impl Rule {
    /// Every rule.
    pub const ALL: &[Rule] = &[
        Rule::FrameDecodable,
        Rule::FrameBatchFlat,
        Rule::FrameMaxPayload,
        Rule::HandshakeHelloFirst,
        Rule::HandshakeOnce,
        Rule::IdParity,
        Rule::ConnKnown,
        Rule::ConnUnique,
        Rule::ConnLimit,
        Rule::RequestUnique,
        Rule::RequestLimit,
        Rule::PeerReadsItsAnswers,
        Rule::PeerDrainsItsLink,
        Rule::PeerReleasesItsSlots,
        Rule::ResponseKnownRequest,
        Rule::ResponseMetadataBounded,
        Rule::ChannelKnown,
        Rule::ChannelUnique,
        Rule::ChannelLimit,
        Rule::ChannelNoDataAfterClose,
        Rule::ChannelCloseOnce,
        Rule::CreditNoOverrun,
        Rule::CreditGrantBounded,
        Rule::CreditMode,
        Rule::ChannelTableIndexFree,
        Rule::StreamLengthInBounds,
        Rule::LinkEmptyWakes,
        Rule::StableFrameWellFormed,
        Rule::StableSequenceInOrder,
        Rule::StableAckInBounds,
    ];

    /// The rule's name, as a `ProtocolError` and `SessionError::Violation`
    /// carry it.
    pub const fn name(self) -> &'static str {
        match self {
            Rule::FrameDecodable => "frame.decodable",
            Rule::FrameBatchFlat => "frame.batch-flat",
            Rule::FrameMaxPayload => "frame.max-payload",
            Rule::HandshakeHelloFirst => "handshake.hello-first",
            Rule::HandshakeOnce => "handshake.once",
            Rule::IdParity => "id.parity",
            Rule::ConnKnown => "conn.known",
            Rule::ConnUnique => "conn.unique",
            Rule::ConnLimit => "conn.limit",
            Rule::RequestUnique => "request.unique",
            Rule::RequestLimit => "request.limit",
            Rule::PeerReadsItsAnswers => "peer.reads-its-answers",
            Rule::PeerDrainsItsLink => "peer.drains-its-link",
            Rule::PeerReleasesItsSlots => "peer.releases-its-slots",
            Rule::ResponseKnownRequest => "response.known-request",
            Rule::ResponseMetadataBounded => "response.metadata-bounded",
            Rule::ChannelKnown => "channel.known",
            Rule::ChannelUnique => "channel.unique",
            Rule::ChannelLimit => "channel.limit",
            Rule::ChannelNoDataAfterClose => "channel.no-data-after-close",
            Rule::ChannelCloseOnce => "channel.close-once",
            Rule::CreditNoOverrun => "credit.no-overrun",
            Rule::CreditGrantBounded => "credit.grant-bounded",
            Rule::CreditMode => "credit.mode",
            Rule::ChannelTableIndexFree => "channel.table-index-free",
            Rule::StreamLengthInBounds => "stream.length-in-bounds",
            Rule::LinkEmptyWakes => "link.empty-wakes",
            Rule::StableFrameWellFormed => "stable.frame-well-formed",
            Rule::StableSequenceInOrder => "stable.sequence-in-order",
            Rule::StableAckInBounds => "stable.ack-in-bounds",
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::Rule;

    /// The session module's rule table names every rule (and names are unique).
    #[test]
    fn the_rule_table_names_every_rule() {
        let doc = include_str!("session/mod.rs");
        let mut names = std::collections::HashSet::new();
        for rule in Rule::ALL {
            assert!(names.insert(rule.name()), "{} twice", rule.name());
            assert!(
                doc.contains(&format!("`{}`", rule.name())),
                "the rule table misses {}",
                rule.name()
            );
        }
    }
}
