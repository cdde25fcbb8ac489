//! The session's state of one channel ([`ChannelCore`]), shared by its local
//! handle(s) and the session driver: the queue of received items, the
//! terminal messages each side sent, and the credit, behind one seam
//! ([`Flow`]) whether it travels as `GrantCredit` messages or lives in the
//! shm channel table.

use crate::adaptive::{Adaptive, may_block_here};
use crate::rules::Rule;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use osmos_shm::{CreditReceiver, CreditSender, CreditTable};

use super::queued::Splitter;
use super::{ChannelError, End, Queued};

/// Credit every item costs besides its encoded bytes.
///
/// Credit bounds what a receiver holds for a channel, and a queued item
/// takes memory of its own: its queue entry (48 bytes, up to twice that
/// while the queue grows) and, past 38 bytes, an allocation's header.
/// Charged by bytes alone, items of zero bytes (a unit type, or a hostile
/// peer's empty payloads) would cost nothing and queue without bound, and
/// one-byte items about 60 times their credit. With this charge a
/// receiver holds at most about 1.5 times its window per channel.
pub(crate) const ITEM_CREDIT: u64 = 64;

/// The credit an item of `len` encoded bytes costs (see [`ITEM_CREDIT`]).
/// Both ends charge the same, whichever way the credit travels.
pub(crate) fn credit_cost(len: u64) -> u64 {
    len.saturating_add(ITEM_CREDIT)
}

/// How a channel starts its credit.
pub(crate) enum FlowInit {
    /// `GrantCredit` messages: our receive window and our initial send credit.
    Messages { recv_window: u32, send_window: u32 },
    /// The shm channel table, entry `index`; counters are set once the
    /// channel's direction is known.
    Table {
        table: CreditTable,
        index: u32,
        waiters: crate::link::shm::SideWaiters,
    },
}

/// Per-channel credit, behind one seam: the session code calls the same
/// operations whichever the link uses.
#[expect(
    clippy::large_enum_variant,
    reason = "one per channel, built in place and never moved; boxing would add an allocation per channel"
)]
enum Flow {
    /// Credit travels as `GrantCredit` messages.
    Messages {
        /// Bytes we granted the peer in total (receiving side).
        granted: u64,
        /// Bytes we received in total (receiving side). `received <= granted`.
        received: u64,
        /// Bytes we may still send (sending side).
        send_available: u64,
    },
    /// Credit lives in the shared channel table.
    Table {
        table: CreditTable,
        index: u32,
        /// Where a sender short of credit waits (woken by the link's receiver).
        waiters: crate::link::shm::SideWaiters,
        /// Sending side's counters; `None` until the direction is known.
        sender: Option<CreditSender>,
        /// Receiving side's counters; `None` until the direction is known.
        receiver: Option<CreditReceiver>,
    },
}

/// The session's state of one channel, shared by its local handle(s) and the
/// session driver.
pub(crate) struct ChannelCore {
    pub(crate) id: u64,
    /// This side created the channel (and owns its table index, if any).
    pub(crate) created_here: bool,
    inner: Mutex<ChanInner>,
    /// Items, a close or a reset arrived.
    readable: Notify,
    /// Credit, an announcement or a reset arrived.
    writable: Notify,
    /// Where a large received item's trailing bytes begin, for the local
    /// receiver's item type (set on its first receive).
    splitter: OnceLock<Splitter>,
    /// The session forgot the channel (see `Shared::retire_channel`).
    retired: AtomicBool,
}

struct ChanInner {
    queue: VecDeque<Queued>,
    /// Bytes consumed by the local receiver since our last grant.
    consumed_since_grant: u64,
    /// Our receive window (our initial credit), for the grant policy.
    window: u64,
    flow: Flow,
    /// The peer closed its sending side: no more items.
    remote_closed: bool,
    /// Set when either side reset the channel.
    reset: Option<String>,
    /// The peer knows this channel: it created it, or the message handing it
    /// over was sent. Items may only be sent once it is.
    announced: bool,
    /// Local handles still alive.
    local_tx: bool,
    local_rx: bool,
    /// This side sent its end's terminal message (`Close` for a sender,
    /// `Reset` for a receiver).
    sent_terminal: bool,
    /// The peer's terminal message arrived.
    got_terminal: bool,
    /// Whether looking again before sleeping pays (see `poll_briefly`).
    poll: Adaptive,
}

/// How long a receiver that found its queue empty looks again before it
/// sleeps (see `ChannelCore::poll_briefly`).
const POLL_BEFORE_SLEEP: Duration = Duration::from_micros(20);
/// Spin-loop hints between two looks of a spinning receiver (well under a
/// microsecond).
const SPINS_PER_LOOK: u32 = 64;

/// Converts an `osmos-shm` credit error into a channel error.
fn shm_credit_error(e: osmos_shm::Error) -> ChannelError {
    match e {
        osmos_shm::Error::Violation(v) => ChannelError::PeerBrokeProtocol {
            rule: v.rule.name(),
            detail: v.detail,
        },
        osmos_shm::Error::ChannelClosed { .. } => ChannelError::Reset {
            reason: "the receiver closed the channel".into(),
        },
        other => ChannelError::SessionEnded {
            reason: other.to_string(),
        },
    }
}

impl ChannelCore {
    pub(crate) fn new(
        id: u64,
        created_here: bool,
        announced: bool,
        init: FlowInit,
        window: u32,
    ) -> Arc<Self> {
        let flow = match init {
            FlowInit::Messages {
                recv_window,
                send_window,
            } => Flow::Messages {
                granted: u64::from(recv_window),
                received: 0,
                send_available: u64::from(send_window),
            },
            FlowInit::Table {
                table,
                index,
                waiters,
            } => Flow::Table {
                table,
                index,
                waiters,
                sender: None,
                receiver: None,
            },
        };
        Arc::new(ChannelCore {
            id,
            created_here,
            inner: Mutex::new(ChanInner {
                queue: VecDeque::new(),
                consumed_since_grant: 0,
                window: u64::from(window),
                flow,
                remote_closed: false,
                reset: None,
                announced,
                local_tx: false,
                local_rx: false,
                sent_terminal: false,
                got_terminal: false,
                poll: Adaptive::new(),
            }),
            readable: Notify::new(),
            writable: Notify::new(),
            splitter: OnceLock::new(),
            retired: AtomicBool::new(false),
        })
    }

    /// Sets how large received items are split for the local receiver's
    /// item type (the first call wins; a handle has one type).
    pub(crate) fn use_splitter(&self, splitter: Splitter) {
        let _ = self.splitter.set(splitter);
    }

    /// Marks the channel forgotten by its session (under the session's
    /// lock, as it leaves the registry).
    pub(crate) fn mark_retired(&self) {
        // ORDERING: Release pairs with the Acquire in `is_retired`.
        self.retired.store(true, Ordering::Release);
    }

    /// Whether the session forgot the channel: traffic for it is dropped.
    pub(crate) fn is_retired(&self) -> bool {
        // ORDERING: Acquire pairs with the Release in `mark_retired`.
        self.retired.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChanInner> {
        // A panic while holding this lock leaves plain counters behind; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The channel's table index, in table mode.
    pub(crate) fn table_index(&self) -> Option<u32> {
        match &self.lock().flow {
            Flow::Table { index, .. } => Some(*index),
            Flow::Messages { .. } => None,
        }
    }

    /// A local handle of `end` now exists (created, or bound from a message).
    pub(crate) fn attach(&self, end: End) {
        let mut c = self.lock();
        match end {
            End::Tx => c.local_tx = true,
            End::Rx => c.local_rx = true,
        }
    }

    /// The direction is known: the receiver's initial credit is `initial`.
    /// In table mode, `reset_entry` (the creator, before announcing) also
    /// reinitializes the shared counters.
    pub(crate) fn init_credit(&self, initial: u32, reset_entry: bool) -> Result<(), String> {
        let mut c = self.lock();
        if let Flow::Table {
            table,
            index,
            sender,
            receiver,
            ..
        } = &mut c.flow
        {
            if sender.is_some() || receiver.is_some() {
                return Ok(());
            }
            if reset_entry {
                table.reset(*index, initial).map_err(|e| e.to_string())?;
            }
            *sender = Some(table.sender(*index, initial).map_err(|e| e.to_string())?);
            *receiver = Some(table.receiver(*index, initial).map_err(|e| e.to_string())?);
        }
        Ok(())
    }

    /// A local handle of `end` was handed to the peer (it is no longer local).
    pub(crate) fn detach(&self, end: End) {
        let mut c = self.lock();
        match end {
            End::Tx => c.local_tx = false,
            End::Rx => c.local_rx = false,
        }
    }

    /// A local handle of `end` is done (its terminal message is being sent).
    /// Returns whether the channel is now finished on both sides.
    pub(crate) fn end_local(&self, end: End) -> bool {
        let mut c = self.lock();
        match end {
            End::Tx => c.local_tx = false,
            End::Rx => {
                c.local_rx = false;
                c.queue.clear();
                if let Flow::Table {
                    receiver: Some(r), ..
                } = &mut c.flow
                {
                    // No more grants from here; a parked sender wakes.
                    r.close();
                }
            }
        }
        c.sent_terminal = true;
        c.sent_terminal && c.got_terminal
    }

    /// Whether this side already sent its terminal message (`Close` or `Reset`).
    pub(crate) fn sent_terminal(&self) -> bool {
        self.lock().sent_terminal
    }

    /// An item arrived. Checks the peer's credit and queues it, without
    /// waking the receiver: whoever calls it owes an
    /// [`announce_items`](Self::announce_items) (the driver for each item,
    /// a caller receiving on its own thread for a run of them). `tail`: the
    /// end of the item's encoding, when the link held it apart.
    pub(crate) fn on_item(
        &self,
        payload: &[u8],
        tail: Option<Vec<u8>>,
    ) -> Result<(), crate::error::Violation> {
        let splitter = self.splitter.get().copied();
        self.accept_item(&mut self.lock(), payload, tail, splitter)
    }

    /// A run of items that came one after another in one batch, in order:
    /// each checked and queued as [`on_item`](Self::on_item) does, under
    /// one lock. Those before a refused one stay queued (the refusal ends
    /// the session).
    pub(crate) fn on_items(&self, payloads: &[&[u8]]) -> Result<(), crate::error::Violation> {
        let splitter = self.splitter.get().copied();
        let mut c = self.lock();
        for payload in payloads {
            self.accept_item(&mut c, payload, None, splitter)?;
        }
        Ok(())
    }

    /// [`on_item`](Self::on_item) with the lock held.
    fn accept_item(
        &self,
        c: &mut ChanInner,
        payload: &[u8],
        tail: Option<Vec<u8>>,
        splitter: Option<Splitter>,
    ) -> Result<(), crate::error::Violation> {
        let len = (payload.len() + tail.as_ref().map_or(0, Vec::len)) as u64;
        let cost = credit_cost(len);
        if c.remote_closed {
            return Err(crate::error::violation(
                Rule::ChannelNoDataAfterClose.name(),
                format!("item of {len} bytes on channel {} after its Close", self.id),
            ));
        }
        match &mut c.flow {
            Flow::Messages {
                granted, received, ..
            } => {
                if *received + cost > *granted {
                    return Err(crate::error::violation(
                        Rule::CreditNoOverrun.name(),
                        format!(
                            "channel {}: item of {len} bytes (costing {cost} bytes of credit) with only {} bytes of credit left ({granted} granted, {received} received)",
                            self.id,
                            *granted - *received,
                        ),
                    ));
                }
                *received += cost;
            }
            Flow::Table {
                receiver: Some(r), ..
            } => {
                let n = u32::try_from(cost).unwrap_or(u32::MAX);
                r.on_received(n).map_err(|e| match e {
                    osmos_shm::Error::Violation(v) => crate::error::violation(v.rule.name(), v.detail),
                    other => crate::error::violation(Rule::CreditNoOverrun.name(), other.to_string()),
                })?;
            }
            Flow::Table { receiver: None, .. } => {
                return Err(crate::error::violation(
                    Rule::CreditNoOverrun.name(),
                    format!("item on channel {} before any credit was granted", self.id),
                ));
            }
        }
        if c.reset.is_none() && c.local_rx {
            c.queue.push_back(match tail {
                Some(tail) => Queued::Split {
                    head: payload.to_vec(),
                    tail,
                },
                None => Queued::new(payload, splitter),
            });
        }
        Ok(())
    }

    /// Wakes the receiver for the items queued since.
    pub(crate) fn announce_items(&self) {
        self.readable.notify_one();
    }

    /// A receiving channel `id` with a window of `window` bytes, credit by
    /// message.
    #[cfg(test)]
    pub(crate) fn receiving_for_tests(id: u64, window: u32) -> Arc<ChannelCore> {
        let core = ChannelCore::new(
            id,
            false,
            true,
            FlowInit::Messages {
                recv_window: window,
                send_window: 0,
            },
            window,
        );
        core.attach(End::Rx);
        core
    }

    /// Whether the receiver was woken since this was last asked (takes the
    /// wake).
    #[cfg(test)]
    pub(crate) fn take_announcement(&self) -> bool {
        use std::future::Future;
        let notified = std::pin::pin!(self.readable.notified());
        notified
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
            .is_ready()
    }

    /// The peer granted more credit by message (driver).
    pub(crate) fn on_grant(&self, bytes: u32) -> Result<(), crate::error::Violation> {
        let mut c = self.lock();
        match &mut c.flow {
            Flow::Messages { send_available, .. } => {
                *send_available += u64::from(bytes);
                if *send_available > u64::from(u32::MAX) {
                    return Err(crate::error::violation(
                        Rule::CreditGrantBounded.name(),
                        format!(
                            "channel {}: the peer granted a window of {} bytes (at most 2^32)",
                            self.id, send_available
                        ),
                    ));
                }
            }
            Flow::Table { .. } => {
                return Err(crate::error::violation(
                    Rule::CreditMode.name(),
                    format!(
                        "GrantCredit for channel {} on a link whose credit is in the shared table",
                        self.id
                    ),
                ));
            }
        }
        drop(c);
        self.writable.notify_one();
        Ok(())
    }

    /// The peer closed its sending side (driver). Returns whether the channel
    /// is now finished on both sides.
    pub(crate) fn on_close(&self) -> Result<bool, crate::error::Violation> {
        let mut c = self.lock();
        if c.remote_closed {
            return Err(crate::error::violation(
                Rule::ChannelCloseOnce.name(),
                format!("channel {} closed twice", self.id),
            ));
        }
        c.remote_closed = true;
        c.got_terminal = true;
        let finished = c.sent_terminal && c.got_terminal;
        drop(c);
        self.readable.notify_one();
        Ok(finished)
    }

    /// The peer reset the channel (driver). Returns whether this side must
    /// acknowledge with `Close` (its sender is still open), and whether the
    /// channel is now finished on both sides.
    pub(crate) fn on_peer_reset(&self, reason: String) -> (bool, bool) {
        let mut c = self.lock();
        c.got_terminal = true;
        let ack = c.local_tx && !c.sent_terminal;
        if ack {
            c.local_tx = false;
            c.sent_terminal = true;
        }
        let finished = c.sent_terminal && c.got_terminal;
        drop(c);
        self.on_reset(reason);
        (ack, finished)
    }

    /// The channel was reset (by the peer, or because the session ended).
    pub(crate) fn on_reset(&self, reason: String) {
        let mut c = self.lock();
        if c.reset.is_none() {
            c.reset = Some(reason);
        }
        drop(c);
        self.readable.notify_waiters();
        self.readable.notify_one();
        self.writable.notify_waiters();
        self.writable.notify_one();
    }

    /// The message handing this channel's other end to the peer was sent.
    pub(crate) fn announce(&self) {
        self.lock().announced = true;
        self.writable.notify_waiters();
        self.writable.notify_one();
    }

    /// Takes the credit of an item of `len` encoded bytes (see
    /// [`credit_cost`]), waiting for grants (and, for a channel created
    /// here, for the message that hands it to the peer).
    pub(crate) async fn take_credit(&self, len: u64) -> Result<(), ChannelError> {
        // A sender with credit to spare takes it without a wake registration.
        if self.try_take_credit_now(len)? {
            return Ok(());
        }
        self.wait_for_credit(len).await
    }

    /// The wait of [`take_credit`](Self::take_credit), once a first look
    /// ([`try_take_credit_now`](Self::try_take_credit_now)) found too little.
    pub(crate) async fn wait_for_credit(&self, len: u64) -> Result<(), ChannelError> {
        let n = credit_cost(len);
        loop {
            let notified = self.writable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let waiters = match self.try_take_credit(n)? {
                CreditTake::Took => return Ok(()),
                CreditTake::WaitTable(waiters) => Some(waiters),
                CreditTake::Wait => None,
            };
            let Some(waiters) = waiters else {
                notified.await;
                continue;
            };
            // Short of table credit: wait in the reactor for the peer's grant
            // (its `grant` sends a wake byte once we are marked), or for a
            // reset or the end of the session (`writable`).
            let n32 = credit_u32(n);
            let table_wait = waiters.wait(
                || self.with_table_sender(|s| s.try_take(n32)),
                || {
                    let _ = self.with_table_sender(|s| {
                        s.arm_reactor();
                        Ok(true)
                    });
                },
                || {
                    let _ = self.with_table_sender(|s| {
                        s.disarm_reactor();
                        Ok(true)
                    });
                },
                || match &self.lock().reset {
                    Some(reason) => Err(ChannelError::Reset {
                        reason: reason.clone(),
                    }),
                    None => Ok(()),
                },
            );
            tokio::select! {
                r = table_wait => return r,
                _ = notified => continue,
            }
        }
    }

    /// Takes the credit of an item of `len` encoded bytes if there is enough now.
    pub(crate) fn try_take_credit_now(&self, len: u64) -> Result<bool, ChannelError> {
        Ok(matches!(
            self.try_take_credit(credit_cost(len))?,
            CreditTake::Took
        ))
    }

    /// Takes `n` bytes of send credit if there are, or says what to wait for.
    fn try_take_credit(&self, n: u64) -> Result<CreditTake, ChannelError> {
        let mut c = self.lock();
        if let Some(reason) = &c.reset {
            return Err(ChannelError::Reset {
                reason: reason.clone(),
            });
        }
        if !c.announced {
            return Ok(CreditTake::Wait);
        }
        match &mut c.flow {
            Flow::Messages { send_available, .. } => {
                if *send_available >= n {
                    *send_available -= n;
                    if *send_available > 0 {
                        // Pass the rest on to another waiting sender.
                        self.writable.notify_one();
                    }
                    return Ok(CreditTake::Took);
                }
                Ok(CreditTake::Wait)
            }
            Flow::Table {
                sender: Some(s),
                waiters,
                ..
            } => {
                if s.try_take(credit_u32(n)).map_err(shm_credit_error)? {
                    return Ok(CreditTake::Took);
                }
                Ok(CreditTake::WaitTable(waiters.clone()))
            }
            // Not bound yet.
            Flow::Table { sender: None, .. } => Ok(CreditTake::Wait),
        }
    }

    /// Runs `f` on the bound table sender (`Ok(false)` if there is none).
    fn with_table_sender(
        &self,
        f: impl FnOnce(&mut CreditSender) -> Result<bool, osmos_shm::Error>,
    ) -> Result<bool, ChannelError> {
        match &mut self.lock().flow {
            Flow::Table { sender: Some(s), .. } => f(s).map_err(shm_credit_error),
            _ => Ok(false),
        }
    }

    /// The next queued item, waiting for one. `Ok(None)` once closed and drained.
    /// Returns the bytes to grant back by message, if a grant is due.
    /// `ahead`: see [`try_next_item`](Self::try_next_item).
    pub(crate) async fn next_item(&self, mut ahead: Option<&mut VecDeque<Queued>>) -> NextItem {
        // A receiver that keeps up with a stream finds the next item queued
        // most of the time: look before paying for a wake registration.
        if let Some(r) = self.try_next_item(ahead.as_deref_mut()) {
            return r;
        }
        if let Some(r) = self.poll_briefly(ahead.as_deref_mut()).await {
            return r;
        }
        loop {
            let notified = self.readable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.try_next_item(ahead.as_deref_mut()) {
                return r;
            }
            notified.await;
        }
    }

    /// Looks for the next item for a short while before the receiver goes
    /// to sleep. A stream's items come a microsecond or less apart, and a
    /// receiver that keeps up empties its queue between two of them: it
    /// would otherwise sleep and be woken for each item, which costs the
    /// driver a wake syscall and the receiver tens of microseconds when
    /// the wake crosses CPUs. A thread that may block (the thread of
    /// `block_on`) spins; a task yields to its executor, so the driver and
    /// other tasks on its worker run meanwhile. Only while it pays (see
    /// [`Adaptive`]): a slow stream turns it off.
    async fn poll_briefly(&self, mut ahead: Option<&mut VecDeque<Queued>>) -> Option<NextItem> {
        if !self.lock().poll.may_try() {
            return None;
        }
        let spin = may_block_here();
        let until = Instant::now() + POLL_BEFORE_SLEEP;
        loop {
            if spin {
                for _ in 0..SPINS_PER_LOOK {
                    std::hint::spin_loop();
                }
            } else {
                tokio::task::yield_now().await;
            }
            if let Some(r) = self.try_next_item(ahead.as_deref_mut()) {
                self.lock().poll.paid();
                return Some(r);
            }
            if Instant::now() >= until {
                self.lock().poll.missed();
                return None;
            }
        }
    }

    /// Whether items wait in the queue (taken by the next
    /// [`try_next_item`](Self::try_next_item)).
    pub(crate) fn has_queued(&self) -> bool {
        !self.lock().queue.is_empty()
    }

    /// The next queued item, the end of the channel, or `None` if the
    /// receiver has to wait (see [`next_item`](Self::next_item)).
    ///
    /// `ahead`: where the receiver keeps items taken ahead. With it, the
    /// items queued behind the one returned move there too, under the same
    /// lock (at most [`READ_AHEAD_ITEMS`] in `ahead` and, past the first,
    /// [`READ_AHEAD_BYTES`] of encoding), their credit counted as consumed
    /// with it: a stream's items then cost a lock and a credit update per
    /// batch, not per item, and what a receiver holds stays bounded by its
    /// window plus one such batch.
    pub(crate) fn try_next_item(&self, ahead: Option<&mut VecDeque<Queued>>) -> Option<NextItem> {
        let mut c = self.lock();
        if let Some(item) = c.queue.pop_front() {
            let (mut grant_message, mut wake) = c.consumed(item.len());
            if let Some(out) = ahead {
                let mut bytes = 0;
                while out.len() < READ_AHEAD_ITEMS && bytes < READ_AHEAD_BYTES {
                    let Some(next) = c.queue.pop_front() else { break };
                    bytes += next.len();
                    let (g, w) = c.consumed(next.len());
                    if let Some(g) = g {
                        grant_message = Some(grant_message.map_or(g, |sum| sum.saturating_add(g)));
                    }
                    // Most items bring no wake: look before moving one (moving
                    // the 72-byte `Option<GrantWake>` per item stalled on a
                    // store-buffer reload). One wake per batch is enough: the
                    // grants are all published when it rings.
                    if wake.is_none() && w.is_some() {
                        wake = w;
                    }
                    out.push_back(next);
                }
            }
            // The sender is woken with the lock let go: on this CPU it may
            // run at once, and its next item must not wait for the lock.
            drop(c);
            if let Some(w) = wake {
                w.ring();
            }
            return Some(Ok(Some((item, grant_message))));
        }
        if let Some(reason) = &c.reset {
            return Some(Err(ChannelError::Reset {
                reason: reason.clone(),
            }));
        }
        if c.remote_closed {
            return Some(Ok(None));
        }
        None
    }
}

/// Most items a receiver keeps taken ahead (see
/// [`ChannelCore::try_next_item`]).
const READ_AHEAD_ITEMS: usize = 64;
/// Most bytes of encoding a receiver takes ahead at once, past the first
/// item (see [`ChannelCore::try_next_item`]).
const READ_AHEAD_BYTES: usize = 16 << 10;

impl ChanInner {
    /// The local receiver took an item of `len` encoded bytes: counts its
    /// credit as consumed and grants a batch back once half the window is
    /// consumed. Returns the bytes to grant by message, or the wake of a
    /// table-mode sender to ring once the lock is let go.
    fn consumed(&mut self, len: usize) -> (Option<u32>, Option<osmos_shm::GrantWake>) {
        self.consumed_since_grant += credit_cost(len as u64);
        if self.consumed_since_grant * 2 < self.window.max(1) {
            return (None, None);
        }
        let g = self.consumed_since_grant.min(u64::from(u32::MAX));
        self.consumed_since_grant -= g;
        match &mut self.flow {
            Flow::Messages { granted, .. } => {
                *granted += g;
                (Some(g as u32), None)
            }
            // Only fails on a window past 2^31, which the grant policy
            // never opens.
            Flow::Table {
                receiver: Some(r), ..
            } => (None, r.grant_later(g as u32).ok()),
            Flow::Table { receiver: None, .. } => (None, None),
        }
    }
}

/// What [`ChannelCore::try_take_credit`] found.
enum CreditTake {
    /// The credit was taken.
    Took,
    /// Wait for `writable` (a grant by message, the announcement, a reset).
    Wait,
    /// Short of table credit: wait for the peer's grant through these.
    WaitTable(crate::link::shm::SideWaiters),
}

/// What [`ChannelCore::next_item`] gives: the next item and the bytes to
/// grant back by message (if a grant is due), `None` once the channel is
/// closed and drained, or the error that ended it.
pub(crate) type NextItem = Result<Option<(Queued, Option<u32>)>, ChannelError>;

/// A credit amount for the table's 32-bit counters (larger asks fail there).
fn credit_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
