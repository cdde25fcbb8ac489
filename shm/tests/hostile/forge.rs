//! Forged frames: the cell writes frames into the cell→host ring as a rogue
//! producer, from a plausible stream to each lie a frame can tell.

use osmos_shm::{Direction, FRAME_HEADER, Layout, Rule};

use super::mem::{CellMem, Ring, class_size, frame_header, frame_size, pool, ring};
use super::scribble::{Expect, Scribble, broken, scribbled};
use super::*;
use crate::common::Rng;

/// Writes frames into the cell→host ring as a rogue producer: from the
/// published tail, honestly padding at the ring end, within the space the
/// host's published head leaves.
pub struct Forger<'a> {
    mem: &'a CellMem,
    ring: Ring,
    head: u64,
    pos: u64,
}

impl<'a> Forger<'a> {
    fn new(mem: &'a CellMem, l: &Layout) -> Self {
        let ring = ring(l, Direction::CellToHost);
        let head = mem.load(ring.ctrl + RING_HEAD);
        let tail = mem.load(ring.ctrl + RING_TAIL);
        // After an earlier scribble broke the tail, start where the host reads.
        let pos = if tail.wrapping_sub(head) <= ring.cap {
            tail
        } else {
            head
        } & !7;
        Self { mem, ring, head, pos }
    }

    fn free(&self) -> u64 {
        self.ring.cap.saturating_sub(self.pos.wrapping_sub(self.head))
    }

    fn to_end(&self) -> u64 {
        self.ring.cap - self.pos % self.ring.cap
    }

    /// Writes a header and as much of `payload` as fits before the ring end, at `pos`.
    fn put(&self, header: u64, payload: &[u8]) {
        let off = (self.pos % self.ring.cap) as usize;
        self.mem.store_le(self.ring.data + off, header);
        let room = (self.to_end() - FRAME_HEADER as u64) as usize;
        self.mem.write_bytes(
            self.ring.data + off + FRAME_HEADER,
            &payload[..payload.len().min(room)],
        );
    }

    /// An honest padding frame to the ring end.
    fn pad(&mut self) {
        let to_end = self.to_end();
        self.put(frame_header(to_end - FRAME_HEADER as u64, KIND_PAD), &[]);
        self.pos = self.pos.wrapping_add(to_end);
    }

    /// Makes `size` contiguous bytes available at `pos`, padding if needed.
    fn room(&mut self, size: u64) -> bool {
        let to_end = self.to_end();
        if size > to_end {
            if self.free() < to_end + size {
                return false;
            }
            self.pad();
        }
        self.free() >= size
    }

    /// A frame whose header says `len` and whose payload is `payload`.
    fn frame(&mut self, kind: u32, len: u64, payload: &[u8]) -> bool {
        let size = frame_size(payload.len() as u64);
        if !self.room(size) {
            return false;
        }
        self.put(frame_header(len, kind), payload);
        self.pos = self.pos.wrapping_add(size);
        true
    }

    fn inline(&mut self, payload: &[u8]) -> bool {
        self.frame(KIND_INLINE, payload.len() as u64, payload)
    }

    fn slot_ref(&mut self, index: u32, generation: u32, len: u32, reserved: u32) -> bool {
        let mut b = [0u8; 16];
        for (i, w) in [index, generation, len, reserved].into_iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        self.frame(KIND_SLOT, 16, &b)
    }

    fn publish(&self, tail: u64) {
        self.mem.store(self.ring.ctrl + RING_TAIL, tail);
    }

    fn publish_here(&self) {
        self.publish(self.pos);
    }
}

pub fn random_payload(rng: &mut Rng, len: u64) -> Vec<u8> {
    let mut p = vec![0u8; len as usize];
    rng.fill(&mut p);
    if let Some(b) = p.first_mut() {
        *b = 0; // untagged: no channel credit involved
    }
    p
}

/// Appends forged frames after the cell's honest ones and publishes them.
pub fn forge(mem: &CellMem, l: &Layout, rng: &mut Rng) -> Scribble {
    let kind = rng.below(FORGERIES);
    forge_kind(mem, l, rng, kind)
}

/// Kinds of forgery `forge_kind` knows; 0 is a plausible stream.
pub const FORGERIES: u64 = 15;

pub fn forge_kind(mem: &CellMem, l: &Layout, rng: &mut Rng, kind: u64) -> Scribble {
    let mut f = Forger::new(mem, l);
    let max = u64::from(l.config.max_frame);
    let cp = pool(l, Direction::CellToHost);
    let total = u64::from(cp.total_slots);
    // A few harmless frames first, so the lie sits at varied ring offsets.
    for _ in 0..rng.below(4) {
        let len = rng.below(max + 1);
        if !f.inline(&random_payload(rng, len)) {
            break;
        }
    }
    let (name, expect) = match kind {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let ok = if rng.below(2) == 0 {
                    let len = rng.below(max + 1);
                    let mut p = random_payload(rng, len);
                    if let Some(b) = p.first_mut() {
                        *b = rng.next_u64() as u8;
                    }
                    f.inline(&p)
                } else {
                    let index = rng.below(total) as u32;
                    let len = rng.below(class_size(cp, index) + 1) as u32;
                    f.slot_ref(index, 1 + rng.below(3) as u32, len, 0)
                };
                if !ok {
                    break;
                }
            }
            f.publish_here();
            ("forge:plausible-stream", None)
        }
        1 => {
            let kind = if rng.below(2) == 0 {
                [0, 4, 5, 0x101, 0x8000_0002, u32::MAX][rng.below(6) as usize]
            } else {
                let k = rng.next_u64() as u32;
                if (KIND_INLINE..=KIND_PAD).contains(&k) {
                    0
                } else {
                    k
                }
            };
            let len = rng.below(65);
            let placed = f.frame(kind, len, &random_payload(rng, len));
            f.publish_here();
            (
                "forge:unknown-kind",
                placed.then_some(Expect::Rule(Rule::FrameKindKnown)),
            )
        }
        2 => {
            let bad = max
                + 1
                + if rng.below(2) == 0 {
                    rng.below(64)
                } else {
                    rng.below(u64::from(u32::MAX) - max)
                };
            let kind = if rng.below(2) == 0 { KIND_INLINE } else { KIND_SLOT };
            let placed = f.frame(kind, bad, &[]);
            f.publish_here();
            (
                "forge:frame-too-long",
                placed.then_some(Expect::Rule(Rule::FrameLengthInBounds)),
            )
        }
        3 => {
            // A whole frame written, but only its header published.
            let len = 8 + rng.below(max - 7);
            if f.room(frame_size(len)) {
                f.put(frame_header(len, KIND_INLINE), &random_payload(rng, len));
                f.publish(f.pos.wrapping_add(FRAME_HEADER as u64));
                ("forge:frame-beyond-published", broken(Rule::FrameLengthInBounds))
            } else {
                f.publish_here();
                ("forge:frame-beyond-published", None)
            }
        }
        4 => {
            // Walk up to the ring end, then a frame that runs past it.
            let mut ok = true;
            while ok && f.to_end() > max {
                let filler = (f.to_end() - FRAME_HEADER as u64 - 64).min(max) & !7;
                ok = f.inline(&vec![0; filler as usize]);
            }
            let to_end = f.to_end();
            let lowest = to_end - 7; // frame_size(lowest) = to_end + 8
            let mut expect = None;
            if ok && lowest <= max {
                let len = lowest + rng.below(max - lowest + 1);
                let size = frame_size(len);
                if f.free() >= size {
                    f.put(frame_header(len, KIND_INLINE), &random_payload(rng, len));
                    f.pos = f.pos.wrapping_add(size);
                    expect = broken(Rule::FrameContiguous);
                }
            }
            f.publish_here();
            ("forge:frame-across-ring-end", expect)
        }
        5 => {
            let mut expect = None;
            if f.free() >= 8 {
                let right = f.to_end() - FRAME_HEADER as u64;
                let wrong = match rng.below(3) {
                    0 => right + 8 * (1 + rng.below(8)),
                    1 if right >= 8 => right - 8,
                    _ => {
                        let w = rng.next_u64() & 0xffff_ffff;
                        if w == right { right + 8 } else { w }
                    }
                };
                f.put(frame_header(wrong, KIND_PAD), &[]);
                let covered = if f.free() >= f.to_end() { f.to_end() } else { 8 };
                f.pos = f.pos.wrapping_add(covered);
                expect = broken(Rule::PadToRingEnd);
            }
            f.publish_here();
            ("forge:pad-wrong-length", expect)
        }
        6 => {
            if f.to_end() == 8 && f.free() >= 8 {
                f.pad(); // a one-word pad is always whole; start over at 0
            }
            let mut expect = None;
            if f.free() >= 8 && f.to_end() > 8 {
                let to_end = f.to_end();
                f.put(frame_header(to_end - FRAME_HEADER as u64, KIND_PAD), &[]);
                let most = (to_end - 8).min(f.free());
                f.pos = f.pos.wrapping_add(8 * (1 + rng.below(most / 8)));
                expect = broken(Rule::PadToRingEnd);
            }
            f.publish_here();
            ("forge:pad-beyond-published", expect)
        }
        7 => {
            let n = [0, 8, 24, 32][rng.below(4) as usize];
            let mut p = vec![0u8; n as usize];
            rng.fill(&mut p);
            let placed = f.frame(KIND_SLOT, n, &p);
            f.publish_here();
            (
                "forge:slot-ref-wrong-size",
                placed.then_some(Expect::Rule(Rule::SlotRefWellFormed)),
            )
        }
        8 => {
            let index = rng.below(total) as u32;
            let reserved = 1 + rng.below(u64::from(u32::MAX)) as u32;
            let placed = f.slot_ref(index, 1, 16, reserved);
            f.publish_here();
            (
                "forge:slot-ref-reserved-word",
                placed.then_some(Expect::Rule(Rule::SlotRefWellFormed)),
            )
        }
        9 => {
            let index = (total + rng.below(u64::from(u32::MAX) - total + 1)) as u32;
            let placed = f.slot_ref(index, 1, 16, 0);
            f.publish_here();
            (
                "forge:slot-index-out-of-range",
                placed.then_some(Expect::Rule(Rule::SlotIndexInRange)),
            )
        }
        10 => {
            let index = rng.below(total) as u32;
            let size = class_size(cp, index);
            let len = (size + 1 + rng.below(u64::from(u32::MAX) - size)) as u32;
            let placed = f.slot_ref(index, 1, len, 0);
            f.publish_here();
            (
                "forge:slot-longer-than-class",
                placed.then_some(Expect::Rule(Rule::SlotLengthFitsClass)),
            )
        }
        11 => {
            let index = rng.below(total) as u32;
            let generation = if rng.below(2) == 0 {
                0
            } else {
                0x8000_0000 | rng.next_u64() as u32
            };
            let placed = f.slot_ref(index, generation, 16, 0);
            f.publish_here();
            (
                "forge:slot-generation-stale",
                placed.then_some(Expect::Rule(Rule::SlotGenerationNext)),
            )
        }
        12 => {
            // One slot sent again and again without ever being reclaimed.
            let index = rng.below(total) as u32;
            let first = 1 + rng.below(3) as u32;
            for k in 0..9 + rng.below(4) as u32 {
                let len = rng.below(class_size(cp, index) + 1) as u32;
                if !f.slot_ref(index, first + k, len, 0) {
                    break;
                }
            }
            f.publish_here();
            ("forge:slot-resent-unreclaimed", None)
        }
        13 => {
            // More bytes on one channel than it was ever granted.
            let tag = 5 + rng.below(4) as u8;
            let mut sent = 0;
            let mut p = vec![0u8; max as usize];
            for _ in 0..=INITIAL_CREDIT / max as u32 {
                rng.fill(&mut p);
                p[0] = tag;
                if !f.inline(&p) {
                    break;
                }
                sent += max;
            }
            f.publish_here();
            let expect = (sent > u64::from(INITIAL_CREDIT)).then_some(Expect::Rule(Rule::CreditNoOverrun));
            ("forge:credit-overrun", expect)
        }
        _ => {
            for _ in 0..1 + rng.below(4) {
                if f.free() < 16 {
                    break;
                }
                let len = 8 * rng.below(8);
                let mut p = vec![0u8; len as usize];
                rng.fill(&mut p);
                f.put(rng.next_u64(), &p);
                let step = (8 + len).min(f.free()).min(f.to_end());
                f.pos = f.pos.wrapping_add(step);
            }
            f.publish_here();
            ("forge:junk-frames", None)
        }
    };
    scribbled(name, expect)
}
