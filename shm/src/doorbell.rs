//! Futex doorbells and the one wait loop every blocking operation uses.
//!
//! A [`Doorbell`] is a 32-bit sequence word (the futex word, bumped by the
//! ringer) and a `parked` word (set by the waiter), on separate cache lines.
//! The protocol is the classic "parked flag + re-check" (a Dekker handshake on
//! two SeqCst fences, as in parking_lot's and the Linux futex man page's
//! condition-variable examples):
//!
//! ```text
//!   ringer                               waiter
//!   publish condition (Release)          seen = seq (Acquire)
//!   seq += 1           (Release)         parked = 1
//!   fence(SeqCst)  ── SYNC POINT A ──    fence(SeqCst)
//!   if parked: FUTEX_WAKE(seq)           if condition: parked = 0, done
//!                                        FUTEX_WAIT(seq, seen)
//! ```
//!
//! Either the ringer's fence comes first in the SeqCst order, and then the
//! waiter's re-check sees the condition; or the waiter's fence comes first,
//! and then the ringer sees `parked` and wakes. A ring that lands between the
//! waiter's re-check and its sleep changes `seq`, so `FUTEX_WAIT` returns at
//! once. A busy pair therefore makes no system calls at all: the ringer only
//! pays a fence and a load.
//!
//! The ringer that wakes also takes the marks (one compare-and-swap that
//! clears them and leaves [`WAKING`] instead), so the rings that follow
//! while the woken waiter is still on its way (tens of microseconds for a
//! wake across CPUs, during which a stream's producer may publish dozens of
//! frames) see no mark and make no system call. A waiter that still finds
//! nothing sets its mark again before it re-checks, so the argument above
//! holds for each of its sleeps. One case needs more: a ringer delayed
//! between its increment and its take may take the mark of a *later*
//! sleep, whose snapshot of `seq` already includes that increment, and
//! wake it before it sleeps. So a ringer that takes a futex mark bumps
//! `seq` once more before `FUTEX_WAKE`: that sleep then finds `seq`
//! changed and returns at once. (A reactor waiter needs no such bump: the
//! byte stays in its descriptor until read.)
//!
//! Before parking, the waiter spins (when the peer last ran on another CPU,
//! where a spin handoff costs ~0.3 µs against 25–55 µs for a cross-CPU wake)
//! or yields (when the peer last ran on this CPU, where spinning only steals
//! the peer's time slice). Both phases are bounded by [`WaitStrategy`].
//! Every wait also checks the liveness words after every wake and returns
//! [`Error::PeerGone`] instead of sleeping on a dead peer.

use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::error::{Error, Result};
use crate::futex::Futex;
use crate::liveness::Liveness;
use crate::pinned::Pinned;
use crate::sync::PlatformFutex;
use crate::sync::atomic::{AtomicU32, Ordering, fence};
use crate::wake::{PARKED_FUTEX, PARKED_REACTOR, WAKING};

/// A futex doorbell in shared memory.
#[repr(C)]
#[derive(Default)]
pub struct Doorbell {
    /// Ring count (wrapping). Written only by the ringer; the futex word.
    seq: CachePadded<AtomicU32>,
    /// Marks of a waiter that is parked or about to park: [`PARKED_FUTEX`]
    /// (a thread on the futex) and [`PARKED_REACTOR`] (a task in its
    /// reactor, see `wake.rs`); 0 when nobody waits. Set by the waiter; the
    /// ringer that sees one takes both (leaving [`WAKING`]) and calls
    /// `FUTEX_WAKE` or sends a wake byte for what it took.
    parked: CachePadded<AtomicU32>,
}

#[cfg(not(osmos_loom))]
const _: () = assert!(std::mem::size_of::<Doorbell>() == 256);

impl Doorbell {
    /// Rings the bell: call after publishing the condition the waiter checks.
    /// `liveness` is the ringer's side; its wake pair reaches a waiter in the
    /// peer's reactor. Makes a system call only if the waiter is parked.
    pub fn ring(&self, liveness: &Liveness) {
        // ORDERING: Release so a waiter that Acquire-loads the new `seq` also
        // sees the condition published before this call.
        self.seq.fetch_add(1, Ordering::Release);
        // ORDERING: SYNC POINT A (ringer side), pairs with the fence in
        // `park_loop` (or `BellWatcher::arm_reactor`) after the waiter marks
        // `parked`.
        fence(Ordering::SeqCst);
        let parked = self.take_marks();
        if parked & PARKED_FUTEX != 0 {
            // The mark taken may belong to a sleep that began after the
            // increment above, if this thread lost its CPU between the two
            // (an earlier ring's work, already seen by the waiter's
            // re-check): bump `seq` again, so that such a sleep, whose
            // snapshot of `seq` came after the first increment, returns at
            // once instead of sleeping without its mark.
            // ORDERING: Release, as the first increment.
            self.seq.fetch_add(1, Ordering::Release);
            PlatformFutex::wake_all(&self.seq);
        }
        if parked & PARKED_REACTOR != 0 {
            liveness.notify_peer();
        }
    }

    /// Takes the waiter's marks, leaving [`WAKING`]: which of them were set.
    /// Only the ringer that takes a mark wakes its waiter; the waiter, still
    /// waking, sets its mark again before each sleep.
    fn take_marks(&self) -> u32 {
        const MARKS: u32 = PARKED_FUTEX | PARKED_REACTOR;
        // ORDERING: Relaxed: this load follows SYNC POINT A's fence, which
        // is what makes it see a mark set before the waiter's fence.
        let mut now = self.parked.load(Ordering::Relaxed);
        // The peer may write this word too: a few tries, then take the marks
        // without the note, so that no peer can keep this loop going.
        for _ in 0..4 {
            if now & MARKS == 0 {
                return 0;
            }
            // ORDERING: Relaxed: the RMW reads the latest value of the word;
            // the wake that follows is a syscall (or, for the reactor, a
            // socket write), and the waiter re-checks after it.
            match self.parked.compare_exchange_weak(
                now,
                (now & !MARKS) | WAKING,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return now & MARKS,
                Err(seen) => now = seen,
            }
        }
        // ORDERING: Relaxed, as above.
        self.parked.fetch_and(!MARKS, Ordering::Relaxed) & MARKS
    }

    /// Waits until `check` returns `Some`, spinning or yielding first as
    /// `ctx.strategy` allows, then parking on this bell. `check` must read
    /// the condition with Acquire loads, and whoever makes it true must
    /// publish it (Release) before calling [`ring`](Self::ring). Returns
    /// [`Error::PeerGone`] if the peer dies, [`Error::Shutdown`] if this side
    /// is shut down, [`Error::Timeout`] at `ctx.deadline`, or the first error
    /// `check` returns.
    pub fn wait_until<T>(&self, ctx: &WaitCtx<'_>, check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
        let flag = ParkFlag {
            word: &self.parked,
            mark: PARKED_FUTEX,
            cleared_with: WAKING,
        };
        wait_until(ctx, &self.seq, None, flag, check)
    }
}

/// A handle on a doorbell for a waiter outside the blocking operations: take
/// [`seq`](BellWatcher::seq), try the operation, and if it must wait, either
/// block with [`wait_change`](BellWatcher::wait_change) (passing the value
/// seen before the try), or, in async code, [`arm_reactor`](BellWatcher::arm_reactor),
/// re-try, and await this side's wake descriptor ([`Liveness::wake_fd`]).
///
/// At most one waiter may wait on a given doorbell at a time (the parked
/// marks are one word): give each doorbell one waiting thread or task.
#[derive(Clone)]
pub struct BellWatcher {
    bell: Pinned<Doorbell>,
    liveness: Liveness,
}

impl std::fmt::Debug for BellWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BellWatcher").field("seq", &self.seq()).finish()
    }
}

impl BellWatcher {
    pub(crate) fn new(bell: Pinned<Doorbell>, liveness: Liveness) -> Self {
        Self { bell, liveness }
    }

    /// The bell's ring count now. Take it *before* trying the operation.
    pub fn seq(&self) -> u32 {
        // ORDERING: Acquire pairs with the ringer's Release increment: what it
        // published before ringing is visible to the try that follows.
        self.bell.seq.load(Ordering::Acquire)
    }

    /// Blocks until the bell has rung since `seen` was read, the peer dies
    /// ([`Error::PeerGone`]), this side shuts down ([`Error::Shutdown`]) or
    /// `deadline` passes.
    pub fn wait_change(&self, seen: u32, deadline: Option<Instant>) -> Result<()> {
        let ctx = WaitCtx {
            liveness: &self.liveness,
            strategy: WaitStrategy::PARK,
            deadline,
            what: "a doorbell",
        };
        self.bell
            .wait_until(&ctx, || Ok((self.seq() != seen).then_some(())))
    }

    /// Announces an async waiter on this bell (the waiter's half of SYNC
    /// POINT A, see `wake.rs`): from now on a ring sends this side a wake
    /// byte. Call it, then re-check the condition, then await this side's
    /// wake descriptor; [`disarm_reactor`](Self::disarm_reactor) once awake.
    pub fn arm_reactor(&self) {
        // ORDERING: the RMW may be Relaxed: the SeqCst fence that follows
        // orders it before the caller's re-check of the condition.
        self.bell.parked.fetch_or(PARKED_REACTOR, Ordering::Relaxed);
        // ORDERING: SYNC POINT A (async waiter side), pairs with the fence
        // in `Doorbell::ring`.
        fence(Ordering::SeqCst);
    }

    /// Whether a waiter has marked itself parked (or about to park) on this
    /// bell: on a bell this side rings, whether the peer sleeps, or is
    /// still waking from a ring. A hint only (the peer writes the word):
    /// use it to choose how to wait, never for correctness.
    pub fn someone_parked(&self) -> bool {
        // ORDERING: Relaxed: a hint.
        self.bell.parked.load(Ordering::Relaxed) != 0
    }

    /// Whether the async waiter's mark is still on this bell: no ring has
    /// taken it since [`arm_reactor`](Self::arm_reactor) (a ring that finds
    /// it takes it and sends a wake byte). Relaxed: order it with a fence.
    pub fn reactor_armed(&self) -> bool {
        // ORDERING: Relaxed: the caller's fence orders it.
        self.bell.parked.load(Ordering::Relaxed) & PARKED_REACTOR != 0
    }

    /// Withdraws the async waiter's mark (a ring no longer sends a byte),
    /// and the ringer's note that it is waking.
    pub fn disarm_reactor(&self) {
        // ORDERING: Relaxed: only ever makes a ring skip its wake, which the
        // waiter no longer needs.
        self.bell
            .parked
            .fetch_and(!(PARKED_REACTOR | WAKING), Ordering::Relaxed);
    }
}

/// How long to keep the CPU before parking on a futex.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitStrategy {
    /// Longest time to spin re-checking the condition when the peer last ran
    /// on another CPU. Zero parks at once.
    pub spin: Duration,
    /// How many times to yield the CPU (re-checking after each) when the peer
    /// last ran on this CPU, where it may be runnable behind us.
    pub yields: u32,
}

impl WaitStrategy {
    /// Park immediately: no spinning, no yielding. The lowest CPU use.
    pub const PARK: WaitStrategy = WaitStrategy {
        spin: Duration::ZERO,
        yields: 0,
    };
}

impl Default for WaitStrategy {
    /// Spin up to 20 µs (below the 25–55 µs a cross-CPU futex wake costs on a
    /// small VM, so spinning never loses more than a park would), yield twice.
    fn default() -> Self {
        WaitStrategy {
            spin: Duration::from_micros(20),
            yields: 2,
        }
    }
}

/// Everything a wait needs besides the condition.
#[derive(Clone, Copy, Debug)]
pub struct WaitCtx<'a> {
    /// Liveness of both sides: a dead peer ends the wait.
    pub liveness: &'a Liveness,
    /// Spin/yield budget before parking.
    pub strategy: WaitStrategy,
    /// Give up at this instant (`None`: wait as long as the peer lives).
    pub deadline: Option<Instant>,
    /// What is being waited for, for the timeout error.
    pub what: &'static str,
}

/// The "I am parked" mark: one bit of a word whose other bits belong to the
/// same (waiting) side, or are the ringer's note that it woke the waiter.
pub(crate) struct ParkFlag<'a> {
    /// The word the ringer reads.
    pub(crate) word: &'a AtomicU32,
    /// This waiter's bit.
    pub(crate) mark: u32,
    /// Bits cleared with the mark (the ringer's [`WAKING`] note, where the
    /// ringer leaves one).
    pub(crate) cleared_with: u32,
}

impl ParkFlag<'_> {
    fn set(&self) {
        // ORDERING: Relaxed; the SeqCst fence that follows in `park_loop` is
        // what orders this store before the condition re-check.
        self.word.fetch_or(self.mark, Ordering::Relaxed);
    }

    fn clear(&self) {
        // ORDERING: Relaxed: only ever makes a ring skip its wake, which the
        // waiter no longer needs.
        self.word
            .fetch_and(!(self.mark | self.cleared_with), Ordering::Relaxed);
    }
}

/// Spins, yields, then parks on `word` (and `extra`, and both liveness
/// words) until `check` yields a value, the peer dies, or the deadline
/// passes. `check` must read the condition with Acquire loads; its errors end
/// the wait. Whoever makes the condition true changes `word` (or `extra`) and
/// wakes it.
pub(crate) fn wait_until<T>(
    ctx: &WaitCtx<'_>,
    word: &AtomicU32,
    extra: Option<&AtomicU32>,
    flag: ParkFlag<'_>,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    if let Some(v) = check()? {
        return Ok(v);
    }
    let start = Instant::now();
    if let Some(v) = busy_phase(ctx, start, &mut check)? {
        return Ok(v);
    }
    park_loop(ctx, start, word, extra, flag, check)
}

/// The bounded pre-park phase: spin if the peer is on another CPU, yield if
/// it is on ours. Models skip it (loom explores interleavings, not time).
#[cfg(not(osmos_loom))]
fn busy_phase<T>(
    ctx: &WaitCtx<'_>,
    start: Instant,
    check: &mut impl FnMut() -> Result<Option<T>>,
) -> Result<Option<T>> {
    let strategy = ctx.strategy;
    if strategy.spin.is_zero() && strategy.yields == 0 {
        return Ok(None);
    }
    if ctx.liveness.where_peer_runs() == crate::liveness::PeerCpu::Same {
        for _ in 0..strategy.yields {
            crate::sync::yield_now();
            if let Some(v) = check()? {
                return Ok(Some(v));
            }
        }
        return Ok(None);
    }
    let budget = match ctx.deadline {
        Some(d) => strategy.spin.min(d.saturating_duration_since(start)),
        None => strategy.spin,
    };
    let mut i = 0u32;
    loop {
        crate::sync::spin_loop();
        if let Some(v) = check()? {
            return Ok(Some(v));
        }
        i = i.wrapping_add(1);
        // Reading the clock costs ~20 ns; look at it every 64 rounds.
        if i.is_multiple_of(64) && start.elapsed() >= budget {
            return Ok(None);
        }
    }
}

#[cfg(osmos_loom)]
fn busy_phase<T>(
    _ctx: &WaitCtx<'_>,
    _start: Instant,
    _check: &mut impl FnMut() -> Result<Option<T>>,
) -> Result<Option<T>> {
    Ok(None)
}

fn park_loop<T>(
    ctx: &WaitCtx<'_>,
    start: Instant,
    word: &AtomicU32,
    extra: Option<&AtomicU32>,
    flag: ParkFlag<'_>,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let (own_word, peer_word) = ctx.liveness.state_words();
    let result = loop {
        // Snapshot every word we will sleep on *before* the checks: a change
        // after the snapshot makes the sleep return at once.
        // ORDERING: Acquire pairs with the ringer's Release increment (and
        // with `Liveness::mark_dead` / `CreditReceiver::close`).
        let seen = word.load(Ordering::Acquire);
        let own = own_word.load(Ordering::Acquire);
        let peer = peer_word.load(Ordering::Acquire);
        let seen_extra = extra.map(|w| w.load(Ordering::Acquire));
        flag.set();
        // ORDERING: SYNC POINT A (waiter side), pairs with the fence in
        // `Doorbell::ring` / `CreditReceiver::grant`.
        fence(Ordering::SeqCst);
        match check() {
            Ok(Some(v)) => break Ok(v),
            Err(e) => break Err(e),
            Ok(None) => {}
        }
        if let Err(e) = ctx.liveness.check_words(own, peer) {
            break Err(e);
        }
        let timeout = match ctx.deadline {
            None => None,
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => {
                    break Err(Error::Timeout {
                        waiting_for: ctx.what,
                        after: start.elapsed(),
                    });
                }
            },
        };
        let mut words = [(word, seen), (own_word, own), (peer_word, peer), (word, seen)];
        let n = match (extra, seen_extra) {
            (Some(w), Some(v)) => {
                words[3] = (w, v);
                4
            }
            _ => 3,
        };
        // Every outcome (woken, changed, timed out, interrupted) re-checks.
        let _ = PlatformFutex::wait_any(&words[..n], timeout);
        flag.clear();
    };
    flag.clear();
    result
}

#[cfg(all(test, not(osmos_loom)))]
mod tests {
    use super::*;
    use crate::test_support::{bound, pair, small_config};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn a_wait_times_out_naming_what_it_waited_for() {
        let p = pair(&small_config());
        let bell = Doorbell::default();
        let deadline = Instant::now() + Duration::from_millis(3);
        let ctx = WaitCtx {
            liveness: &p.host.liveness,
            strategy: WaitStrategy::default(),
            deadline: Some(deadline),
            what: "the answer",
        };
        let err = bell.wait_until(&ctx, || Ok(None::<()>)).unwrap_err();
        // `after` counts from the wait's own start, which a busy machine
        // may delay past the deadline's; the deadline is what must have
        // passed.
        match &err {
            Error::Timeout {
                waiting_for: "the answer",
                ..
            } => assert!(Instant::now() >= deadline, "the wait ended before its deadline"),
            e => panic!("{e}"),
        }
        assert!(err.to_string().contains("the answer"));
    }

    #[test]
    fn a_ring_wakes_a_parked_waiter_across_threads_many_times() {
        let p = pair(&small_config());
        let bell = Arc::new(Doorbell::default());
        let flag = Arc::new(crate::sync::atomic::AtomicU32::new(0));
        let live = p.host.liveness.clone();
        let (b, f) = (bell.clone(), flag.clone());
        let waiter = std::thread::spawn(move || {
            for round in 1..=2000u32 {
                let ctx = WaitCtx {
                    liveness: &live,
                    strategy: WaitStrategy::PARK,
                    deadline: Some(Instant::now() + Duration::from_secs(10)),
                    what: "round",
                };
                b.wait_until(&ctx, || Ok((f.load(Ordering::Acquire) >= round).then_some(())))
                    .unwrap();
            }
        });
        for round in 1..=2000u32 {
            flag.store(round, Ordering::Release);
            bell.ring(&p.host.liveness);
            if round % 2 == 0 {
                std::thread::yield_now();
            }
        }
        waiter.join().unwrap();
    }

    #[test]
    fn the_producer_sees_whether_its_consumer_is_parked() {
        let mut p = pair(&small_config());
        let sent_to = p.host.sender.producer().readable_watcher();
        let consumer = p.cell.receiver.readable_watcher();
        assert!(!sent_to.someone_parked());
        consumer.arm_reactor();
        assert!(
            sent_to.someone_parked(),
            "the mark is on the bell the producer rings"
        );
        consumer.disarm_reactor();
        assert!(!sent_to.someone_parked());
    }

    #[test]
    fn the_ring_that_wakes_takes_the_mark_so_the_rings_after_it_stay_quiet() {
        use crate::wake::{Drained, drain_link};
        let host_seg = crate::Segment::create(&small_config(), 7).unwrap();
        let cell_seg = host_seg.attach_peer().unwrap();
        let mut host = host_seg.endpoint().unwrap();
        let mut cell = cell_seg.endpoint().unwrap();
        let consumer = cell.receiver.readable_watcher();
        let sent_to = host.sender.producer().readable_watcher();
        let wake_fd = cell.liveness.wake_fd().expect("attached with its wake end");
        for round in 0..3u8 {
            consumer.arm_reactor();
            for i in 0..5u8 {
                host.sender.send(&[round, i], bound()).unwrap();
            }
            assert_eq!(
                drain_link(wake_fd),
                Drained::Empty(1),
                "five rings while the waiter wakes send one wake byte"
            );
            assert!(sent_to.someone_parked(), "the waiter is still waking");
            consumer.disarm_reactor();
            assert!(!sent_to.someone_parked(), "disarming clears the ringer's note");
            for i in 0..5u8 {
                assert_eq!(cell.receiver.try_recv().unwrap().unwrap().to_vec(), [round, i]);
            }
        }
    }

    #[test]
    fn errors_from_the_condition_end_the_wait() {
        let p = pair(&small_config());
        let bell = Doorbell::default();
        let ctx = WaitCtx {
            liveness: &p.host.liveness,
            strategy: WaitStrategy::default(),
            deadline: None,
            what: "x",
        };
        let called = AtomicBool::new(false);
        let err = bell
            .wait_until(&ctx, || {
                called.store(true, std::sync::atomic::Ordering::Relaxed);
                Err::<Option<()>, _>(Error::Shutdown)
            })
            .unwrap_err();
        assert!(matches!(err, Error::Shutdown) && called.into_inner());
    }
}
