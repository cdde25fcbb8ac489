//! Slot pools: fixed-size slots for payloads too large to travel inline.
//!
//! Each direction has one pool, owned by that direction's sender. The owner
//! ([`SlotWriter`]) hands out free slots from private free lists (smallest
//! fitting class first), the payload is written in place, and the frame ring
//! carries a [`SlotRef`] `(index, generation, length)`. The receiver
//! ([`SlotReader`]) validates the reference, reads the payload in place, and
//! returns the slot through the pool's **release queue**: an SPSC queue of
//! 8-byte entries `(generation << 32) | index`, written by the receiver and
//! drained by the owner (same Release/Acquire protocol as the frame ring:
//! SYNC POINT P1 for entries, P2 for the queue's read position).
//!
//! Invariants:
//! - Generations: the owner bumps a slot's generation each time it sends the
//!   slot; the receiver requires exactly the successor of the last
//!   generation it saw for that slot (so a stale or replayed reference is
//!   caught), and refuses a slot it still holds.
//! - The owner keeps private accounting of which slots are in flight and with
//!   which generation, and refuses a release that does not match one
//!   (a lying receiver cannot make it hand out a slot twice).
//! - The release queue's capacity is at least the number of slots, so an
//!   honest receiver can never find it full; `0 <= rel_tail - rel_head <= cap`.
//! - Exhaustion parks the owner on the `released` doorbell until the
//!   receiver releases something (or dies): no spinning without bound.

use std::fmt;
use std::time::Instant;

use crossbeam_utils::CachePadded;

use crate::doorbell::{Doorbell, WaitCtx, WaitStrategy};
use crate::error::{Error, Result, Rule};
use crate::layout::ClassLayout;
use crate::liveness::Liveness;
use crate::pinned::{NotSync, Pinned};
use crate::sync::SharedBytes;
use crate::sync::atomic::{AtomicU64, Ordering};

/// A pool's control block in shared memory.
#[repr(C)]
#[derive(Default)]
pub(crate) struct PoolCtrl {
    /// Release queue write position. Written only by the receiver.
    /// Range: `rel_head <= rel_tail <= rel_head + queue_cap`.
    rel_tail: CachePadded<AtomicU64>,
    /// Release queue read position. Written only by the owner.
    rel_head: CachePadded<AtomicU64>,
    /// Rung by the receiver after a release; the owner waits here when exhausted.
    released: Doorbell,
}

#[cfg(not(osmos_loom))]
const _: () = {
    assert!(std::mem::size_of::<PoolCtrl>() == crate::layout::POOL_CTRL_BYTES);
    assert!(std::mem::align_of::<PoolCtrl>() == crate::layout::STRUCT_ALIGN);
};

/// Where a pool lives (each part keeps the memory mapped).
#[derive(Clone)]
pub(crate) struct PoolMem {
    pub(crate) ctrl: Pinned<PoolCtrl>,
    /// `queue_cap` 8-byte entries; `queue_cap` is a power of two.
    pub(crate) queue: SharedBytes,
    /// The slot data of all classes; class offsets are relative to its start.
    pub(crate) slots: SharedBytes,
    pub(crate) classes: Vec<ClassLayout>,
}

impl PoolMem {
    fn total(&self) -> u32 {
        self.classes.last().map_or(0, |c| c.first_index + c.count as u32)
    }

    fn queue_cap(&self) -> u64 {
        (self.queue.len() / 8) as u64
    }

    /// The class of a validated index, and the slot's offset in `slots`.
    fn locate(&self, index: u32) -> (usize, &ClassLayout, usize) {
        let (ci, class) = self
            .classes
            .iter()
            .enumerate()
            .rev()
            .find(|(_, c)| c.first_index <= index)
            .expect("index below total has a class");
        let offset = class.offset + (index - class.first_index) as usize * class.size;
        (ci, class, offset)
    }
}

/// A reference to a slot, as carried in a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotRef {
    /// Pool-wide slot index.
    pub index: u32,
    /// The slot's send generation.
    pub generation: u32,
    /// Payload bytes in the slot.
    pub len: u32,
}

impl SlotRef {
    /// Encoded size in a frame.
    pub const ENCODED_LEN: usize = 16;

    /// Little-endian `index, generation, len, 0`.
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0; 16];
        b[0..4].copy_from_slice(&self.index.to_le_bytes());
        b[4..8].copy_from_slice(&self.generation.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Decodes a reference copied out of a frame.
    pub fn decode(bytes: &[u8]) -> Result<SlotRef> {
        let Ok(b) = <&[u8; 16]>::try_from(bytes) else {
            return Err(Error::violation(
                Rule::SlotRefWellFormed,
                format!("slot reference frame of {} bytes (expected 16)", bytes.len()),
            ));
        };
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        if word(12) != 0 {
            return Err(Error::violation(
                Rule::SlotRefWellFormed,
                format!("slot reference reserved word is {:#x} (expected 0)", word(12)),
            ));
        }
        Ok(SlotRef {
            index: word(0),
            generation: word(4),
            len: word(8),
        })
    }
}

pub(crate) fn split(mem: PoolMem, owner_live: Liveness) -> (SlotWriter, SlotReader) {
    let total = mem.total() as usize;
    let free = mem
        .classes
        .iter()
        .map(|c| (c.first_index..c.first_index + c.count as u32).rev().collect())
        .collect();
    let w = SlotWriter {
        mem: mem.clone(),
        gens: vec![0; total],
        in_flight: vec![false; total],
        free,
        rel_head: 0,
        liveness: owner_live.clone(),
        strategy: WaitStrategy::default(),
        _not_sync: NotSync::default(),
    };
    let r = SlotReader {
        mem,
        liveness: owner_live,
        last_gen: vec![0; total],
        held: vec![false; total],
        rel_tail: 0,
        rel_head_seen: 0,
        _not_sync: NotSync::default(),
    };
    (w, r)
}

/// The owner's end of a pool: allocates slots and takes releases back.
/// `Send`, not `Sync`.
pub struct SlotWriter {
    mem: PoolMem,
    /// Per slot: generation of its last send (0 = never sent).
    gens: Vec<u32>,
    /// Per slot: sent and not yet released. Private truth; never read from shared memory.
    in_flight: Vec<bool>,
    /// Per class: free slot indices (a stack).
    free: Vec<Vec<u32>>,
    /// Release queue read position, private; published after each drain.
    rel_head: u64,
    liveness: Liveness,
    strategy: WaitStrategy,
    _not_sync: NotSync,
}

impl fmt::Debug for SlotWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotWriter")
            .field("free", &self.free.iter().map(Vec::len).collect::<Vec<_>>())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl SlotWriter {
    /// Largest payload a slot can hold (0 if the pool has no slots).
    pub fn max_payload(&self) -> usize {
        self.mem.classes.last().map_or(0, |c| c.size)
    }

    /// A watcher of the doorbell the receiver rings when it releases slots.
    pub fn released_watcher(&self) -> crate::BellWatcher {
        let bell = self.mem.ctrl.project(|ctrl| &ctrl.released);
        crate::BellWatcher::new(bell, self.liveness.clone())
    }

    /// Slots sent and not yet released.
    pub fn in_flight(&self) -> usize {
        self.in_flight.iter().filter(|&&b| b).count()
    }

    /// Sets how this end waits before parking.
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.strategy = strategy;
    }

    /// Takes back every slot the receiver released. Returns how many.
    pub fn reclaim(&mut self) -> Result<usize> {
        let ctrl = &self.mem.ctrl;
        // ORDERING: SYNC POINT P1, Acquire pairs with the receiver's Release
        // store of `rel_tail`: the entries before it are written.
        let t = ctrl.rel_tail.load(Ordering::Acquire);
        let n = t.wrapping_sub(self.rel_head);
        if n > self.mem.queue_cap() {
            return Err(Error::violation(
                Rule::ReleaseQueueInRange,
                format!(
                    "release queue tail {t} is outside [{}, {}]",
                    self.rel_head,
                    self.rel_head + self.mem.queue_cap()
                ),
            ));
        }
        for _ in 0..n {
            let at = (self.rel_head % self.mem.queue_cap()) as usize * 8;
            let entry = self.mem.queue.read_u64(at);
            let (index, generation) = (entry as u32, (entry >> 32) as u32);
            let ok = (index as usize) < self.in_flight.len()
                && self.in_flight[index as usize]
                && self.gens[index as usize] == generation;
            if !ok {
                return Err(Error::violation(
                    Rule::SlotReleaseInFlight,
                    format!("release of slot {index} generation {generation}, which is not in flight"),
                ));
            }
            self.in_flight[index as usize] = false;
            let (ci, _, _) = self.mem.locate(index);
            self.free[ci].push(index);
            self.rel_head += 1;
        }
        if n > 0 {
            // ORDERING: SYNC POINT P2, Release pairs with the receiver's
            // Acquire load of `rel_head`: the entries are read, their space
            // may be reused.
            ctrl.rel_head.store(self.rel_head, Ordering::Release);
        }
        Ok(n as usize)
    }

    fn pick(&mut self, len: usize) -> Result<Option<(u32, usize)>> {
        if len > self.max_payload() {
            return Err(Error::PayloadTooLarge {
                len,
                max: self.max_payload(),
            });
        }
        // Take back what the receiver released first (one Acquire load when
        // nothing was): the free stacks then hand out the slot released
        // last, still warm in the caches of both sides, instead of cycling
        // through the whole pool; and a frame takes a larger class's slot
        // only when its own class has none, released ones included.
        self.reclaim()?;
        for (ci, class) in self.mem.classes.iter().enumerate() {
            if class.size >= len
                && let Some(index) = self.free[ci].pop()
            {
                return Ok(Some((index, class.size)));
            }
        }
        Ok(None)
    }

    /// A free slot for `len` bytes, without waiting; `Ok(None)` if every
    /// fitting slot is in flight.
    pub fn try_alloc(&mut self, len: usize) -> Result<Option<SlotGrant<'_>>> {
        Ok(self.pick(len)?.map(|(index, size)| SlotGrant {
            writer: self,
            index,
            size,
            done: false,
        }))
    }

    /// A free slot for `len` bytes, waiting for a release until `deadline`
    /// (or for as long as the receiver lives).
    pub fn alloc(&mut self, len: usize, deadline: Option<Instant>) -> Result<SlotGrant<'_>> {
        let picked = match self.pick(len)? {
            Some(p) => p,
            None => {
                let ctrl = self.mem.ctrl.clone();
                let liveness = self.liveness.clone();
                let ctx = WaitCtx {
                    liveness: &liveness,
                    strategy: self.strategy,
                    deadline,
                    what: "a free slot",
                };
                ctrl.released.wait_until(&ctx, || self.pick(len))?
            }
        };
        Ok(SlotGrant {
            writer: self,
            index: picked.0,
            size: picked.1,
            done: false,
        })
    }
}

/// A slot allocated for writing. Fill it, then [`finish`](Self::finish) to get
/// the reference to send. Dropping it unfinished returns the slot.
pub struct SlotGrant<'a> {
    writer: &'a mut SlotWriter,
    index: u32,
    size: usize,
    done: bool,
}

impl SlotGrant<'_> {
    /// Bytes the slot holds.
    pub fn capacity(&self) -> usize {
        self.size
    }

    fn offset(&self) -> usize {
        self.writer.mem.locate(self.index).2
    }

    /// Copies `bytes` into the slot at `at`.
    pub fn write(&mut self, at: usize, bytes: &[u8]) -> Result<()> {
        if at.checked_add(bytes.len()).is_none_or(|end| end > self.size) {
            return Err(Error::InvalidArgument {
                reason: format!(
                    "write of {} bytes at {at} overruns a {}-byte slot",
                    bytes.len(),
                    self.size
                ),
            });
        }
        self.writer.mem.slots.write(self.offset() + at, bytes);
        Ok(())
    }

    /// The slot's bytes, to serialize into in place. See
    /// [`FrameGrant::as_mut_slice`](crate::FrameGrant::as_mut_slice) for the
    /// caveat on hostile peers.
    #[cfg(not(osmos_loom))]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let p = self.writer.mem.slots.ptr_at(self.offset(), self.size);
        // SAFETY: in bounds (checked), and the slot is free (not in flight),
        // so no honest reader looks at it; `&mut self` makes this the only
        // slice over it in this process.
        unsafe { std::slice::from_raw_parts_mut(p, self.size) }
    }

    /// Marks the slot in flight with a new generation and returns the
    /// reference to send for its first `len` bytes.
    pub fn finish(mut self, len: usize) -> Result<SlotRef> {
        if len > self.size {
            return Err(Error::InvalidArgument {
                reason: format!("payload of {len} bytes exceeds the {}-byte slot", self.size),
            });
        }
        let i = self.index as usize;
        let w = &mut *self.writer;
        w.gens[i] = w.gens[i].wrapping_add(1);
        w.in_flight[i] = true;
        self.done = true;
        Ok(SlotRef {
            index: self.index,
            generation: w.gens[i],
            len: len as u32,
        })
    }
}

impl Drop for SlotGrant<'_> {
    fn drop(&mut self) {
        if !self.done {
            let (ci, _, _) = self.writer.mem.locate(self.index);
            self.writer.free[ci].push(self.index);
        }
    }
}

/// The receiver's end of a pool: validates references and releases slots.
/// `Send`, not `Sync`.
pub struct SlotReader {
    mem: PoolMem,
    /// Per slot: the last generation received (0 = never).
    last_gen: Vec<u32>,
    /// Per slot: received and not yet released.
    held: Vec<bool>,
    /// Release queue write position, private.
    rel_tail: u64,
    /// Owner's read position as last validated: `rel_tail - cap <= seen <= rel_tail`.
    rel_head_seen: u64,
    /// The reading side's liveness (it rings `released` for the owner).
    liveness: Liveness,
    _not_sync: NotSync,
}

impl fmt::Debug for SlotReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotReader")
            .field("held", &self.held.iter().filter(|&&b| b).count())
            .finish()
    }
}

impl SlotReader {
    /// Validates a reference received from the owner and takes the slot.
    pub fn open(&mut self, r: SlotRef) -> Result<HeldSlot> {
        let total = self.mem.total();
        if r.index >= total {
            return Err(Error::violation(
                Rule::SlotIndexInRange,
                format!("slot index {} (the pool has {total})", r.index),
            ));
        }
        let (_, class, offset) = self.mem.locate(r.index);
        if r.len as usize > class.size {
            return Err(Error::violation(
                Rule::SlotLengthFitsClass,
                format!(
                    "slot {} claims {} bytes (class size {})",
                    r.index, r.len, class.size
                ),
            ));
        }
        let i = r.index as usize;
        if self.held[i] {
            return Err(Error::violation(
                Rule::SlotNotHeldTwice,
                format!("slot {} sent again before it was released", r.index),
            ));
        }
        let want = self.last_gen[i].wrapping_add(1);
        if r.generation != want {
            return Err(Error::violation(
                Rule::SlotGenerationNext,
                format!(
                    "slot {} has generation {} (expected {want})",
                    r.index, r.generation
                ),
            ));
        }
        self.held[i] = true;
        self.last_gen[i] = r.generation;
        Ok(HeldSlot {
            index: r.index,
            generation: r.generation,
            offset,
            len: r.len as usize,
            bytes: self.mem.slots.clone(),
        })
    }

    /// Returns a slot to its owner and rings the owner's doorbell.
    pub fn release(&mut self, slot: HeldSlot) -> Result<()> {
        let i = slot.index as usize;
        if i >= self.held.len() || !self.held[i] || self.last_gen[i] != slot.generation {
            return Err(Error::InvalidArgument {
                reason: format!(
                    "slot {} generation {} is not held by this reader",
                    slot.index, slot.generation
                ),
            });
        }
        let cap = self.mem.queue_cap();
        let ctrl = &self.mem.ctrl;
        if self.rel_tail - self.rel_head_seen >= cap {
            // ORDERING: SYNC POINT P2, Acquire pairs with the owner's Release
            // store of `rel_head`: it has read the entries we will overwrite.
            let h = ctrl.rel_head.load(Ordering::Acquire);
            if h.wrapping_sub(self.rel_head_seen) > self.rel_tail - self.rel_head_seen {
                return Err(Error::violation(
                    Rule::ReleaseQueueInRange,
                    format!(
                        "owner published release head {h}, outside [{}, {}]",
                        self.rel_head_seen, self.rel_tail
                    ),
                ));
            }
            self.rel_head_seen = h;
            if self.rel_tail - h >= cap {
                return Err(Error::violation(
                    Rule::ReleaseQueueInRange,
                    format!(
                        "release queue full ({cap} entries) although at most {} slots exist",
                        self.held.len()
                    ),
                ));
            }
        }
        let at = (self.rel_tail % cap) as usize * 8;
        self.mem
            .queue
            .write_u64(at, (u64::from(slot.generation) << 32) | u64::from(slot.index));
        self.rel_tail += 1;
        self.held[i] = false;
        // ORDERING: SYNC POINT P1, Release pairs with the owner's Acquire load
        // of `rel_tail` in `reclaim`: the entry and our reads of the slot are done.
        ctrl.rel_tail.store(self.rel_tail, Ordering::Release);
        ctrl.released.ring(&self.liveness);
        Ok(())
    }
}

/// A slot received and not yet released. Give it back with
/// [`SlotReader::release`]; a slot that is never released stays in flight and
/// shrinks the owner's pool.
#[must_use = "a held slot must be released back to its owner"]
pub struct HeldSlot {
    index: u32,
    generation: u32,
    /// Offset of the slot in the pool's slot data.
    offset: usize,
    len: usize,
    bytes: SharedBytes,
}

impl fmt::Debug for HeldSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldSlot")
            .field("index", &self.index)
            .field("generation", &self.generation)
            .field("len", &self.len)
            .finish()
    }
}

impl HeldSlot {
    /// Payload bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies payload bytes `[at, at + dst.len())` out.
    pub fn read(&self, at: usize, dst: &mut [u8]) -> Result<()> {
        if at.checked_add(dst.len()).is_none_or(|end| end > self.len) {
            return Err(Error::InvalidArgument {
                reason: format!(
                    "read of {} bytes at {at} overruns a {}-byte slot payload",
                    dst.len(),
                    self.len
                ),
            });
        }
        self.bytes.read(self.offset + at, dst);
        Ok(())
    }

    /// Copies the payload into a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.len];
        self.bytes.read(self.offset, &mut v);
        v
    }

    /// Appends the payload to `dst`: the one copy out of shared memory.
    pub fn append_to(&self, dst: &mut Vec<u8>) {
        self.bytes.read_append(self.offset, self.len, dst);
    }

    /// Appends payload bytes `[at, at + len)` to `dst` (one copy out of
    /// shared memory, as [`append_to`](Self::append_to)).
    pub fn append_range_to(&self, at: usize, len: usize, dst: &mut Vec<u8>) -> Result<()> {
        if at.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(Error::InvalidArgument {
                reason: format!(
                    "read of {len} bytes at {at} overruns a {}-byte slot payload",
                    self.len
                ),
            });
        }
        self.bytes.read_append(self.offset + at, len, dst);
        Ok(())
    }
}

#[cfg(all(test, not(osmos_loom)))]
mod tests;
