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
//! [`Connection::channel`]: crate::Connection::channel

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use facet::Facet;
use tokio::sync::Notify;

use osmos_shm::{CreditReceiver, CreditSender, CreditTable};

use crate::session::Shared;
use crate::wire::Message;

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
}

struct ChanInner {
    queue: VecDeque<Vec<u8>>,
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
}

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
            }),
            readable: Notify::new(),
            writable: Notify::new(),
        })
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

    /// An item arrived (driver). Checks the peer's credit and queues it.
    pub(crate) fn on_item(&self, payload: &[u8]) -> Result<(), crate::error::Violation> {
        let mut c = self.lock();
        if c.remote_closed {
            return Err(crate::error::violation(
                "channel.no-data-after-close",
                format!(
                    "item of {} bytes on channel {} after its Close",
                    payload.len(),
                    self.id
                ),
            ));
        }
        let len = payload.len() as u64;
        match &mut c.flow {
            Flow::Messages {
                granted, received, ..
            } => {
                if *received + len > *granted {
                    return Err(crate::error::violation(
                        "credit.no-overrun",
                        format!(
                            "channel {}: item of {len} bytes with only {} bytes of credit left ({granted} granted, {received} received)",
                            self.id,
                            *granted - *received,
                        ),
                    ));
                }
                *received += len;
            }
            Flow::Table {
                receiver: Some(r), ..
            } => {
                let n = u32::try_from(len).unwrap_or(u32::MAX);
                r.on_received(n).map_err(|e| match e {
                    osmos_shm::Error::Violation(v) => crate::error::violation(v.rule.name(), v.detail),
                    other => crate::error::violation("credit.no-overrun", other.to_string()),
                })?;
            }
            Flow::Table { receiver: None, .. } => {
                return Err(crate::error::violation(
                    "credit.no-overrun",
                    format!("item on channel {} before any credit was granted", self.id),
                ));
            }
        }
        if c.reset.is_none() && c.local_rx {
            c.queue.push_back(payload.to_vec());
        }
        drop(c);
        self.readable.notify_one();
        Ok(())
    }

    /// The peer granted more credit by message (driver).
    pub(crate) fn on_grant(&self, bytes: u32) -> Result<(), crate::error::Violation> {
        let mut c = self.lock();
        match &mut c.flow {
            Flow::Messages { send_available, .. } => {
                *send_available += u64::from(bytes);
                if *send_available > u64::from(u32::MAX) {
                    return Err(crate::error::violation(
                        "credit.grant-bounded",
                        format!(
                            "channel {}: the peer granted a window of {} bytes (at most 2^32)",
                            self.id, send_available
                        ),
                    ));
                }
            }
            Flow::Table { .. } => {
                return Err(crate::error::violation(
                    "credit.mode",
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
                "channel.close-once",
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

    /// Takes `n` bytes of send credit, waiting for grants (and, for a channel
    /// created here, for the message that hands it to the peer).
    pub(crate) async fn take_credit(&self, n: u64) -> Result<(), ChannelError> {
        loop {
            let notified = self.writable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let waiters = {
                let mut c = self.lock();
                if let Some(reason) = &c.reset {
                    return Err(ChannelError::Reset {
                        reason: reason.clone(),
                    });
                }
                if !c.announced {
                    None
                } else {
                    match &mut c.flow {
                        Flow::Messages { send_available, .. } => {
                            if *send_available >= n {
                                *send_available -= n;
                                if *send_available > 0 {
                                    self.writable.notify_one();
                                }
                                return Ok(());
                            }
                            None
                        }
                        Flow::Table {
                            sender: Some(s),
                            waiters,
                            ..
                        } => {
                            if s.try_take(credit_u32(n)).map_err(shm_credit_error)? {
                                return Ok(());
                            }
                            Some(waiters.clone())
                        }
                        // Not bound yet.
                        Flow::Table { sender: None, .. } => None,
                    }
                }
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
    pub(crate) async fn next_item(&self) -> Result<Option<(Vec<u8>, Option<u32>)>, ChannelError> {
        loop {
            let notified = self.readable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut c = self.lock();
                if let Some(item) = c.queue.pop_front() {
                    c.consumed_since_grant += item.len() as u64;
                    let mut grant_message = None;
                    if c.consumed_since_grant * 2 >= c.window.max(1) {
                        let g = c.consumed_since_grant.min(u64::from(u32::MAX));
                        c.consumed_since_grant -= g;
                        match &mut c.flow {
                            Flow::Messages { granted, .. } => {
                                *granted += g;
                                grant_message = Some(g as u32);
                            }
                            Flow::Table {
                                receiver: Some(r), ..
                            } => {
                                // Only fails on a window past 2^31, which the
                                // grant policy never opens.
                                let _ = r.grant(g as u32);
                            }
                            Flow::Table { receiver: None, .. } => {}
                        }
                    }
                    return Ok(Some((item, grant_message)));
                }
                if let Some(reason) = &c.reset {
                    return Err(ChannelError::Reset {
                        reason: reason.clone(),
                    });
                }
                if c.remote_closed {
                    return Ok(None);
                }
            }
            notified.await;
        }
    }
}

/// A credit amount for the table's 32-bit counters (larger asks fail there).
fn credit_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What a binding context is doing.
enum BindMode {
    /// Encoding: handles met are handed over; their ids are collected.
    Encode { collected: Vec<u64> },
    /// Decoding: only the listed ids may be bound.
    Decode { allowed: Vec<u64>, bound: Vec<u64> },
}

struct BindContext {
    shared: Arc<Shared>,
    mode: BindMode,
}

thread_local! {
    static CONTEXT: RefCell<Option<BindContext>> = const { RefCell::new(None) };
}

/// Runs `f` (a synchronous encode) with a binding context; returns its
/// result and the ids of the channel handles it handed over.
pub(crate) fn with_encode_context<R>(shared: &Arc<Shared>, f: impl FnOnce() -> R) -> (R, Vec<u64>) {
    let prev = CONTEXT.with(|c| {
        c.replace(Some(BindContext {
            shared: shared.clone(),
            mode: BindMode::Encode {
                collected: Vec::new(),
            },
        }))
    });
    let r = f();
    let ctx = CONTEXT.with(|c| c.replace(prev));
    let ids = match ctx.map(|c| c.mode) {
        Some(BindMode::Encode { collected }) => collected,
        _ => Vec::new(),
    };
    (r, ids)
}

/// Runs `f` (a synchronous decode) allowing handles with the listed ids to
/// bind. Returns its result and the ids that were bound.
pub(crate) fn with_decode_context<R>(
    shared: &Arc<Shared>,
    allowed: &[u64],
    f: impl FnOnce() -> R,
) -> (R, Vec<u64>) {
    let prev = CONTEXT.with(|c| {
        c.replace(Some(BindContext {
            shared: shared.clone(),
            mode: BindMode::Decode {
                allowed: allowed.to_vec(),
                bound: Vec::new(),
            },
        }))
    });
    let r = f();
    let ctx = CONTEXT.with(|c| c.replace(prev));
    let bound = match ctx.map(|c| c.mode) {
        Some(BindMode::Decode { bound, .. }) => bound,
        _ => Vec::new(),
    };
    (r, bound)
}

/// Encodes a value (an argument list, a result, an item) as postcard.
pub(crate) fn encode_value<'f, T: Facet<'f>>(value: &T) -> Result<Vec<u8>, String> {
    match crate::fast::encode(value) {
        Some(bytes) => Ok(bytes),
        None => facet_postcard::to_vec(value).map_err(|e| e.to_string()),
    }
}

/// Decodes `bytes` as a `T`, refusing trailing bytes: postcard is not
/// self-describing, so a payload of the wrong type often decodes "successfully"
/// with bytes to spare. The parser's position after the value must be the
/// end of the payload.
pub(crate) fn decode_exact<T: Facet<'static>>(bytes: &[u8]) -> Result<T, String> {
    use facet_format::FormatParser as _;
    if let Some(r) = crate::fast::decode(bytes) {
        return r;
    }
    let mut parser = facet_postcard::PostcardParser::new(bytes);
    let value: T = facet_format::FormatDeserializer::new_owned(&mut parser)
        .deserialize()
        .map_err(|e| e.to_string())?;
    let used = parser.current_span().map_or(0, |s| s.offset as usize);
    if used != bytes.len() {
        return Err(format!(
            "{} bytes, but a {} ends after {used}: the payload is not of the expected type",
            bytes.len(),
            std::any::type_name::<T>()
        ));
    }
    Ok(value)
}

/// Binds a decoded channel handle (a position in the message's channel list)
/// to the session's channel state. Returns the channel's id with the binding.
fn bind(index: ChannelId, end: End) -> Result<(u64, Arc<Shared>, Arc<ChannelCore>), String> {
    CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        let Some(ctx) = c.as_mut() else {
            return Err("a channel handle can only be decoded by a session, as part of a call".to_string());
        };
        let BindMode::Decode { allowed, bound } = &mut ctx.mode else {
            return Err("a channel handle cannot be decoded while encoding".to_string());
        };
        let Some(&id) = usize::try_from(index.0).ok().and_then(|i| allowed.get(i)) else {
            return Err(format!(
                "channel handle {} points past the message's {} listed channels",
                index.0,
                allowed.len()
            ));
        };
        if bound.contains(&id) {
            return Err(format!("channel {id} appears twice in one message"));
        }
        let core = ctx
            .shared
            .channel_core(id)
            .ok_or_else(|| format!("channel {id} is not open"))?;
        bound.push(id);
        core.attach(end);
        // We hold `end`: the receiver's initial credit is ours if we receive.
        let initial = match end {
            End::Rx => ctx.shared.our_initial_credit(),
            End::Tx => ctx.shared.peer_settings().initial_credit,
        };
        core.init_credit(initial, false)?;
        Ok((id, ctx.shared.clone(), core))
    })
}

/// For a relay (forwarding): binds every channel the message being decoded
/// lists, in list order, holding both ends (a relay moves items whichever
/// way they flow). Returns the session and the channels.
pub(crate) fn bind_listed_for_relay() -> Result<(Arc<Shared>, Vec<Arc<ChannelCore>>), String> {
    CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        let Some(ctx) = c.as_mut() else {
            return Err("channels can only be taken by a session, as part of a call".to_string());
        };
        let BindMode::Decode { allowed, bound } = &mut ctx.mode else {
            return Err("channels cannot be taken while encoding".to_string());
        };
        let mut cores = Vec::with_capacity(allowed.len());
        for &id in allowed.iter() {
            if bound.contains(&id) {
                return Err(format!("channel {id} appears twice in one message"));
            }
            let core = ctx
                .shared
                .channel_core(id)
                .ok_or_else(|| format!("channel {id} is not open"))?;
            bound.push(id);
            core.attach(End::Tx);
            core.attach(End::Rx);
            core.init_credit(ctx.shared.our_initial_credit(), false)?;
            cores.push(core);
        }
        Ok((ctx.shared.clone(), cores))
    })
}

/// For a relay (forwarding): lists channel `id` (created here, both ends
/// held by the relay) in the message being encoded.
pub(crate) fn list_for_relay(id: u64) -> Result<(), String> {
    CONTEXT.with(|c| match c.borrow_mut().as_mut().map(|ctx| &mut ctx.mode) {
        Some(BindMode::Encode { collected }) => {
            collected.push(id);
            Ok(())
        }
        _ => Err("a relayed channel can only be listed while encoding a message".to_string()),
    })
}

/// Hands a channel handle (of `end`) over to the peer while encoding.
fn hand_over(id: u64, handed: &AtomicBool, end: End, bound: Option<&Bound>) -> Result<ChannelId, String> {
    CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        match c.as_mut().map(|ctx| &mut ctx.mode) {
            Some(BindMode::Encode { collected }) => {
                if handed.swap(true, Ordering::AcqRel) {
                    return Err(format!("channel {id} was already handed to the peer"));
                }
                if let Some(b) = bound {
                    b.core.detach(end);
                    // The peer gets `end`: the receiver's initial credit is
                    // ours if the peer sends. The creator sets up the shared
                    // counters now, before the message announcing it is sent.
                    let initial = match end {
                        End::Tx => b.shared.our_initial_credit(),
                        End::Rx => b.shared.peer_settings().initial_credit,
                    };
                    b.core.init_credit(initial, b.core.created_here)?;
                }
                collected.push(id);
                Ok(ChannelId(collected.len() as u64 - 1))
            }
            _ => Err(
                "a channel handle can only be sent as part of a call's arguments or return value".to_string(),
            ),
        }
    })
}

/// The binding of a handle to its session.
struct Bound {
    shared: Arc<Shared>,
    core: Arc<ChannelCore>,
}

/// The sending end of a channel of `T` items.
///
/// Pass it to the peer in a call (it is then handed over and can no longer
/// be used here), or keep it and send. Dropping it closes the channel.
#[derive(Facet)]
#[facet(opaque, proxy = ChannelId)]
pub struct Tx<T> {
    id: u64,
    bound: Option<Bound>,
    /// Set once the handle was encoded into a message (handed to the peer) or closed.
    done: AtomicBool,
    _items: PhantomData<fn(T)>,
}

/// The receiving end of a channel of `T` items.
///
/// Pass it to the peer in a call, or keep it and receive. Dropping it resets
/// the channel, so the sender stops.
#[derive(Facet)]
#[facet(opaque, proxy = ChannelId)]
pub struct Rx<T> {
    id: u64,
    bound: Option<Bound>,
    done: AtomicBool,
    _items: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Tx<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx").field("channel", &self.id).finish()
    }
}

impl<T> fmt::Debug for Rx<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rx").field("channel", &self.id).finish()
    }
}

/// Creates both ends of a new channel, bound to `shared`'s session.
pub(crate) fn pair<T>(shared: &Arc<Shared>, core: Arc<ChannelCore>) -> (Tx<T>, Rx<T>) {
    let id = core.id;
    core.attach(End::Tx);
    core.attach(End::Rx);
    let tx = Tx {
        id,
        bound: Some(Bound {
            shared: shared.clone(),
            core: core.clone(),
        }),
        done: AtomicBool::new(false),
        _items: PhantomData,
    };
    let rx = Rx {
        id,
        bound: Some(Bound {
            shared: shared.clone(),
            core,
        }),
        done: AtomicBool::new(false),
        _items: PhantomData,
    };
    (tx, rx)
}

impl<T> TryFrom<ChannelId> for Tx<T> {
    type Error = String;
    fn try_from(index: ChannelId) -> Result<Self, String> {
        let (id, shared, core) = bind(index, End::Tx)?;
        Ok(Tx {
            id,
            bound: Some(Bound { shared, core }),
            done: AtomicBool::new(false),
            _items: PhantomData,
        })
    }
}

impl<T> TryFrom<&Tx<T>> for ChannelId {
    type Error = String;
    fn try_from(tx: &Tx<T>) -> Result<Self, String> {
        hand_over(tx.id, &tx.done, End::Tx, tx.bound.as_ref())
    }
}

impl<T> TryFrom<ChannelId> for Rx<T> {
    type Error = String;
    fn try_from(index: ChannelId) -> Result<Self, String> {
        let (id, shared, core) = bind(index, End::Rx)?;
        Ok(Rx {
            id,
            bound: Some(Bound { shared, core }),
            done: AtomicBool::new(false),
            _items: PhantomData,
        })
    }
}

impl<T> TryFrom<&Rx<T>> for ChannelId {
    type Error = String;
    fn try_from(rx: &Rx<T>) -> Result<Self, String> {
        hand_over(rx.id, &rx.done, End::Rx, rx.bound.as_ref())
    }
}

impl<T> Tx<T> {
    /// The channel's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    fn bound(&self) -> Result<&Bound, ChannelError> {
        match &self.bound {
            Some(b) if !self.done.load(Ordering::Acquire) => Ok(b),
            _ => Err(ChannelError::Unbound),
        }
    }

    /// Closes the channel: the receiver gets the items sent so far, then the end.
    pub async fn close(self) -> Result<(), ChannelError> {
        let b = self.bound()?;
        self.done.store(true, Ordering::Release);
        let finished = b.core.end_local(End::Tx);
        let sent = b.shared.send(&Message::Close { channel: self.id }).await;
        if finished {
            b.shared.retire_channel(self.id);
        }
        sent.map_err(|e| ChannelError::SessionEnded {
            reason: e.to_string(),
        })
    }
}

impl<T> Tx<T>
where
    T: for<'f> Facet<'f>,
{
    /// Sends one item, waiting for credit if the receiver is behind.
    pub async fn send(&self, item: &T) -> Result<(), ChannelError> {
        self.bound()?;
        let bytes = encode_value(item).map_err(|detail| ChannelError::Encode { detail })?;
        self.send_bytes(&bytes).await
    }
}

impl<T> Tx<T> {
    /// Sends one already-encoded item (tunnels send raw bytes this way).
    pub(crate) async fn send_bytes(&self, bytes: &[u8]) -> Result<(), ChannelError> {
        let b = self.bound()?;
        let window = u64::from(b.shared.peer_settings().initial_credit);
        if bytes.len() as u64 > window {
            return Err(ChannelError::Encode {
                detail: format!(
                    "an item of {} bytes can never fit the receiver's {window}-byte credit window",
                    bytes.len()
                ),
            });
        }
        match b.core.take_credit(bytes.len() as u64).await {
            Ok(()) => {}
            Err(ChannelError::PeerBrokeProtocol { rule, detail }) => {
                b.shared.fail_violation(rule, detail.clone());
                return Err(ChannelError::PeerBrokeProtocol { rule, detail });
            }
            Err(e) => return Err(e),
        }
        b.shared
            .send(&Message::Item {
                channel: self.id,
                payload: bytes,
            })
            .await
            .map_err(|e| ChannelError::SessionEnded {
                reason: e.to_string(),
            })
    }

    /// The largest item that can ever be sent: the receiver's whole credit
    /// window, and what fits one message.
    pub(crate) fn max_item(&self) -> Option<usize> {
        self.bound.as_ref().map(|b| {
            (b.shared.peer_settings().initial_credit as usize).min(b.shared.max_message().saturating_sub(64))
        })
    }

    /// Abandons the channel: the receiver gets the items sent so far, then
    /// an error with `reason` instead of a clean end.
    pub(crate) fn abort(&self, reason: &str) {
        if let Some(b) = &self.bound
            && !self.done.swap(true, Ordering::AcqRel)
        {
            b.shared.send_later(&Message::Reset {
                channel: self.id,
                reason: reason.to_string(),
            });
            if b.core.end_local(End::Tx) {
                b.shared.retire_channel(self.id);
            }
        }
    }
}

impl<T> Drop for Tx<T> {
    fn drop(&mut self) {
        if let Some(b) = &self.bound
            && !self.done.swap(true, Ordering::AcqRel)
        {
            b.shared.send_later(&Message::Close { channel: self.id });
            if b.core.end_local(End::Tx) {
                b.shared.retire_channel(self.id);
            }
        }
    }
}

impl<T> Rx<T> {
    /// The channel's id.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl<T> Rx<T>
where
    T: Facet<'static>,
{
    /// The next item; `None` once the sender closed the channel and every
    /// item was received.
    pub async fn recv(&mut self) -> Option<Result<T, ChannelError>> {
        match self.recv_bytes().await? {
            Ok(bytes) => Some(decode_exact(&bytes).map_err(|detail| ChannelError::Decode { detail })),
            Err(e) => Some(Err(e)),
        }
    }
}

impl<T> Rx<T> {
    /// The next item's encoded bytes (tunnels receive raw bytes this way),
    /// granting credit back as items are consumed.
    pub(crate) async fn recv_bytes(&mut self) -> Option<Result<Vec<u8>, ChannelError>> {
        let b = match &self.bound {
            Some(b) if !self.done.load(Ordering::Acquire) => b,
            _ => return Some(Err(ChannelError::Unbound)),
        };
        match b.core.next_item().await {
            Ok(None) => None,
            Err(e) => Some(Err(e)),
            Ok(Some((bytes, grant))) => {
                if let Some(g) = grant {
                    // Best effort: if the session is gone, so is the sender.
                    let _ = b
                        .shared
                        .send(&Message::GrantCredit {
                            channel: self.id,
                            bytes: g,
                        })
                        .await;
                }
                Some(Ok(bytes))
            }
        }
    }
}

impl<T> Drop for Rx<T> {
    fn drop(&mut self) {
        if let Some(b) = &self.bound
            && !self.done.swap(true, Ordering::AcqRel)
        {
            b.shared.send_later(&Message::Reset {
                channel: self.id,
                reason: "the receiver was dropped".into(),
            });
            if b.core.end_local(End::Rx) {
                b.shared.retire_channel(self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::decode_exact;

    #[test]
    fn decode_exact_refuses_spare_bytes() {
        let mut bytes = facet_postcard::to_vec(&(1u32, 300u32)).unwrap();
        assert_eq!(decode_exact::<(u32, u32)>(&bytes).unwrap(), (1, 300));
        bytes.push(7);
        let e = decode_exact::<(u32, u32)>(&bytes).unwrap_err();
        assert!(e.contains("ends after 3"), "{e}");
        // A wrong type that happens to decode: a u32 read from a pair.
        let e = decode_exact::<u32>(&bytes[..3]).unwrap_err();
        assert!(e.contains("ends after 1"), "{e}");
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let bytes = facet_postcard::to_vec(&data).unwrap();
        assert_eq!(decode_exact::<Vec<u8>>(&bytes).unwrap(), data);
        assert!(decode_exact::<Vec<u8>>(&bytes[..bytes.len() - 1]).is_err());
    }
}
