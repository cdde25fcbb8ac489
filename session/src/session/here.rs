//! Receiving on the waiting caller's thread.
//!
//! A caller that has sent its call waits for the answer. When the link can
//! be received from directly ([`DirectRx`], the shm link) and nobody else is
//! receiving, the caller claims the receive side and takes frames itself:
//! every frame it finds is handled exactly as the driver would handle it
//! (other callers' answers, the peer's calls, channel items), until its own
//! answer has come. The answer then costs no task wake and no thread hop.
//! A channel's receiver with an empty queue does the same until an item of
//! its own has come, then takes the frames already there too
//! (`Shared::channel_item`): a stream's items then reach it without the
//! driver, in batches. A caller that holds the receive side while a
//! channel's receiver waits for items (a task waiting for the call that
//! streams to it, say) takes the frames already there and lets it go, so
//! the receiver takes the rest itself, the caller's answer included,
//! instead of the two handing each item over between threads.
//! How long the caller waits here is the link's choice ([`RxClaim::wait`]):
//! it polls while the peer runs on another CPU, and blocks its thread on
//! the link's futex only where that stalls nothing else: outside the
//! runtime's worker threads (the thread of `Runtime::block_on`, which is
//! where `#[tokio::main]` runs `main`) and never on a current-thread
//! runtime, whose one thread also drives the timers and the I/O. When
//! waiting here stops paying, the claim is let go, the driver receives
//! again, and the caller waits for it as before.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::Shared;
use super::channels::LastChannel;
use super::driver::{fail_with_violation, on_received};
use crate::adaptive::may_block_here;
use crate::channel::{ChannelCore, NextItem, Queued};
use crate::error::SessionError;
use crate::link::{Here, RxClaim, WaitHere};

/// How far ahead a caller without a deadline may block (each block is
/// bounded much shorter by the link).
const FAR: Duration = Duration::from_secs(3600);
/// Longest one poll of a waiting caller keeps handling frames before it
/// lets its executor run other work.
const POLL_BUDGET: Duration = Duration::from_millis(1);

/// How receiving under a claim ended.
enum Received<R> {
    /// What the thread waited for (for a call, its answer, `None` when it
    /// never will come).
    Answer(R),
    /// Let the claim go and wait for whoever receives.
    LetGo,
    /// Lend the claim to a channel's receiver that waits (see
    /// `RxClaim::lend`), and wait for whoever receives.
    HandOver,
    /// Keep the claim, let the executor run other work, look again.
    Yield,
}

impl<R> Received<R> {
    /// What `look` finds, else let the claim go.
    fn settle(look: &mut dyn FnMut() -> Option<R>) -> Self {
        look().map_or(Received::LetGo, Received::Answer)
    }
}

/// What taking one frame under a claim did.
enum Took {
    /// A frame came and was handled.
    Frame,
    /// No frame was there.
    Nothing,
    /// The peer broke a rule; the session is ending: let the claim go.
    Broken,
    /// The link ended, and so has the session.
    Ended,
}

/// Most frames a receiver takes after finding its item, or a caller before
/// it hands the receive side to a channel's receiver (see
/// `Shared::drain_here`). Each batch ends in a hand-back to the driver (the
/// shm link then marks it parked again, and the peer's next frame may wake
/// it): a stream's items come in few batches. The items past the
/// receiver's read-ahead wait in its channel's queue, bounded by the
/// channel's credit.
const DRAIN_MAX: u32 = 1024;

/// The answer if it is there (`Some(None)`: it never will be), without
/// tokio's cooperative budget.
fn look<R>(answer: &mut oneshot::Receiver<R>) -> Option<Option<R>> {
    match answer.try_recv() {
        Ok(r) => Some(Some(r)),
        Err(oneshot::error::TryRecvError::Closed) => Some(None),
        Err(oneshot::error::TryRecvError::Empty) => None,
    }
}

/// Counts a channel receiver waiting while someone else receives, for as
/// long as it waits (see `Shared::channel_waiters`).
///
/// ORDERING: Relaxed throughout for `channel_waiters`: it publishes no
/// data, only a hint. A caller that reads it late keeps the claim a little
/// longer and hands items over through the channel's queue as before; the
/// item itself reaches the receiver under the channel's lock and `Notify`.
struct ChannelWaiter<'a>(&'a Shared);

impl<'a> ChannelWaiter<'a> {
    /// Counts a waiter on a link where someone else can hold the claim
    /// (`None` elsewhere: nobody would hand it over).
    fn new(shared: &'a Shared) -> Option<Self> {
        shared.direct.as_ref()?;
        shared.channel_waiters.fetch_add(1, Ordering::Relaxed);
        Some(ChannelWaiter(shared))
    }
}

impl Drop for ChannelWaiter<'_> {
    fn drop(&mut self) {
        self.0.channel_waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    /// The receive side, if the link offers it, nobody is receiving and
    /// the session still reads. A caller claims it before its call goes
    /// out: the peer's answer then rings this caller's thread, not the
    /// driver's, even when the peer answers before this thread runs again
    /// (a peer on the same CPU often does). A channel's receiver claims it
    /// when its queue is empty (`channel_item`).
    pub(super) fn claim_receiving(&self) -> Option<Box<dyn RxClaim>> {
        if self.reading_stopped() {
            return None;
        }
        self.direct.as_ref()?.claim()
    }

    /// Waits for a call's answer, receiving on this thread while that pays
    /// (see the module doc). `deadline`: when the call gives up. `None`
    /// when the answer will never come (its sender was dropped).
    ///
    /// `claim`: the receive side, claimed before the call was sent (see
    /// [`claim_receiving`](Self::claim_receiving)).
    ///
    /// The answer is looked at with `try_recv`, which tokio's cooperative
    /// budget does not limit: calls answered within one poll of `block_on`
    /// use that budget up, and a budgeted look would then report an answer
    /// that is there as missing, and the caller would wait for it.
    pub(super) async fn answer<R>(
        self: &Arc<Self>,
        mut answer: oneshot::Receiver<R>,
        deadline: Option<Instant>,
        mut claim: Option<Box<dyn RxClaim>>,
    ) -> Option<R> {
        if self.direct.is_none() {
            return answer.await.ok();
        }
        let block_until = may_block_here().then(|| deadline.unwrap_or_else(|| Instant::now() + FAR));
        std::future::poll_fn(move |cx| {
            if let Some(r) = look(&mut answer) {
                return Poll::Ready(r);
            }
            if claim.is_none() {
                claim = self.claim_receiving();
            }
            if let Some(c) = claim.as_mut() {
                match self.receive_here(c.as_mut(), &mut || look(&mut answer), block_until, false) {
                    Received::Answer(r) => {
                        claim = None;
                        return Poll::Ready(r);
                    }
                    Received::LetGo => claim = None,
                    // The receiver woken for the items claims next: lent,
                    // the receive side rings nobody until it does.
                    Received::HandOver => {
                        if let Some(c) = claim.take() {
                            c.lend();
                        }
                    }
                    Received::Yield => {
                        // Yield with the claim held: the executor polls again soon.
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
            }
            // Wait for whoever receives; the registration may find it ready.
            match Pin::new(&mut answer).poll(cx) {
                Poll::Ready(r) => Poll::Ready(r.ok()),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Lets a lent receive side go (see `RxClaim::lend`): a stream's
    /// receiver that lent it will not claim it again.
    pub(crate) fn end_lend(&self) {
        if let Some(direct) = &self.direct {
            direct.end_lend();
        }
    }

    /// Ends the session for a frame a caller found breaking a rule, the
    /// way the driver would (in a task: the caller cannot wait for it).
    fn fail_soon(self: &Arc<Self>, v: crate::error::Violation) {
        self.stop_reading();
        let shared = self.clone();
        tokio::spawn(async move { fail_with_violation(&shared, v).await });
    }

    /// Receives under `claim` until `look` finds what this thread waits
    /// for, waiting here stops paying or the session ends (let the claim
    /// go), or the link advises a yield (keep the claim).
    ///
    /// `drain`: once found, go on taking the frames already there (a
    /// stream's next items) before returning, so that the claim is let go
    /// with the ring empty and the driver is not woken for the rest.
    fn receive_here<R>(
        self: &Arc<Self>,
        claim: &mut dyn RxClaim,
        look: &mut dyn FnMut() -> Option<R>,
        block_until: Option<Instant>,
        drain: bool,
    ) -> Received<R> {
        let started = Instant::now();
        let mut frames = 0u32;
        let mut last = LastChannel::deferring();
        loop {
            loop {
                match self.take_here(claim, &mut last) {
                    Took::Frame => {
                        if let Some(r) = look() {
                            if drain {
                                self.drain_here(claim, &mut last, started);
                            }
                            return Received::Answer(r);
                        }
                        // A channel's receiver waits while this caller
                        // holds the receive side: hand it over, with the
                        // ring emptied so the driver is not woken for it.
                        // ORDERING: Relaxed, a hint (see `ChannelWaiter`).
                        if !drain && self.channel_waiters.load(Ordering::Relaxed) > 0 {
                            self.drain_here(claim, &mut last, started);
                            return look().map_or(Received::HandOver, Received::Answer);
                        }
                        // Items came for a channel whose receiver may not
                        // have been polled yet (it may even share this
                        // caller's task, joined with the call): with the
                        // peer on another CPU, let the executor run it,
                        // claim held, so it consumes them while the peer
                        // sends the rest (and, once waiting, takes the
                        // receive side over as above) instead of finding
                        // the whole stream queued when the answer comes.
                        // On the peer's CPU the two would only take turns.
                        // (`last` announces the items when it goes.)
                        if !drain && last.queued() > 0 && claim.peer_runs_elsewhere() {
                            return Received::Yield;
                        }
                        // A peer that keeps sending does not keep this
                        // thread from the rest of its work.
                        frames = frames.wrapping_add(1);
                        if frames.is_multiple_of(64) && started.elapsed() >= POLL_BUDGET {
                            return Received::Yield;
                        }
                    }
                    Took::Nothing => break,
                    Took::Broken => return Received::LetGo,
                    Took::Ended => return Received::settle(look),
                }
            }
            if started.elapsed() >= POLL_BUDGET {
                return Received::Yield;
            }
            // Waiting here pays for a lone caller. With other calls in
            // flight, their callers wait for whoever receives: hand that
            // back to the driver rather than hold it through a yield.
            if self.lock().pending.len() > 1 {
                return Received::settle(look);
            }
            // Nobody waits for the items taken so far while this thread
            // does.
            last.announce();
            match claim.wait(block_until) {
                WaitHere::Ready => {}
                WaitHere::Again => return Received::Yield,
                WaitHere::Stop => return Received::settle(look),
            }
        }
    }

    /// Takes one frame under `claim` and handles it the way the driver
    /// would.
    fn take_here(self: &Arc<Self>, claim: &mut dyn RxClaim, last: &mut LastChannel) -> Took {
        match claim.next() {
            Here::Frame(frame, tail) => match on_received(self, frame, tail, last) {
                Ok(()) => Took::Frame,
                Err(v) => {
                    self.fail_soon(v);
                    Took::Broken
                }
            },
            Here::Nothing => Took::Nothing,
            Here::Closed => {
                self.end(SessionError::Link {
                    detail: "the peer closed the link".into(),
                });
                Took::Ended
            }
            Here::Failed(crate::link::LinkError::Violation { rule, detail }) => {
                self.fail_soon(crate::error::violation(rule, detail));
                Took::Broken
            }
            Here::Failed(e) => {
                self.end(super::link_failed(e));
                Took::Ended
            }
        }
    }

    /// Takes the frames already in the ring, at most [`DRAIN_MAX`] and
    /// until [`POLL_BUDGET`] has passed since `started`.
    fn drain_here(self: &Arc<Self>, claim: &mut dyn RxClaim, last: &mut LastChannel, started: Instant) {
        for taken in 1..=DRAIN_MAX {
            if !matches!(self.take_here(claim, last), Took::Frame) {
                return;
            }
            if taken.is_multiple_of(64) && started.elapsed() >= POLL_BUDGET {
                return;
            }
        }
    }

    /// Waits for `core`'s next item, receiving on this thread while that
    /// pays, the way a caller waits for its answer (see the module doc):
    /// a stream's items then go from the ring to their receiver without
    /// the driver, and a receiver that may block sleeps on the ring's own
    /// bell. Falls back to [`ChannelCore::next_item`] (the driver
    /// receives) on a link without direct receiving, while someone else
    /// receives, or when waiting here stops paying.
    ///
    /// `ahead`: the receiver's items taken ahead (see
    /// [`ChannelCore::try_next_item`]).
    pub(crate) async fn channel_item(
        self: &Arc<Self>,
        core: &ChannelCore,
        ahead: &mut VecDeque<Queued>,
    ) -> NextItem {
        // Decided once a claim is taken: an item already queued (the common
        // case in a stream) costs no runtime lookup and no clock read.
        let mut block_until = None;
        let mut claim = None;
        loop {
            if let Some(r) = core.try_next_item(Some(ahead)) {
                if !matches!(r, Ok(Some(_))) {
                    // The stream ended: this receiver will not claim again.
                    self.end_lend();
                }
                return r;
            }
            if claim.is_none() {
                claim = self.claim_receiving();
            }
            let Some(c) = claim.as_mut() else {
                // Someone else receives (or the link cannot be received
                // from here): a caller holding the receive side lets it go
                // when it next takes a frame, and this receiver claims it
                // when woken for that item. Counted only where a claim
                // exists to hand over.
                let _waiting = ChannelWaiter::new(self);
                return core.next_item(Some(ahead)).await;
            };
            let block_until =
                *block_until.get_or_insert_with(|| may_block_here().then(|| Instant::now() + FAR));
            match self.receive_here(
                c.as_mut(),
                &mut || core.try_next_item(Some(&mut *ahead)),
                block_until,
                true,
            ) {
                Received::Answer(r) => {
                    // With items left to hand out, this receiver claims
                    // again soon: lend the receive side (see
                    // `RxClaim::lend`), so that the peer's next frames
                    // wake nobody meanwhile.
                    let more = matches!(r, Ok(Some(_)));
                    if let Some(c) = claim.take()
                        && more
                        && (!ahead.is_empty() || core.has_queued())
                    {
                        c.lend();
                    }
                    if !more {
                        self.end_lend();
                    }
                    return r;
                }
                // (A receiver hands over to nobody: it drains instead.)
                Received::LetGo | Received::HandOver => {
                    drop(claim.take());
                    return core.next_item(Some(ahead)).await;
                }
                // Keep the claim, let the executor run other work.
                Received::Yield => tokio::task::yield_now().await,
            }
        }
    }
}
