//! Typed streaming channels: [`Tx<T>`] / [`Rx<T>`], with per-channel credit.
//!
//! A channel is created in pairs with [`Connection::channel`]; one end stays
//! here and the other is passed to the peer *inside* a call's arguments or
//! return value. On the wire a handle is just its channel id: `Tx<T>` and
//! `Rx<T>` are facet types with a proxy (`ChannelId`), and the conversion
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

use crate::session::Shared;
use crate::wire::Message;

/// A channel's id on the wire.
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
            ChannelError::Unbound => f.write_str(
                "this channel handle was handed to the peer (or never bound to a session) and cannot be used here",
            ),
        }
    }
}

impl std::error::Error for ChannelError {}

/// The session's state of one channel, shared by its local handle(s) and the
/// session driver.
pub(crate) struct ChannelCore {
    pub(crate) id: u64,
    inner: Mutex<ChanInner>,
    /// Items, a close or a reset arrived.
    readable: Notify,
    /// Credit or a reset arrived.
    writable: Notify,
}

#[derive(Default)]
struct ChanInner {
    queue: VecDeque<Vec<u8>>,
    /// Bytes we granted the peer in total (receiving side).
    granted: u64,
    /// Bytes we received in total (receiving side). `received <= granted`.
    received: u64,
    /// Bytes consumed by the local receiver since our last grant.
    consumed_since_grant: u64,
    /// Window size used for grants: our initial credit.
    window: u64,
    /// Bytes we may still send (sending side).
    send_available: u64,
    /// The peer closed its sending side: no more items.
    remote_closed: bool,
    /// Set when either side reset the channel.
    reset: Option<String>,
    /// The peer knows this channel: it created it, or the message handing it
    /// over was sent. Items may only be sent once it is.
    announced: bool,
}

impl ChannelCore {
    pub(crate) fn new(id: u64, recv_window: u32, send_window: u32, announced: bool) -> Arc<Self> {
        Arc::new(ChannelCore {
            id,
            inner: Mutex::new(ChanInner {
                granted: u64::from(recv_window),
                window: u64::from(recv_window),
                send_available: u64::from(send_window),
                announced,
                ..ChanInner::default()
            }),
            readable: Notify::new(),
            writable: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChanInner> {
        // A panic while holding this lock leaves plain counters behind; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
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
        if c.received + len > c.granted {
            return Err(crate::error::violation(
                "credit.no-overrun",
                format!(
                    "channel {}: item of {len} bytes with only {} bytes of credit left ({} granted, {} received)",
                    self.id,
                    c.granted - c.received,
                    c.granted,
                    c.received
                ),
            ));
        }
        c.received += len;
        if c.reset.is_none() {
            c.queue.push_back(payload.to_vec());
        }
        drop(c);
        self.readable.notify_one();
        Ok(())
    }

    /// The peer granted more credit (driver).
    pub(crate) fn on_grant(&self, bytes: u32) -> Result<(), crate::error::Violation> {
        let mut c = self.lock();
        c.send_available += u64::from(bytes);
        if c.send_available > u64::from(u32::MAX) {
            return Err(crate::error::violation(
                "credit.grant-bounded",
                format!(
                    "channel {}: the peer granted a window of {} bytes (at most 2^32)",
                    self.id, c.send_available
                ),
            ));
        }
        drop(c);
        self.writable.notify_one();
        Ok(())
    }

    /// The peer closed its sending side (driver).
    pub(crate) fn on_close(&self) -> Result<(), crate::error::Violation> {
        let mut c = self.lock();
        if c.remote_closed {
            return Err(crate::error::violation(
                "channel.close-once",
                format!("channel {} closed twice", self.id),
            ));
        }
        c.remote_closed = true;
        drop(c);
        self.readable.notify_one();
        Ok(())
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
    async fn take_credit(&self, n: u64) -> Result<(), ChannelError> {
        loop {
            let notified = self.writable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut c = self.lock();
                if let Some(reason) = &c.reset {
                    return Err(ChannelError::Reset {
                        reason: reason.clone(),
                    });
                }
                if c.announced && c.send_available >= n {
                    c.send_available -= n;
                    // Someone else may be waiting for what is left.
                    if c.send_available > 0 {
                        self.writable.notify_one();
                    }
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    /// The next queued item, waiting for one. `Ok(None)` once closed and drained.
    /// Returns the bytes to grant back, if a grant is due.
    async fn next_item(&self) -> Result<Option<(Vec<u8>, Option<u32>)>, ChannelError> {
        loop {
            let notified = self.readable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut c = self.lock();
                if let Some(item) = c.queue.pop_front() {
                    c.consumed_since_grant += item.len() as u64;
                    let grant = if c.consumed_since_grant * 2 >= c.window.max(1) {
                        let g = c.consumed_since_grant.min(u64::from(u32::MAX));
                        c.consumed_since_grant -= g;
                        c.granted += g;
                        Some(g as u32)
                    } else {
                        None
                    };
                    return Ok(Some((item, grant)));
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

/// What a binding context is doing.
enum BindMode {
    /// Encoding: handles met are handed over; their ids are collected.
    Encode { collected: Vec<u64> },
    /// Measuring a decoded value's encoded size: handles are not touched.
    Measure,
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

/// Decodes `bytes` as a `T`, refusing trailing bytes: postcard is not
/// self-describing, so a payload of the wrong type often decodes "successfully"
/// with bytes to spare. The decoded value is re-measured (channel handles in
/// it are measured, not handed over) and must account for every byte.
pub(crate) fn decode_exact<T: Facet<'static>>(bytes: &[u8]) -> Result<T, String> {
    let value: T = facet_postcard::from_slice(bytes).map_err(|e| e.to_string())?;
    let prev = CONTEXT.with(|c| {
        c.borrow_mut()
            .as_mut()
            .map(|ctx| std::mem::replace(&mut ctx.mode, BindMode::Measure))
    });
    let measured = facet_postcard::to_vec(&value).map(|v| v.len());
    CONTEXT.with(|c| {
        if let (Some(ctx), Some(mode)) = (c.borrow_mut().as_mut(), prev) {
            ctx.mode = mode;
        }
    });
    // Without a context (e.g. a channel item), handles cannot be measured;
    // such values are checked by decoding alone.
    match measured {
        Ok(n) if n != bytes.len() => Err(format!(
            "{} bytes, but a {} encodes in {n}: the payload is not of the expected type",
            bytes.len(),
            std::any::type_name::<T>()
        )),
        _ => Ok(value),
    }
}

/// Binds a decoded channel id to the session's channel state.
fn bind(id: ChannelId) -> Result<(Arc<Shared>, Arc<ChannelCore>), String> {
    CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        let Some(ctx) = c.as_mut() else {
            return Err("a channel handle can only be decoded by a session, as part of a call".to_string());
        };
        let BindMode::Decode { allowed, bound } = &mut ctx.mode else {
            return Err("a channel handle cannot be decoded while encoding".to_string());
        };
        if !allowed.contains(&id.0) {
            return Err(format!(
                "channel {} is not listed in the message's channels",
                id.0
            ));
        }
        if bound.contains(&id.0) {
            return Err(format!("channel {} appears twice in one message", id.0));
        }
        let core = ctx
            .shared
            .channel_core(id.0)
            .ok_or_else(|| format!("channel {} is not open", id.0))?;
        bound.push(id.0);
        Ok((ctx.shared.clone(), core))
    })
}

/// Hands a channel handle over to the peer while encoding.
fn hand_over(id: u64, handed: &AtomicBool) -> Result<ChannelId, String> {
    CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        match c.as_mut().map(|ctx| &mut ctx.mode) {
            Some(BindMode::Measure) => Ok(ChannelId(id)),
            Some(BindMode::Encode { collected }) => {
                if handed.swap(true, Ordering::AcqRel) {
                    return Err(format!("channel {id} was already handed to the peer"));
                }
                collected.push(id);
                Ok(ChannelId(id))
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
    fn try_from(id: ChannelId) -> Result<Self, String> {
        let (shared, core) = bind(id)?;
        Ok(Tx {
            id: id.0,
            bound: Some(Bound { shared, core }),
            done: AtomicBool::new(false),
            _items: PhantomData,
        })
    }
}

impl<T> TryFrom<&Tx<T>> for ChannelId {
    type Error = String;
    fn try_from(tx: &Tx<T>) -> Result<Self, String> {
        hand_over(tx.id, &tx.done)
    }
}

impl<T> TryFrom<ChannelId> for Rx<T> {
    type Error = String;
    fn try_from(id: ChannelId) -> Result<Self, String> {
        let (shared, core) = bind(id)?;
        Ok(Rx {
            id: id.0,
            bound: Some(Bound { shared, core }),
            done: AtomicBool::new(false),
            _items: PhantomData,
        })
    }
}

impl<T> TryFrom<&Rx<T>> for ChannelId {
    type Error = String;
    fn try_from(rx: &Rx<T>) -> Result<Self, String> {
        hand_over(rx.id, &rx.done)
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
        b.shared
            .send(&Message::Close { channel: self.id })
            .await
            .map_err(|e| ChannelError::SessionEnded {
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
        let b = self.bound()?;
        let bytes = facet_postcard::to_vec(item).map_err(|e| ChannelError::Encode {
            detail: e.to_string(),
        })?;
        let window = u64::from(b.shared.peer_settings().initial_credit);
        if bytes.len() as u64 > window {
            return Err(ChannelError::Encode {
                detail: format!(
                    "an item of {} bytes can never fit the receiver's {window}-byte credit window",
                    bytes.len()
                ),
            });
        }
        b.core.take_credit(bytes.len() as u64).await?;
        b.shared
            .send(&Message::Item {
                channel: self.id,
                payload: &bytes,
            })
            .await
            .map_err(|e| ChannelError::SessionEnded {
                reason: e.to_string(),
            })
    }
}

impl<T> Drop for Tx<T> {
    fn drop(&mut self) {
        if let Some(b) = &self.bound
            && !self.done.swap(true, Ordering::AcqRel)
        {
            b.shared.forget_channel(self.id);
            b.shared.send_later(&Message::Close { channel: self.id });
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
        let b = match &self.bound {
            Some(b) if !self.done.load(Ordering::Acquire) => b,
            _ => return Some(Err(ChannelError::Unbound)),
        };
        match b.core.next_item().await {
            Ok(None) => None,
            Err(e) => Some(Err(e)),
            Ok(Some((bytes, grant))) => {
                if let Some(bytes) = grant {
                    // Best effort: if the session is gone, so is the sender.
                    let _ = b
                        .shared
                        .send(&Message::GrantCredit {
                            channel: self.id,
                            bytes,
                        })
                        .await;
                }
                Some(decode_exact(&bytes).map_err(|detail| ChannelError::Decode { detail }))
            }
        }
    }
}

impl<T> Drop for Rx<T> {
    fn drop(&mut self) {
        if let Some(b) = &self.bound
            && !self.done.swap(true, Ordering::AcqRel)
        {
            b.shared.forget_channel(self.id);
            b.shared.send_later(&Message::Reset {
                channel: self.id,
                reason: "the receiver was dropped".into(),
            });
        }
    }
}
