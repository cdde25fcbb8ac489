//! In-memory link: a connected pair of [`MemoryLink`]s in one process.
//!
//! Built by [`pair`], for tests and for peers that share a process. Each
//! direction is a bounded tokio [`mpsc`] channel of `Vec<u8>` frames holding at
//! most `capacity` frames in flight; that bound is the link's backpressure.
//!
//! - **Sending.** [`LinkTx::reserve`] first waits for a slot in the channel
//!   ([`mpsc::Sender::reserve`]), so a sender whose peer does not read waits
//!   there. The resulting [`MemoryPermit`] owns a buffer of exactly the
//!   reserved length; [`SendPermit::commit`] moves it into the reserved slot,
//!   which cannot fail or wait. A permit dropped without commit releases the
//!   slot and sends nothing.
//! - **Receiving.** [`LinkRx::recv`] takes the next buffer from the channel and
//!   lends it out as `&[u8]` until the next receive.
//! - **Buffer reuse.** Each direction has a small free list shared by its
//!   sender and receiver: the receiver hands a frame's buffer back when the
//!   next frame arrives, and the sender takes buffers from there before
//!   allocating. In steady state no frame allocates, and a buffer's contents
//!   are reused rather than zeroed again. The list holds at most `capacity + 2`
//!   buffers — as many as can be in flight at once — so its memory is bounded
//!   by what the link already held at its busiest.
//! - **Ending.** [`LinkTx::close`] drops the sender: the peer receives every
//!   frame already committed, then `Ok(None)`. Dropping a whole link (or
//!   its halves) closes both directions the same way. A sender whose peer's
//!   receiver is gone gets [`LinkError::Closed`] from `reserve`.
//!
//! Credit travels as messages ([`CreditMode::Messages`]), as on the stream
//! link.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

use super::{CreditMode, Link, LinkError, LinkRx, LinkTx, SendPermit};

/// Buffers of frames already received, waiting to be reused by the sender of
/// the same direction.
///
/// Invariant: holds at most `limit` buffers.
struct FreeList {
    /// The spare buffers; their lengths and contents are arbitrary.
    buffers: Mutex<Vec<Vec<u8>>>,
    /// Most buffers kept; beyond it a returned buffer is freed.
    limit: usize,
}

impl FreeList {
    fn new(limit: usize) -> Self {
        FreeList {
            buffers: Mutex::new(Vec::with_capacity(limit)),
            limit,
        }
    }

    /// A buffer of exactly `len` bytes with arbitrary contents.
    fn take(&self, len: usize) -> Vec<u8> {
        // A panic while the lock is held cannot leave the list inconsistent
        // (push and pop are single operations), so poisoning is ignored.
        let spare = self.buffers.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let mut buf = spare.unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0);
        } else {
            buf.truncate(len);
        }
        buf
    }

    /// Keeps `buf` for a later frame, unless the list is full.
    fn give(&self, buf: Vec<u8>) {
        if buf.capacity() == 0 {
            return;
        }
        let mut buffers = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        if buffers.len() < self.limit {
            buffers.push(buf);
        }
        debug_assert!(buffers.len() <= self.limit);
    }
}

/// Creates two connected in-memory links: what one sends, the other receives.
///
/// Frames are at most `max_frame` bytes. `capacity` is how many frames may be
/// in flight in each direction before [`LinkTx::reserve`] waits for the peer
/// to receive; it is at least 1 (0 is treated as 1).
pub fn pair(max_frame: usize, capacity: usize) -> (MemoryLink, MemoryLink) {
    let capacity = capacity.max(1);
    let (a_to_b, b_from_a) = direction(max_frame, capacity);
    let (b_to_a, a_from_b) = direction(max_frame, capacity);
    let a = MemoryLink {
        tx: a_to_b,
        rx: a_from_b,
        max_frame,
    };
    let b = MemoryLink {
        tx: b_to_a,
        rx: b_from_a,
        max_frame,
    };
    (a, b)
}

/// One direction: a sender and the receiver it feeds.
fn direction(max_frame: usize, capacity: usize) -> (MemoryTx, MemoryRx) {
    let (sender, receiver) = mpsc::channel(capacity);
    let free = Arc::new(FreeList::new(capacity + 2));
    let tx = MemoryTx {
        sender: Some(sender),
        free: Arc::clone(&free),
        max_frame,
    };
    let rx = MemoryRx {
        receiver,
        free,
        current: Vec::new(),
    };
    (tx, rx)
}

/// One end of an in-memory link, made by [`pair`].
pub struct MemoryLink {
    tx: MemoryTx,
    rx: MemoryRx,
    max_frame: usize,
}

impl std::fmt::Debug for MemoryLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLink")
            .field("max_frame", &self.max_frame)
            .finish_non_exhaustive()
    }
}

impl Link for MemoryLink {
    type Tx = MemoryTx;
    type Rx = MemoryRx;

    fn max_frame(&self) -> usize {
        self.max_frame
    }

    fn credit_mode(&self) -> CreditMode {
        CreditMode::Messages
    }

    fn split(self) -> (MemoryTx, MemoryRx) {
        (self.tx, self.rx)
    }
}

/// The sending half of a [`MemoryLink`].
pub struct MemoryTx {
    /// `None` once [`LinkTx::close`] was called.
    sender: Option<mpsc::Sender<Vec<u8>>>,
    /// Where the peer's receiver returns buffers.
    free: Arc<FreeList>,
    max_frame: usize,
}

impl std::fmt::Debug for MemoryTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTx")
            .field("max_frame", &self.max_frame)
            .field("closed", &self.sender.is_none())
            .finish_non_exhaustive()
    }
}

impl LinkTx for MemoryTx {
    type Permit<'a> = MemoryPermit<'a>;

    /// Waits for a free slot in this direction (at most `capacity` frames are
    /// in flight), then reserves it.
    ///
    /// Fails with [`LinkError::FrameTooLarge`] before waiting if `len` exceeds
    /// the link's `max_frame`, and with [`LinkError::Closed`] if the peer's
    /// receiver is gone or this half was closed.
    async fn reserve(&mut self, len: usize) -> Result<MemoryPermit<'_>, LinkError> {
        if len > self.max_frame {
            return Err(LinkError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        let sender = self.sender.as_ref().ok_or(LinkError::Closed)?;
        let slot = sender.reserve().await.map_err(|_| LinkError::Closed)?;
        Ok(MemoryPermit {
            slot,
            buf: self.free.take(len),
        })
    }

    /// Frames are in flight that the peer has not received yet.
    fn peer_behind(&mut self) -> bool {
        self.sender
            .as_ref()
            .is_some_and(|s| s.capacity() < s.max_capacity())
    }

    /// Sends at once when the direction has a free slot.
    fn try_send_now(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<bool, LinkError> {
        if len > self.max_frame {
            return Err(LinkError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        let sender = self.sender.as_ref().ok_or(LinkError::Closed)?;
        let slot = match sender.try_reserve() {
            Ok(slot) => slot,
            Err(mpsc::error::TrySendError::Full(())) => return Ok(false),
            Err(mpsc::error::TrySendError::Closed(())) => return Err(LinkError::Closed),
        };
        let mut buf = self.free.take(len);
        fill(&mut buf);
        slot.send(buf);
        Ok(true)
    }

    /// Drops the sender: the peer receives the frames already committed, then
    /// `Ok(None)`. Closing twice is harmless.
    async fn close(&mut self) -> Result<(), LinkError> {
        self.sender = None;
        Ok(())
    }
}

/// A reserved slot in a [`MemoryLink`] direction, with the frame's buffer.
pub struct MemoryPermit<'a> {
    slot: mpsc::Permit<'a, Vec<u8>>,
    /// Exactly the reserved length; contents arbitrary until filled.
    buf: Vec<u8>,
}

impl std::fmt::Debug for MemoryPermit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryPermit")
            .field("len", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl SendPermit for MemoryPermit<'_> {
    /// The frame's bytes. They start with arbitrary contents (buffers are
    /// reused): write all of them.
    fn buf(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Moves the frame into its reserved slot. Never waits; if the peer's
    /// receiver went away after the reservation, the frame is dropped, as any
    /// frame in flight would be.
    async fn commit(self) -> Result<(), LinkError> {
        self.slot.send(self.buf);
        Ok(())
    }
}

/// The receiving half of a [`MemoryLink`].
pub struct MemoryRx {
    receiver: mpsc::Receiver<Vec<u8>>,
    /// Where buffers go back to the peer's sender for reuse.
    free: Arc<FreeList>,
    /// The frame last returned by `recv` (empty before the first).
    current: Vec<u8>,
}

impl std::fmt::Debug for MemoryRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRx").finish_non_exhaustive()
    }
}

impl LinkRx for MemoryRx {
    type Frame<'a> = &'a [u8];

    /// The next frame, lent until the next receive; `Ok(None)` once the peer
    /// closed or dropped its sending half and every earlier frame was
    /// received. Never fails.
    ///
    /// Cancel-safe: if the future is dropped before completing, no frame is
    /// lost.
    async fn recv(&mut self) -> Result<Option<&[u8]>, LinkError> {
        match self.receiver.recv().await {
            Some(frame) => {
                let previous = std::mem::replace(&mut self.current, frame);
                self.free.give(previous);
                Ok(Some(&self.current))
            }
            None => Ok(None),
        }
    }
}
