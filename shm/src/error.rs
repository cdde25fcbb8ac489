//! The crate's error type: what went wrong, the values involved, and what to do.

use std::fmt;
use std::time::Duration;

use crate::liveness::{PeerState, Side};

/// A rule of the shared-memory protocol. Every [`Violation`] names the rule
/// the peer broke, so a log line says exactly which invariant failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// The producer's published ring position must be 8-aligned and at most
    /// one ring capacity ahead of the consumer's position.
    RingTailInRange,
    /// The consumer's published ring position must only move forward and
    /// never past what the producer published.
    RingHeadInRange,
    /// A frame header must carry a known kind with its reserved bits clear.
    FrameKindKnown,
    /// A frame's length must not exceed the negotiated maximum nor the bytes
    /// the producer published.
    FrameLengthInBounds,
    /// A frame must not cross the end of the ring (the producer pads instead).
    FrameContiguous,
    /// A padding frame must run exactly to the end of the ring.
    PadToRingEnd,
    /// A slot reference must be exactly 16 bytes with its reserved word zero.
    SlotRefWellFormed,
    /// A slot index must name a slot of the sender's pool.
    SlotIndexInRange,
    /// A slot payload length must fit the slot's size class.
    SlotLengthFitsClass,
    /// A slot's generation must be the one after the last generation the
    /// receiver saw for that slot.
    SlotGenerationNext,
    /// A slot must not be sent again while the receiver still holds it.
    SlotNotHeldTwice,
    /// A released slot must be one the owner has in flight, with the same
    /// generation.
    SlotReleaseInFlight,
    /// The release queue positions must stay within its capacity.
    ReleaseQueueInRange,
    /// A channel's `granted_total` must only move forward, by at most 2^31.
    CreditGrantMonotonic,
    /// A sender must not send more bytes on a channel than it was granted.
    CreditNoOverrun,
}

impl Rule {
    /// The rule's stable dotted name, as it appears in logs and goodbyes.
    pub fn name(self) -> &'static str {
        match self {
            Rule::RingTailInRange => "ring.tail-in-range",
            Rule::RingHeadInRange => "ring.head-in-range",
            Rule::FrameKindKnown => "frame.kind-known",
            Rule::FrameLengthInBounds => "frame.length-in-bounds",
            Rule::FrameContiguous => "frame.contiguous",
            Rule::PadToRingEnd => "frame.pad-to-ring-end",
            Rule::SlotRefWellFormed => "slot.ref-well-formed",
            Rule::SlotIndexInRange => "slot.index-in-range",
            Rule::SlotLengthFitsClass => "slot.length-fits-class",
            Rule::SlotGenerationNext => "slot.generation-next",
            Rule::SlotNotHeldTwice => "slot.not-held-twice",
            Rule::SlotReleaseInFlight => "slot.release-in-flight",
            Rule::ReleaseQueueInRange => "slot.release-queue-in-range",
            Rule::CreditGrantMonotonic => "credit.grant-monotonic",
            Rule::CreditNoOverrun => "credit.no-overrun",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The peer broke a rule of the shared-memory protocol. The segment can no
/// longer be trusted: end the peer's session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The rule that was broken.
    pub rule: Rule,
    /// What was seen, with the values involved.
    pub detail: String,
}

impl Violation {
    pub(crate) fn new(rule: Rule, detail: impl Into<String>) -> Self {
        Self {
            rule,
            detail: detail.into(),
        }
    }
}

/// Everything that can go wrong in `osmos-shm`.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed.
    Io {
        /// What we were doing, e.g. `"memfd_create"`.
        op: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A [`SegmentConfig`](crate::SegmentConfig) value is out of range.
    InvalidConfig {
        /// Which value, its range and what was given.
        reason: String,
    },
    /// A segment handed to [`Segment::attach`](crate::Segment::attach) is not
    /// one this build understands.
    BadSegment {
        /// What is wrong with it.
        reason: String,
    },
    /// The segment was written by a different format version.
    VersionMismatch {
        /// The version this build speaks.
        ours: u32,
        /// The version found in the segment header.
        theirs: u32,
    },
    /// The peer broke a protocol rule; the segment cannot be trusted.
    Violation(Violation),
    /// A frame is larger than the ring's maximum frame and can never be sent
    /// inline.
    FrameTooLarge {
        /// Requested payload length.
        len: usize,
        /// Largest inline payload the segment allows.
        max: usize,
    },
    /// A payload is larger than the largest slot class.
    PayloadTooLarge {
        /// Requested payload length.
        len: usize,
        /// Largest payload any slot class holds.
        max: usize,
    },
    /// The peer is gone (dead, or marked dead by its supervisor).
    PeerGone {
        /// Which side is gone.
        peer: Side,
        /// The state it was last seen in.
        state: PeerState,
    },
    /// This side was shut down locally while waiting.
    Shutdown,
    /// A wait reached its deadline.
    Timeout {
        /// What we were waiting for.
        waiting_for: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// The receiver closed the channel; no more credit will come.
    ChannelClosed {
        /// The channel's index in the credit table.
        channel: u32,
    },
    /// A caller passed a value outside its documented range.
    InvalidArgument {
        /// Which argument and why.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, source: impl Into<std::io::Error>) -> Self {
        Error::Io {
            op,
            source: source.into(),
        }
    }

    pub(crate) fn violation(rule: Rule, detail: impl Into<String>) -> Self {
        Error::Violation(Violation::new(rule, detail))
    }

    /// The violated rule, if this error is a protocol violation.
    pub fn rule(&self) -> Option<Rule> {
        match self {
            Error::Violation(v) => Some(v.rule),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { op, source } => write!(f, "{op} failed: {source}"),
            Error::InvalidConfig { reason } => write!(f, "invalid segment configuration: {reason}"),
            Error::BadSegment { reason } => write!(
                f,
                "refusing shared memory segment: {reason}; the host and cell must be built from the same osmos release"
            ),
            Error::VersionMismatch { ours, theirs } => write!(
                f,
                "segment format version mismatch: this side speaks {ours}, the segment is version {theirs}; rebuild the host and cell against the same osmos release"
            ),
            Error::Violation(v) => write!(
                f,
                "protocol violation [{}]: {}; the peer cannot be trusted, end its session",
                v.rule, v.detail
            ),
            Error::FrameTooLarge { len, max } => write!(
                f,
                "frame of {len} bytes can never fit inline (max {max}); send it through a slot or raise max_frame"
            ),
            Error::PayloadTooLarge { len, max } => write!(
                f,
                "payload of {len} bytes exceeds the largest slot class ({max} bytes); add a larger slot class to the segment config"
            ),
            Error::PeerGone { peer, state } => write!(f, "the {peer} is gone (last state: {state})"),
            Error::Shutdown => write!(f, "this side of the segment was shut down while waiting"),
            Error::Timeout { waiting_for, after } => {
                write!(f, "timed out after {after:?} waiting for {waiting_for}")
            }
            Error::ChannelClosed { channel } => {
                write!(
                    f,
                    "channel {channel} was closed by its receiver; stop sending on it"
                )
            }
            Error::InvalidArgument { reason } => write!(f, "invalid argument: {reason}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Shorthand for `Result<T, osmos_shm::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
