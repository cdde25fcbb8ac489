//! Reactor wakeups: waking a peer that sleeps in an event loop instead of on
//! a futex.
//!
//! A waiter inside an async runtime must not block its thread on a futex, and
//! a helper thread that blocks on its behalf costs a thread wake per wait
//! (25–55 µs across CPUs on a small VM). So a doorbell's `parked` word has two
//! marks: [`PARKED_FUTEX`] (a thread sleeps on the futex) and
//! [`PARKED_REACTOR`] (a task sleeps in its reactor, waiting for this side's
//! wake descriptor to become readable). The ringer's side of the protocol is
//! the doorbell's, with one more branch:
//!
//! ```text
//!   ringer                               async waiter
//!   publish condition (Release)          parked |= PARKED_REACTOR
//!   seq += 1           (Release)         fence(SeqCst)
//!   fence(SeqCst)  ── SYNC POINT A ──    if condition: disarm, done
//!   if parked & PARKED_REACTOR:          await the wake descriptor
//!       take the mark (WAKING)           drain it, disarm, re-check
//!       send one byte to the peer
//! ```
//!
//! The same Dekker argument as in `doorbell.rs` shows no wakeup is lost: the
//! ringer sees the mark, or the waiter's re-check sees the condition. The
//! ringer takes the mark as it sends, so one sleep costs the peer one byte
//! however many rings come before the waiter disarms; the byte stays in the
//! descriptor until read, so a mark taken early still wakes the sleep it
//! belongs to.
//!
//! ## The wake descriptor
//!
//! Each segment has one connected `AF_UNIX` stream socket pair: the host keeps
//! one end, the cell inherits the other. A byte written into one end makes
//! the other end readable, which the peer's reactor (epoll) reports to the
//! waiting task directly: no helper thread, one wake. A socket rather than an
//! eventfd, because the peer is hostile: an eventfd shared between two
//! processes is one open file, so the cell could clear `O_NONBLOCK` on it and
//! park the counter at its maximum, and the host's next wake would block
//! forever in `write`. Each end of a socket pair is its own open file, and the
//! host sends with `MSG_DONTWAIT`, per call: a full buffer means a wake is
//! already pending, and the send is simply dropped. A peer that writes its
//! end in a loop only makes this side's descriptor readable; the session
//! counts wakes that bring nothing and ends a peer that storms.
//!
//! The waiter need not read the bytes at every wake: an edge-triggered
//! epoll (tokio's) reports the descriptor again for each new byte, read or
//! not. What it must not do is let them pile up until the peer's send
//! buffer is full, for then the peer's next send fails and that wake is
//! lost. So each side counts the bytes it sends in its liveness line
//! ([`Liveness::peer_wakes_sent`](crate::Liveness::peer_wakes_sent)), and
//! the waiter drains once that count, less what it had drained, reaches
//! [`lazy_drain_limit`] (or when it was woken more often than the peer
//! says it sent, which only a peer that does not count can cause).
//!
//! Besides the shared pair, each process keeps a private eventfd per segment
//! handle ("local"): marking a side dead or shutting this side down writes it,
//! so this side's own async waiters wake even though no byte can be sent to
//! oneself through the pair. Nobody else holds it.
//!
//! Under `--cfg osmos_loom` both descriptors are model counters woken through
//! the futex stand-in, so the arm / re-check / notify protocol is checked
//! even though loom cannot model a socket.

#[cfg(not(osmos_loom))]
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::error::Result;

/// `parked` mark: a thread sleeps (or is about to) on the doorbell's futex.
pub const PARKED_FUTEX: u32 = 1;
/// `parked` mark: a task sleeps (or is about to) in its reactor, waiting for
/// the wake descriptor; the ringer sends it a byte.
pub const PARKED_REACTOR: u32 = 2;
/// `parked` mark left by the ringer when it takes the two marks above and
/// wakes their waiter: the waiter is still waking. Cleared by the waiter
/// when it stops waiting; only a hint (see
/// [`BellWatcher::someone_parked`](crate::BellWatcher::someone_parked)).
pub(crate) const WAKING: u32 = 4;

/// Both ends of a segment's wake socket pair, as the host creates them.
#[cfg(not(osmos_loom))]
#[derive(Debug)]
pub struct WakePair {
    /// The host's end.
    pub host: OwnedFd,
    /// The cell's end, to pass to the cell process.
    pub cell: OwnedFd,
}

#[cfg(not(osmos_loom))]
impl WakePair {
    /// A new connected pair (`socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC |
    /// SOCK_NONBLOCK)`, see `socketpair(2)`).
    pub fn new() -> Result<WakePair> {
        use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
        let (host, cell) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(|e| crate::Error::io("socketpair (wake descriptors)", e))?;
        Ok(WakePair { host, cell })
    }
}

/// One side's wake descriptors: its end of the pair and its private eventfd.
/// Process-local; shared by every handle of one segment mapping.
#[cfg(not(osmos_loom))]
#[derive(Debug)]
pub(crate) struct Notifier {
    /// This side's end of the pair: readable when the peer woke us; sending
    /// a byte wakes the peer. `None` for a segment attached without one
    /// (futex waits only).
    link: Option<OwnedFd>,
    /// Readable when this process woke its own async waiters.
    local: OwnedFd,
}

#[cfg(not(osmos_loom))]
impl Notifier {
    pub(crate) fn new(link: Option<OwnedFd>) -> Result<Notifier> {
        use rustix::event::{EventfdFlags, eventfd};
        let local = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| crate::Error::io("eventfd (local wake)", e))?;
        Ok(Notifier { link, local })
    }

    /// Wakes the peer's async waiter: one byte, never blocking (see the
    /// module doc for why a full buffer is fine).
    pub(crate) fn notify_peer(&self) {
        if let Some(fd) = &self.link {
            use rustix::net::{SendFlags, send};
            let _ = send(fd, &[1], SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
        }
    }

    /// Wakes this process's own async waiters.
    pub(crate) fn notify_local(&self) {
        let _ = rustix::io::write(&self.local, &1u64.to_ne_bytes());
    }

    pub(crate) fn link_fd(&self) -> Option<BorrowedFd<'_>> {
        self.link.as_ref().map(AsFd::as_fd)
    }

    pub(crate) fn local_fd(&self) -> BorrowedFd<'_> {
        self.local.as_fd()
    }
}

/// How many wake bytes one [`drain_link`] reads at most; a peer that keeps
/// writing leaves the rest for the next round (the descriptor stays readable).
#[cfg(not(osmos_loom))]
const DRAIN_BYTES: usize = 4096;

/// What a drain found.
#[cfg(not(osmos_loom))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// The descriptor is empty now; `n` wakes were read.
    Empty(u64),
    /// `n` wakes were read and more may be left (a peer still writing).
    More(u64),
    /// The peer closed its end of the pair (it exited, or dropped its
    /// segment): the descriptor stays readable for good.
    Closed,
}

/// How many wake bytes may wait unread in this side's end of the wake
/// pair before a waiter that leaves them in place must drain it (see
/// [`Liveness::peer_wakes_sent`](crate::Liveness::peer_wakes_sent)); 0:
/// drain at every wake.
///
/// Each byte the peer sends is its own socket buffer (about 770 bytes of
/// the sender's send buffer on Linux 6.18: 278 one-byte sends fill the
/// default 208 KiB), and a send into a full buffer fails, which loses that
/// wake. The peer's buffer is taken to be the size of this side's own
/// (both ends get the system default unless changed), with 1 KiB per byte
/// and a margin of four, and at most 32 bytes are left unread.
#[cfg(not(osmos_loom))]
pub fn lazy_drain_limit(fd: BorrowedFd<'_>) -> u32 {
    const MOST: usize = 32;
    match rustix::net::sockopt::socket_send_buffer_size(fd) {
        Ok(bytes) => (bytes / 1024 / 4).min(MOST) as u32,
        Err(_) => 0,
    }
}

/// Empties (up to a bound) this side's end of the wake pair without blocking.
#[cfg(not(osmos_loom))]
pub fn drain_link(fd: BorrowedFd<'_>) -> Drained {
    use rustix::io::Errno;
    let mut buf = [0u8; DRAIN_BYTES];
    match rustix::net::recv(fd, &mut buf, rustix::net::RecvFlags::DONTWAIT) {
        Ok((0, _)) => Drained::Closed,
        Ok((n, _)) if n < DRAIN_BYTES => Drained::Empty(n as u64),
        Ok((n, _)) => Drained::More(n as u64),
        Err(Errno::AGAIN) => Drained::Empty(0),
        Err(Errno::INTR) => Drained::More(0),
        Err(_) => Drained::Closed,
    }
}

/// Empties a local eventfd without blocking; whether it had been written.
#[cfg(not(osmos_loom))]
pub fn drain_local(fd: BorrowedFd<'_>) -> bool {
    let mut buf = [0u8; 8];
    matches!(rustix::io::read(fd, &mut buf), Ok(8))
}

/// Loom stand-in: each "descriptor" is a counter the futex stand-in sleeps on.
#[cfg(osmos_loom)]
pub(crate) struct Notifier {
    /// Wakes of this side (what its reactor would report).
    pub(crate) own: std::sync::Arc<crate::sync::atomic::AtomicU32>,
    /// Wakes of the peer.
    pub(crate) peer: std::sync::Arc<crate::sync::atomic::AtomicU32>,
}

#[cfg(osmos_loom)]
impl Notifier {
    pub(crate) fn notify_peer(&self) {
        use crate::futex::Futex;
        // ORDERING: SeqCst stands for the kernel's socket write, a full barrier.
        self.peer.fetch_add(1, crate::sync::atomic::Ordering::SeqCst);
        crate::sync::PlatformFutex::wake_all(&self.peer);
    }

    pub(crate) fn notify_local(&self) {
        use crate::futex::Futex;
        // ORDERING: as in `notify_peer`.
        self.own.fetch_add(1, crate::sync::atomic::Ordering::SeqCst);
        crate::sync::PlatformFutex::wake_all(&self.own);
    }
}
