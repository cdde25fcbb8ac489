//! Receiving on the waiting caller's thread.
//!
//! A caller that has sent its call waits for the answer. When the link can
//! be received from directly ([`DirectRx`], the shm link) and nobody else is
//! receiving, the caller claims the receive side and takes frames itself:
//! every frame it finds is handled exactly as the driver would handle it
//! (other callers' answers, the peer's calls, channel items), until its own
//! answer has come. The answer then costs no task wake and no thread hop.
//! How long the caller waits here is the link's choice ([`RxClaim::wait`]):
//! it polls while the peer runs on another CPU, and blocks its thread on
//! the link's futex only where that stalls nothing else: outside the
//! runtime's worker threads (the thread of `Runtime::block_on`, which is
//! where `#[tokio::main]` runs `main`) and never on a current-thread
//! runtime, whose one thread also drives the timers and the I/O. When
//! waiting here stops paying, the claim is let go, the driver receives
//! again, and the caller waits for it as before.

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::Shared;
use super::driver::{fail_with_violation, on_received};
use crate::adaptive::may_block_here;
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
    /// The answer (`None`: it never will come).
    Answer(Option<R>),
    /// Let the claim go and wait for whoever receives.
    LetGo,
    /// Keep the claim, let the executor run other work, look again.
    Yield,
}

impl<R> Received<R> {
    /// The answer if it is there, else let the claim go.
    fn settle(answer: &mut oneshot::Receiver<R>) -> Self {
        look(answer).map_or(Received::LetGo, Received::Answer)
    }
}

/// The answer if it is there (`Some(None)`: it never will be), without
/// tokio's cooperative budget.
fn look<R>(answer: &mut oneshot::Receiver<R>) -> Option<Option<R>> {
    match answer.try_recv() {
        Ok(r) => Some(Some(r)),
        Err(oneshot::error::TryRecvError::Closed) => Some(None),
        Err(oneshot::error::TryRecvError::Empty) => None,
    }
}

impl Shared {
    /// The receive side for a caller about to send its call, if the link
    /// offers it and nobody is receiving. Claimed before the call goes out,
    /// the peer's answer then rings this caller's thread, not the driver's,
    /// even when the peer answers before this thread runs again (a peer on
    /// the same CPU often does).
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
        let Some(direct) = self.direct.clone() else {
            return answer.await.ok();
        };
        let block_until = may_block_here().then(|| deadline.unwrap_or_else(|| Instant::now() + FAR));
        std::future::poll_fn(move |cx| {
            if let Some(r) = look(&mut answer) {
                return Poll::Ready(r);
            }
            if claim.is_none() && !self.reading_stopped() {
                claim = direct.claim();
            }
            if let Some(c) = claim.as_mut() {
                match self.receive_here(c.as_mut(), &mut answer, block_until) {
                    Received::Answer(r) => {
                        claim = None;
                        return Poll::Ready(r);
                    }
                    Received::LetGo => claim = None,
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

    /// Ends the session for a frame a caller found breaking a rule, the
    /// way the driver would (in a task: the caller cannot wait for it).
    fn fail_soon(self: &Arc<Self>, v: crate::error::Violation) {
        self.stop_reading();
        let shared = self.clone();
        tokio::spawn(async move { fail_with_violation(&shared, v).await });
    }

    /// Receives under `claim` until the answer is there, waiting here
    /// stops paying or the session ends (let the claim go), or the link
    /// advises a yield (keep the claim).
    fn receive_here<R>(
        self: &Arc<Self>,
        claim: &mut dyn RxClaim,
        answer: &mut oneshot::Receiver<R>,
        block_until: Option<Instant>,
    ) -> Received<R> {
        let started = Instant::now();
        let mut frames = 0u32;
        loop {
            loop {
                match claim.next() {
                    Here::Frame(frame, tail) => {
                        if let Err(v) = on_received(self, frame, tail) {
                            self.fail_soon(v);
                            return Received::LetGo;
                        }
                        if let Some(r) = look(answer) {
                            return Received::Answer(r);
                        }
                        // A peer that keeps sending does not keep this
                        // thread from the rest of its work.
                        frames = frames.wrapping_add(1);
                        if frames.is_multiple_of(64) && started.elapsed() >= POLL_BUDGET {
                            return Received::Yield;
                        }
                    }
                    Here::Nothing => break,
                    Here::Closed => {
                        self.end(SessionError::Link {
                            detail: "the peer closed the link".into(),
                        });
                        return Received::settle(answer);
                    }
                    Here::Failed(crate::link::LinkError::Violation { rule, detail }) => {
                        self.fail_soon(crate::error::violation(rule, detail));
                        return Received::LetGo;
                    }
                    Here::Failed(e) => {
                        self.end(super::link_failed(e));
                        return Received::settle(answer);
                    }
                }
            }
            if started.elapsed() >= POLL_BUDGET {
                return Received::Yield;
            }
            // Waiting here pays for a lone caller. With other calls in
            // flight, their callers wait for whoever receives: hand that
            // back to the driver rather than hold it through a yield.
            if self.lock().pending.len() > 1 {
                return Received::settle(answer);
            }
            match claim.wait(block_until) {
                WaitHere::Ready => {}
                WaitHere::Again => return Received::Yield,
                WaitHere::Stop => return Received::settle(answer),
            }
        }
    }
}
