//! Real primitives: `std` atomics, the Linux futex and raw mapped memory.

pub(crate) mod atomic {
    pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
}

pub(crate) use std::hint::spin_loop;
pub(crate) use std::thread::yield_now;

use crate::pinned::Keepalive;

/// The futex backend used by every wait in the crate.
pub(crate) type PlatformFutex = crate::futex::OsFutex;

/// A window of shared memory, addressed by byte offset, that keeps the
/// memory mapped.
///
/// Offsets are validated by the caller; every access still checks its bounds
/// and panics on a violation, which can only be a bug in this crate (never a
/// consequence of what the peer wrote, because callers validate peer-supplied
/// values before they become offsets).
///
/// Not a [`Pinned`](crate::pinned::Pinned): the peer writes these bytes
/// with plain copies at any time, so they are only ever copied in and out,
/// never borrowed as a `&T` (see `pinned.rs`).
#[derive(Clone)]
pub(crate) struct SharedBytes {
    /// Start of the window. Invariant: valid for reads and writes of `len`
    /// bytes for as long as `_keep` lives.
    ptr: *mut u8,
    len: usize,
    _keep: Keepalive,
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBytes")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

// SAFETY: `SharedBytes` is an address range in a shared mapping, kept mapped
// by `_keep` (itself `Send + Sync`); all access goes through raw-pointer
// copies and atomics, so moving or sharing the address between threads is no
// different from sharing it between processes.
unsafe impl Send for SharedBytes {}
// SAFETY: see `Send` above.
unsafe impl Sync for SharedBytes {}

impl SharedBytes {
    /// # Safety
    ///
    /// `ptr` must be 8-byte aligned and valid for reads and writes of `len`
    /// bytes for as long as `keep` (or any clone of it) lives.
    pub(crate) unsafe fn from_raw(ptr: *mut u8, len: usize, keep: Keepalive) -> Self {
        debug_assert_eq!(ptr as usize % 8, 0);
        Self {
            ptr,
            len,
            _keep: keep,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn check(&self, off: usize, len: usize) {
        assert!(
            off.checked_add(len).is_some_and(|end| end <= self.len),
            "osmos-shm internal bounds bug: {off}+{len} > {}",
            self.len
        );
    }

    /// Copies `dst.len()` bytes starting at `off` out of shared memory.
    #[inline]
    pub(crate) fn read(&self, off: usize, dst: &mut [u8]) {
        self.check(off, dst.len());
        // SAFETY: bounds checked above; `dst` is private memory and cannot
        // overlap the shared mapping. The peer may write the source
        // concurrently: the copy then yields arbitrary bytes, which every
        // caller treats as untrusted and validates.
        unsafe { crate::copy::copy_raw(self.ptr.add(off), dst.as_mut_ptr(), dst.len()) }
    }

    /// Appends `len` bytes starting at `off` to `dst`, copied out of shared
    /// memory once (no zero-fill of `dst` first).
    #[inline]
    pub(crate) fn read_append(&self, off: usize, len: usize, dst: &mut Vec<u8>) {
        self.check(off, len);
        dst.reserve(len);
        let start = dst.len();
        // SAFETY: bounds checked above; `reserve` made room for `len` bytes
        // past `start` in private memory, which cannot overlap the mapping,
        // and the copy initializes all of them before `set_len`. The peer may
        // write the source concurrently: the copy then yields arbitrary
        // bytes, which every caller treats as untrusted and validates.
        unsafe {
            crate::copy::copy_raw(self.ptr.add(off), dst.as_mut_ptr().add(start), len);
            dst.set_len(start + len);
        }
    }

    /// Copies `src` into shared memory at `off`.
    #[inline]
    pub(crate) fn write(&self, off: usize, src: &[u8]) {
        self.check(off, src.len());
        // SAFETY: bounds checked above; `src` is private memory.
        unsafe { crate::copy::copy_raw(src.as_ptr(), self.ptr.add(off), src.len()) }
    }

    /// Reads one little-endian `u64` at an 8-aligned offset with a single
    /// load, so a concurrently written value is seen whole or not at all and
    /// is fetched exactly once.
    #[inline]
    pub(crate) fn read_u64(&self, off: usize) -> u64 {
        self.check(off, 8);
        debug_assert_eq!(off % 8, 0);
        // SAFETY: in bounds and 8-aligned (the base is 8-aligned and callers
        // pass multiples of 8); an `AtomicU64` may alias any initialized
        // 8 bytes of a shared mapping.
        let word = unsafe { std::sync::atomic::AtomicU64::from_ptr(self.ptr.add(off).cast()) };
        u64::from_le(word.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Writes one little-endian `u64` at an 8-aligned offset with a single store.
    #[inline]
    pub(crate) fn write_u64(&self, off: usize, value: u64) {
        self.check(off, 8);
        debug_assert_eq!(off % 8, 0);
        // SAFETY: as in `read_u64`.
        let word = unsafe { std::sync::atomic::AtomicU64::from_ptr(self.ptr.add(off).cast()) };
        word.store(value.to_le(), std::sync::atomic::Ordering::Relaxed);
    }

    /// A raw pointer to `len` bytes at `off`, bounds-checked.
    #[inline]
    pub(crate) fn ptr_at(&self, off: usize, len: usize) -> *mut u8 {
        self.check(off, len);
        // SAFETY: `off + len <= self.len`, so the result stays inside the window.
        unsafe { self.ptr.add(off) }
    }
}
