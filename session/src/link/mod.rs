//! Links: ordered, reliable carriers of whole frames between two peers.
//!
//! The session runs unchanged over any [`Link`]. A link is split into a
//! sending half ([`LinkTx`]) and a receiving half ([`LinkRx`]), used by
//! different tasks. Sending has a reservation step: [`LinkTx::reserve`] waits
//! (asynchronously) until a frame of the given size can be written — this is
//! where backpressure reaches the session — and hands out a [`SendPermit`]
//! whose buffer the session encodes into in place, then commits. A permit
//! dropped without [`SendPermit::commit`] sends nothing. Receiving hands out a
//! frame that may borrow the link's memory until the next receive: always
//! memory the peer cannot write (the shm link copies each frame out of the
//! segment once).
//!
//! Contract details every link keeps:
//! - [`LinkRx::recv`] is cancel-safe: dropping its future loses no frame
//!   (the session waits on it inside `select!`).
//! - A frame is sent whole or not at all: a permit dropped before commit, or
//!   a commit future dropped midway, never leaves part of a frame for the peer.
//! - Backpressure may surface in `reserve` (memory, shm) or in `commit`
//!   (streams, once the socket buffer is full); callers treat both as waits.
//! - [`LinkTx::try_send_now`] sends a frame without waiting when there is
//!   room (memory, shm), and otherwise sends nothing.
//! - A clean close and a vanished peer may look alike (`Ok(None)`); the
//!   session's `Goodbye` tells them apart.
//!
//! Links: [`memory`] (an in-process pair, for tests and in-process peers),
//! [`stream`] (length-prefixed frames over Unix or TCP sockets), [`stable`]
//! (stream connections with numbered frames, acks and replay, so that a
//! session survives a broken connection), and [`shm`] (rings and slot pools
//! in an `osmos-shm` segment).

use std::fmt;
use std::future::Future;
use std::ops::Deref;

pub mod memory;
pub mod shm;
pub mod stable;
pub mod stream;

/// How a link carries per-channel flow-control credit.
#[derive(Clone, Debug)]
pub enum CreditMode {
    /// Credit travels as `GrantCredit` messages on the link itself.
    Messages,
    /// Credit lives in the shared channel table of an `osmos-shm` segment;
    /// a sender short of credit waits through the link's [`shm::SideWaiters`].
    SharedTable(osmos_shm::CreditTable, shm::SideWaiters),
}

/// Why a link failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum LinkError {
    /// The link is closed: the peer closed or dropped its end, or this side
    /// already closed its sending half.
    Closed,
    /// The peer is gone: dead, or its end of the link broke.
    PeerGone {
        /// What happened, e.g. "connection reset by peer" or "cell died".
        detail: String,
    },
    /// A frame is larger than the link allows.
    FrameTooLarge {
        /// The frame's length.
        len: usize,
        /// The link's maximum.
        max: usize,
    },
    /// The peer broke the link's framing rules; the link is unusable.
    Violation {
        /// The rule, e.g. `stream.length-in-bounds`.
        rule: &'static str,
        /// What was seen.
        detail: String,
    },
    /// An I/O error from the operating system.
    Io(std::io::Error),
    /// A stable link's connection broke and the session could not be
    /// resumed (see [`stable`]).
    Unresumable(stable::ResumeFailure),
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Closed => f.write_str("the link is closed (by the peer, or by this side's close)"),
            LinkError::PeerGone { detail } => write!(f, "the peer is gone: {detail}"),
            LinkError::FrameTooLarge { len, max } => {
                write!(
                    f,
                    "frame of {len} bytes exceeds the link's maximum of {max} bytes"
                )
            }
            LinkError::Violation { rule, detail } => {
                write!(f, "the peer broke the link's framing [{rule}]: {detail}")
            }
            LinkError::Io(e) => write!(f, "link I/O failed: {e}"),
            LinkError::Unresumable(why) => {
                write!(
                    f,
                    "the link's connection broke and the session could not be resumed: {why}"
                )
            }
        }
    }
}

impl std::error::Error for LinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LinkError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for LinkError {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match e.kind() {
            UnexpectedEof | BrokenPipe | ConnectionReset | ConnectionAborted => LinkError::PeerGone {
                detail: e.to_string(),
            },
            _ => LinkError::Io(e),
        }
    }
}

/// A bidirectional link, before it is split.
pub trait Link: Send + 'static {
    /// The sending half.
    type Tx: LinkTx;
    /// The receiving half.
    type Rx: LinkRx;

    /// Largest frame this link carries, in bytes.
    fn max_frame(&self) -> usize;

    /// How channel credit travels on this link.
    fn credit_mode(&self) -> CreditMode;

    /// Splits the link into its halves.
    fn split(self) -> (Self::Tx, Self::Rx);
}

/// The sending half of a link. Frames arrive in the order they are committed.
pub trait LinkTx: Send + 'static {
    /// A reservation for one frame.
    type Permit<'a>: SendPermit
    where
        Self: 'a;

    /// Waits until a frame of exactly `len` bytes can be sent, and reserves it.
    /// Fails with [`LinkError::FrameTooLarge`] if `len` exceeds
    /// [`Link::max_frame`], and with the link's error if it broke.
    fn reserve(&mut self, len: usize) -> impl Future<Output = Result<Self::Permit<'_>, LinkError>> + Send;

    /// Sends a frame of `len` bytes at once if that needs no waiting: calls
    /// `fill` with the frame's buffer (exactly `len` bytes, arbitrary
    /// contents: write all of them), then commits it, and returns `Ok(true)`.
    /// Returns `Ok(false)` without calling `fill` when the link would have to
    /// wait (no room, or a link that only sends asynchronously); the caller
    /// then uses [`reserve`](LinkTx::reserve). Errors are those of `reserve`
    /// and `commit`.
    ///
    /// This is the hot path of a session: a call or response that fits is
    /// sent from the task that made it, with no task switch and no
    /// allocation. The default sends nothing now.
    fn try_send_now(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<bool, LinkError> {
        let _ = (len, fill);
        Ok(false)
    }

    /// After [`try_send_now`](LinkTx::try_send_now) found no room for a
    /// frame of `len` bytes: a wait for that room that does not need this
    /// half, so the caller can release it (and the lock around it) while it
    /// waits and other, smaller frames go out meanwhile. The wait resolves
    /// when the room may have appeared (the caller tries again). `None` (the
    /// default) when the room can only be waited for with the half in hand,
    /// through [`reserve`](LinkTx::reserve): the frame waits for room every
    /// frame needs (ring or socket space).
    ///
    /// The shm link returns a wait for a free slot: a peer that holds on to
    /// our slots then stalls only the large frames that need one.
    fn room_wait(&mut self, len: usize) -> Option<RoomWait> {
        let _ = len;
        None
    }

    /// Whether the peer has not yet read every frame committed so far: a
    /// hint, read as a frame is about to be sent. While it holds, the
    /// session gathers a stream's small items into one frame (a batch)
    /// instead of sending each alone, since the peer could not read them
    /// sooner anyway. The default, `false`, sends every item alone.
    fn peer_behind(&mut self) -> bool {
        false
    }

    /// Sends everything committed so far and closes this direction; the peer's
    /// next receive returns `Ok(None)` once it has read the earlier frames.
    fn close(&mut self) -> impl Future<Output = Result<(), LinkError>> + Send;
}

/// A wait for room that outlives the borrow of the sending half (see
/// [`LinkTx::room_wait`]). At most one such wait of a link may be awaited at
/// a time (the session queues them).
pub type RoomWait = std::pin::Pin<Box<dyn Future<Output = Result<(), LinkError>> + Send>>;

/// Space for one frame. Fill [`buf`](SendPermit::buf), then
/// [`commit`](SendPermit::commit); dropping the permit sends nothing.
pub trait SendPermit: Send {
    /// The frame's bytes, exactly the reserved length.
    fn buf(&mut self) -> &mut [u8];

    /// Sends the frame.
    fn commit(self) -> impl Future<Output = Result<(), LinkError>> + Send;
}

/// A received frame: its bytes, and possibly a tail the link held apart.
///
/// A link that copies frames out of shared memory may copy the end of a
/// large frame (the bytes of a byte string that ends a call's arguments, a
/// response's value or an item) into a vector of its own instead of after
/// the rest, so that the session moves that vector into the decoded value
/// instead of copying the bytes once more. The frame is then the bytes
/// followed by the tail. Links that never do this use the default.
pub trait Received: Deref<Target = [u8]> + Send {
    /// The tail held apart, if there is one (taken once).
    fn take_tail(&mut self) -> Option<Vec<u8>> {
        None
    }
}

impl Received for &[u8] {}

/// The receiving half of a link.
pub trait LinkRx: Send + 'static {
    /// A received frame; it may borrow the link until dropped.
    type Frame<'a>: Received
    where
        Self: 'a;

    /// The next frame; `Ok(None)` once the peer closed its sending half
    /// cleanly and every earlier frame was received.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Self::Frame<'_>>, LinkError>> + Send;

    /// A way for other tasks to receive from this half on their own thread
    /// while it is not receiving (see [`DirectRx`]); `None` (the default)
    /// when the link has none, and only [`recv`](LinkRx::recv) receives.
    fn direct(&self) -> Option<std::sync::Arc<dyn DirectRx>> {
        None
    }
}

/// Receiving on the thread that waits: a caller waiting for its answer
/// takes the frames itself instead of waiting for the task that holds the
/// receiving half to take them and wake it (a thread hop per call). Frames
/// stay in order: one receiver at a time, and each frame is handled before
/// the next is taken.
pub trait DirectRx: Send + Sync {
    /// The receive side, if nobody is receiving now (or it was lent back,
    /// see [`RxClaim::lend`]); holding the claim keeps everyone else from
    /// receiving until it is dropped.
    fn claim(&self) -> Option<Box<dyn RxClaim>>;

    /// Lets a lent receive side go, if one is lent (see
    /// [`RxClaim::lend`]): the receiving task receives again. For a holder
    /// that lent it and will not claim again (its stream ended).
    fn end_lend(&self) {}
}

/// A held claim on a link's receive side (see [`DirectRx`]).
pub trait RxClaim: Send {
    /// Takes the next frame if one is there now.
    fn next(&mut self) -> Here<'_>;

    /// Waits a little for a frame, as the link sees fit: [`WaitHere::Ready`]
    /// when [`next`](RxClaim::next) has something to say,
    /// [`WaitHere::Again`] when the holder should let its executor run other
    /// work and then call this again, [`WaitHere::Stop`] when waiting here
    /// does not pay (let the claim go and wait for the receiving task).
    /// `block_until`: the thread may block until then (`None`: it must not
    /// block at all).
    fn wait(&mut self, block_until: Option<std::time::Instant>) -> WaitHere;

    /// Whether the peer last ran on another CPU than this thread's, so
    /// that work done here runs beside the peer's instead of in turn with
    /// it (`false` where the link cannot tell).
    fn peer_runs_elsewhere(&self) -> bool {
        false
    }

    /// Lets the claim go for a holder about to claim again (a stream's
    /// receiver with items left to hand out): the receive side stays held,
    /// so the peer's next frames wait in the link instead of waking the
    /// receiving task, but whoever claims next gets it, and the receiving
    /// task takes it back when nobody has claimed it for a while. Where the
    /// link cannot lend, or lending does not pay (for the shm link: the
    /// peer runs on this CPU), the claim is simply dropped.
    fn lend(self: Box<Self>) {}
}

/// What [`RxClaim::next`] found.
#[derive(Debug)]
pub enum Here<'a> {
    /// A frame, copied out of the link: its bytes, followed by the tail
    /// held apart, if any (see [`Received`]).
    Frame(&'a [u8], Option<Vec<u8>>),
    /// Nothing yet.
    Nothing,
    /// The peer closed its sending half and every frame was received.
    Closed,
    /// The link failed.
    Failed(LinkError),
}

/// What [`RxClaim::wait`] advises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitHere {
    /// Look again now.
    Ready,
    /// Yield, then wait again.
    Again,
    /// Let the claim go.
    Stop,
}
