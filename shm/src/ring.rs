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
//! `writable` (rung by the consumer).

use std::fmt;
use std::ptr::NonNull;
use std::time::Instant;

use crossbeam_utils::CachePadded;

use crate::doorbell::{Doorbell, WaitCtx, WaitStrategy};
use crate::error::{Error, Result, Rule};
use crate::layout::FRAME_HEADER;
use crate::liveness::{Keepalive, Liveness};
use crate::sync::SharedBytes;
use crate::sync::atomic::{AtomicU64, Ordering};

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

/// Where a ring lives: its control block, data area and what keeps them mapped.
#[derive(Clone)]
pub(crate) struct RingMem {
    /// Invariant: valid while `_keep` lives.
    pub(crate) ctrl: NonNull<RingCtrl>,
    pub(crate) data: SharedBytes,
    pub(crate) _keep: Keepalive,
}

// SAFETY: the control block is atomics and the data is accessed through
// `SharedBytes`; both are kept alive by `_keep` and usable from any thread.
unsafe impl Send for RingMem {}

impl RingMem {
    fn ctrl(&self) -> &RingCtrl {
        // SAFETY: valid while `self._keep` lives (field invariant).
        unsafe { self.ctrl.as_ref() }
    }
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
    };
    (p, c)
}

/// The writing end of a frame ring. `Send`, not `Sync`: one thread produces.
pub struct FrameProducer {
    mem: RingMem,
    /// Data area bytes (a power of two).
    cap: u64,
    max_payload: u32,
    /// Our position, private. Equals the published tail outside a grant.
    tail: u64,
    /// Consumer position as last validated: `tail - cap <= head_seen <= tail`.
    head_seen: u64,
    liveness: Liveness,
    strategy: WaitStrategy,
}

impl fmt::Debug for FrameProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameProducer")
            .field("capacity", &self.cap)
            .field("tail", &self.tail)
            .field("head_seen", &self.head_seen)
            .finish()
    }
}

impl FrameProducer {
    /// A watcher of the doorbell the consumer rings when it frees space.
    pub fn writable_watcher(&self) -> crate::BellWatcher {
        let bell = std::ptr::NonNull::from(&self.mem.ctrl().writable);
        // SAFETY: the doorbell lives in the ring's memory, kept by `_keep`.
        unsafe { crate::BellWatcher::new(bell, self.liveness.clone(), self.mem._keep.clone()) }
    }

    /// Rings the consumer's doorbell without publishing anything: wakes a
    /// consumer parked on an empty ring so that it re-checks (e.g. after this
    /// side published a state change).
    pub fn wake_consumer(&self) {
        self.mem.ctrl().readable.ring(&self.liveness);
    }

    /// Reserves a frame carrying a [`SlotRef`](crate::SlotRef), without waiting.
    pub fn try_reserve_slot_ref(&mut self) -> Result<Option<FrameGrant<'_>>> {
        self.try_reserve_kind(FrameKind::SlotRef, crate::SlotRef::ENCODED_LEN)
    }

    /// Largest payload a frame can carry.
    pub fn max_payload(&self) -> usize {
        self.max_payload as usize
    }

    /// Sets how this end waits before parking.
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.strategy = strategy;
    }

    /// Reloads and validates the consumer's position. Returns whether it moved.
    fn refresh_head(&mut self) -> Result<bool> {
        // ORDERING: SYNC POINT R2, Acquire pairs with the consumer's Release
        // store of `head`: its reads of the space it released are done.
        let h = self.mem.ctrl().head.load(Ordering::Acquire);
        // Valid iff head_seen <= h <= tail, computed without overflow.
        if h.wrapping_sub(self.head_seen) > self.tail.wrapping_sub(self.head_seen) || !h.is_multiple_of(8) {
            return Err(Error::violation(
                Rule::RingHeadInRange,
                format!(
                    "consumer published head {h}, outside [{}, {}] or unaligned",
                    self.head_seen, self.tail
                ),
            ));
        }
        let moved = h != self.head_seen;
        self.head_seen = h;
        Ok(moved)
    }

    fn publish_tail(&self) {
        // ORDERING: SYNC POINT R1, Release pairs with the consumer's Acquire
        // load of `tail`: the frame bytes written before are visible to it.
        self.mem.ctrl().tail.store(self.tail, Ordering::Release);
        self.mem.ctrl().readable.ring(&self.liveness);
    }

    /// Finds room for a frame of `len` payload bytes; `Ok(None)` if the ring
    /// is too full right now.
    fn try_room(&mut self, kind: FrameKind, len: usize) -> Result<Option<(u64, usize)>> {
        if len > self.max_payload as usize {
            return Err(Error::FrameTooLarge {
                len,
                max: self.max_payload as usize,
            });
        }
        let size = frame_size(len as u64);
        let mut refreshed = false;
        loop {
            let free = self.cap - (self.tail - self.head_seen);
            let off = self.tail % self.cap;
            let to_end = self.cap - off;
            if to_end < size {
                if free >= to_end {
                    // Pad to the end and publish the pad at once, so that the
                    // consumer can release it even if the ring is otherwise
                    // empty; then try again from offset 0.
                    let pad = (to_end - FRAME_HEADER as u64) | (u64::from(KIND_PAD) << 32);
                    self.mem.data.write_u64(off as usize, pad);
                    self.tail += to_end;
                    self.publish_tail();
                    continue;
                }
            } else if free >= size {
                let _ = kind;
                return Ok(Some((off, size as usize)));
            }
            if refreshed || !self.refresh_head()? {
                return Ok(None);
            }
            refreshed = true;
        }
    }

    /// Reserves an inline frame of up to `len` payload bytes without waiting.
    /// `Ok(None)` means the ring is full now; [`Error::FrameTooLarge`] means
    /// the frame can never fit.
    pub fn try_reserve(&mut self, len: usize) -> Result<Option<FrameGrant<'_>>> {
        self.try_reserve_kind(FrameKind::Inline, len)
    }

    pub(crate) fn try_reserve_kind(&mut self, kind: FrameKind, len: usize) -> Result<Option<FrameGrant<'_>>> {
        Ok(self.try_room(kind, len)?.map(|(off, _)| FrameGrant {
            producer: self,
            off,
            len,
            kind,
        }))
    }

    /// Reserves an inline frame of up to `len` payload bytes, waiting for
    /// space until `deadline` (or for as long as the consumer lives).
    pub fn reserve(&mut self, len: usize, deadline: Option<Instant>) -> Result<FrameGrant<'_>> {
        self.reserve_kind(FrameKind::Inline, len, deadline)
    }

    pub(crate) fn reserve_kind(
        &mut self,
        kind: FrameKind,
        len: usize,
        deadline: Option<Instant>,
    ) -> Result<FrameGrant<'_>> {
        if self.try_room(kind, len)?.is_none() {
            let mem = self.mem.clone();
            let liveness = self.liveness.clone();
            let ctx = WaitCtx {
                liveness: &liveness,
                strategy: self.strategy,
                deadline,
                what: "ring space",
            };
            mem.ctrl()
                .writable
                .wait_until(&ctx, || Ok(self.try_room(kind, len)?.map(|_| ())))?;
        }
        let (off, _) = self
            .try_room(kind, len)?
            .expect("room found by the wait is still there");
        Ok(FrameGrant {
            producer: self,
            off,
            len,
            kind,
        })
    }
}

/// Space reserved for one frame. Write the payload, then [`commit`](Self::commit).
/// Dropping a grant without committing sends nothing.
pub struct FrameGrant<'a> {
    producer: &'a mut FrameProducer,
    /// Offset of the frame header in the data area.
    off: u64,
    /// Payload bytes reserved.
    len: usize,
    kind: FrameKind,
}

impl FrameGrant<'_> {
    /// Payload bytes reserved.
    pub fn capacity(&self) -> usize {
        self.len
    }

    /// Copies `bytes` into the payload at `at`.
    pub fn write(&mut self, at: usize, bytes: &[u8]) -> Result<()> {
        if at.checked_add(bytes.len()).is_none_or(|end| end > self.len) {
            return Err(Error::InvalidArgument {
                reason: format!(
                    "write of {} bytes at {at} overruns a {}-byte frame",
                    bytes.len(),
                    self.len
                ),
            });
        }
        self.producer
            .mem
            .data
            .write(self.off as usize + FRAME_HEADER + at, bytes);
        Ok(())
    }

    /// The reserved payload, to serialize into in place.
    ///
    /// The bytes are in shared memory. An honest consumer does not read them
    /// before [`commit`](Self::commit); a hostile one could write to them, so
    /// do not rely on reading back what you wrote.
    #[cfg(not(osmos_loom))]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let p = self
            .producer
            .mem
            .data
            .ptr_at(self.off as usize + FRAME_HEADER, self.len);
        // SAFETY: `p..p+len` is inside the data area (bounds-checked) and
        // reserved to this producer until commit; `&mut self` prevents a
        // second slice over it from this process.
        unsafe { std::slice::from_raw_parts_mut(p, self.len) }
    }

    /// Publishes the frame with `len` payload bytes (at most the reserved
    /// capacity) and rings the consumer's doorbell.
    pub fn commit(self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(Error::InvalidArgument {
                reason: format!("commit of {len} bytes exceeds the {}-byte reservation", self.len),
            });
        }
        let p = self.producer;
        let header = len as u64 | (u64::from(self.kind.word()) << 32);
        p.mem.data.write_u64(self.off as usize, header);
        p.tail += frame_size(len as u64);
        p.publish_tail();
        Ok(())
    }
}

/// A validated frame's place in the data area.
#[derive(Clone, Copy, Debug)]
struct FrameMeta {
    /// Offset of the payload.
    payload: usize,
    len: usize,
    kind: FrameKind,
    /// Bytes to advance `head` by on release.
    size: u64,
}

/// The reading end of a frame ring. `Send`, not `Sync`: one thread consumes.
pub struct FrameConsumer {
    mem: RingMem,
    cap: u64,
    max_payload: u32,
    /// Our position, private. Equals the published head outside a view.
    head: u64,
    /// Producer position as last validated: `head <= tail_seen <= head + cap`.
    tail_seen: u64,
    /// The frame at `head`, validated once (never re-read from shared memory).
    current: Option<FrameMeta>,
    liveness: Liveness,
    strategy: WaitStrategy,
}

impl fmt::Debug for FrameConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameConsumer")
            .field("capacity", &self.cap)
            .field("head", &self.head)
            .field("tail_seen", &self.tail_seen)
            .finish()
    }
}

impl FrameConsumer {
    /// A watcher of the doorbell the producer rings when it publishes frames.
    pub fn readable_watcher(&self) -> crate::BellWatcher {
        let bell = std::ptr::NonNull::from(&self.mem.ctrl().readable);
        // SAFETY: the doorbell lives in the ring's memory, kept by `_keep`.
        unsafe { crate::BellWatcher::new(bell, self.liveness.clone(), self.mem._keep.clone()) }
    }

    /// Sets how this end waits before parking.
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.strategy = strategy;
    }

    /// Reloads and validates the producer's position.
    fn refresh_tail(&mut self) -> Result<()> {
        // ORDERING: SYNC POINT R1, Acquire pairs with the producer's Release
        // store of `tail`: the frames before it are fully written.
        let t = self.mem.ctrl().tail.load(Ordering::Acquire);
        // Valid iff tail_seen <= t <= head + cap, computed without overflow.
        let ahead = t.wrapping_sub(self.head);
        if ahead > self.cap || ahead < self.tail_seen - self.head || !t.is_multiple_of(8) {
            return Err(Error::violation(
                Rule::RingTailInRange,
                format!(
                    "producer published tail {t}, outside [{}, {}] or unaligned",
                    self.tail_seen,
                    self.head + self.cap
                ),
            ));
        }
        self.tail_seen = t;
        Ok(())
    }

    fn publish_head(&self) {
        // ORDERING: SYNC POINT R2, Release pairs with the producer's Acquire
        // load of `head`: our reads of the released bytes are complete.
        self.mem.ctrl().head.store(self.head, Ordering::Release);
        self.mem.ctrl().writable.ring(&self.liveness);
    }

    /// Validates the next frame, consuming padding; `Ok(None)` if empty.
    ///
    /// Reloads the producer's tail at most once per call, so the padding
    /// consumed in one call is bounded by what was published at that moment
    /// (at most two pads): a producer that keeps republishing padding cannot
    /// hold the caller here.
    fn next_frame(&mut self) -> Result<Option<FrameMeta>> {
        if let Some(m) = self.current {
            return Ok(Some(m));
        }
        let mut refreshed = false;
        loop {
            if self.head == self.tail_seen {
                if refreshed {
                    return Ok(None);
                }
                self.refresh_tail()?;
                refreshed = true;
                if self.head == self.tail_seen {
                    return Ok(None);
                }
            }
            let off = self.head % self.cap;
            let avail = self.tail_seen - self.head;
            let to_end = self.cap - off;
            // A single 8-byte load: the header is fetched exactly once.
            let header = self.mem.data.read_u64(off as usize);
            let len = header & 0xffff_ffff;
            let kind = (header >> 32) as u32;
            let kind = match kind {
                KIND_PAD => {
                    if len + FRAME_HEADER as u64 != to_end || to_end > avail {
                        return Err(Error::violation(
                            Rule::PadToRingEnd,
                            format!(
                                "padding of {len} bytes at ring offset {off} must run exactly to the end ({} bytes) within the {avail} published",
                                to_end - FRAME_HEADER as u64
                            ),
                        ));
                    }
                    self.head += to_end;
                    self.publish_head();
                    continue;
                }
                KIND_INLINE => FrameKind::Inline,
                KIND_SLOT => FrameKind::SlotRef,
                other => {
                    return Err(Error::violation(
                        Rule::FrameKindKnown,
                        format!("frame at ring offset {off} has kind word {other:#x}"),
                    ));
                }
            };
            let size = frame_size(len);
            if len > u64::from(self.max_payload) || size > avail {
                return Err(Error::violation(
                    Rule::FrameLengthInBounds,
                    format!(
                        "frame at ring offset {off} claims {len} payload bytes (max {}, {} published)",
                        self.max_payload,
                        avail.saturating_sub(FRAME_HEADER as u64)
                    ),
                ));
            }
            if size > to_end {
                return Err(Error::violation(
                    Rule::FrameContiguous,
                    format!(
                        "frame at ring offset {off} of {size} bytes crosses the ring end ({to_end} bytes left)"
                    ),
                ));
            }
            let meta = FrameMeta {
                payload: off as usize + FRAME_HEADER,
                len: len as usize,
                kind,
                size,
            };
            self.current = Some(meta);
            return Ok(Some(meta));
        }
    }

    /// The next frame, without waiting. `Ok(None)` if the ring is empty.
    pub fn try_peek(&mut self) -> Result<Option<FrameView<'_>>> {
        Ok(self.next_frame()?.map(|meta| FrameView { consumer: self, meta }))
    }

    /// The next frame, waiting until `deadline` (or for as long as the producer lives).
    pub fn peek(&mut self, deadline: Option<Instant>) -> Result<FrameView<'_>> {
        if self.next_frame()?.is_none() {
            let mem = self.mem.clone();
            let liveness = self.liveness.clone();
            let ctx = WaitCtx {
                liveness: &liveness,
                strategy: self.strategy,
                deadline,
                what: "a frame",
            };
            mem.ctrl()
                .readable
                .wait_until(&ctx, || Ok(self.next_frame()?.map(|_| ())))?;
        }
        let meta = self.current.expect("frame found by the wait is still current");
        Ok(FrameView { consumer: self, meta })
    }
}

/// A validated frame at the head of the ring. Read it, then
/// [`release`](Self::release) it; dropping the view without releasing leaves
/// the frame to be peeked again.
pub struct FrameView<'a> {
    consumer: &'a mut FrameConsumer,
    meta: FrameMeta,
}

impl FrameView<'_> {
    /// What the frame carries.
    pub fn kind(&self) -> FrameKind {
        self.meta.kind
    }

    /// Payload bytes.
    pub fn len(&self) -> usize {
        self.meta.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.meta.len == 0
    }

    /// Copies the payload bytes `[at, at + dst.len())` out.
    pub fn read(&self, at: usize, dst: &mut [u8]) -> Result<()> {
        if at.checked_add(dst.len()).is_none_or(|end| end > self.meta.len) {
            return Err(Error::InvalidArgument {
                reason: format!(
                    "read of {} bytes at {at} overruns a {}-byte frame",
                    dst.len(),
                    self.meta.len
                ),
            });
        }
        self.consumer.mem.data.read(self.meta.payload + at, dst);
        Ok(())
    }

    /// Copies the whole payload into a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.meta.len];
        self.consumer.mem.data.read(self.meta.payload, &mut v);
        v
    }

    /// Appends the whole payload to `dst`: the one copy out of shared
    /// memory, after which the bytes cannot change under the reader.
    pub fn append_to(&self, dst: &mut Vec<u8>) {
        self.consumer
            .mem
            .data
            .read_append(self.meta.payload, self.meta.len, dst);
    }

    /// Marks the frame consumed, freeing its space for the producer.
    pub fn release(self) {
        let c = self.consumer;
        c.head += self.meta.size;
        c.current = None;
        c.publish_head();
    }
}

#[cfg(all(test, not(osmos_loom)))]
mod tests {
    use super::*;
    use crate::layout::Direction;
    use crate::test_support::{
        Pair, RING_READABLE_PARKED, RING_WRITABLE_PARKED, WakeBound, await_word, bound, pair, small_config,
        soon,
    };

    fn bytes(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i * 7 + j * 13) as u8).collect()
    }

    fn send(p: &mut FrameProducer, payload: &[u8]) {
        let mut g = p.reserve(payload.len(), bound()).unwrap();
        g.write(0, payload).unwrap();
        g.commit(payload.len()).unwrap();
    }

    /// Writes a little-endian u64 into the cell's mapping at `off`.
    fn poke(pair: &Pair, off: usize, value: u64) {
        // SAFETY: callers pass offsets inside the segment, 8-aligned.
        unsafe {
            pair.cell_seg
                .raw_at(off)
                .cast::<u64>()
                .write_volatile(value.to_le())
        };
    }

    fn ring_of(pair: &Pair, dir: Direction) -> crate::RingLayout {
        pair.host_seg.layout().rings[dir as usize]
    }

    #[test]
    fn frames_round_trip_in_order() {
        let mut p = pair(&small_config());
        for i in 0..10 {
            send(p.host.sender.producer(), &bytes(i, i * 10));
        }
        for i in 0..10 {
            let m = p.cell.receiver.recv(bound()).unwrap();
            assert!(!m.in_slot());
            assert_eq!(m.to_vec(), bytes(i, i * 10));
            let mut copy = vec![1, 2];
            m.append_to(&mut copy);
            assert_eq!(&copy[2..], &bytes(i, i * 10)[..]);
        }
        assert!(p.cell.receiver.try_recv().unwrap().is_none());
    }

    #[test]
    fn thousands_of_random_sizes_wrap_with_padding() {
        let mut p = pair(&small_config());
        let mut seed = 0x1234_5678u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut sent, mut got, mut bytes_sent) = (0usize, 0usize, 0usize);
        let mut sizes = std::collections::VecDeque::new();
        while got < 20_000 {
            // Produce a burst until the ring is full, then drain part of it.
            loop {
                let len = (next() % 257) as usize;
                match p.host.sender.producer().try_reserve(len).unwrap() {
                    Some(mut g) => {
                        g.write(0, &bytes(sent, len)).unwrap();
                        g.commit(len).unwrap();
                        sizes.push_back(len);
                        sent += 1;
                        bytes_sent += len;
                    }
                    None => break,
                }
                if next() % 5 == 0 {
                    break;
                }
            }
            for _ in 0..(next() % 8 + 1) {
                let Some(m) = p.cell.receiver.try_recv().unwrap() else {
                    break;
                };
                let len = sizes.pop_front().unwrap();
                assert_eq!(m.to_vec(), bytes(got, len), "frame {got}");
                got += 1;
            }
        }
        assert!(bytes_sent > 4096 * 500, "the ring wrapped hundreds of times");
    }

    #[test]
    fn a_full_ring_reports_none_then_frees_space() {
        let mut p = pair(&small_config());
        let prod = p.host.sender.producer();
        let mut n = 0;
        while let Some(g) = prod.try_reserve(248).unwrap() {
            g.commit(248).unwrap();
            n += 1;
        }
        assert_eq!(n, 4096 / 256, "exactly capacity / frame size frames fit");
        let err = prod.reserve(248, soon(5)).map(|_| ()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Timeout {
                    waiting_for: "ring space",
                    ..
                }
            ),
            "{err}"
        );
        p.cell.receiver.recv(bound()).unwrap().finish().unwrap();
        assert!(p.host.sender.producer().try_reserve(248).unwrap().is_some());
    }

    #[test]
    fn oversized_frames_and_bad_commits_are_errors() {
        let mut p = pair(&small_config());
        let prod = p.host.sender.producer();
        assert!(matches!(
            prod.try_reserve(257).map(|_| ()),
            Err(Error::FrameTooLarge { len: 257, max: 256 })
        ));
        let mut g = prod.try_reserve(10).unwrap().unwrap();
        assert!(matches!(g.write(5, &[0; 6]), Err(Error::InvalidArgument { .. })));
        assert!(matches!(g.commit(11), Err(Error::InvalidArgument { .. })));
        // Neither the failed commit nor a dropped grant published anything.
        let _abandoned = prod.try_reserve(10).unwrap().unwrap();
        assert!(p.cell.receiver.try_recv().unwrap().is_none());
    }

    #[test]
    fn a_parked_consumer_is_woken_by_a_commit() {
        let Pair {
            host,
            mut cell,
            host_seg,
            cell_seg: _c,
        } = pair(&small_config());
        let ring = host_seg.layout().rings[Direction::HostToCell as usize];
        let mut sender = host.sender;
        for round in 0..20u8 {
            let wake = WakeBound::new();
            let t = std::thread::spawn(move || {
                let r = cell.receiver.recv(wake.deadline()).map(|m| m.to_vec());
                (cell, r)
            });
            await_word(&host_seg, ring.ctrl + RING_READABLE_PARKED, |v| v == 1);
            sender.send(&[round; 9], bound()).unwrap();
            let (c, r) = t.join().unwrap();
            wake.assert_woken();
            assert_eq!(r.unwrap(), [round; 9]);
            cell = c;
        }
    }

    #[test]
    fn a_parked_producer_is_woken_by_a_release() {
        let Pair {
            mut host,
            mut cell,
            host_seg,
            cell_seg: _c,
        } = pair(&small_config());
        let ring = host_seg.layout().rings[Direction::HostToCell as usize];
        while host
            .sender
            .producer()
            .try_reserve(248)
            .unwrap()
            .is_some_and(|g| g.commit(248).is_ok())
        {}
        let wake = WakeBound::new();
        let t = std::thread::spawn(move || {
            host.sender
                .producer()
                .reserve(248, wake.deadline())
                .map(|g| g.commit(248))
        });
        await_word(&host_seg, ring.ctrl + RING_WRITABLE_PARKED, |v| v == 1);
        cell.receiver.recv(bound()).unwrap().finish().unwrap();
        t.join().unwrap().unwrap().unwrap();
        wake.assert_woken();
    }

    fn host_recv_rule(p: &mut Pair) -> Rule {
        let err = p
            .host
            .receiver
            .try_recv()
            .map(|m| m.map(|m| m.len()))
            .unwrap_err();
        err.rule()
            .unwrap_or_else(|| panic!("expected a violation, got {err}"))
    }

    #[test]
    fn a_tail_out_of_range_is_a_violation() {
        let ring = ring_of(&pair(&small_config()), Direction::CellToHost);
        let mut p = pair(&small_config());
        poke(&p, ring.ctrl + 128, 4096 + 8);
        assert_eq!(host_recv_rule(&mut p), Rule::RingTailInRange);
        let mut p = pair(&small_config());
        poke(&p, ring.ctrl + 128, 12);
        assert_eq!(host_recv_rule(&mut p), Rule::RingTailInRange, "unaligned tail");
        // A tail that moves backwards.
        let mut p = pair(&small_config());
        p.cell.sender.send(&[1; 100], bound()).unwrap();
        p.host.receiver.recv(bound()).unwrap().finish().unwrap();
        poke(&p, ring.ctrl + 128, 8);
        assert_eq!(host_recv_rule(&mut p), Rule::RingTailInRange);
    }

    #[test]
    fn corrupt_frame_headers_are_violations() {
        let ring = ring_of(&pair(&small_config()), Direction::CellToHost);
        let cases = [
            (9u64 << 32 | 8, Rule::FrameKindKnown),
            (1u64 << 32 | 257, Rule::FrameLengthInBounds),
            (1u64 << 32 | 200, Rule::FrameLengthInBounds),
            (3u64 << 32 | 100, Rule::PadToRingEnd),
            (2u64 << 32 | 8, Rule::SlotRefWellFormed),
        ];
        for (header, rule) in cases {
            let mut p = pair(&small_config());
            p.cell.sender.send(&[7; 40], bound()).unwrap();
            poke(&p, ring.data, header);
            assert_eq!(host_recv_rule(&mut p), rule, "header {header:#x}");
        }
        // A frame that would cross the end of the ring: 15 frames of 256
        // bytes leave 256 before the end; a 208-byte frame goes there, then a
        // 112-byte frame after 48 bytes of padding. Claiming 256 payload bytes
        // for the frame at 3840 stays within what was published (368 bytes)
        // but crosses the end.
        let mut p = pair(&small_config());
        for _ in 0..15 {
            p.cell.sender.send(&[1; 248], bound()).unwrap();
            p.host.receiver.recv(bound()).unwrap().finish().unwrap();
        }
        p.cell.sender.send(&[1; 200], bound()).unwrap();
        p.cell.sender.send(&[1; 100], bound()).unwrap();
        poke(&p, ring.data + 15 * 256, 1u64 << 32 | 256);
        assert_eq!(host_recv_rule(&mut p), Rule::FrameContiguous);
    }

    #[test]
    fn a_producer_republishing_padding_cannot_hold_the_consumer() {
        let p = pair(&small_config());
        let ring = ring_of(&p, Direction::CellToHost);
        let cap = ring.bytes as u64;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let Pair {
            mut host,
            cell_seg,
            host_seg,
            cell: _c,
        } = p;
        let scribbler = {
            let stop = stop.clone();
            // SAFETY: inside the segment, 8-aligned; the mapping is kept by the thread.
            let head = unsafe { AtomicU64::from_ptr(cell_seg.raw_at(ring.ctrl).cast()) };
            // SAFETY: inside the segment, 8-aligned; the mapping is kept by the thread.
            let tail = unsafe { AtomicU64::from_ptr(cell_seg.raw_at(ring.ctrl + 128).cast()) };
            // SAFETY: inside the segment, 8-aligned; the mapping is kept by the thread.
            let first = unsafe { AtomicU64::from_ptr(cell_seg.raw_at(ring.data).cast()) };
            std::thread::spawn(move || {
                let _keep = cell_seg;
                // A whole-ring padding frame at offset 0, republished after
                // every lap the consumer makes.
                first.store((cap - 8) | 3 << 32, Ordering::Release);
                while !stop.load(Ordering::Relaxed) {
                    tail.store(head.load(Ordering::Acquire) + cap, Ordering::Release);
                }
            })
        };
        // SAFETY: the head word is inside the host's mapping, 8-aligned.
        let head_word = unsafe { AtomicU64::from_ptr(host_seg.raw_at(ring.ctrl).cast()) };
        for _ in 0..20_000 {
            let before = head_word.load(Ordering::Acquire);
            assert!(host.receiver.try_recv().unwrap().is_none());
            let laps = (head_word.load(Ordering::Acquire) - before) / cap;
            assert!(laps <= 2, "one try_recv consumed {laps} laps of padding");
        }
        stop.store(true, Ordering::Relaxed);
        scribbler.join().unwrap();
    }

    #[test]
    fn a_head_out_of_range_is_a_violation() {
        let mut p = pair(&small_config());
        let ring = ring_of(&p, Direction::HostToCell);
        p.host.sender.send(&[1; 100], bound()).unwrap();
        poke(&p, ring.ctrl, 4096 * 3);
        // The producer only looks at the head when it needs space.
        let err = loop {
            match p.host.sender.producer().try_reserve(248) {
                Ok(Some(g)) => g.commit(248).unwrap(),
                Ok(None) => panic!("a corrupt head must not look like a full ring"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.rule(), Some(Rule::RingHeadInRange), "{err}");
    }
}
