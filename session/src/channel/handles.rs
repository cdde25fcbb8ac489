//! The typed handles: [`Tx<T>`] sends items, [`Rx<T>`] receives them. Each
//! is bound to its session while it is used here, and handed over (no longer
//! usable here) once encoded into a message for the peer.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use facet::Facet;

use super::binding::{bind, hand_over};
use super::state::{ITEM_CREDIT, credit_cost};
use super::{ChannelCore, ChannelError, ChannelId, End, Queued};
use crate::fast;
use crate::payload::encode_reflected;
use crate::session::Shared;
use crate::wire::Message;
use crate::wire::spliced::{DirectItem, Spliced};

/// The binding of a handle to its session.
pub(super) struct Bound {
    pub(super) shared: Arc<Shared>,
    pub(super) core: Arc<ChannelCore>,
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
    /// The item type's direct codec, worked out at the first send.
    codec: OnceLock<fast::Codec<T>>,
    _items: PhantomData<fn(T)>,
}

/// The receiving end of a channel of `T` items.
///
/// Pass it to the peer in a call, or keep it and receive. Dropping it resets
/// the channel, so the sender stops. A receive that finds several items
/// queued takes them all at once (up to 64) and hands them out one by one;
/// a receiver that still holds some cannot be passed on (the call that
/// tries fails with an error that says so): receive them first.
#[derive(Facet)]
#[facet(opaque, proxy = ChannelId)]
pub struct Rx<T> {
    id: u64,
    bound: Option<Bound>,
    done: AtomicBool,
    /// `recv` returned the error that ended the channel: it returns `None`
    /// from now on.
    failed: bool,
    /// Items taken from the channel's queue with the last one received,
    /// their credit already granted back (see `ChannelCore::try_next_item`).
    ready: VecDeque<Queued>,
    /// The item type's direct codec, worked out at the first receive.
    codec: Option<fast::Codec<T>>,
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
        codec: OnceLock::new(),
        _items: PhantomData,
    };
    let rx = Rx {
        id,
        bound: Some(Bound {
            shared: shared.clone(),
            core,
        }),
        done: AtomicBool::new(false),
        failed: false,
        ready: VecDeque::new(),
        codec: None,
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
            codec: OnceLock::new(),
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
            failed: false,
            ready: VecDeque::new(),
            codec: None,
            _items: PhantomData,
        })
    }
}

impl<T> TryFrom<&Rx<T>> for ChannelId {
    type Error = String;
    fn try_from(rx: &Rx<T>) -> Result<Self, String> {
        if !rx.ready.is_empty() {
            return Err(format!(
                "channel {} has {} received items not yet read; read them (recv) before handing the receiver on",
                rx.id,
                rx.ready.len()
            ));
        }
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
        sent.map_err(session_ended)
    }
}

impl<T> Tx<T>
where
    T: for<'f> Facet<'f>,
{
    /// Sends one item, waiting for credit if the receiver is behind.
    ///
    /// A small item sent while the peer has not yet read this side's
    /// earlier frames may wait in a batch, joined by the items after it:
    /// the batch leaves as one frame when it is full, before anything else
    /// this session sends, or as soon as the sending task pauses. Items
    /// always arrive in the order they were sent.
    pub async fn send(&self, item: &T) -> Result<(), ChannelError> {
        self.bound()?;
        // An item of a type with a direct codec (a number, a string, bytes,
        // a tuple of them) is encoded straight into the frame: no buffer,
        // and its bytes are copied once, from `item`.
        if let Some(value) = self.codec.get_or_init(fast::Codec::of).direct(item) {
            let msg = DirectItem {
                channel: self.id,
                value: &value,
            };
            // Most items find credit and room at once: they are sent with
            // no wait built for them.
            let b = match self.try_take_credit(value.len())? {
                Some(b) => {
                    if b.shared.try_send_item(&msg).map_err(session_ended)? {
                        return Ok(());
                    }
                    b
                }
                None => self.wait_for_credit(value.len()).await?,
            };
            return b.shared.send_item(&msg).await.map_err(session_ended);
        }
        let bytes = encode_reflected(item).map_err(|detail| ChannelError::Encode { detail })?;
        self.send_bytes(&bytes).await
    }
}

/// Room kept in a message for the item's envelope (kind, channel id and
/// payload length): an item of up to the largest message less this always
/// fits one.
const ITEM_HEADROOM: usize = 64;

/// Why an item of `len` encoded bytes can never be sent over `shared`'s
/// session (completing "an item of …"), or `None` if it can: it must fit
/// the receiver's whole credit window and one message it accepts.
pub(crate) fn never_sendable(shared: &Shared, len: u64) -> Option<String> {
    let (window, largest) = item_limits(shared);
    if credit_cost(len) > window {
        return Some(format!(
            "{len} bytes can never fit the receiver's {window}-byte credit window (an item costs its bytes and {ITEM_CREDIT} more)"
        ));
    }
    (len > largest).then(|| {
        format!(
            "{len} bytes does not fit one message the receiver accepts ({largest} bytes at most): send it as smaller items"
        )
    })
}

/// The limits on one item's encoding over `shared`'s session: the
/// receiver's whole credit window, and what one message it accepts holds.
fn item_limits(shared: &Shared) -> (u64, u64) {
    let window = u64::from(shared.peer_settings().initial_credit);
    let largest = shared.max_message().saturating_sub(ITEM_HEADROOM) as u64;
    (window, largest)
}

/// Taking credit failed with `e`: a peer that broke the credit rules ends
/// the session.
fn credit_failed(b: &Bound, e: ChannelError) -> ChannelError {
    if let ChannelError::PeerBrokeProtocol { rule, detail } = &e {
        b.shared.fail_violation(rule, detail.clone());
    }
    e
}

/// A send failed because the session ended.
fn session_ended(e: crate::SessionError) -> ChannelError {
    ChannelError::SessionEnded {
        reason: e.to_string(),
    }
}

/// Sends an `Item` on `channel` whose payload is `head ++ tail`, written
/// into the frame from the two pieces (see [`Spliced`]) unless one of them
/// is empty.
pub(crate) async fn send_item(
    shared: &Shared,
    channel: u64,
    head: &[u8],
    tail: &[u8],
) -> Result<(), crate::SessionError> {
    if head.is_empty() || tail.is_empty() {
        let payload = if head.is_empty() { tail } else { head };
        return shared.send_item(&Message::Item { channel, payload }).await;
    }
    let empty = Message::Item {
        channel,
        payload: &[],
    };
    shared.send_item(&Spliced::new(&empty, head, tail)).await
}

impl<T> Tx<T> {
    /// Sends one already-encoded item (tunnels send raw bytes this way).
    pub(crate) async fn send_bytes(&self, bytes: &[u8]) -> Result<(), ChannelError> {
        let b = self.take_credit(bytes.len()).await?;
        let msg = Message::Item {
            channel: self.id,
            payload: bytes,
        };
        b.shared.send_item(&msg).await.map_err(session_ended)
    }

    /// Takes credit for an item of `len` encoded bytes, waiting for the
    /// receiver to grant it; refuses an item that can never fit.
    async fn take_credit(&self, len: usize) -> Result<&Bound, ChannelError> {
        // Most items find credit: take it without building the wait.
        match self.try_take_credit(len)? {
            Some(b) => Ok(b),
            None => self.wait_for_credit(len).await,
        }
    }

    /// Takes credit for an item of `len` encoded bytes if there is enough
    /// now (`None` if not); refuses an item that can never fit.
    fn try_take_credit(&self, len: usize) -> Result<Option<&Bound>, ChannelError> {
        let b = self.bound()?;
        let len = len as u64;
        if let Some(why) = never_sendable(&b.shared, len) {
            return Err(ChannelError::Encode {
                detail: format!("an item of {why}"),
            });
        }
        match b.core.try_take_credit_now(len) {
            Ok(true) => Ok(Some(b)),
            Ok(false) => Ok(None),
            Err(e) => Err(credit_failed(b, e)),
        }
    }

    /// Waits for the receiver to grant credit for an item of `len` encoded
    /// bytes (one [`try_take_credit`](Self::try_take_credit) found short),
    /// and takes it.
    async fn wait_for_credit(&self, len: usize) -> Result<&Bound, ChannelError> {
        let b = self.bound()?;
        match b.core.wait_for_credit(len as u64).await {
            Ok(()) => Ok(b),
            Err(e) => Err(credit_failed(b, e)),
        }
    }

    /// The largest item that can ever be sent: the receiver's whole credit
    /// window, and what fits one message.
    pub(crate) fn max_item(&self) -> Option<usize> {
        self.bound.as_ref().map(|b| {
            let (window, largest) = item_limits(&b.shared);
            let fits_window = window.saturating_sub(ITEM_CREDIT);
            usize::try_from(fits_window.min(largest)).unwrap_or(usize::MAX)
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

/// A sender dropped by a panic: its session and channel.
type Unwound = (Arc<Shared>, u64);

thread_local! {
    /// Set while a panicked handler's future is dropped: why it ended.
    static PANICKED: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    /// While a handler is polled: the senders dropped by a panic unwinding
    /// through it, to be reset with the panic's message once it is caught.
    static UNWOUND: std::cell::RefCell<Option<Vec<Unwound>>> = const { std::cell::RefCell::new(None) };
}

/// Polls a handler so that a panic in it ends every stream it was sending
/// on with a reset naming the panic (`why_of` makes the reason from the
/// panic's payload), not with a clean close: senders dropped while the panic
/// unwinds, and those its future still held (the future is dropped here and
/// replaced by one that never resolves). Returns the poll's result or the
/// panic's reason.
pub(crate) fn poll_catching_panics<X: 'static>(
    handler: &mut std::pin::Pin<Box<dyn std::future::Future<Output = X> + Send>>,
    cx: &mut std::task::Context<'_>,
    why_of: impl FnOnce(Box<dyn std::any::Any + Send>) -> String,
) -> Result<std::task::Poll<X>, String> {
    let outer = UNWOUND.with(|u| u.borrow_mut().replace(Vec::new()));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.as_mut().poll(cx)));
    let unwound = UNWOUND
        .with(|u| std::mem::replace(&mut *u.borrow_mut(), outer))
        .unwrap_or_default();
    let r = r.map_err(why_of);
    let reason = match &r {
        Ok(_) if unwound.is_empty() => return r,
        // A panic the handler caught itself dropped senders: they are
        // reset all the same.
        Ok(_) => "the sender panicked".to_string(),
        Err(why) => why.clone(),
    };
    for (shared, channel) in unwound {
        shared.send_later(&Message::Reset {
            channel,
            reason: reason.clone(),
        });
    }
    if r.is_err() {
        let dead = std::mem::replace(handler, Box::pin(std::future::pending()));
        PANICKED.with(|p| *p.borrow_mut() = Some(reason));
        // A destructor that panics too must not unwind into the session.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(dead)));
        PANICKED.with(|p| *p.borrow_mut() = None);
    }
    r
}

/// How a sender dropped now ends its channel: `None` for a clean close;
/// `Some(reason)` for a reset because its owner panicked.
/// `Some(None)`: reset later, when the handler's panic is caught.
fn abandoned_because(shared: &Arc<Shared>, channel: u64) -> Option<Option<String>> {
    if std::thread::panicking() {
        let deferred = UNWOUND.with(|u| match u.borrow_mut().as_mut() {
            Some(list) => {
                list.push((shared.clone(), channel));
                true
            }
            None => false,
        });
        return Some((!deferred).then(|| "the sender panicked".into()));
    }
    PANICKED.with(|p| p.borrow().clone()).map(Some)
}

impl<T> Drop for Tx<T> {
    fn drop(&mut self) {
        if let Some(b) = &self.bound
            && !self.done.swap(true, Ordering::AcqRel)
        {
            match abandoned_because(&b.shared, self.id) {
                None => b.shared.send_later(&Message::Close { channel: self.id }),
                Some(Some(reason)) => b.shared.send_later(&Message::Reset {
                    channel: self.id,
                    reason,
                }),
                Some(None) => {} // reset once the panic is caught
            }
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
    /// item was received, and after the one error that ended the channel (a
    /// reset, the peer's death, the session's end): a loop like
    /// `while let Some(item) = rx.recv().await` always ends. An item that
    /// does not decode ([`ChannelError::Decode`]) does not end the channel.
    pub async fn recv(&mut self) -> Option<Result<T, ChannelError>> {
        if let Some(b) = &self.bound {
            b.core.use_splitter(super::queued::splitter_for::<T>());
        }
        // An item taken ahead is handed out without the wait's future.
        let next = match self.ready_item() {
            Some(next) => next,
            None => self.wait_item().await,
        };
        match next? {
            Ok(item) => {
                let codec = self.codec.get_or_insert_with(fast::Codec::of);
                Some(
                    item.decode(codec)
                        .map_err(|detail| ChannelError::Decode { detail }),
                )
            }
            Err(e) => Some(Err(e)),
        }
    }
}

impl<T> Rx<T> {
    /// The next item's encoded bytes (tunnels receive raw bytes this way),
    /// granting credit back as items are consumed.
    pub(crate) async fn recv_bytes(&mut self) -> Option<Result<Vec<u8>, ChannelError>> {
        Some(self.recv_queued().await?.map(Queued::into_bytes))
    }

    /// The next item as it was queued, granting credit back as items are
    /// consumed.
    async fn recv_queued(&mut self) -> Option<Result<Queued, ChannelError>> {
        match self.ready_item() {
            Some(next) => next,
            None => self.wait_item().await,
        }
    }

    /// The next item once the channel has one (what
    /// [`ready_item`](Self::ready_item) found missing), granting credit
    /// back as items are consumed.
    async fn wait_item(&mut self) -> Option<Result<Queued, ChannelError>> {
        let Some(b) = &self.bound else {
            return Some(Err(ChannelError::Unbound));
        };
        match b.shared.channel_item(&b.core, &mut self.ready).await {
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
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

    /// What [`recv_queued`](Self::recv_queued) returns without waiting: the
    /// end after a failure, [`ChannelError::Unbound`] for a handle handed
    /// over or never bound, or an item taken ahead; `None` when it must
    /// wait for the channel.
    fn ready_item(&mut self) -> Option<Option<Result<Queued, ChannelError>>> {
        if self.failed {
            return Some(None);
        }
        if self.bound.is_none() || self.done.load(Ordering::Acquire) {
            self.failed = true;
            return Some(Some(Err(ChannelError::Unbound)));
        }
        self.ready.pop_front().map(|item| Some(Ok(item)))
    }
}

impl<T> Drop for Rx<T> {
    fn drop(&mut self) {
        // A receiver may have lent the receive side (see `RxClaim::lend`);
        // nobody will take it back for it now.
        if let Some(b) = &self.bound {
            b.shared.end_lend();
        }
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
