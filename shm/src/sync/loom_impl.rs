//! Loom stand-ins: model-checked atomics, a condvar futex and tracked bytes.

pub(crate) mod atomic {
    pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
}

pub(crate) use loom::hint::spin_loop;
pub(crate) use loom::thread::yield_now;

use std::sync::Arc;
use std::time::Duration;

use crate::futex::{Futex, FutexWait};
use atomic::{AtomicU32, Ordering};

loom::lazy_static! {
    /// One "hash bucket" for every futex word in a model: a waker takes the
    /// lock after changing the word, a waiter compares the word under the
    /// lock, so a wake can never fall between a waiter's compare and its sleep.
    static ref BUCKET: (loom::sync::Mutex<()>, loom::sync::Condvar) =
        (loom::sync::Mutex::new(()), loom::sync::Condvar::new());
}

/// Futex stand-in for loom models. Timeouts are ignored: a model that would
/// need one to make progress deadlocks, which is exactly the lost-wakeup bug
/// the models look for.
pub(crate) struct ModelFutex;

impl Futex for ModelFutex {
    fn wait_any(words: &[(&AtomicU32, u32)], _timeout: Option<Duration>) -> FutexWait {
        let (lock, cv) = &*BUCKET;
        let guard = lock.lock().unwrap();
        // ORDERING: SeqCst stands for the kernel's compare, which runs under
        // the futex hash-bucket lock with full barriers; the bucket mutex
        // orders it against `wake_all`.
        if words
            .iter()
            .any(|(w, expected)| w.load(Ordering::SeqCst) != *expected)
        {
            return FutexWait::ValueChanged;
        }
        drop(cv.wait(guard).unwrap());
        FutexWait::Woken
    }

    fn wake_all(_word: &AtomicU32) {
        let (lock, cv) = &*BUCKET;
        let _guard = lock.lock().unwrap();
        cv.notify_all();
    }
}

/// The futex backend used by every wait in the crate.
pub(crate) type PlatformFutex = ModelFutex;

/// Byte area whose every byte is a loom cell, so loom checks that each read
/// of a byte happens-after the write it observes.
#[derive(Clone)]
pub(crate) struct SharedBytes {
    cells: Arc<[loom::cell::UnsafeCell<u8>]>,
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBytes({} loom cells)", self.cells.len())
    }
}

// SAFETY: as for the `std` twin, sharing the window between threads is no
// different from sharing it with the peer: every byte is a loom cell, and
// loom checks each access for a happens-before edge to the write it reads,
// failing the model on a racy one (which is what the models look for).
unsafe impl Send for SharedBytes {}
// SAFETY: see `Send` above.
unsafe impl Sync for SharedBytes {}

impl SharedBytes {
    pub(crate) fn new_model(len: usize) -> Self {
        Self {
            cells: (0..len).map(|_| loom::cell::UnsafeCell::new(0)).collect(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.cells.len()
    }

    pub(crate) fn read(&self, off: usize, dst: &mut [u8]) {
        for (i, d) in dst.iter_mut().enumerate() {
            // SAFETY: loom tracks the access; the pointer is valid while the Arc lives.
            *d = self.cells[off + i].with(|p| unsafe { *p });
        }
    }

    pub(crate) fn read_append(&self, off: usize, len: usize, dst: &mut Vec<u8>) {
        let start = dst.len();
        dst.resize(start + len, 0);
        self.read(off, &mut dst[start..]);
    }

    pub(crate) fn write(&self, off: usize, src: &[u8]) {
        for (i, s) in src.iter().enumerate() {
            // SAFETY: loom tracks the access; the pointer is valid while the Arc lives.
            self.cells[off + i].with_mut(|p| unsafe { *p = *s });
        }
    }

    pub(crate) fn read_u64(&self, off: usize) -> u64 {
        let mut b = [0u8; 8];
        self.read(off, &mut b);
        u64::from_le_bytes(b)
    }

    pub(crate) fn write_u64(&self, off: usize, value: u64) {
        self.write(off, &value.to_le_bytes());
    }
}
