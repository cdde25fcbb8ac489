//! Errors: why a session ended, and why a call failed.

use std::fmt;
use std::time::Duration;

/// Why a session ended (or could not start). Cheap to clone: every pending
/// call of a failed session gets a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionError {
    /// The link failed or was closed.
    Link {
        /// What the link reported.
        detail: String,
    },
    /// The peer did not complete the handshake in time.
    HandshakeTimeout {
        /// How long we waited.
        after: Duration,
    },
    /// The peers speak different protocol versions.
    VersionMismatch {
        /// The version this side speaks.
        ours: u32,
        /// The version the peer speaks.
        theirs: u32,
    },
    /// The peer broke a protocol rule; this side ended the session.
    Violation {
        /// The dotted name of the rule, e.g. `request.unique`.
        rule: &'static str,
        /// What was seen.
        detail: String,
    },
    /// The peer says this side broke a protocol rule, and ended the session.
    PeerReportedViolation {
        /// The rule, as the peer named it.
        rule: String,
        /// The peer's description.
        detail: String,
    },
    /// The peer said goodbye.
    Goodbye {
        /// The peer's reason.
        reason: String,
    },
    /// Nothing arrived from the peer for too long.
    KeepaliveTimeout {
        /// How long the peer was silent.
        silent_for: Duration,
    },
    /// The peer process died (reported by its supervisor, e.g. from a pidfd).
    PeerDied {
        /// Who died and how, e.g. "cell 'calc' (pid 4242) was killed by signal 9 (SIGKILL)".
        detail: String,
    },
    /// This side closed the session.
    Closed {
        /// The reason given to `close`.
        reason: String,
    },
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Link { detail } => write!(f, "the link failed: {detail}"),
            SessionError::HandshakeTimeout { after } => write!(
                f,
                "the peer did not complete the handshake within {after:?}; is it an osmos peer, and is it running?"
            ),
            SessionError::VersionMismatch { ours, theirs } => write!(
                f,
                "protocol version mismatch: this side speaks {ours}, the peer speaks {theirs}; build both against the same osmos release"
            ),
            SessionError::Violation { rule, detail } => {
                write!(
                    f,
                    "the peer broke protocol rule [{rule}]: {detail}; the session was ended"
                )
            }
            SessionError::PeerReportedViolation { rule, detail } => write!(
                f,
                "the peer ended the session, saying this side broke protocol rule [{rule}]: {detail}"
            ),
            SessionError::Goodbye { reason } => write!(f, "the peer said goodbye: {reason}"),
            SessionError::KeepaliveTimeout { silent_for } => write!(
                f,
                "the peer was silent for {silent_for:?}, longer than the keepalive timeout; it is hung or unreachable"
            ),
            SessionError::PeerDied { detail } => write!(f, "{detail}"),
            SessionError::Closed { reason } => write!(f, "the session was closed: {reason}"),
        }
    }
}

impl std::error::Error for SessionError {}

impl SessionError {
    /// Whether the session ended through the peer's fault: it broke a
    /// protocol rule ([`Violation`](Self::Violation)) or went silent past
    /// the keepalive timeout ([`KeepaliveTimeout`](Self::KeepaliveTimeout)).
    /// These are the ends that run a session's
    /// [`on_peer_fault`](crate::SessionBuilder::on_peer_fault) hook.
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            SessionError::Violation { .. } | SessionError::KeepaliveTimeout { .. }
        )
    }
}

/// Why a call failed. `E` is the service's own error type; every other
/// variant is a failure of the protocol, the connection or the session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallError<E> {
    /// The handler returned the service's error.
    User(E),
    /// The peer serves no method with this id on this connection.
    UnknownMethod {
        /// The method id.
        method: u64,
        /// `Service.method`, when the caller knows it (typed clients do).
        name: Option<String>,
    },
    /// The two sides were built from different definitions of the method:
    /// its argument, result or error types differ. Nothing was decoded.
    SchemaMismatch {
        /// `Service.method`.
        method: String,
        /// Both sides' descriptions of the method's types.
        detail: String,
    },
    /// The peer could not decode the arguments (mismatched service definitions?).
    InvalidPayload {
        /// The peer's decoder error.
        detail: String,
    },
    /// The call was cancelled by the peer's session.
    Cancelled,
    /// The handler panicked or the peer failed internally.
    Internal {
        /// What the peer reported.
        detail: String,
    },
    /// The call's deadline passed; it was cancelled.
    DeadlineExceeded {
        /// The deadline that was set.
        after: Duration,
    },
    /// The connection the call was made on was closed.
    ConnectionClosed {
        /// Why.
        reason: String,
    },
    /// The session ended before the call completed.
    Session(SessionError),
    /// The arguments could not be encoded, or are larger than the peer accepts.
    Encode {
        /// What went wrong.
        detail: String,
    },
    /// The response could not be decoded as the method's return type.
    Decode {
        /// The decoder error.
        detail: String,
    },
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::User(e) => write!(f, "{e}"),
            CallError::UnknownMethod { method, name: None } => write!(
                f,
                "the peer has no method {method:#018x} on this connection; are both sides built from the same service definition?"
            ),
            CallError::UnknownMethod { name: Some(name), .. } => write!(
                f,
                "the peer does not serve {name} on this connection (an older or different build of the service, or the wrong service on this connection?)"
            ),
            CallError::SchemaMismatch { detail, .. } => write!(f, "{detail}"),
            CallError::InvalidPayload { detail } => write!(
                f,
                "the peer could not decode the arguments ({detail}); are both sides built from the same service definition?"
            ),
            CallError::Cancelled => f.write_str("the call was cancelled"),
            CallError::Internal { detail } => write!(f, "the peer failed while handling the call: {detail}"),
            CallError::DeadlineExceeded { after } => {
                write!(f, "the call did not complete within its deadline of {after:?}")
            }
            CallError::ConnectionClosed { reason } => write!(f, "the connection was closed: {reason}"),
            CallError::Session(e) => write!(f, "{e}"),
            CallError::Encode { detail } => write!(f, "could not send the call: {detail}"),
            CallError::Decode { detail } => write!(
                f,
                "could not decode the response ({detail}); are both sides built from the same service definition?"
            ),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for CallError<E> {}

impl<E> From<SessionError> for CallError<E> {
    fn from(e: SessionError) -> Self {
        CallError::Session(e)
    }
}

/// A protocol rule the peer broke, detected while handling one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Violation {
    pub rule: &'static str,
    pub detail: String,
}

pub(crate) fn violation(rule: &'static str, detail: impl Into<String>) -> Violation {
    Violation {
        rule,
        detail: detail.into(),
    }
}
