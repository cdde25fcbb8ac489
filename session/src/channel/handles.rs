//! The typed handles: [`Tx<T>`] sends items, [`Rx<T>`] receives them. Each
//! is bound to its session while it is used here, and handed over (no longer
//! usable here) once encoded into a message for the peer.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use facet::Facet;

use super::binding::{bind, hand_over};
use super::{ChannelCore, ChannelError, ChannelId, End};
use crate::payload::{decode_exact, encode_value};
use crate::session::Shared;
use crate::wire::Message;

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
