//! Liveness words: each side's state, its epoch and the CPU it last waited on.
//!
//! Each side owns one cache line (`SideWords`) and is its only honest writer.
//! The state moves `Vacant → Attached → Closing → Dead`; `Dead` may also be
//! written by a supervisor on behalf of a side that can no longer write (the
//! host marks a cell dead when its pidfd reports the exit). Every sleeper in
//! the segment sleeps on both state words as well as on its own condition
//! (see [`crate::futex`]), so marking a side dead — one store and one
//! `FUTEX_WAKE` on that side's state word — wakes every futex waiter of
//! either side, and one that was about to sleep finds the word changed and
//! returns. Every wait checks the states after each wake and returns
//! [`Error::PeerGone`](crate::Error::PeerGone) instead of sleeping on a dead
//! peer.
//!
//! The values read from the peer's line are hints: a hostile peer can write
//! anything there, and the worst it achieves is to end its own session early
//! or to change how long this side spins before parking.

use std::fmt;
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::futex::Futex;
use crate::pinned::Pinned;
use crate::sync::PlatformFutex;
use crate::sync::atomic::{AtomicU32, Ordering};
use crate::wake::Notifier;

/// Which end of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The process that created the segment and spawned the cell.
    Host,
    /// The plugin process that attached to the segment.
    Cell,
}

impl Side {
    /// The other side.
    pub fn peer(self) -> Side {
        match self {
            Side::Host => Side::Cell,
            Side::Cell => Side::Host,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Host => "host",
            Side::Cell => "cell",
        })
    }
}

/// Where the peer last ran, seen from the CPU of the thread that asks
/// ([`Liveness::where_peer_runs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerCpu {
    /// The peer has not said yet.
    Unknown,
    /// On this thread's CPU.
    Same,
    /// On another CPU.
    Other,
}

/// A side's published state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Not attached yet.
    Vacant,
    /// Attached and running.
    Attached,
    /// Said goodbye; frames already published may still be drained.
    Closing,
    /// Gone: no more frames, credit or releases will come.
    Dead,
    /// A value no honest side writes.
    Unknown(u32),
}

impl PeerState {
    fn to_word(self) -> u32 {
        match self {
            PeerState::Vacant => 0,
            PeerState::Attached => 1,
            PeerState::Closing => 2,
            PeerState::Dead => 3,
            PeerState::Unknown(v) => v,
        }
    }

    fn from_word(v: u32) -> Self {
        match v {
            0 => PeerState::Vacant,
            1 => PeerState::Attached,
            2 => PeerState::Closing,
            3 => PeerState::Dead,
            v => PeerState::Unknown(v),
        }
    }
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerState::Vacant => f.write_str("vacant"),
            PeerState::Attached => f.write_str("attached"),
            PeerState::Closing => f.write_str("closing"),
            PeerState::Dead => f.write_str("dead"),
            PeerState::Unknown(v) => write!(f, "invalid state word {v:#x}"),
        }
    }
}

/// One side's line. Written only by that side (or by a supervisor marking it dead).
#[repr(C)]
#[derive(Default)]
pub(crate) struct SideWords {
    /// A [`PeerState`] word: 0 vacant, 1 attached, 2 closing, 3 dead.
    state: AtomicU32,
    /// The host writes the segment's epoch at creation; the cell copies the
    /// epoch it attached to, acknowledging which incarnation it serves.
    epoch: AtomicU32,
    /// CPU this side last ran on when it began a wait, plus one (0 = unknown).
    /// A hint for the wait strategy: spinning for a peer on our own CPU is useless.
    cpu: AtomicU32,
    /// Wake bytes this side has sent the peer (wrapping), counted before
    /// each send: the peer reads it to tell how many may wait unread in its
    /// end of the wake pair, and drains it only when that could matter (see
    /// [`Liveness::peer_wakes_sent`]). Not part of any wait protocol, so a
    /// plain atomic even in the models.
    wakes_sent: std::sync::atomic::AtomicU32,
}

/// The liveness block in the segment.
#[repr(C)]
#[derive(Default)]
pub(crate) struct LivenessWords {
    host: CachePadded<SideWords>,
    cell: CachePadded<SideWords>,
}

#[cfg(not(osmos_loom))]
const _: () = {
    assert!(std::mem::size_of::<LivenessWords>() == 256);
    assert!(std::mem::align_of::<LivenessWords>() == 128);
};

impl LivenessWords {
    fn side(&self, side: Side) -> &SideWords {
        match side {
            Side::Host => &self.host,
            Side::Cell => &self.cell,
        }
    }
}

/// A handle on the liveness block, as seen from one side. Cheap to clone.
#[derive(Clone)]
pub struct Liveness {
    words: Pinned<LivenessWords>,
    side: Side,
    /// 1 once this side has been shut down, else 0. Process-local (the peer
    /// cannot write it) and shared by every handle of one segment mapping;
    /// waiters sleep on it, so a shutdown wakes them.
    shutdown: Arc<AtomicU32>,
    /// This side's wake descriptors (see `wake.rs`), shared like `shutdown`.
    notifier: Arc<Notifier>,
}

impl fmt::Debug for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Liveness")
            .field("side", &self.side)
            .field("host", &self.state(Side::Host))
            .field("cell", &self.state(Side::Cell))
            .finish()
    }
}

impl Liveness {
    pub(crate) fn new(
        words: Pinned<LivenessWords>,
        side: Side,
        shutdown: Arc<AtomicU32>,
        notifier: Arc<Notifier>,
    ) -> Self {
        Self {
            words,
            side,
            shutdown,
            notifier,
        }
    }

    /// The side this handle speaks for.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The published state of `side`. For the peer's side this is a hint
    /// written by a process that may be hostile.
    pub fn state(&self, side: Side) -> PeerState {
        // ORDERING: Acquire pairs with the Release in `publish`/`mark_dead`,
        // so frames published before a Closing/Dead state are visible after it.
        PeerState::from_word(self.words.side(side).state.load(Ordering::Acquire))
    }

    /// Publishes this side's own state (`Attached` or `Closing`). Use
    /// [`Liveness::mark_dead`] for `Dead`, which also wakes every sleeper.
    pub fn publish(&self, state: PeerState) {
        if state == PeerState::Dead {
            self.mark_dead(self.side);
            return;
        }
        // Dead is final: a half closing after the other half marked this
        // side dead must not bring it back (a peer would then sleep again,
        // waiting for frames that never come).
        let dead = PeerState::Dead.to_word();
        // ORDERING: Release pairs with the Acquire in `state`; the failure
        // ordering only reads our own word.
        let _ = self
            .words
            .side(self.side)
            .state
            .fetch_update(Ordering::Release, Ordering::Relaxed, |now| {
                (now != dead).then_some(state.to_word())
            });
    }

    /// Marks `side` dead and wakes every futex waiter in the segment (all of
    /// them also sleep on this word), so that every waiter on either side
    /// re-checks and returns instead of sleeping. A supervisor calls this for
    /// a peer it saw exit; a side calls it for itself on shutdown.
    pub fn mark_dead(&self, side: Side) {
        if side == self.side {
            // ORDERING: Release pairs with the Acquire snapshot in
            // `doorbell::park_loop`, as for the shared word below.
            self.shutdown.store(1, Ordering::Release);
            PlatformFutex::wake_all(&self.shutdown);
        }
        let word = &self.words.side(side).state;
        // ORDERING: Release pairs with the Acquire snapshot in
        // `doorbell::park_loop`; a waiter whose snapshot predates this store
        // has its `futex_waitv` compare fail, or is woken below.
        word.store(PeerState::Dead.to_word(), Ordering::Release);
        PlatformFutex::wake_all(word);
        // Async waiters sleep in their reactors, not on the words: wake ours
        // and the peer's (both re-check the liveness words).
        self.notifier.notify_local();
        self.notify_peer();
    }

    /// Wakes the peer's async waiter (see `wake.rs`); the ringer's half of
    /// the reactor protocol, after it saw [`PARKED_REACTOR`](crate::PARKED_REACTOR).
    pub(crate) fn notify_peer(&self) {
        // ORDERING: Relaxed: a count the peer reads as a hint; counted
        // before the send, so it is never behind the bytes that arrived.
        self.words
            .side(self.side)
            .wakes_sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.notifier.notify_peer();
    }

    /// How many wake bytes the peer says it has sent this side (wrapping):
    /// with what this side has read, how many may wait in its end of the
    /// wake pair. A reactor waiter that leaves the bytes in place (each new
    /// byte still reports the descriptor readable again to an
    /// edge-triggered epoll) drains only when this says the buffer could
    /// fill, which would make the peer's next send fail and its wake be
    /// lost. The peer writes the word: a peer that says too little loses
    /// only its own wakes; one that says too much makes this side drain at
    /// every wake, as it would without the count.
    pub fn peer_wakes_sent(&self) -> u32 {
        // ORDERING: Relaxed: a hint, see above.
        self.words
            .side(self.side.peer())
            .wakes_sent
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This side's end of the segment's wake pair: readable when the peer
    /// woke this side's async waiters. Register it with a reactor (for
    /// example tokio's `AsyncFd`), drain it with [`drain_link`](crate::drain_link).
    /// `None` for a segment attached without its wake pair.
    #[cfg(not(osmos_loom))]
    pub fn wake_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.notifier.link_fd()
    }

    /// This process's private wake eventfd for this segment: readable when a
    /// side was marked dead or shut down here. Register it beside
    /// [`wake_fd`](Self::wake_fd); drain it with [`drain_local`](crate::drain_local).
    #[cfg(not(osmos_loom))]
    pub fn local_wake_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.notifier.local_fd()
    }

    /// The words a waiter sleeps on besides its condition: this side's
    /// process-local shutdown word and the peer's shared state word.
    pub(crate) fn state_words(&self) -> (&AtomicU32, &AtomicU32) {
        (&self.shutdown, &self.words.side(self.side.peer()).state)
    }

    /// `check`, from the words of [`Liveness::state_words`] already copied out.
    /// This side's own shared state word is never consulted: a peer could
    /// write it, and must not be able to shut this side down.
    pub(crate) fn check_words(&self, shutdown: u32, peer: u32) -> crate::Result<()> {
        if peer == PeerState::Dead.to_word() {
            return Err(crate::Error::PeerGone {
                peer: self.side.peer(),
                state: PeerState::Dead,
            });
        }
        if shutdown != 0 {
            return Err(crate::Error::Shutdown);
        }
        Ok(())
    }

    /// The epoch `side` published.
    pub fn epoch(&self, side: Side) -> u32 {
        self.words.side(side).epoch.load(Ordering::Relaxed)
    }

    pub(crate) fn set_epoch(&self, epoch: u32) {
        self.words.side(self.side).epoch.store(epoch, Ordering::Relaxed);
    }

    /// `Err(PeerGone)` if the peer is dead, `Err(Shutdown)` if this side was
    /// shut down, `Ok(())` otherwise.
    pub fn check(&self) -> crate::Result<()> {
        let (own, peer) = self.state_words();
        // ORDERING: Acquire, as in `state`.
        self.check_words(own.load(Ordering::Acquire), peer.load(Ordering::Acquire))
    }

    /// Records the CPU this thread runs on and tells where the peer last
    /// recorded running, relative to it: spinning for the peer only pays off
    /// when it runs on another CPU, and yielding when it runs on this one
    /// (there it is runnable behind this thread at best). A hint the peer
    /// writes: a lie only changes how this side waits before it sleeps.
    #[cfg(not(osmos_loom))]
    pub fn where_peer_runs(&self) -> PeerCpu {
        let me = rustix::thread::sched_getcpu() as u32 + 1;
        self.note_cpu(me);
        match self.peer_cpu() {
            0 => PeerCpu::Unknown,
            peer if peer == me => PeerCpu::Same,
            _ => PeerCpu::Other,
        }
    }

    /// [`where_peer_runs`](Self::where_peer_runs) is [`PeerCpu::Other`].
    #[cfg(not(osmos_loom))]
    pub fn peer_on_another_cpu(&self) -> bool {
        self.where_peer_runs() == PeerCpu::Other
    }

    /// Records the CPU this side is running on, for the peer's wait strategy.
    ///
    /// Waiters call this (through `where_peer_runs`) on every round of a
    /// spin: the word is only written
    /// when the CPU changed, so a spinning side does not keep pulling the
    /// cache line the peer reads away from it. (Relaxed: a hint, ordered
    /// with nothing; the peer reads it with `peer_cpu`.)
    #[cfg(not(osmos_loom))]
    fn note_cpu(&self, cpu: u32) {
        let word = &self.words.side(self.side).cpu;
        if word.load(Ordering::Relaxed) != cpu {
            word.store(cpu, Ordering::Relaxed);
        }
    }

    /// The CPU the peer last recorded (plus one), 0 if unknown.
    #[cfg(not(osmos_loom))]
    fn peer_cpu(&self) -> u32 {
        self.words.side(self.side.peer()).cpu.load(Ordering::Relaxed)
    }
}

#[cfg(osmos_loom)]
impl Liveness {
    /// The model counter this side's reactor wakes are counted on.
    pub(crate) fn model_wakes(&self) -> Arc<AtomicU32> {
        self.notifier.own.clone()
    }

    /// A model-only liveness block, as a pair of handles (host, cell).
    pub(crate) fn new_model() -> (Self, Self) {
        let words = Pinned::from_arc(Arc::new(LivenessWords::default()));
        let (host, cell) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let (host_wakes, cell_wakes) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let host_notifier = Arc::new(Notifier {
            own: host_wakes.clone(),
            peer: cell_wakes.clone(),
        });
        let cell_notifier = Arc::new(Notifier {
            own: cell_wakes,
            peer: host_wakes,
        });
        (
            Self::new(words.clone(), Side::Host, host, host_notifier),
            Self::new(words, Side::Cell, cell, cell_notifier),
        )
    }
}

#[cfg(all(test, not(osmos_loom)))]
mod tests {
    use super::*;
    use crate::Error;
    use crate::test_support::{
        Pair, RING_READABLE_PARKED, RING_WRITABLE_PARKED, WakeBound, await_word, bound, pair, small_config,
    };

    #[test]
    fn marking_the_peer_dead_wakes_a_parked_receiver() {
        let Pair {
            mut host,
            cell,
            host_seg,
            cell_seg: _c,
        } = pair(&small_config());
        let ring = host_seg.layout().rings[crate::Direction::CellToHost as usize];
        let wake = WakeBound::new();
        let t = std::thread::spawn(move || host.receiver.recv(wake.deadline()).map(|m| m.len()));
        await_word(&host_seg, ring.ctrl + RING_READABLE_PARKED, |v| v == 1);
        // The supervisor (here: the cell itself, on its way out) marks the cell dead.
        cell.liveness.mark_dead(Side::Cell);
        let r = t.join().unwrap();
        wake.assert_woken();
        match r {
            Err(Error::PeerGone {
                peer: Side::Cell,
                state: PeerState::Dead,
            }) => {}
            other => panic!("expected PeerGone, got {other:?}"),
        }
    }

    #[test]
    fn dead_is_final() {
        let p = pair(&small_config());
        // One half of a side marks it dead; the other half closes after.
        p.cell.liveness.mark_dead(Side::Cell);
        p.cell.liveness.publish(PeerState::Closing);
        p.cell.liveness.publish(PeerState::Attached);
        assert_eq!(p.host.liveness.state(Side::Cell), PeerState::Dead);
    }

    #[test]
    fn frames_published_before_death_are_still_delivered() {
        let mut p = pair(&small_config());
        p.cell.sender.send(b"last words", bound()).unwrap();
        p.cell.liveness.mark_dead(Side::Cell);
        assert_eq!(p.host.receiver.recv(bound()).unwrap().to_vec(), b"last words");
        assert!(matches!(
            p.host.receiver.recv(bound()),
            Err(Error::PeerGone { .. })
        ));
    }

    #[test]
    fn a_local_shutdown_wakes_this_sides_waiters() {
        let Pair {
            host,
            mut cell,
            host_seg,
            cell_seg: _c,
        } = pair(&small_config());
        let ring = host_seg.layout().rings[crate::Direction::HostToCell as usize];
        let live = cell.liveness.clone();
        let wake = WakeBound::new();
        let t = std::thread::spawn(move || cell.receiver.recv(wake.deadline()).map(|m| m.len()));
        await_word(&host_seg, ring.ctrl + RING_READABLE_PARKED, |v| v == 1);
        live.mark_dead(Side::Cell);
        assert!(matches!(t.join().unwrap(), Err(Error::Shutdown)));
        wake.assert_woken();
        assert_eq!(host.liveness.state(Side::Cell), PeerState::Dead);
    }

    #[test]
    fn a_dead_peer_also_wakes_a_parked_sender_and_credit_waiter() {
        let Pair {
            mut host,
            cell,
            host_seg,
            cell_seg: _c,
        } = pair(&small_config());
        let ring = host_seg.layout().rings[crate::Direction::HostToCell as usize];
        while host
            .sender
            .producer()
            .try_reserve(248)
            .unwrap()
            .is_some_and(|g| g.commit(248).is_ok())
        {}
        host.credit.reset(0, 0).unwrap();
        let mut credit = host.credit.sender(0, 0).unwrap();
        credit.set_wait_strategy(crate::WaitStrategy::PARK);
        let wake = WakeBound::new();
        let a = std::thread::spawn(move || host.sender.producer().reserve(248, wake.deadline()).map(|_| ()));
        let b = std::thread::spawn(move || credit.take(1, wake.deadline()));
        await_word(&host_seg, ring.ctrl + RING_WRITABLE_PARKED, |v| v == 1);
        await_word(&host_seg, host_seg.layout().channels + 128 + 4, |v| v & 1 != 0);
        cell.liveness.mark_dead(Side::Cell);
        assert!(matches!(a.join().unwrap(), Err(Error::PeerGone { .. })));
        assert!(matches!(b.join().unwrap(), Err(Error::PeerGone { .. })));
        wake.assert_woken();
    }

    #[test]
    fn a_peer_cannot_shut_this_side_down() {
        let mut p = pair(&small_config());
        // A hostile cell writes `Dead` into the host's own state word.
        let host_line = p.cell_seg.layout().liveness;
        // SAFETY: the host's state word is inside the segment.
        unsafe { p.cell_seg.raw_at(host_line).cast::<u32>().write(3) };
        assert!(p.host.liveness.check().is_ok());
        let err = p
            .host
            .receiver
            .recv(crate::test_support::soon(5))
            .map(|m| m.len())
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        // A real local shutdown still works.
        p.host.liveness.mark_dead(Side::Host);
        assert!(matches!(p.host.liveness.check(), Err(Error::Shutdown)));
    }

    #[test]
    fn published_states_are_seen_by_both_sides() {
        let p = pair(&small_config());
        p.cell.liveness.publish(PeerState::Closing);
        assert_eq!(p.host.liveness.state(Side::Cell), PeerState::Closing);
        assert!(p.host.liveness.check().is_ok(), "closing is not dead");
        // A hostile state word is reported, not trusted.
        let off = p.cell_seg.layout().liveness + 128;
        // SAFETY: the cell's state word is inside the segment.
        unsafe { p.cell_seg.raw_at(off).cast::<u32>().write(77) };
        assert_eq!(p.host.liveness.state(Side::Cell), PeerState::Unknown(77));
        assert!(p.host.liveness.state(Side::Cell).to_string().contains("0x4d"));
    }
}
