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
/// tasks that would end the wait.
pub(crate) fn may_block_here() -> bool {
    tokio::task::try_id().is_none()
        && tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// The score of a fresh wait, and its most.
const SCORE_MAX: u8 = 4;
/// A wait that stopped trying tries once after this many skips.
const PROBE_EVERY: u32 = 16;

/// Whether a kind of wait has been paying off: windows that found what they
/// waited for raise the score, windows that did not lower it twice as much;
/// at zero the wait is skipped, and tried again after [`PROBE_EVERY`]
/// skips.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Adaptive {
    score: u8,
    skipped: u32,
}

impl Adaptive {
    /// A wait that tries from the start.
    pub(crate) fn new() -> Self {
        Adaptive {
            score: SCORE_MAX,
            skipped: 0,
        }
    }

    /// Whether to try a window now (counts a skip when not).
    pub(crate) fn may_try(&mut self) -> bool {
        if self.score > 0 || self.skipped >= PROBE_EVERY {
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
    }

    /// A window ended without it.
    pub(crate) fn missed(&mut self) {
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
