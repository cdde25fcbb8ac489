//! Helpers shared by the integration tests: a seeded generator, payload
//! patterns and a child-process runner.
#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};

/// SplitMix64: small, fast, seedable; good enough to pick sizes and bytes.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let w = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }
}

/// Fills `buf` with the pattern of message `index` of stream `seed`.
pub fn pattern(seed: u64, index: u64, buf: &mut [u8]) {
    Rng::new(seed ^ index.wrapping_mul(0xa076_1d64_78bd_642f)).fill(buf);
}

/// A 64-bit checksum (FNV-1a over 8-byte words, then the tail bytes).
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h = (h ^ u64::from_le_bytes(w.try_into().unwrap())).wrapping_mul(0x0000_0100_0000_01b3);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Environment variable that tells a re-executed test binary which child role to play.
pub const CHILD_ROLE: &str = "OSMOS_SHM_TEST_CHILD";
/// The fd number the segment is placed at in a child.
pub const CHILD_SEGMENT_FD: i32 = 3;

/// Re-executes this test binary to run `test_name` as child `role`, with the
/// segment fd at [`CHILD_SEGMENT_FD`] (and every other fd close-on-exec).
pub fn spawn_child(
    test_name: &str,
    role: &str,
    segment: &osmos_shm::Segment,
    extra_env: &[(&str, String)],
) -> Child {
    let exe = std::env::current_exe().expect("current test binary");
    let mut cmd = Command::new(exe);
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ROLE, role)
        .stdin(Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    segment.pass_to(&mut cmd, CHILD_SEGMENT_FD);
    cmd.spawn().expect("spawn child test process")
}

/// In a child: the segment fd placed by [`spawn_child`].
pub fn inherited_segment_fd() -> std::os::fd::OwnedFd {
    // SAFETY: the parent placed an open fd at this number for us, and no one
    // else in this process owns it.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(CHILD_SEGMENT_FD) }
}

/// A read-only view of a segment, to watch words the library keeps private
/// (such as a doorbell's parked flag) from a test.
pub struct Watch {
    map: memmap2::MmapRaw,
}

impl Watch {
    pub fn new(seg: &osmos_shm::Segment) -> Self {
        let map = memmap2::MmapOptions::new()
            .len(seg.layout().total)
            .map_raw_read_only(seg.fd().as_raw_fd())
            .expect("map segment read-only");
        Watch { map }
    }

    /// Waits (bounded, yielding) until the u32 at `off` satisfies `pred`.
    pub fn await_word(&self, off: usize, what: &str, pred: impl Fn(u32) -> bool) {
        assert!(off + 4 <= self.map.len() && off.is_multiple_of(4));
        // SAFETY: in bounds and aligned (asserted); an atomic view of shared
        // memory is valid for any bit pattern; the mapping outlives `word`.
        let word = unsafe { std::sync::atomic::AtomicU32::from_ptr(self.map.as_mut_ptr().add(off).cast()) };
        let start = std::time::Instant::now();
        while !pred(word.load(std::sync::atomic::Ordering::Acquire)) {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "timed out waiting until {what}"
            );
            std::thread::yield_now();
        }
    }
}

/// Offset, within a ring control block, of the `readable` doorbell's parked word.
pub const RING_READABLE_PARKED: usize = 256 + 128;
/// Offset, within a ring control block, of the `writable` doorbell's parked word.
pub const RING_WRITABLE_PARKED: usize = 512 + 128;
