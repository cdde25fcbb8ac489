//! Single-producer single-consumer ring of variable-length frames.
//!
//! The data area is `capacity` bytes (a power of two). `head` and `tail` are
//! byte positions that only grow (64-bit, so they never wrap in practice);
//! the offset of a position is `position % capacity`. A frame is an 8-byte
//! header (payload length in the low 32 bits, kind in the high 32) followed
//! by the payload, padded to a multiple of 8. A frame never crosses the end of
//! the data area: when the space left before the end is too small, the
//! producer writes a padding frame that runs exactly to the end and starts
//! over at offset 0 (the "wrap" of a BipBuffer-style byte ring, as in rtrb's
//! chunk API or the Linux io_uring/perf rings, adapted to framed records).
//!
//! Invariants (positions as the honest side keeps them privately):
//! - `head <= tail <= head + capacity`, both multiples of 8;
//! - `[head, tail)` holds whole frames; only the producer writes
//!   `[tail, head + capacity)`, only the consumer reads `[head, tail)`.
//!
//! Each side keeps its own position privately and only *publishes* it; it
//! reads the peer's position, copies it once, and validates it against the
//! invariants before use. A frame header is likewise read once (a single
//! 8-byte load), validated, then used. A peer that breaks an invariant gets a
//! [`Violation`](crate::Violation), never an out-of-bounds access or a hang.
//!
//! Synchronization: the producer writes a frame, then stores `tail` with
//! Release; the consumer loads `tail` with Acquire (SYNC POINT R1). The
//! consumer copies a frame out, then stores `head` with Release; the
//! producer loads `head` with Acquire before reusing the space (SYNC POINT R2).
//! Doorbells carry the wakeups: `readable` (rung by the producer) and
//! `writable` (rung by the consumer). A consumer may also take a run of
//! small inline frames at once (`FrameConsumer::take_run`): each still
//! copied out once and its header read once, their space given back with
//! one store of `head` and one look at the `writable` doorbell.
//!
//! This module holds the layout (frame kinds, the control block, where a ring
//! lives) and `split`; the writing end is in `producer.rs`, the reading end
//! in `consumer.rs`.

use crossbeam_utils::CachePadded;

use crate::doorbell::{Doorbell, WaitStrategy};
use crate::layout::FRAME_HEADER;
use crate::liveness::Liveness;
use crate::pinned::{NotSync, Pinned};
use crate::sync::SharedBytes;
use crate::sync::atomic::AtomicU64;

mod consumer;
mod producer;
#[cfg(all(test, not(osmos_loom)))]
mod tests;

pub use consumer::{FrameConsumer, FrameRun, FrameView};
pub use producer::{FrameGrant, FrameProducer};

const KIND_INLINE: u32 = 1;
const KIND_SLOT: u32 = 2;
const KIND_PAD: u32 = 3;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// The payload is the message itself.
    Inline,
    /// The payload is a 16-byte [`SlotRef`](crate::SlotRef) to a slot of the
    /// sender's pool.
    SlotRef,
}

impl FrameKind {
    fn word(self) -> u32 {
        match self {
            FrameKind::Inline => KIND_INLINE,
            FrameKind::SlotRef => KIND_SLOT,
        }
    }
}

/// The ring's control block in shared memory.
#[repr(C)]
#[derive(Default)]
pub(crate) struct RingCtrl {
    /// Consumer position. Written only by the consumer. Range: see module doc.
    head: CachePadded<AtomicU64>,
    /// Producer position. Written only by the producer. Range: see module doc.
    tail: CachePadded<AtomicU64>,
    /// Rung by the producer after publishing; the consumer waits here when empty.
    readable: Doorbell,
    /// Rung by the consumer after releasing; the producer waits here when full.
    writable: Doorbell,
}

#[cfg(not(osmos_loom))]
const _: () = {
    assert!(std::mem::size_of::<RingCtrl>() == crate::layout::RING_CTRL_BYTES);
    assert!(std::mem::align_of::<RingCtrl>() == crate::layout::STRUCT_ALIGN);
};

/// Where a ring lives: its control block and data area (each keeps the
/// memory mapped).
#[derive(Clone)]
pub(crate) struct RingMem {
    pub(crate) ctrl: Pinned<RingCtrl>,
    pub(crate) data: SharedBytes,
}

fn frame_size(len: u64) -> u64 {
    (FRAME_HEADER as u64 + len + 7) & !7
}

/// Builds the producer and consumer of one ring.
pub(crate) fn split(
    mem: RingMem,
    max_payload: u32,
    producer_live: Liveness,
    consumer_live: Liveness,
) -> (FrameProducer, FrameConsumer) {
    let cap = mem.data.len() as u64;
    debug_assert!(cap.is_power_of_two() && cap >= 64);
    debug_assert!(u64::from(max_payload) + FRAME_HEADER as u64 <= cap / 2);
    let p = FrameProducer {
        mem: mem.clone(),
        cap,
        max_payload,
        tail: 0,
        head_seen: 0,
        liveness: producer_live,
        strategy: WaitStrategy::default(),
        _not_sync: NotSync::default(),
    };
    let c = FrameConsumer {
        mem,
        cap,
        max_payload,
        head: 0,
        tail_seen: 0,
        current: None,
        liveness: consumer_live,
        strategy: WaitStrategy::default(),
        _not_sync: NotSync::default(),
    };
    (p, c)
}
