//! Typed streaming channels: [`Tx<T>`] / [`Rx<T>`], with per-channel credit.
//!
//! A channel is created in pairs with [`Connection::channel`]; one end stays
//! here and the other is passed to the peer *inside* a call's arguments or
//! return value. In the encoded payload a handle is its **position in the
//! message's channel list** (`Message::Call::channels` /
//! `Message::Response::channels`), not its id: the payload never names a
//! session's ids, so a forwarder can remap the ids in the envelope without
//! decoding the payload (see `forward.rs`). `Tx<T>` and `Rx<T>` are facet
//! types with a proxy (`ChannelId`), and the conversion
//! runs inside a binding context the session sets up while it encodes or
//! decodes a call (a thread-local, valid only for that synchronous encode or
//! decode). Encoding collects the ids into the message's channel list and
//! marks the handle as handed over; decoding accepts only ids listed in the
//! message and binds the new handle to the session's channel state, which the
//! session created when the message arrived, so items that follow the call
//! are never lost.
//!
//! Flow control: the receiver grants bytes, the sender spends them. A sender
//! waits (asynchronously) while its credit is short; the receiver grants
//! again once it has consumed half its window. Only this channel's sender
//! waits: a slow receiver stalls nobody else.
//!
//! The parts: `state.rs` holds the session's state of one channel and its
//! credit; `binding.rs` the binding context that hands handles over and
//! binds them while a message is encoded or decoded; `handles.rs` the typed
//! [`Tx<T>`] / [`Rx<T>`] handles.
//!
//! [`Connection::channel`]: crate::Connection::channel

use std::fmt;

use facet::Facet;

mod binding;
mod handles;
mod queued;
mod state;

pub(crate) use binding::{bind_listed_for_relay, list_for_relay, with_decode_context, with_encode_context};
pub use handles::{Rx, Tx};
pub(crate) use handles::{never_sendable, pair, poll_catching_panics, send_item};
pub(crate) use queued::Queued;
pub(crate) use state::{ChannelCore, FlowInit, NextItem};

/// A channel handle inside an encoded payload: its position in the
/// message's channel list (the ids themselves travel in the envelope).
#[derive(Facet, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[facet(transparent)]
pub struct ChannelId(pub u64);

/// Why a channel operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelError {
    /// The other end reset the channel (or was dropped).
    Reset {
        /// Its reason.
        reason: String,
    },
    /// The session ended.
    SessionEnded {
        /// Why.
        reason: String,
    },
    /// An item could not be encoded, or is larger than the channel's whole window.
    Encode {
        /// What went wrong.
        detail: String,
    },
    /// An item could not be decoded as `T`.
    Decode {
        /// The decoder's error.
        detail: String,
    },
    /// This handle is not bound to a session (it was handed over, or never bound).
    Unbound,
    /// Every channel id this side may use is taken (the shm channel table is
    /// full); close channels or raise the segment's `max_channels`.
    Exhausted {
        /// Channels this side may have open at once.
        max: u32,
    },
    /// The peer broke a flow-control rule; the session was ended.
    PeerBrokeProtocol {
        /// The rule.
        rule: &'static str,
        /// What was seen.
        detail: String,
    },
}

impl From<crate::link::LinkError> for ChannelError {
    /// A credit wait that failed in the link: the session is ending with it.
    fn from(e: crate::link::LinkError) -> Self {
        ChannelError::SessionEnded {
            reason: e.to_string(),
        }
    }
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Reset { reason } => write!(f, "the channel was reset by the other end: {reason}"),
            ChannelError::SessionEnded { reason } => write!(f, "the session ended: {reason}"),
            ChannelError::Encode { detail } => write!(f, "could not send the item: {detail}"),
            ChannelError::Decode { detail } => write!(
                f,
                "could not decode an item ({detail}); are both sides built from the same service definition?"
            ),
            ChannelError::Exhausted { max } => write!(
                f,
                "no free channel: all {max} channel ids this side may use are open; close some, or raise the segment's max_channels"
            ),
            ChannelError::PeerBrokeProtocol { rule, detail } => {
                write!(f, "the peer broke protocol rule [{rule}]: {detail}; the session was ended")
            }
            ChannelError::Unbound => f.write_str(
                "this channel handle was handed to the peer (or never bound to a session) and cannot be used here",
            ),
        }
    }
}

impl std::error::Error for ChannelError {}

/// Which end of a channel a handle is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The sending end.
    Tx,
    /// The receiving end.
    Rx,
}
