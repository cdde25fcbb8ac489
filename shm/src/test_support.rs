//! Helpers for the in-crate unit tests: a connected host/cell pair over a
//! real sealed segment (two separate mappings of one memfd).

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use crate::{Endpoint, Segment, SegmentConfig, SlotClass, WaitStrategy};

/// A small configuration: 4 KiB rings, 256-byte inline frames, 2 slot classes.
pub(crate) fn small_config() -> SegmentConfig {
    SegmentConfig {
        ring_bytes: 4096,
        max_frame: 256,
        slot_classes: vec![
            SlotClass { size: 1024, count: 2 },
            SlotClass { size: 8192, count: 1 },
        ],
        max_channels: 4,
        initial_credit: 100,
    }
}

pub(crate) struct Pair {
    pub host_seg: Segment,
    pub cell_seg: Segment,
    pub host: Endpoint,
    pub cell: Endpoint,
}

/// Creates a segment, attaches a second mapping as the cell, takes both endpoints.
pub(crate) fn pair(config: &SegmentConfig) -> Pair {
    let host_seg = Segment::create(config, 7).expect("create segment");
    let fd = host_seg
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .expect("dup segment fd");
    let cell_seg = Segment::attach(fd).expect("attach segment");
    let mut host = host_seg.endpoint().expect("host endpoint");
    let mut cell = cell_seg.endpoint().expect("cell endpoint");
    for e in [&mut host, &mut cell] {
        e.sender.set_wait_strategy(WaitStrategy::PARK);
        e.receiver.set_wait_strategy(WaitStrategy::PARK);
    }
    Pair {
        host_seg,
        cell_seg,
        host,
        cell,
    }
}

/// A deadline `ms` milliseconds from now.
pub(crate) fn soon(ms: u64) -> Option<Instant> {
    Some(Instant::now() + Duration::from_millis(ms))
}

/// A generous bound for waits that must succeed (only reached on a bug).
pub(crate) fn bound() -> Option<Instant> {
    soon(10_000)
}

impl Segment {
    /// Test-only: a raw pointer into this side's mapping (for corrupting it).
    pub(crate) fn raw_at(&self, off: usize) -> *mut u8 {
        self.test_ptr(off)
    }
}

/// Waits (bounded, yielding) until the 32-bit word at `off` in `seg`'s
/// mapping satisfies `pred`: how a test knows a waiter really parked before
/// it rings.
pub(crate) fn await_word(seg: &Segment, off: usize, pred: impl Fn(u32) -> bool) {
    let word = seg.raw_at(off).cast::<u32>();
    let start = Instant::now();
    // SAFETY: callers pass the offset of an aligned u32 inside the segment;
    // an atomic view of shared memory is always valid.
    let word = unsafe { crate::sync::atomic::AtomicU32::from_ptr(word) };
    while !pred(word.load(crate::sync::atomic::Ordering::Acquire)) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "word at {off} never reached the expected value"
        );
        std::thread::yield_now();
    }
}

/// Offset of a ring's `readable` doorbell `parked` word.
pub(crate) const RING_READABLE_PARKED: usize = 256 + 128;
/// Offset of a ring's `writable` doorbell `parked` word.
pub(crate) const RING_WRITABLE_PARKED: usize = 512 + 128;

/// A deadline for a wait that must end by a wake, not by the deadline: a
/// waiter re-checks its condition when its deadline passes, so a lost wakeup
/// would otherwise only show up as a slow test.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WakeBound(Instant);

impl WakeBound {
    pub(crate) fn new() -> Self {
        WakeBound(Instant::now() + Duration::from_secs(5))
    }

    pub(crate) fn deadline(self) -> Option<Instant> {
        Some(self.0)
    }

    /// Panics if the deadline has passed: the waiter was not woken.
    pub(crate) fn assert_woken(self) {
        assert!(
            Instant::now() < self.0,
            "the waiter was never woken; it returned only at its deadline"
        );
    }
}
