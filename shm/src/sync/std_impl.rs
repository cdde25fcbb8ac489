//! Real primitives: `std` atomics, the Linux futex and raw mapped memory.

pub(crate) mod atomic {
    pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
}

pub(crate) use std::hint::spin_loop;
pub(crate) use std::thread::yield_now;

/// The futex backend used by every wait in the crate.
pub(crate) type PlatformFutex = crate::futex::OsFutex;

/// A window of shared memory, addressed by byte offset.
///
/// Offsets are validated by the caller; every access still checks its bounds
/// and panics on a violation, which can only be a bug in this crate (never a
/// consequence of what the peer wrote, because callers validate peer-supplied
/// values before they become offsets).
#[derive(Clone, Debug)]
pub(crate) struct SharedBytes {
    /// Start of the window. Invariant: valid for reads and writes of `len`
    /// bytes for as long as the owning mapping lives (the handle that holds a
    /// `SharedBytes` also holds the mapping).
    ptr: *mut u8,
    len: usize,
}

// SAFETY: `SharedBytes` is an address range in a shared mapping; all access
// goes through raw-pointer copies and atomics, so moving or sharing the
// address between threads is no different from sharing it between processes.
unsafe impl Send for SharedBytes {}
// SAFETY: see `Send` above.
unsafe impl Sync for SharedBytes {}

impl SharedBytes {
    /// # Safety
    ///
    /// `ptr` must be valid for reads and writes of `len` bytes, 8-byte aligned,
    /// for as long as any copy of the returned value is used.
    pub(crate) unsafe fn from_raw(ptr: *mut u8, len: usize) -> Self {
        debug_assert_eq!(ptr as usize % 8, 0);
        Self { ptr, len }
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
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), dst.as_mut_ptr(), dst.len()) }
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
            std::ptr::copy_nonoverlapping(self.ptr.add(off), dst.as_mut_ptr().add(start), len);
            dst.set_len(start + len);
        }
    }

    /// Copies `src` into shared memory at `off`.
    #[inline]
    pub(crate) fn write(&self, off: usize, src: &[u8]) {
        self.check(off, src.len());
        // SAFETY: bounds checked above; `src` is private memory.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(off), src.len()) }
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
