//! What a handler knows about the call it serves: [`CallContext`].
//!
//! The session sets the context around every poll of a handler, so any code
//! the handler runs (directly, not in a task it spawns) can ask for it with
//! [`CallContext::current`]. A handler that spawns work takes a copy first.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use crate::Connection;
use crate::wire::{MetaValue, Metadata};

/// The call a handler serves: its connection (to call back or open
/// channels), its metadata, its deadline and who is calling.
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

    /// Who is calling: the name this side gave the session the call came
    /// in on (a host names each cell's session after the cell).
    pub fn caller(&self) -> &str {
        self.conn.session_name()
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
