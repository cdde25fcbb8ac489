//! Scribbling: one random change to what the cell can write (random bytes
//! over a region, nudged words, plausible lies in the control words, a
//! pending frame turned bad, forged frames), what the host must report when
//! that change is the only one made, and the healing that undoes it all.

use osmos_shm::{Direction, Layout, Rule};

use super::forge::forge;
use super::mem::{CellMem, cell_regions, class_size, credit_entry, frame_header, frame_size, pool, ring};
use super::*;
use crate::common::Rng;

/// What the host must report when this scribble is the only one made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Rule(Rule),
    /// An `Error` variant name, as given by [`error_kind`].
    Error(&'static str),
}

#[derive(Clone, Copy, Debug)]
pub struct Scribble {
    pub name: &'static str,
    pub expect: Option<Expect>,
}

pub fn scribbled(name: &'static str, expect: Option<Expect>) -> Scribble {
    Scribble { name, expect }
}

pub fn broken(rule: Rule) -> Option<Expect> {
    Some(Expect::Rule(rule))
}

/// Makes one random change to what the cell can write.
pub fn scribble(mem: &CellMem, l: &Layout, rng: &mut Rng) -> Scribble {
    match rng.below(20) {
        0..=3 => random_region(mem, l, rng),
        4..=6 => perturb(mem, l, rng),
        7 => {
            for _ in 0..1 + rng.below(16) {
                let at = 8 * rng.below((mem.len() / 8) as u64) as usize;
                mem.store(at, rng.next_u64());
            }
            scribbled("random:words-anywhere", None)
        }
        8..=13 => lie(mem, l, rng),
        _ => forge(mem, l, rng),
    }
}

pub fn random_region(mem: &CellMem, l: &Layout, rng: &mut Rng) -> Scribble {
    let regions = cell_regions(l);
    let (name, _, off, len) = regions[rng.below(regions.len() as u64) as usize];
    mem.fill(off, len, rng);
    // A random position is accepted with probability ~2^-50: these are caught.
    let expect = match name {
        "random:c2h-ring-ctrl" => broken(Rule::RingTailInRange),
        "random:h2c-ring-ctrl" => broken(Rule::RingHeadInRange),
        "random:host-pool-release-queue" => broken(Rule::ReleaseQueueInRange),
        _ => None,
    };
    scribbled(name, expect)
}

/// Nudges a few words of one region: off by one, by a frame, by a ring; a
/// flipped bit; zero; all ones.
pub fn perturb(mem: &CellMem, l: &Layout, rng: &mut Rng) -> Scribble {
    let regions = cell_regions(l);
    let (_, name, off, len) = regions[rng.below(regions.len() as u64) as usize];
    let cap = ring(l, Direction::CellToHost).cap;
    for _ in 0..1 + rng.below(4) {
        let at = off + 8 * rng.below((len / 8) as u64) as usize;
        let v = mem.load(at);
        let v = match rng.below(9) {
            0 => v.wrapping_add(8),
            1 => v.wrapping_sub(8),
            2 => v.wrapping_add(1),
            3 => v ^ (1 << rng.below(64)),
            4 => 0,
            5 => u64::MAX,
            6 => v.wrapping_add(cap),
            7 => v.wrapping_add(1 << 32),
            _ => rng.next_u64(),
        };
        mem.store(at, v);
    }
    scribbled(name, None)
}

/// Plausible lies in the control words: positions just out of range,
/// releases of slots that are not in flight, credit moving backwards, a peer
/// that says it is dead, a frame already published turned bad.
pub fn lie(mem: &CellMem, l: &Layout, rng: &mut Rng) -> Scribble {
    let c2h = ring(l, Direction::CellToHost);
    let h2c = ring(l, Direction::HostToCell);
    let hp = pool(l, Direction::HostToCell);
    let cp = pool(l, Direction::CellToHost);
    let cap = c2h.cap;
    match rng.below(22) {
        0 => {
            // More than a ring past the published tail: past a ring beyond any
            // head the host can have when it next looks. (A lie measured from
            // the head is a *valid* tail once the host has consumed more than
            // the excess, pointing at unwritten frames.)
            let tail = mem.load(c2h.ctrl + RING_TAIL);
            let tail = tail.wrapping_add(cap + 8 * (1 + rng.below(64)));
            mem.store(c2h.ctrl + RING_TAIL, tail);
            scribbled("lie:c2h-tail-past-capacity", broken(Rule::RingTailInRange))
        }
        1 => {
            let tail = mem.load(c2h.ctrl + RING_TAIL);
            mem.store(c2h.ctrl + RING_TAIL, (tail & !7).wrapping_add(1 + rng.below(7)));
            scribbled("lie:c2h-tail-unaligned", broken(Rule::RingTailInRange))
        }
        2 => {
            let head = mem.load(c2h.ctrl + RING_HEAD);
            mem.store(c2h.ctrl + RING_TAIL, head.wrapping_sub(8 * (1 + rng.below(8))));
            scribbled("lie:c2h-tail-behind-head", broken(Rule::RingTailInRange))
        }
        3 => {
            // Past anything the host can have published before it next looks:
            // it never runs more than a ring ahead of the head it last saw.
            let tail = mem.load(h2c.ctrl + RING_TAIL);
            let head = tail.wrapping_add(h2c.cap + 8 * (1 + rng.below(64)));
            mem.store(h2c.ctrl + RING_HEAD, head);
            scribbled("lie:h2c-head-past-tail", broken(Rule::RingHeadInRange))
        }
        4 => {
            // Two rings back is behind what the host saw last.
            let head = mem.load(h2c.ctrl + RING_HEAD);
            mem.store(h2c.ctrl + RING_HEAD, head.wrapping_sub(2 * h2c.cap));
            scribbled("lie:h2c-head-backwards", broken(Rule::RingHeadInRange))
        }
        5 => {
            let head = mem.load(h2c.ctrl + RING_HEAD);
            mem.store(h2c.ctrl + RING_HEAD, (head & !7).wrapping_add(1 + rng.below(7)));
            scribbled("lie:h2c-head-unaligned", broken(Rule::RingHeadInRange))
        }
        6 => {
            let head = mem.load(hp.ctrl + POOL_REL_HEAD);
            let tail = head.wrapping_add(hp.queue_cap as u64 + 1 + rng.below(1 << 20));
            mem.store(hp.ctrl + POOL_REL_TAIL, tail);
            scribbled(
                "lie:release-tail-past-capacity",
                broken(Rule::ReleaseQueueInRange),
            )
        }
        7 => {
            let head = mem.load(hp.ctrl + POOL_REL_HEAD);
            mem.store(hp.ctrl + POOL_REL_TAIL, head.wrapping_sub(1 + rng.below(8)));
            scribbled("lie:release-tail-behind-head", broken(Rule::ReleaseQueueInRange))
        }
        8 | 9 => {
            // One more entry in the host's release queue, after the honest ones.
            let tail = mem.load(hp.ctrl + POOL_REL_TAIL);
            let head = mem.load(hp.ctrl + POOL_REL_HEAD);
            let qcap = hp.queue_cap as u64;
            let slot_entry = |pos: u64| hp.queue + (pos % qcap) as usize * 8;
            let (name, entry) = if rng.below(2) == 0 {
                let index = u64::from(hp.total_slots) + rng.below(u64::from(u32::MAX - hp.total_slots) + 1);
                ("lie:release-unknown-slot", (1 + rng.below(4)) << 32 | index)
            } else if tail.wrapping_sub(head).wrapping_sub(1) < qcap - 1 {
                // A second release of the last slot released.
                ("lie:release-twice", mem.load_le(slot_entry(tail.wrapping_sub(1))))
            } else {
                let index = rng.below(u64::from(hp.total_slots));
                let generation = 0x8000_0000 | rng.below(1 << 31);
                ("lie:release-not-in-flight", generation << 32 | index)
            };
            mem.store_le(slot_entry(tail), entry);
            mem.store(hp.ctrl + POOL_REL_TAIL, tail.wrapping_add(1));
            scribbled(name, broken(Rule::SlotReleaseInFlight))
        }
        10 => {
            // The cell's own read position of the queue the host releases into:
            // the host looks at it only when that queue seems full.
            let tail = mem.load(cp.ctrl + POOL_REL_TAIL);
            let head = match rng.below(3) {
                0 => tail.wrapping_add(1 + rng.below(8)),
                1 => mem.load(cp.ctrl + POOL_REL_HEAD).wrapping_sub(1 + rng.below(8)),
                _ => rng.next_u64(),
            };
            mem.store(cp.ctrl + POOL_REL_HEAD, head);
            scribbled("lie:cell-release-head", None)
        }
        11 => {
            // granted_total one below what the host has sent: it went backwards.
            let e = credit_entry(l, rng.below(u64::from(HOST_TX_CHANNELS)) as u32);
            let sent = mem.load32(e + CREDIT_SENT);
            mem.store32(e + CREDIT_GRANTED, sent.wrapping_sub(1 + rng.below(64) as u32));
            scribbled("lie:credit-grant-backwards", broken(Rule::CreditGrantMonotonic))
        }
        12 => {
            let e = credit_entry(l, rng.below(u64::from(HOST_TX_CHANNELS)) as u32);
            let sent = mem.load32(e + CREDIT_SENT);
            let leap = MAX_WINDOW + 1 + rng.below(1 << 30) as u32;
            mem.store32(e + CREDIT_GRANTED, sent.wrapping_add(leap));
            scribbled("lie:credit-grant-leap", broken(Rule::CreditGrantMonotonic))
        }
        13 => {
            let e = credit_entry(l, rng.below(u64::from(HOST_TX_CHANNELS)) as u32);
            let state = mem.load32(e + CREDIT_RECEIVER_STATE);
            mem.store32(e + CREDIT_RECEIVER_STATE, state | 1);
            scribbled("lie:credit-closed", Some(Expect::Error("ChannelClosed")))
        }
        14 => {
            let e = credit_entry(l, rng.below(u64::from(HOST_TX_CHANNELS)) as u32);
            mem.store32(e + CREDIT_RECEIVER_STATE, rng.next_u64() as u32 & !1);
            scribbled("lie:credit-unknown-state-bits", None)
        }
        15 => {
            // The counters of channels the host receives on: the host keeps its
            // own count and must not care.
            let ch = HOST_TX_CHANNELS + rng.below(u64::from(CHANNELS - HOST_TX_CHANNELS)) as u32;
            let e = credit_entry(l, ch);
            mem.store32(e + CREDIT_SENT, rng.next_u64() as u32);
            mem.store32(e + CREDIT_SENDER_STATE, rng.next_u64() as u32);
            mem.store32(e + CREDIT_GRANTED, rng.next_u64() as u32);
            scribbled("lie:credit-receiver-side-words", None)
        }
        16 => {
            mem.store32(l.liveness + LIVE_CELL + LIVE_STATE, 3);
            scribbled("lie:liveness-cell-dead", Some(Expect::Error("PeerGone")))
        }
        17 => {
            // The host's own line. The host reads its state back (that is how
            // a local shutdown reaches its sleepers), so today this ends its
            // waits with `Error::Shutdown`; ignoring the write would be as
            // good, so no outcome is pinned.
            mem.store32(l.liveness + LIVE_HOST + LIVE_STATE, 3);
            scribbled("lie:liveness-host-dead", None)
        }
        18 => {
            let side = if rng.below(2) == 0 { LIVE_CELL } else { LIVE_HOST };
            let host_cpu = mem.load32(l.liveness + LIVE_HOST + LIVE_CPU);
            match rng.below(3) {
                0 => mem.store32(l.liveness + side + LIVE_STATE, 4 + rng.below(1 << 31) as u32),
                1 => mem.store32(l.liveness + LIVE_CELL + LIVE_CPU, host_cpu),
                _ => mem.store32(l.liveness + side + LIVE_EPOCH, rng.next_u64() as u32),
            }
            scribbled("lie:liveness-odd-words", None)
        }
        _ => corrupt_pending_frame(mem, l, rng),
    }
}

/// The frames the cell published and the host has not consumed yet, as
/// (position, header). Reads whatever is there, so it tolerates garbage.
pub fn pending_frames(mem: &CellMem, l: &Layout) -> Vec<(u64, u64)> {
    let r = ring(l, Direction::CellToHost);
    let tail = mem.load(r.ctrl + RING_TAIL);
    let mut pos = mem.load(r.ctrl + RING_HEAD) & !7;
    let mut frames = Vec::new();
    for _ in 0..r.cap / 8 {
        let left = tail.wrapping_sub(pos);
        if left == 0 || left > r.cap {
            break;
        }
        let off = pos % r.cap;
        let header = mem.load_le(r.data + off as usize);
        let kind = (header >> 32) as u32;
        match kind {
            KIND_PAD => pos = pos.wrapping_add(r.cap - off),
            KIND_INLINE | KIND_SLOT => {
                frames.push((pos, header));
                pos = pos.wrapping_add(frame_size(header & 0xffff_ffff));
            }
            _ => break,
        }
    }
    frames
}

/// Turns one frame the host has not read yet into a lie.
pub fn corrupt_pending_frame(mem: &CellMem, l: &Layout, rng: &mut Rng) -> Scribble {
    let r = ring(l, Direction::CellToHost);
    let frames = pending_frames(mem, l);
    if frames.is_empty() {
        return forge(mem, l, rng);
    }
    // Slot references are rarer than inline frames: prefer them half the time.
    let refs: Vec<_> = frames
        .iter()
        .copied()
        .filter(|&(_, h)| h >> 32 == u64::from(KIND_SLOT))
        .collect();
    let pick_from = if !refs.is_empty() && rng.below(2) == 0 {
        &refs
    } else {
        &frames
    };
    let (pos, header) = pick_from[rng.below(pick_from.len() as u64) as usize];
    let off = pos % r.cap;
    let at = r.data + off as usize;
    let kind = (header >> 32) as u32;
    let len = header & 0xffff_ffff;
    let max = u64::from(l.config.max_frame);
    let cp = pool(l, Direction::CellToHost);
    let is_ref = kind == KIND_SLOT && len == 16 && r.cap - off >= 24;
    match rng.below(if is_ref { 7 } else { 3 }) {
        0 => {
            let bad = max + 1 + rng.below(u64::from(u32::MAX) - max);
            mem.store_le(at, frame_header(bad, kind));
            scribbled("lie:pending-frame-too-long", broken(Rule::FrameLengthInBounds))
        }
        1 => {
            let bad = [0, 4, 0x101, 0x8000_0001, u32::MAX][rng.below(5) as usize];
            mem.store_le(at, frame_header(len, bad));
            scribbled("lie:pending-frame-unknown-kind", broken(Rule::FrameKindKnown))
        }
        2 => {
            // A padding frame that claims to run past the ring's end.
            let to_end = r.cap - off;
            mem.store_le(at, frame_header(to_end, KIND_PAD));
            scribbled("lie:pending-frame-as-bad-pad", broken(Rule::PadToRingEnd))
        }
        n => {
            let words = mem.load_le(at + 8);
            let index = words as u32;
            let (name, rule, first, second) = match n {
                3 => {
                    let bad = u64::from(cp.total_slots) + rng.below(u64::from(u32::MAX - cp.total_slots) + 1);
                    (
                        "lie:pending-ref-index-out-of-range",
                        Rule::SlotIndexInRange,
                        (words & !0xffff_ffff) | bad,
                        mem.load_le(at + 16),
                    )
                }
                4 => (
                    "lie:pending-ref-generation-zero",
                    Rule::SlotGenerationNext,
                    words & 0xffff_ffff,
                    mem.load_le(at + 16),
                ),
                5 => {
                    let size = class_size(cp, index);
                    let bad = size + 1 + rng.below(u64::from(u32::MAX) - size);
                    (
                        "lie:pending-ref-longer-than-class",
                        Rule::SlotLengthFitsClass,
                        words,
                        bad,
                    )
                }
                _ => (
                    "lie:pending-ref-reserved-word",
                    Rule::SlotRefWellFormed,
                    words,
                    (mem.load_le(at + 16) & 0xffff_ffff) | (1 + rng.below(u64::from(u32::MAX))) << 32,
                ),
            };
            mem.store_le(at + 8, first);
            mem.store_le(at + 16, second);
            scribbled(name, broken(rule))
        }
    }
}

/// Puts every word the host reads back to a plausible value: an empty ring
/// each way, empty release queues, fresh credit, both sides attached. The
/// concurrent scribbler does this between bursts so that the host keeps
/// getting past its first checks into the deeper reading paths.
pub fn heal(mem: &CellMem, l: &Layout) {
    let c2h = ring(l, Direction::CellToHost);
    mem.store(c2h.ctrl + RING_TAIL, mem.load(c2h.ctrl + RING_HEAD));
    let h2c = ring(l, Direction::HostToCell);
    mem.store(h2c.ctrl + RING_HEAD, mem.load(h2c.ctrl + RING_TAIL));
    let hp = pool(l, Direction::HostToCell);
    mem.store(hp.ctrl + POOL_REL_TAIL, mem.load(hp.ctrl + POOL_REL_HEAD));
    let cp = pool(l, Direction::CellToHost);
    mem.store(cp.ctrl + POOL_REL_HEAD, mem.load(cp.ctrl + POOL_REL_TAIL));
    for ch in 0..HOST_TX_CHANNELS {
        let e = credit_entry(l, ch);
        mem.store32(
            e + CREDIT_GRANTED,
            mem.load32(e + CREDIT_SENT).wrapping_add(INITIAL_CREDIT),
        );
        mem.store32(e + CREDIT_RECEIVER_STATE, 0);
    }
    mem.store32(l.liveness + LIVE_HOST + LIVE_STATE, 1);
    mem.store32(l.liveness + LIVE_CELL + LIVE_STATE, 1);
}
