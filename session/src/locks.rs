//! The session's two hand-made locks, each cheaper than the
//! `tokio::sync::Mutex` it replaces on a path every frame takes.
//!
//! [`SendLock`] guards a link's sending half. Every frame a session sends
//! takes it, most only for the moment it takes to write the frame into the
//! link (`try_lock`), some across a wait for room in the link
//! (`lock().await`). `tokio::sync::Mutex` costs a compare-and-swap to take
//! and, to give it back, its waiter queue's own lock every time, waiters or
//! not (about 200 instructions a frame). `SendLock` is the classic
//! three-state mutex: taking a free lock and giving back one nobody waits
//! for are one atomic operation each, and only a release that finds waiters
//! wakes one, through a [`tokio::sync::Notify`]. It is not fair: a free lock
//! goes to whoever asks first, and a woken waiter that finds it taken again
//! waits again. Each task's own frames still leave in the order it sends
//! them (it waits for one before it sends the next); between tasks there
//! was never an order to keep.
//!
//! [`TryLock`] guards the shm link's receiving half, which nobody ever
//! waits for (a receiver that finds it held lets the holder receive, see
//! `link/shm/rx.rs`): one flag, taken with a compare-and-swap, given back
//! with a store.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use tokio::sync::Notify;

/// Nobody holds the lock.
const FREE: u8 = 0;
/// Held; nobody has said they wait.
const HELD: u8 = 1;
/// Held, and a task may wait: its release wakes one waiter.
const WAITED_FOR: u8 = 2;

/// An asynchronous mutex whose uncontended take and release are one atomic
/// operation each (see the module doc).
pub(crate) struct SendLock<T> {
    state: AtomicU8,
    waiters: Notify,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `value` to one holder at a time
// (the state's FREE → HELD/WAITED_FOR transitions are exclusive), so
// sharing it across threads needs only that `T` may move between them.
unsafe impl<T: Send> Sync for SendLock<T> {}
// SAFETY: as above; the lock owns its value.
unsafe impl<T: Send> Send for SendLock<T> {}

impl<T> SendLock<T> {
    /// A free lock around `value`.
    pub(crate) fn new(value: T) -> Self {
        SendLock {
            state: AtomicU8::new(FREE),
            waiters: Notify::new(),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the lock if it is free.
    pub(crate) fn try_lock(&self) -> Option<SendGuard<'_, T>> {
        // ORDERING: Acquire pairs with the last holder's Release in
        // `release`: what it wrote to the value is visible to us.
        self.state
            .compare_exchange(FREE, HELD, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| SendGuard {
                lock: self,
                _value: PhantomData,
            })
    }

    /// Takes the lock, waiting while another task holds it. Dropping the
    /// future gives up the wait (a wake it was given passes to another
    /// waiter).
    pub(crate) async fn lock(&self) -> SendGuard<'_, T> {
        if let Some(guard) = self.try_lock() {
            return guard;
        }
        loop {
            let woken = self.waiters.notified();
            let mut woken = std::pin::pin!(woken);
            // Registered before we say we wait: a release after the swap
            // below wakes this registration (or leaves its permit).
            woken.as_mut().enable();
            // ORDERING: AcqRel. Acquire: taking a free lock here sees the
            // last holder's writes. Release: a holder whose release reads
            // WAITED_FOR sees our registration above and wakes it.
            if self.state.swap(WAITED_FOR, Ordering::AcqRel) == FREE {
                // Ours. The state says someone may wait, so our release
                // wakes one waiter, perhaps for nothing: harmless.
                return SendGuard {
                    lock: self,
                    _value: PhantomData,
                };
            }
            woken.await;
        }
    }

    fn release(&self) {
        // ORDERING: AcqRel. Release: the next holder sees what we wrote.
        // Acquire: reading WAITED_FOR makes the waiter's registration
        // visible, so the wake below reaches it.
        if self.state.swap(FREE, Ordering::AcqRel) == WAITED_FOR {
            self.waiters.notify_one();
        }
    }
}

/// Access to a [`SendLock`]'s value; the lock is released on drop.
pub(crate) struct SendGuard<'a, T> {
    lock: &'a SendLock<T>,
    _value: Holds<T>,
}

/// A lock that is only ever tried, never waited for (see the module doc).
pub(crate) struct TryLock<T> {
    held: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: one holder at a time has access to `value` (taking the lock is a
// compare-and-swap from free to held), so sharing it across threads needs
// only that `T` may move between them.
unsafe impl<T: Send> Sync for TryLock<T> {}
// SAFETY: as above; the lock owns its value.
unsafe impl<T: Send> Send for TryLock<T> {}

impl<T> TryLock<T> {
    /// A free lock around `value`.
    pub(crate) fn new(value: T) -> Self {
        TryLock {
            held: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the lock if it is free.
    pub(crate) fn try_lock(&self) -> Option<TryGuard<'_, T>> {
        // Built only once taken: a guard releases the lock when dropped.
        self.take().then(|| TryGuard {
            lock: self,
            _value: PhantomData,
        })
    }

    /// Takes the lock if it is free, for a holder that keeps the lock
    /// alive itself.
    pub(crate) fn try_lock_owned(self: Arc<Self>) -> Option<OwnedTryGuard<T>> {
        self.take().then(|| OwnedTryGuard {
            lock: self,
            _value: PhantomData,
        })
    }

    fn take(&self) -> bool {
        // ORDERING: Acquire pairs with the last holder's Release in
        // `release`: what it wrote to the value is visible to us.
        self.held
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    fn release(&self) {
        // ORDERING: Release: the next holder sees what we wrote.
        self.held.store(false, Ordering::Release);
    }
}

/// Access to a [`TryLock`]'s value; the lock is released on drop.
pub(crate) struct TryGuard<'a, T> {
    lock: &'a TryLock<T>,
    _value: Holds<T>,
}

/// Access to a [`TryLock`]'s value that keeps the lock alive; the lock is
/// released on drop.
pub(crate) struct OwnedTryGuard<T> {
    lock: Arc<TryLock<T>>,
    _value: Holds<T>,
}

/// Makes a guard `Send` and `Sync` only as far as its value is, as a
/// `&mut T` would be: the locks are `Sync` for any `T: Send`, and a guard
/// shared between threads would otherwise hand out `&T` to several at
/// once.
type Holds<T> = PhantomData<T>;

/// `Deref`, `DerefMut` and a releasing `Drop` for a guard whose `lock`
/// field leads to a held lock of one of the kinds above.
macro_rules! guard_access {
    ($guard:ty, $release:ident) => {
        impl<T> Deref for $guard {
            type Target = T;

            fn deref(&self) -> &T {
                // SAFETY: this guard holds the lock, so no other reference
                // to the value exists while it lives.
                unsafe { &*self.lock.value.get() }
            }
        }

        impl<T> DerefMut for $guard {
            fn deref_mut(&mut self) -> &mut T {
                // SAFETY: as in `deref`; `&mut self` makes this the only
                // access.
                unsafe { &mut *self.lock.value.get() }
            }
        }

        impl<T> Drop for $guard {
            fn drop(&mut self) {
                self.lock.$release();
            }
        }
    };
}

guard_access!(SendGuard<'_, T>, release);
guard_access!(TryGuard<'_, T>, release);
guard_access!(OwnedTryGuard<T>, release);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    /// A counter that is not atomic: only mutual exclusion keeps its
    /// increments from being lost.
    struct Plain(u64);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn holders_never_overlap_and_every_waiter_gets_its_turn() {
        let lock = Arc::new(SendLock::new(Plain(0)));
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let lock = lock.clone();
                tokio::spawn(async move {
                    for i in 0..2_000u64 {
                        let mut g = if (i + t) % 3 == 0 {
                            match lock.try_lock() {
                                Some(g) => g,
                                None => lock.lock().await,
                            }
                        } else {
                            lock.lock().await
                        };
                        let seen = g.0;
                        if i % 64 == 0 {
                            // Hold it across a wait now and then, so others
                            // queue up behind it.
                            tokio::task::yield_now().await;
                        }
                        g.0 = seen + 1;
                    }
                })
            })
            .collect();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("a waiter was never woken")
                .expect("a task panicked");
        }
        assert_eq!(lock.try_lock().expect("free at the end").0, 8 * 2_000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiter_that_gives_up_passes_its_wake_on() {
        let lock = Arc::new(SendLock::new(Plain(0)));
        for _ in 0..200 {
            let held = lock.try_lock().expect("free between rounds");
            // Two waiters queue; one gives up when the lock is released,
            // racing its wake; the other must still get the lock.
            let quitter = {
                let lock = lock.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_micros(50), lock.lock()).await;
                })
            };
            let stayer = {
                let lock = lock.clone();
                tokio::spawn(async move {
                    lock.lock().await.0 += 1;
                })
            };
            tokio::task::yield_now().await;
            drop(held);
            quitter.await.expect("the quitter panicked");
            tokio::time::timeout(Duration::from_secs(10), stayer)
                .await
                .expect("a waiter was left asleep after another gave up")
                .expect("the stayer panicked");
        }
        assert_eq!(lock.try_lock().expect("free at the end").0, 200);
    }

    #[test]
    fn a_held_try_lock_is_refused_until_released() {
        let lock = Arc::new(TryLock::new(Plain(1)));
        let g = lock.try_lock().expect("a new lock is free");
        assert!(lock.try_lock().is_none(), "a held lock was taken twice");
        assert!(
            lock.clone().try_lock_owned().is_none(),
            "a held lock was taken twice"
        );
        drop(g);
        let mut owned = lock.clone().try_lock_owned().expect("released");
        owned.0 += 1;
        assert!(lock.try_lock().is_none(), "an owned hold was ignored");
        drop(owned);
        assert_eq!(lock.try_lock().expect("released").0, 2);
    }

    #[test]
    fn taken_is_refused_and_released_is_free() {
        let lock = SendLock::new(Plain(1));
        let g = lock.try_lock().expect("a new lock is free");
        assert!(lock.try_lock().is_none(), "a held lock was taken twice");
        drop(g);
        assert_eq!(lock.try_lock().expect("released").0, 1);
    }
}
