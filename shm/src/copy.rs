//! Copying bytes into and out of the segment without glibc's slow case.
//!
//! glibc's `memcpy` (2.36, `__memmove_avx_unaligned_erms`) copies blocks
//! of a few KiB and more with `rep movsb`. When the destination lies 1 to
//! 31 bytes past the source modulo 4096 (the two addresses "4K-alias"),
//! that instruction runs about seventeen times slower on the CPUs measured
//! here: 22 µs instead of 1.3 µs for 64 KiB. Where a byte string lands in
//! a slot depends on the header before it and where the caller's vector
//! happens to sit, so one process copied every 64 KiB payload quickly and
//! the next one slowly (`echo_64k/shm` at 14 µs or 36 µs, the same build).
//! [`copy_bytes`] takes a plain 16-byte vector loop for exactly that case
//! and `memcpy` for every other.

/// Below this, `memcpy` does not use `rep movsb`.
const ALIASING_MATTERS: usize = 1024;

/// Whether copying from `src` to `dst` hits the slow case (see the module
/// docs).
fn aliasing(dst: *const u8, src: *const u8, len: usize) -> bool {
    len >= ALIASING_MATTERS && (1..64).contains(&((dst as usize).wrapping_sub(src as usize) & 4095))
}

/// Copies `src` into `dst` (of the same length), as
/// `dst.copy_from_slice(src)` does, but without `memcpy`'s slow case for
/// addresses that 4K-alias (see the module docs).
///
/// # Panics
///
/// If the lengths differ.
#[inline]
pub fn copy_bytes(dst: &mut [u8], src: &[u8]) {
    assert_eq!(
        dst.len(),
        src.len(),
        "copy_bytes between slices of different lengths"
    );
    // SAFETY: both are valid for `len` bytes; `&mut` and `&` cannot overlap.
    unsafe { copy_raw(src.as_ptr(), dst.as_mut_ptr(), src.len()) }
}

/// [`copy_bytes`] on raw pointers.
///
/// # Safety
///
/// As [`std::ptr::copy_nonoverlapping`]: `src` valid for reads and `dst`
/// for writes of `len` bytes, the two not overlapping. Either may be shared
/// memory another process writes at the same time (the copy then holds
/// arbitrary bytes, never more or fewer).
#[inline]
#[cfg_attr(osmos_loom, allow(dead_code))]
pub(crate) unsafe fn copy_raw(src: *const u8, dst: *mut u8, len: usize) {
    if !aliasing(dst, src, len) {
        // SAFETY: the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
        return;
    }
    // SAFETY: the caller's contract; every access is within `len`.
    unsafe { vector_copy(src, dst, len) }
}

/// Copies 64 bytes a step with unaligned 16-byte loads and stores, then
/// the rest with `memcpy` (too short for its slow case).
///
/// # Safety
///
/// As [`copy_raw`].
#[cfg(target_arch = "x86_64")]
unsafe fn vector_copy(src: *const u8, dst: *mut u8, len: usize) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_storeu_si128};
    let mut at = 0;
    while at + 64 <= len {
        // SAFETY: `at + 64 <= len`; SSE2 is part of x86_64; unaligned
        // loads and stores need no alignment.
        unsafe {
            let s = src.add(at) as *const __m128i;
            let d = dst.add(at) as *mut __m128i;
            let (a, b, c, e) = (
                _mm_loadu_si128(s),
                _mm_loadu_si128(s.add(1)),
                _mm_loadu_si128(s.add(2)),
                _mm_loadu_si128(s.add(3)),
            );
            _mm_storeu_si128(d, a);
            _mm_storeu_si128(d.add(1), b);
            _mm_storeu_si128(d.add(2), c);
            _mm_storeu_si128(d.add(3), e);
        }
        at += 64;
    }
    // SAFETY: the remaining `len - at` (< 64) bytes are in bounds.
    unsafe { std::ptr::copy_nonoverlapping(src.add(at), dst.add(at), len - at) };
}

/// Other architectures: `memcpy` (the slow case above is x86's).
///
/// # Safety
///
/// As [`copy_raw`].
#[cfg(not(target_arch = "x86_64"))]
unsafe fn vector_copy(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_offset_and_length_copies_exactly() {
        let src: Vec<u8> = (0..9000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut dst = vec![0u8; 9000 + 4096 + 128];
        for len in [0usize, 1, 63, 64, 65, 1023, 1024, 1025, 4096, 5000, 8191] {
            for shift in [0usize, 1, 7, 31, 63, 64, 100, 4095, 4096, 4097, 4127] {
                dst.fill(0xee);
                // Place the destination `shift` bytes past the source modulo
                // 4096, which takes the vector loop for 1..64.
                let want = (src.as_ptr() as usize + shift) % 4096;
                let have = dst.as_ptr() as usize % 4096;
                let at = (want + 4096 - have) % 4096;
                let (s, d) = (&src[..len], &mut dst[at..at + len]);
                assert_eq!(
                    aliasing(d.as_ptr(), s.as_ptr(), len),
                    len >= ALIASING_MATTERS && (1..64).contains(&(shift % 4096))
                );
                copy_bytes(d, s);
                assert_eq!(&dst[at..at + len], &src[..len], "len {len} shift {shift}");
                assert!(dst[..at].iter().all(|&b| b == 0xee), "nothing before");
                assert!(dst[at + len..].iter().all(|&b| b == 0xee), "nothing after");
            }
        }
    }
}
