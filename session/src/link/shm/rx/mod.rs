//! The receiving half of an shm link, shared by the session's driver and by
//! callers that receive on their own thread.
//!
//! Whoever holds the receive lock reads the ring. The driver ([`ShmRx`])
//! holds it only while it looks at the ring or hands a frame over, never
//! while it waits. A caller waiting for its answer claims the lock instead
//! ([`DirectRx::claim`]): while it holds it, it takes the driver's reactor
//! mark off the readable bell (the peer's ring then wakes no other thread for
//! the frames the caller takes), receives and handles every frame itself,
//! polls while the peer runs on another CPU, yields its CPU while the peer
//! last ran on the same one, and, where blocking a thread is allowed, sleeps
//! on the bell's futex for a bounded time, so the peer's ring wakes the
//! waiting thread directly. Letting the claim go puts the mark back and,
//! when a frame is waiting, wakes the driver.
//!
//! A driver that finds the lock claimed sleeps as if parked (marked in
//! `Core::driver_parked`), not until the claim is let go: a claim that ends
//! with the ring empty hands the ring back by putting the reactor mark on
//! (the peer's next frame wakes the driver) and wakes nobody. A stream's
//! receiver that claims the lock batch after batch while the call that
//! feeds it waits on another thread then costs the driver no wake per
//! batch (SYNC POINT H: the claim lets the lock go and then looks at the
//! mark, the driver marks itself and then tries the lock; one of them sees
//! the other).
//!
//! A stream's receiver that has taken a batch of items, its peer running
//! on another CPU, lends the receive side back instead of letting it go
//! ([`RxClaim::lend`](crate::link::RxClaim::lend)): it will want it
//! again once its user has taken those items, and a hand-back in between
//! would put the driver's mark back, so that the peer's next frame woke
//! the driver (a thread wake, on the peer's CPU as often as not, where it
//! takes that CPU from the producer) only to find the receiver claiming
//! again. A lent lock stays
//! held, with the mark off; whoever claims next gets it. The driver, woken
//! once when lending begins, watches the lends with a timer
//! ([`LEND_CHECK`]) and takes the lock back when no new lend came for a
//! whole period (a receiver whose user stopped receiving): frames for
//! anyone else wait a few milliseconds at most.
//!
//! Yielding is what makes one CPU fast: a peer that shares this side's CPU
//! and was just woken (or has not gone to sleep yet) is queued behind this
//! thread, and giving the CPU up runs it at once. Its answer, written while
//! this side is not parked, needs no wake, and a driver that yields after
//! answering finds the next call without being woken either: a round trip
//! is two switches and no wake. `sched_yield` leaves the thread runnable,
//! so a runtime's worker may do it too, and yields are bounded (a few per
//! wait).
//!
//! Every way of waiting is adaptive (see `Adaptive`): a window that ends
//! without a frame (a slow handler, a busy machine, a peer that only sends)
//! lowers its score, and at zero the wait is skipped, trying again now and
//! then.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::time::{Duration, Instant};

use osmos_shm::{BellWatcher, Copied, FrameReceiver, FrameRun, Liveness, PeerCpu, PeerState};
use tokio::sync::Notify;

use crate::locks::{OwnedTryGuard, TryGuard, TryLock};

use super::{EMPTY_WAKES_ALLOWED, RECV_CHECKS, RECV_SPIN, SideWaiters, shm_error};
use crate::adaptive::Adaptive;
use crate::fast::SPLIT_AT_LEAST;
use crate::link::{DirectRx, LinkError, LinkRx, Received};
use crate::rules::Rule;

mod claim;
use claim::ShmDirect;

/// How many times the driver gives its CPU to a peer on the same CPU before
/// it parks. A cell runs at a lower priority than its host (nice 10 and
/// `SCHED_BATCH` by default), and the scheduler often keeps a yielding
/// low-weight task on the CPU: its first yield tends to return at once. With
/// two yields, a pinned cell parked on about a third of the calls (the host
/// then rang its reactor: a syscall and a wake more per call, p50 `add`
/// 5.5–6 µs); with four it rarely does (3.6–3.9 µs). Each yield that keeps
/// the CPU costs ~0.3 µs.
const DRIVER_YIELDS: u32 = 4;
/// How often a driver behind a lent receive side looks whether the lends
/// go on (see the module doc).
const LEND_CHECK: Duration = Duration::from_millis(1);

/// Wakes and frames within the current second (see the module doc of
/// `shm`, "Storms").
#[derive(Debug)]
struct StormWindow {
    start: Instant,
    empty_wakes: u64,
    frames: u64,
}

impl StormWindow {
    fn new() -> Self {
        StormWindow {
            start: Instant::now(),
            empty_wakes: 0,
            frames: 0,
        }
    }

    fn roll(&mut self) {
        if self.start.elapsed() >= Duration::from_secs(1) {
            *self = StormWindow::new();
        }
    }

    fn frame(&mut self) {
        self.frames += 1;
    }

    /// Counts a wake that brought nothing; a violation past the allowance.
    fn empty_wake(&mut self) -> Result<(), LinkError> {
        self.roll();
        self.empty_wakes += 1;
        let allowed = self.frames.saturating_mul(2).saturating_add(EMPTY_WAKES_ALLOWED);
        if self.empty_wakes > allowed {
            return Err(LinkError::Violation {
                rule: Rule::LinkEmptyWakes.name(),
                detail: format!(
                    "the peer woke this side {} times within a second without publishing a frame ({} frames came; {allowed} empty wakes are allowed)",
                    self.empty_wakes, self.frames
                ),
            });
        }
        Ok(())
    }
}

/// How many bytes of a large frame are copied before deciding where its
/// tail begins (a message's header, see `wire::codec::split_point`).
const SPLIT_PEEK: usize = 256;

/// Most bytes of frames copied out of the ring in one run (see
/// `RxInner::take_frame`).
const RUN_BYTES: usize = 16 << 10;

/// What the receive lock guards.
struct RxInner {
    receiver: FrameReceiver,
    /// Small frames copied out of the ring together: a stream's items cost
    /// one published head for all of them, not one each.
    run: FrameRun,
    /// The last frame received, when it came from `run`.
    in_run: Option<std::ops::Range<usize>>,
    /// The last frame received otherwise, copied out of the segment
    /// (without its tail, if that was held apart).
    buf: Vec<u8>,
    /// The end of the last frame, when it was copied out on its own.
    tail: Option<Vec<u8>>,
    window: StormWindow,
    /// The driver's spinning before it parks.
    driver_spin: Adaptive,
    /// The driver's yielding to a peer on its CPU before it parks.
    driver_yield: Adaptive,
    /// Callers' spinning while the peer runs on another CPU.
    caller_spin: Adaptive,
    /// Callers' yielding to a peer on their CPU.
    caller_yield: Adaptive,
    /// Callers' spinning (and yielding) for the answer of a peer they had
    /// to wake, on a thread that may block.
    caller_wake_spin: Adaptive,
    /// Callers' blocking on the readable bell.
    caller_block: Adaptive,
}

impl RxInner {
    /// Copies the next frame out, if one is there: a large frame whose
    /// payload ends with a byte string in two pieces (see [`Received`]).
    ///
    /// Small frames come from a run of them copied out together; a frame
    /// the run does not take (a slot, a frame large enough to split) is
    /// copied out on its own.
    fn take_frame(&mut self) -> Result<bool, LinkError> {
        if self.run.is_empty() {
            self.receiver
                .try_recv_run(&mut self.run, RUN_BYTES, SPLIT_AT_LEAST - 1)
                .map_err(shm_error)?;
        }
        self.in_run = self.run.next_frame();
        if self.in_run.is_some() {
            self.tail = None;
            self.window.frame();
            return Ok(true);
        }
        let copied = self
            .receiver
            // Whatever its size: a tail that becomes the value is copied
            // once. (Frames over 128 KiB used to keep the reused receive
            // buffer and a second copy, for fear of glibc's heap shrinking
            // and regrowing around each fresh megabyte; since the sender
            // writes from the value into the slot, the split path faults
            // no more than the buffer did, and `echo_1m` took 424 and
            // 270 µs against 559 and 398 unpinned and pinned.)
            .try_recv_split(&mut self.buf, SPLIT_AT_LEAST, SPLIT_PEEK, |peeked, total| {
                crate::wire::codec::split_point(peeked, total, SPLIT_AT_LEAST / 2)
            })
            .map_err(shm_error)?;
        let Some(copied) = copied else {
            return Ok(false);
        };
        self.tail = match copied {
            Copied::Whole => None,
            Copied::Split(tail) => Some(tail),
        };
        self.window.frame();
        Ok(true)
    }

    /// The frame [`take_frame`](Self::take_frame) took last.
    fn frame(&self) -> &[u8] {
        match &self.in_run {
            Some(r) => &self.run.bytes()[r.clone()],
            None => &self.buf,
        }
    }

    fn has_frame(&mut self) -> Result<bool, LinkError> {
        Ok(!self.run.is_empty() || self.receiver.has_frame().map_err(shm_error)?)
    }

    /// Whether a frame is ready, checking `checks` times in a tight loop
    /// while the peer runs on another CPU (where the peer runs does not
    /// change within a microsecond: the caller looks once).
    fn has_frame_soon(&mut self, peer: PeerCpu, checks: u32) -> Result<bool, LinkError> {
        if self.has_frame()? {
            return Ok(true);
        }
        if peer != PeerCpu::Other {
            return Ok(false);
        }
        for _ in 1..checks {
            std::hint::spin_loop();
            if self.has_frame()? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The end of the stream once the ring is empty: `Ok(None)` for a
    /// closing peer, an error for a dead one; `Ok(Some(()))` to go on.
    fn ended(&mut self, liveness: &Liveness) -> Result<Option<()>, LinkError> {
        let peer = liveness.side().peer();
        match liveness.state(peer) {
            PeerState::Closing | PeerState::Dead => {
                if self.has_frame()? {
                    return Ok(Some(()));
                }
                if liveness.state(peer) == PeerState::Dead {
                    return Err(LinkError::PeerGone {
                        detail: format!("the {peer} died"),
                    });
                }
                Ok(None)
            }
            _ => Ok(Some(())),
        }
    }
}

/// The receive lock as a claim lent it back (see the module doc).
#[derive(Default)]
struct Lent {
    /// The lent lock, until someone claims it or the driver takes it back.
    guard: Option<OwnedTryGuard<RxInner>>,
    /// Lends so far: a lend that no new one followed for a whole
    /// [`LEND_CHECK`] is taken back.
    lends: u64,
    /// The driver watches the lends; otherwise a lend wakes it so that it
    /// does.
    watched: bool,
    /// `lends` when the driver last stopped watching with nothing lent: no
    /// lend since, no watch needed.
    idle_at: u64,
}

/// What the driver and the claims share.
struct Core {
    inner: Arc<TryLock<RxInner>>,
    /// The driver sleeps (or is about to) and is woken through the reactor,
    /// its mark on the readable bell except while a claim holds the lock:
    /// whoever lets the receive lock go hands the ring back to it
    /// ([`hand_back`](Core::hand_back)). Set by the driver, under the lock
    /// when it parks, without it when it finds the lock claimed; cleared by
    /// the driver under the lock.
    driver_parked: AtomicBool,
    /// A permit for the driver: a hand-back found a frame waiting, or a
    /// lend began that nobody watches.
    handed_back: Notify,
    /// The receive lock lent back by a claim.
    lent: std::sync::Mutex<Lent>,
    /// The driver's half is gone: nobody receives any more.
    closed: AtomicBool,
    readable: BellWatcher,
    /// The bell of the ring this side sends on: while the peer is marked
    /// parked on it, the peer sleeps (or is still waking from this side's
    /// ring), and a caller has no answer to spin for. (The driver cannot
    /// use it: the peer's own driver is marked there whenever the peer's
    /// callers receive for themselves, however busy the peer is.)
    sent_to: BellWatcher,
    liveness: Liveness,
    waiters: SideWaiters,
}

impl Core {
    /// Whether the driver's half is gone (nobody may receive any more).
    fn closed(&self) -> bool {
        // ORDERING: Acquire pairs with the Release store in `ShmRx::drop`.
        self.closed.load(Ordering::Acquire)
    }

    /// Whether the driver is marked parked. ORDERING: Relaxed: the mark
    /// carries no data; where it races with the lock, SYNC POINT H orders
    /// it (see `behind_claim` and `ShmClaim::drop`).
    fn driver_parked(&self) -> bool {
        self.driver_parked.load(Ordering::Relaxed)
    }

    /// Sleeps the way a parked driver does while a claim holds the receive
    /// lock; the claim hands the ring back when it lets go. Returns how
    /// many wakes from the peer this sleep read (0 or 1: see
    /// `StormWindow`).
    async fn behind_claim(&self) -> Result<u32, LinkError> {
        let handed_back = self.handed_back.notified();
        let passed_on = self.waiters.inner.notify.notified();
        tokio::pin!(handed_back, passed_on);
        passed_on.as_mut().enable();
        self.driver_parked.store(true, Ordering::Relaxed);
        // ORDERING: SYNC POINT H (driver side), pairs with the fence in
        // `ShmClaim::drop`: either this try_lock sees the claim's unlock, or
        // the claim, after its unlock, sees the mark and hands back.
        fence(Ordering::SeqCst);
        if self.inner.try_lock().is_some() {
            // The claim is gone; the caller's loop takes the lock.
            return Ok(0);
        }
        tokio::select! {
            biased;
            _ = handed_back => Ok(0),
            slept = self.waiters.sleep(passed_on) => Ok(u32::from(slept?)),
            () = self.watch_lends() => Ok(0),
        }
    }

    fn lent(&self) -> std::sync::MutexGuard<'_, Lent> {
        // A panic while holding this lock leaves a guard and counters
        // behind; keep going.
        self.lent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches the lends while a claim lends the receive lock (a stream's
    /// receiver claiming batch after batch): returns once it took back a
    /// lock that no new lend followed for a whole [`LEND_CHECK`] (and let
    /// it go: the driver's loop takes it). Without a lend since the last
    /// watch, or once a whole period passed with the lock claimed and no
    /// lend, it never returns: the claim hands the ring back when it ends,
    /// and a lend it makes next wakes the driver, which then watches again.
    async fn watch_lends(&self) {
        /// Stops the watch, however the driver's sleep ends. With nothing
        /// lent, the next watch waits for a new lend.
        struct Watching<'a>(&'a Core);
        impl Drop for Watching<'_> {
            fn drop(&mut self) {
                let mut l = self.0.lent();
                l.watched = false;
                if l.guard.is_none() {
                    l.idle_at = l.lends;
                }
            }
        }
        let watch = {
            let mut l = self.lent();
            l.watched = l.guard.is_some() || l.lends != l.idle_at;
            l.watched.then_some(l.lends)
        };
        let Some(mut seen) = watch else {
            return std::future::pending().await;
        };
        let _watching = Watching(self);
        loop {
            tokio::time::sleep(LEND_CHECK).await;
            let stale = {
                let mut l = self.lent();
                if l.lends != seen {
                    seen = l.lends;
                    continue;
                }
                l.watched = false;
                l.idle_at = l.lends;
                l.guard.take()
            };
            match stale {
                Some(g) => {
                    drop(g);
                    return;
                }
                // Claimed and not lent again for a whole period.
                None => return std::future::pending().await,
            }
        }
    }

    /// Hands the ring back to a parked driver once the receive lock is let
    /// go: puts its reactor mark back (the peer's next frame wakes it) and,
    /// with a frame already waiting, wakes it. Whoever holds the lock
    /// instead does this when it lets go (a claim) or receives itself (the
    /// driver).
    ///
    /// The look takes the lock itself, and a driver may find it held by
    /// the look and go back to sleep, marked: woken for a frame that came
    /// after the look (its ring takes the mark put back here), or awake
    /// and unmarked when the look began. So the driver is woken only once
    /// the lock is let go, and then also when a ring took the mark; and a
    /// look that found the driver unmarked looks again if it marked itself
    /// meanwhile (SYNC POINT H once more).
    fn hand_back(&self) {
        loop {
            let waiting = {
                let Some(mut g) = self.inner.try_lock() else {
                    return;
                };
                if self.driver_parked() {
                    self.readable.arm_reactor();
                    Some(g.has_frame().unwrap_or(true))
                } else {
                    None
                }
            };
            // ORDERING: SYNC POINT H (the look's side, as in
            // `ShmClaim::drop`); it also orders the look at the mark below
            // after the lock is let go: a ring that takes the mark later
            // wakes a driver that then finds the lock free.
            fence(Ordering::SeqCst);
            match waiting {
                Some(waiting) => {
                    // The mark is in the peer's memory: a peer that lies
                    // about it costs the driver a spurious wake, or delays
                    // only the frames it sent itself.
                    if waiting || !self.readable.reactor_armed() {
                        // A permit: the driver may not be asleep yet.
                        self.handed_back.notify_one();
                    }
                    return;
                }
                None if !self.driver_parked() => return,
                None => {}
            }
        }
    }
}

/// The receiving half of an shm link (the session's driver holds it).
pub struct ShmRx {
    core: Arc<Core>,
}

impl ShmRx {
    /// `sent_to` watches the bell of the ring the sending half writes.
    pub(super) fn new(
        receiver: FrameReceiver,
        sent_to: BellWatcher,
        liveness: Liveness,
        waiters: SideWaiters,
    ) -> Self {
        let readable = receiver.readable_watcher();
        ShmRx {
            core: Arc::new(Core {
                inner: Arc::new(TryLock::new(RxInner {
                    receiver,
                    run: FrameRun::new(),
                    in_run: None,
                    buf: Vec::new(),
                    tail: None,
                    window: StormWindow::new(),
                    driver_spin: Adaptive::new(),
                    driver_yield: Adaptive::new(),
                    caller_spin: Adaptive::new(),
                    caller_yield: Adaptive::new(),
                    caller_wake_spin: Adaptive::new(),
                    caller_block: Adaptive::new(),
                })),
                driver_parked: AtomicBool::new(false),
                handed_back: Notify::new(),
                lent: std::sync::Mutex::new(Lent::default()),
                closed: AtomicBool::new(false),
                readable,
                sent_to,
                liveness,
                waiters,
            }),
        }
    }
}

impl Drop for ShmRx {
    /// Nobody will read this side's ring again: mark this side dead, so that
    /// a peer waiting for ring space (or anything else) gets `PeerGone`
    /// instead of waiting forever.
    fn drop(&mut self) {
        // ORDERING: Release pairs with the Acquire in `Core::closed`: a
        // claim taken after it sees the driver's half gone.
        self.core.closed.store(true, Ordering::Release);
        self.core.liveness.mark_dead(self.core.liveness.side());
    }
}

/// A frame the driver received, held under the receive lock.
pub struct ShmFrame<'a>(TryGuard<'a, RxInner>);

impl std::ops::Deref for ShmFrame<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.0.frame()
    }
}

impl Received for ShmFrame<'_> {
    fn take_tail(&mut self) -> Option<Vec<u8>> {
        self.0.tail.take()
    }
}

impl LinkRx for ShmRx {
    type Frame<'a> = ShmFrame<'a>;

    async fn recv(&mut self) -> Result<Option<ShmFrame<'_>>, LinkError> {
        let core = &*self.core;
        core.waiters.reactor()?;
        // Poll for a while before parking, but only while the peer runs on
        // another CPU (a frame is then seen within ~0.1 µs, against tens of
        // microseconds for a wake across CPUs), and only while spinning
        // pays (see `Adaptive`). A peer on this CPU cannot run while we
        // spin: give it the CPU a few times instead, then park. While a
        // caller holds the receive lock it does the receiving; wait for it
        // to let go.
        // Decided when the first window begins (no clock read otherwise).
        let mut spin_until = None;
        let mut may_spin = None;
        let mut spun = false;
        let mut yields = 0;
        let mut may_yield = None;
        // Sleeps that read a wake from the peer, not yet matched by a frame.
        let mut woken = 0u32;
        loop {
            let Some(mut g) = core.inner.try_lock() else {
                woken += core.behind_claim().await?;
                continue;
            };
            if core.driver_parked() {
                core.driver_parked.store(false, Ordering::Relaxed);
                core.readable.disarm_reactor();
            }
            // Each sleep a wake ended counts, also those behind a claim
            // (a peer writing wake bytes while callers receive wakes the
            // driver each time).
            let woke = std::mem::take(&mut woken);
            if woke > 0 && !g.has_frame()? && !core.waiters.any_armed() && core.liveness.check().is_ok() {
                for _ in 0..woke {
                    g.window.empty_wake()?;
                }
            }
            let peer = core.liveness.where_peer_runs();
            // The tight loop only while spinning pays: a peer that answers
            // late (one of many cells, a slow handler) would cost a
            // microsecond of checks on every pass.
            let found = g.has_frame()?
                || (peer == PeerCpu::Other
                    && *may_spin.get_or_insert_with(|| g.driver_spin.may_try())
                    && g.has_frame_soon(peer, RECV_CHECKS)?);
            if found {
                if spun {
                    g.driver_spin.paid();
                }
                if yields > 0 {
                    g.driver_yield.paid();
                }
                if !g.take_frame()? {
                    return Err(LinkError::Io(std::io::Error::other(
                        "a frame found ready was gone (a bug)",
                    )));
                }
                return Ok(Some(ShmFrame(g)));
            }
            if g.ended(&core.liveness)?.is_none() {
                return Ok(None);
            }
            let may_spin = *may_spin.get_or_insert_with(|| g.driver_spin.may_try());
            if may_spin && peer == PeerCpu::Other && {
                let now = Instant::now();
                now < *spin_until.get_or_insert(now + RECV_SPIN)
            } {
                spun = true;
                drop(g);
                tokio::task::yield_now().await;
                continue;
            }
            if spun {
                // A whole window without a frame.
                g.driver_spin.missed();
                spun = false;
            }
            // A peer that last ran on this CPU may be runnable behind this
            // thread (an answer just written, a caller about to send): give
            // it the CPU a few times before sleeping. Its next frame then
            // comes without a wake on either side.
            // Only while yielding pays (see `Adaptive`): a side that only
            // sends (a stream's producer) would lose its CPU for nothing.
            if yields < DRIVER_YIELDS
                && peer == PeerCpu::Same
                && *may_yield.get_or_insert_with(|| g.driver_yield.may_try())
            {
                yields += 1;
                drop(g);
                std::thread::yield_now();
                continue;
            }
            if std::mem::take(&mut yields) > 0 {
                g.driver_yield.missed();
            }
            // Park: mark, re-check, sleep in the reactor (the lock let go;
            // a claim taken meanwhile hands the ring back when it ends).
            let handed_back = core.handed_back.notified();
            let passed_on = core.waiters.inner.notify.notified();
            tokio::pin!(handed_back, passed_on);
            passed_on.as_mut().enable();
            core.driver_parked.store(true, Ordering::Relaxed);
            core.readable.arm_reactor();
            if g.has_frame()? {
                core.readable.disarm_reactor();
                core.driver_parked.store(false, Ordering::Relaxed);
                continue;
            }
            drop(g);
            tokio::select! {
                biased;
                _ = handed_back => {}
                slept = core.waiters.sleep(passed_on) => woken += u32::from(slept?),
            }
        }
    }

    fn direct(&self) -> Option<Arc<dyn DirectRx>> {
        Some(Arc::new(ShmDirect(self.core.clone())))
    }
}
