//! The caller's side of receiving: claiming the receive lock
//! ([`ShmDirect`]), waiting under the claim ([`ShmClaim`]: spin, yield or
//! block, as the parent module's doc describes), lending it back between a
//! stream's batches, and handing the ring back to the driver when the
//! claim is let go.

use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use osmos_shm::PeerCpu;

use super::{Core, RxInner};
use crate::link::shm::{RECV_CHECKS, RECV_SPIN};
use crate::link::{DirectRx, Here, LinkError, RxClaim, WaitHere};
use crate::locks::OwnedTryGuard;

/// How long a caller blocks its thread on the readable bell in one window
/// at least. The window lasts until just past the next kernel tick (4 ms at
/// 250 Hz) if that is later, unless the caller's own deadline comes first.
const BLOCK_WINDOW: Duration = Duration::from_micros(500);
/// How many times a caller gives its CPU to a peer on the same CPU before
/// it blocks.
const CALLER_YIELDS: u32 = 2;
/// How many ring checks a caller's spin makes in one poll (a few
/// microseconds) before letting its executor run other work.
const SPIN_CHUNK: u32 = 16 * RECV_CHECKS;

/// Receiving on a caller's thread (see the module doc).
pub(super) struct ShmDirect(pub(super) Arc<Core>);

impl DirectRx for ShmDirect {
    fn claim(&self) -> Option<Box<dyn RxClaim>> {
        let core = &self.0;
        if core.closed() {
            return None;
        }
        // A held lock may be lent (only then is the lent one looked at).
        let g = match core.inner.clone().try_lock_owned() {
            Some(g) => g,
            None => core.lent().guard.take()?,
        };
        if core.driver_parked() {
            // The peer's rings wake this claim's thread (if it blocks),
            // not the driver's, while the claim holds the lock.
            core.readable.disarm_reactor();
        }
        Some(Box::new(ShmClaim::new(g, core.clone())))
    }

    fn end_lend(&self) {
        let core = &self.0;
        let Some(g) = core.lent().guard.take() else {
            return;
        };
        // Let go the way a claim does, handing the ring back.
        drop(ShmClaim::new(g, core.clone()));
    }
}

/// A caller's hold on the receive lock.
struct ShmClaim {
    /// `Some` until dropped.
    g: Option<OwnedTryGuard<RxInner>>,
    core: Arc<Core>,
    /// The end of this claim's spin window, once decided (a window that is
    /// skipped ends at once).
    spin_until: Option<Instant>,
    spun: bool,
    /// The claim spun for a peer it had to wake (once per claim).
    woke_spun: bool,
    /// The claim gave its CPU to a peer on the same CPU (once per claim).
    yielded: bool,
    /// A block ended without a frame: the claim has nothing more to wait for.
    blocked: bool,
    /// An error found while waiting, reported by the next `next`.
    error: Option<LinkError>,
}

impl ShmClaim {
    /// A fresh claim on the held lock `g` (each way of waiting tried anew).
    fn new(g: OwnedTryGuard<RxInner>, core: Arc<Core>) -> Self {
        ShmClaim {
            g: Some(g),
            core,
            spin_until: None,
            spun: false,
            woke_spun: false,
            yielded: false,
            blocked: false,
            error: None,
        }
    }
}

impl RxClaim for ShmClaim {
    fn next(&mut self) -> Here<'_> {
        if let Some(e) = self.error.take() {
            return Here::Failed(e);
        }
        if self.core.closed() {
            return Here::Nothing;
        }
        let ShmClaim { g, core, .. } = self;
        let inner = g.as_mut().expect("a claim holds its guard until dropped");
        match inner.take_frame() {
            Ok(true) => {
                let tail = inner.tail.take();
                return Here::Frame(inner.frame(), tail);
            }
            Ok(false) => {}
            Err(e) => return Here::Failed(e),
        }
        match inner.ended(&core.liveness) {
            Ok(Some(())) => Here::Nothing,
            Ok(None) => Here::Closed,
            Err(e) => Here::Failed(e),
        }
    }

    fn peer_runs_elsewhere(&self) -> bool {
        self.core.liveness.where_peer_runs() == PeerCpu::Other
    }

    fn lend(mut self: Box<Self>) {
        // An error waiting to be reported goes to whoever receives next
        // through an ordinary hand-back. A peer on this CPU cannot send
        // while the lender's thread runs, so there are no rings to spare,
        // and lending measured slower there (a stream fed by a call in a
        // task of its own, pinned): let go as usual.
        if self.error.is_some()
            || self.core.closed()
            || self.core.liveness.where_peer_runs() != PeerCpu::Other
        {
            return;
        }
        let Some(g) = self.g.take() else { return };
        let wake = {
            let mut l = self.core.lent();
            l.guard = Some(g);
            l.lends = l.lends.wrapping_add(1);
            !l.watched
        };
        // The driver may sleep with nobody to hand the ring back to it:
        // it takes up watching (a permit if it is not asleep yet).
        if wake {
            self.core.handed_back.notify_one();
        }
    }

    fn wait(&mut self, block_until: Option<Instant>) -> WaitHere {
        if self.core.closed() {
            return WaitHere::Stop;
        }
        let ShmClaim {
            g,
            core,
            spin_until,
            spun,
            woke_spun,
            yielded,
            blocked,
            error,
        } = self;
        let inner = g.as_mut().expect("a claim holds its guard until dropped");
        let peer = core.liveness.where_peer_runs();
        let mut look = |inner: &mut RxInner, checks: u32| match inner.has_frame_soon(peer, checks) {
            Ok(found) => found,
            Err(e) => {
                // Reported by the next `next`.
                *error = Some(e);
                true
            }
        };
        let now = Instant::now();
        // A peer asleep when the call went out must first be woken, which on
        // an idle CPU takes tens of microseconds. A thread that may block
        // keeps its CPU meanwhile, yielding it between looks (the scheduler
        // may have queued the peer on this CPU): a block would add a second
        // wake, this side's, of as many microseconds, once the answer (or a
        // stream's first item) is written. Only while that pays (see
        // `Adaptive`): a peer slow to answer makes it stop.
        if let Some(deadline) = block_until
            && peer == PeerCpu::Other
            && !std::mem::replace(woke_spun, true)
            && core.sent_to.someone_parked()
            && inner.caller_wake_spin.may_try()
        {
            let until = (now + RECV_SPIN).min(deadline);
            if spin_for_woken_peer(until, || look(inner, SPIN_CHUNK)) {
                inner.caller_wake_spin.paid();
                return WaitHere::Ready;
            }
            inner.caller_wake_spin.missed();
        }
        // Otherwise a thread spins only for a peer that is awake.
        if peer == PeerCpu::Other && !core.sent_to.someone_parked() {
            let until = *spin_until.get_or_insert_with(|| {
                if inner.caller_spin.may_try() {
                    now + RECV_SPIN
                } else {
                    now
                }
            });
            if now < until {
                *spun = true;
                if look(inner, SPIN_CHUNK) {
                    inner.caller_spin.paid();
                    return WaitHere::Ready;
                }
                return WaitHere::Again;
            }
            if std::mem::take(spun) {
                inner.caller_spin.missed();
            }
        }
        // The peer last ran on this CPU: the peer this side just woke (or
        // that is still finishing) is likely queued behind this thread.
        // Giving the CPU up hands over without a sleep and a wake, and the
        // answer, written while this side is not parked, rings nobody. A
        // yield leaves the thread runnable, so a worker may do it too; once
        // per claim, and only while it pays (see `Adaptive`).
        if !std::mem::replace(yielded, true) && peer == PeerCpu::Same && inner.caller_yield.may_try() {
            for _ in 0..CALLER_YIELDS {
                std::thread::yield_now();
                if look(inner, 1) {
                    inner.caller_yield.paid();
                    return WaitHere::Ready;
                }
            }
            inner.caller_yield.missed();
        }
        // Block at most once for each frame it brings: a block that ends
        // without one (the window passed, or the bell rang for nothing)
        // lets the claim go.
        let Some(until) = block_until else {
            return WaitHere::Stop;
        };
        if *blocked || !inner.caller_block.may_try() {
            return WaitHere::Stop;
        }
        let seen = core.readable.seq();
        if look(inner, 1) {
            return WaitHere::Ready;
        }
        // The window ends past the next kernel tick: a shorter timer costs
        // two reprogrammings of the CPU's timer device (see
        // `past_next_tick`, which reads the clock afresh: `now` predates
        // the yields above).
        let window = osmos_shm::past_next_tick(now + BLOCK_WINDOW);
        let r = core.readable.wait_change(seen, Some(until.min(window)));
        if look(inner, 1) {
            inner.caller_block.paid();
            return WaitHere::Ready;
        }
        *blocked = true;
        match r {
            Ok(()) | Err(osmos_shm::Error::Timeout { .. }) => inner.caller_block.missed(),
            // A dead peer or a shutdown: the driver reports it.
            Err(_) => {}
        }
        WaitHere::Stop
    }
}

/// Looks (`look` spins through a chunk of ring checks) until it finds a frame
/// or `until` passes, yielding the CPU between looks: the peer just woken
/// may have been queued on this CPU. Whether a frame was found.
fn spin_for_woken_peer(until: Instant, mut look: impl FnMut() -> bool) -> bool {
    loop {
        if look() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::yield_now();
    }
}

impl Drop for ShmClaim {
    /// Lets the lock go, then hands the ring back to a parked driver: a
    /// frame that came while its mark was off would ring nobody.
    fn drop(&mut self) {
        let Some(g) = self.g.take() else { return };
        drop(g);
        // ORDERING: SYNC POINT H (claim side), pairs with the fence in
        // `Core::behind_claim`.
        fence(Ordering::SeqCst);
        if self.core.driver_parked() {
            self.core.hand_back();
        }
    }
}
