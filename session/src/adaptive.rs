//! Whether a way of waiting pays off ([`Adaptive`]).
//!
//! A waiter that expects what it waits for soon may poll, spin or yield
//! before it sleeps: that saves the sleep and the wake, but burns CPU when
//! the wait turns out long. Each such wait keeps a score of how often it
//! paid and stops trying while it does not, probing again now and then.
//! [`may_block_here`] tells which threads may hold on to their CPU while
//! they wait.

/// Whether this thread may block (or spin) in a wait: it runs a
/// multi-thread runtime's `block_on` (no task is being polled), not a
/// worker and not a current-thread runtime, whose one thread also runs the
/// tasks that would end the wait; and the future it polls still has tokio's
/// cooperative budget. Once the budget is spent, tokio's resources return
/// `Pending` and wake at once, so a sibling future (the other half of a
/// `join!`, a `select!` branch) may be waiting for nothing but the next
/// poll: a thread that blocked now would make it wait for the whole block.
/// (Pinned, 0.5–1 % of 1000-item streams took 4 ms more: the call of the
/// next stream, joined with its items, had run out of budget before it was
/// sent, and the items' receiver blocked until its window ended.)
pub(crate) fn may_block_here() -> bool {
    tokio::task::try_id().is_none()
        && tokio::task::coop::has_budget_remaining()
        && tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// The score of a fresh wait, and its most.
const SCORE_MAX: u8 = 4;
/// A wait that stopped trying tries once after this many skips at first.
const PROBE_EVERY: u32 = 16;
/// The most skips between two probes: each probe that fails doubles the
/// skips before the next, up to this.
const PROBE_EVERY_MAX: u32 = 1024;

/// Whether a kind of wait has been paying off: windows that found what they
/// waited for raise the score, windows that did not lower it twice as much;
/// at zero the wait is skipped, and tried again after [`PROBE_EVERY`]
/// skips, then after twice as many for each probe that fails (up to
/// [`PROBE_EVERY_MAX`]). A probe costs a whole window (a spin lasts up to
/// 50 µs), so a wait that never pays — a cell among many, called long
/// after it answered — must not probe often: one probe every 16 waits
/// spent about 3 µs per wait in such a cell.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Adaptive {
    score: u8,
    skipped: u32,
    /// Skips before the next probe.
    probe_every: u32,
}

impl Adaptive {
    /// A wait that tries from the start.
    pub(crate) fn new() -> Self {
        Adaptive {
            score: SCORE_MAX,
            skipped: 0,
            probe_every: PROBE_EVERY,
        }
    }

    /// Whether to try a window now (counts a skip when not).
    pub(crate) fn may_try(&mut self) -> bool {
        if self.score > 0 || self.skipped >= self.probe_every {
            true
        } else {
            self.skipped = self.skipped.saturating_add(1);
            false
        }
    }

    /// A window found what it waited for.
    pub(crate) fn paid(&mut self) {
        self.score = (self.score + 1).min(SCORE_MAX);
        self.skipped = 0;
        self.probe_every = PROBE_EVERY;
    }

    /// A window ended without it.
    pub(crate) fn missed(&mut self) {
        if self.score == 0 {
            // A probe that failed.
            self.probe_every = (self.probe_every * 2).min(PROBE_EVERY_MAX);
        }
        self.score = self.score.saturating_sub(2);
        self.skipped = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_that_keeps_missing_stops_and_probes_again_later() {
        let mut a = Adaptive::new();
        // Two misses take a fresh score of 4 to 0.
        assert!(a.may_try());
        a.missed();
        assert!(a.may_try());
        a.missed();
        for _ in 0..PROBE_EVERY {
            assert!(!a.may_try(), "skipped while it does not pay");
        }
        assert!(a.may_try(), "probes again after {PROBE_EVERY} skips");
        a.paid();
        assert!(a.may_try(), "one paying probe turns it back on");
    }

    /// Skips before the next probe, counted by trying.
    fn skips_before_probe(a: &mut Adaptive) -> u32 {
        let mut skips = 0;
        while !a.may_try() {
            skips += 1;
        }
        skips
    }

    #[test]
    fn each_failed_probe_doubles_the_skips_before_the_next_up_to_a_bound() {
        let mut a = Adaptive::new();
        a.missed();
        a.missed();
        let mut seen = Vec::new();
        for _ in 0..10 {
            seen.push(skips_before_probe(&mut a));
            a.missed();
        }
        assert_eq!(seen, [16, 32, 64, 128, 256, 512, 1024, 1024, 1024, 1024]);
        // A probe that pays starts over: a wait that pays again is not kept
        // off for long.
        a.paid();
        assert!(a.may_try());
        a.missed();
        assert_eq!(skips_before_probe(&mut a), PROBE_EVERY);
    }

    #[test]
    fn block_on_may_block_until_its_cooperative_budget_is_spent() {
        use std::future::Future;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(may_block_here(), "block_on with its budget");
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let mut spent = false;
            for _ in 0..10_000 {
                let step = std::pin::pin!(tokio::task::coop::consume_budget());
                if step.poll(&mut cx).is_pending() {
                    spent = true;
                    break;
                }
            }
            assert!(spent, "the budget ran out");
            assert!(
                !may_block_here(),
                "a spent budget: a sibling future waits for the next poll"
            );
        });
        rt.block_on(async {
            assert!(may_block_here(), "a new poll has a new budget");
            let on_worker = tokio::spawn(async { may_block_here() }).await.unwrap();
            assert!(!on_worker, "a worker never blocks");
        });
    }

    #[test]
    fn a_wait_that_pays_more_often_than_not_keeps_trying() {
        let mut a = Adaptive::new();
        for _ in 0..100 {
            assert!(a.may_try());
            a.paid();
            a.paid();
            a.missed();
        }
    }
}
