//! The writing end of a frame ring: [`FrameProducer`] finds room for a
//! frame (padding to the ring end when it must wrap), validates the
//! consumer's published head, and publishes frames through a [`FrameGrant`].

use std::fmt;
use std::time::Instant;

use super::{FrameKind, KIND_PAD, RingMem, frame_size};
use crate::doorbell::{WaitCtx, WaitStrategy};
use crate::error::{Error, Result, Rule};
use crate::layout::FRAME_HEADER;
use crate::liveness::Liveness;
use crate::pinned::NotSync;
use crate::sync::atomic::Ordering;

/// The writing end of a frame ring. `Send`, not `Sync`: one thread produces.
pub struct FrameProducer {
    pub(super) mem: RingMem,
    /// Data area bytes (a power of two).
    pub(super) cap: u64,
    pub(super) max_payload: u32,
    /// Our position, private. Equals the published tail outside a grant.
    pub(super) tail: u64,
    /// Consumer position as last validated: `tail - cap <= head_seen <= tail`.
    pub(super) head_seen: u64,
    pub(super) liveness: Liveness,
    pub(super) strategy: WaitStrategy,
    pub(super) _not_sync: NotSync,
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
        let bell = self.mem.ctrl.project(|ctrl| &ctrl.writable);
        crate::BellWatcher::new(bell, self.liveness.clone())
    }

    /// A watcher of the doorbell this end rings when it publishes: its
    /// [`someone_parked`](crate::BellWatcher::someone_parked) tells whether
    /// the consumer sleeps.
    pub fn readable_watcher(&self) -> crate::BellWatcher {
        let bell = self.mem.ctrl.project(|ctrl| &ctrl.readable);
        crate::BellWatcher::new(bell, self.liveness.clone())
    }

    /// Rings the consumer's doorbell without publishing anything: wakes a
    /// consumer parked on an empty ring so that it re-checks (e.g. after this
    /// side published a state change).
    pub fn wake_consumer(&self) {
        self.mem.ctrl.readable.ring(&self.liveness);
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

    /// Whether the consumer has not yet released every frame published so
    /// far. Reads its position only while frames were outstanding at the
    /// last look (the consumer never moves back).
    pub fn has_unread(&mut self) -> Result<bool> {
        if self.tail == self.head_seen {
            return Ok(false);
        }
        self.refresh_head()?;
        Ok(self.tail != self.head_seen)
    }

    /// Reloads and validates the consumer's position. Returns whether it moved.
    fn refresh_head(&mut self) -> Result<bool> {
        // ORDERING: SYNC POINT R2, Acquire pairs with the consumer's Release
        // store of `head`: its reads of the space it released are done.
        let h = self.mem.ctrl.head.load(Ordering::Acquire);
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
        self.mem.ctrl.tail.store(self.tail, Ordering::Release);
        self.mem.ctrl.readable.ring(&self.liveness);
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
            let ctrl = self.mem.ctrl.clone();
            let liveness = self.liveness.clone();
            let ctx = WaitCtx {
                liveness: &liveness,
                strategy: self.strategy,
                deadline,
                what: "ring space",
            };
            ctrl.writable
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
