//! A bounded memory of ids: the last `N` remembered, the oldest forgotten
//! first. It tells late traffic for something this side just finished
//! (a cancelled request, a retired channel) from traffic for something that
//! never existed, without growing without bound.

use std::collections::{HashSet, VecDeque};

/// The last `N` ids remembered.
#[derive(Default)]
pub(super) struct RecentIds<const N: usize> {
    /// The ids remembered now.
    set: HashSet<u64>,
    /// Remembered ids, oldest first (an id removed from `set` may linger
    /// here until it ages out). `set.len() <= order.len() <= N`.
    order: VecDeque<u64>,
}

impl<const N: usize> RecentIds<N> {
    /// Remembers `id`, forgetting the oldest id beyond `N`.
    pub(super) fn insert(&mut self, id: u64) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > N
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }

    /// Whether `id` is remembered.
    pub(super) fn contains(&self, id: u64) -> bool {
        self.set.contains(&id)
    }

    /// Forgets `id`; whether it was remembered.
    pub(super) fn remove(&mut self, id: u64) -> bool {
        self.set.remove(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::RecentIds;

    #[test]
    fn remembers_the_last_n() {
        let mut r = RecentIds::<2>::default();
        r.insert(1);
        r.insert(2);
        r.insert(2);
        assert!(r.contains(1) && r.contains(2));
        r.insert(3);
        assert!(!r.contains(1) && r.contains(2) && r.contains(3));
        assert!(r.remove(2));
        assert!(!r.remove(2));
        assert!(!r.contains(2));
    }
}
