//! The reading end of a frame ring: [`FrameConsumer`] validates the
//! producer's published tail and each frame header (read once), consumes
//! padding, and hands out the frame at the head as a [`FrameView`].

use std::fmt;
use std::time::Instant;

use super::{FrameKind, KIND_INLINE, KIND_PAD, KIND_SLOT, RingMem, frame_size};
use crate::doorbell::{WaitCtx, WaitStrategy};
use crate::error::{Error, Result, Rule};
use crate::layout::FRAME_HEADER;
use crate::liveness::Liveness;
use crate::pinned::NotSync;
use crate::sync::atomic::Ordering;

/// A validated frame's place in the data area.
#[derive(Clone, Copy, Debug)]
pub(super) struct FrameMeta {
    /// Offset of the payload.
    payload: usize,
    len: usize,
    kind: FrameKind,
    /// Bytes to advance `head` by on release.
    size: u64,
}

/// The reading end of a frame ring. `Send`, not `Sync`: one thread consumes.
pub struct FrameConsumer {
    pub(super) mem: RingMem,
    pub(super) cap: u64,
    pub(super) max_payload: u32,
    /// Our position, private. Equals the published head outside a view.
    pub(super) head: u64,
    /// Producer position as last validated: `head <= tail_seen <= head + cap`.
    pub(super) tail_seen: u64,
    /// The frame at `head`, validated once (never re-read from shared memory).
    pub(super) current: Option<FrameMeta>,
    pub(super) liveness: Liveness,
    pub(super) strategy: WaitStrategy,
    pub(super) _not_sync: NotSync,
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
        let bell = self.mem.ctrl.project(|ctrl| &ctrl.readable);
        crate::BellWatcher::new(bell, self.liveness.clone())
    }

    /// Sets how this end waits before parking.
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.strategy = strategy;
    }

    /// Reloads and validates the producer's position.
    fn refresh_tail(&mut self) -> Result<()> {
        // ORDERING: SYNC POINT R1, Acquire pairs with the producer's Release
        // store of `tail`: the frames before it are fully written.
        let t = self.mem.ctrl.tail.load(Ordering::Acquire);
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
        self.mem.ctrl.head.store(self.head, Ordering::Release);
        self.mem.ctrl.writable.ring(&self.liveness);
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
            let ctrl = self.mem.ctrl.clone();
            let liveness = self.liveness.clone();
            let ctx = WaitCtx {
                liveness: &liveness,
                strategy: self.strategy,
                deadline,
                what: "a frame",
            };
            ctrl.readable
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

    /// Appends payload bytes `[at, at + len)` to `dst` (one copy out of
    /// shared memory, as [`append_to`](Self::append_to)).
    pub fn append_range_to(&self, at: usize, len: usize, dst: &mut Vec<u8>) -> Result<()> {
        if at.checked_add(len).is_none_or(|end| end > self.meta.len) {
            return Err(Error::InvalidArgument {
                reason: format!(
                    "read of {len} bytes at {at} overruns a {}-byte frame",
                    self.meta.len
                ),
            });
        }
        self.consumer
            .mem
            .data
            .read_append(self.meta.payload + at, len, dst);
        Ok(())
    }

    /// Marks the frame consumed, freeing its space for the producer.
    pub fn release(self) {
        let c = self.consumer;
        c.head += self.meta.size;
        c.current = None;
        c.publish_head();
    }
}
