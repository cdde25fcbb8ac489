//! What a handler knows about the call it serves: [`CallContext`].
//!
//! The session sets the context around every poll of a handler, so any code
//! the handler runs (directly, not in a task it spawns) can ask for it with
//! [`CallContext::current`]. A handler that spawns work takes a copy first.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Connection;
use crate::metadata::{Answering, MetadataError};
use crate::wire::{MetaValue, Metadata};

/// The call a handler serves: its connection (to call back or open
/// channels), its metadata, its deadline and who is calling; and the
/// metadata it answers with ([`set_response_metadata`](Self::set_response_metadata)).
///
/// ```
/// # use osmos_session::CallContext;
/// async fn handler() -> u32 {
///     if let Some(ctx) = CallContext::current() {
///         if ctx.remaining().is_some_and(|left| left.as_millis() < 5) {
///             return 0; // not enough time left to do it properly
///         }
///     }
///     42
/// }
/// ```
#[derive(Clone, Debug)]
pub struct CallContext {
    pub(crate) conn: Connection,
    pub(crate) method: u64,
    pub(crate) metadata: Metadata,
    pub(crate) deadline: Option<Instant>,
    /// Who the peer says calls on this connection, if this side trusts it
    /// to say ([`SessionBuilder::trust_peer_caller`](crate::SessionBuilder::trust_peer_caller)).
    pub(crate) caller: Option<Arc<str>>,
    /// The metadata the answer will carry (shared by every copy).
    pub(crate) answer: Answering,
}

thread_local! {
    /// The context of the handler being polled on this thread.
    static CURRENT: RefCell<Option<CallContext>> = const { RefCell::new(None) };
}

impl CallContext {
    /// The context of the call whose handler runs on this thread now, or
    /// `None` outside a handler (including in tasks a handler spawned: take
    /// a copy before spawning).
    pub fn current() -> Option<CallContext> {
        CURRENT.with(|c| c.borrow().clone())
    }

    /// The connection the call came in on: call the peer back on it, or
    /// open channels to it.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The method's id ([`method_id`](crate::method_id)).
    pub fn method(&self) -> u64 {
        self.method
    }

    /// The metadata the caller sent with the call.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The value of metadata entry `key`, if the caller sent one.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|m| m.key == key).map(|m| &m.value)
    }

    /// When the caller stops waiting, if it set a deadline (as measured on
    /// arrival here). The session cancels the handler when it passes.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline (zero once it passed); `None` without one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Who is calling.
    ///
    /// On a virtual connection opened by a peer this side trusts to say
    /// who calls ([`SessionBuilder::trust_peer_caller`](crate::SessionBuilder::trust_peer_caller)),
    /// the name that peer gave under [`META_CALLER`](crate::control::META_CALLER)
    /// when it opened the connection: in a cell, for a connection another
    /// cell opened through the host's routes, the *calling cell's* name.
    /// Otherwise the name this side gave the session the call came in on
    /// ([`SessionConfig::name`](crate::SessionConfig::name); a host names
    /// each cell's session after the cell).
    ///
    /// # Trust
    ///
    /// A cell trusts what its host says, and the host never trusts what a
    /// cell says: the host's routes drop any `osmos.caller` a cell sends
    /// (when it opens a connection, and on each call it forwards) and mark
    /// every connection they forward with the name of the cell that opened
    /// it. So in a cell the name is the host's word, and no cell can pass
    /// itself off as another. A session that does not trust its peer
    /// (the default, and always a host's) ignores `osmos.caller` entirely.
    /// The name is what the host calls the cell, not a proof of what code
    /// runs in it.
    pub fn caller(&self) -> &str {
        self.caller.as_deref().unwrap_or(self.conn.session_name())
    }

    /// Sets response metadata entry `key` (replacing an entry of the same
    /// key): the session sends it with the call's answer, and the caller
    /// reads it from the [`ResponseMetadata`](crate::ResponseMetadata) slot
    /// it passed in its options. Any copy of the context may set entries
    /// until the handler returns.
    ///
    /// Refused, with a warning in the log, past
    /// [`MAX_RESPONSE_METADATA_ENTRIES`](crate::MAX_RESPONSE_METADATA_ENTRIES)
    /// entries or [`MAX_RESPONSE_METADATA_BYTES`](crate::MAX_RESPONSE_METADATA_BYTES)
    /// bytes, or once the call was answered; the entries set before stay.
    pub fn set_response_metadata(
        &self,
        key: impl Into<String>,
        value: MetaValue,
    ) -> Result<(), MetadataError> {
        let key = key.into();
        self.answer.set(key.clone(), value).inspect_err(|e| {
            tracing::warn!(session = %self.conn.session_name(), key, "response metadata refused: {e}");
        })
    }

    /// Answers with `metadata` as received from the next hop (a forwarder's
    /// relay; checked on receipt there).
    pub(crate) fn relay_response_metadata(&self, metadata: Metadata) {
        self.answer.relay(metadata);
    }

    /// Runs `f` (one poll of a handler) with `ctx` as the current context,
    /// then takes it back.
    pub(crate) fn polling<R>(ctx: &mut Option<CallContext>, f: impl FnOnce() -> R) -> R {
        let outer = CURRENT.with(|c| c.replace(ctx.take()));
        let _restore = Restore { outer, ctx };
        f()
    }
}

/// Puts the outer context back and the polled one into its slot, also when
/// the poll unwinds (the session catches handler panics).
struct Restore<'a> {
    outer: Option<CallContext>,
    ctx: &'a mut Option<CallContext>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        *self.ctx = CURRENT.with(|c| c.replace(self.outer.take()));
    }
}
