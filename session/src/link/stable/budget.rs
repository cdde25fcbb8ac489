//! The replay budget of an acceptor: one bound on the bytes that all its
//! sessions' replay buffers hold together (see
//! [`StableConfig::acceptor_replay_bytes`](super::StableConfig::acceptor_replay_bytes)).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The bytes of replay buffer all the sessions of one acceptor hold, and
/// their bound ([`StableConfig::acceptor_replay_bytes`]): however many
/// sessions its peers open and leave unacknowledged, the acceptor keeps at
/// most this much.
#[derive(Debug)]
pub(super) struct ReplayBudget {
    limit: usize,
    used: AtomicUsize,
    /// Woken whenever a session gives bytes back.
    pub freed: Notify,
}

impl ReplayBudget {
    pub fn new(limit: usize) -> Arc<ReplayBudget> {
        Arc::new(ReplayBudget {
            limit,
            used: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// Takes `len` bytes if they fit.
    pub fn try_take(&self, len: usize) -> bool {
        // ORDERING: Relaxed: a counter; nothing else is published with it.
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(len).filter(|&n| n <= self.limit)
            })
            .is_ok()
    }

    /// Takes `len` bytes whether they fit or not (a frame that grew past
    /// the room taken for it).
    pub fn take_anyway(&self, len: usize) {
        // ORDERING: Relaxed, as in `try_take`.
        self.used.fetch_add(len, Ordering::Relaxed);
    }

    /// Gives `len` bytes back and wakes the sessions waiting for room.
    pub fn give_back(&self, len: usize) {
        if len > 0 {
            // ORDERING: Relaxed, as in `try_take`.
            self.used.fetch_sub(len, Ordering::Relaxed);
            self.freed.notify_waiters();
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        // ORDERING: Relaxed, as in `try_take`.
        self.used.load(Ordering::Relaxed)
    }

    /// The bound.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_holds_its_bound_and_counts_what_comes_back() {
        let b = ReplayBudget::new(100);
        assert!(b.try_take(60));
        assert!(!b.try_take(41), "60 + 41 is past the bound");
        assert!(b.try_take(40));
        assert_eq!(b.used(), 100);
        assert!(!b.try_take(1));
        b.give_back(30);
        assert!(b.try_take(30));
        assert!(!b.try_take(usize::MAX), "an overflowing take fails");
        b.give_back(100);
        assert_eq!(b.used(), 0);
    }
}
