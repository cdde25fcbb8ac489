//! Hostile-input tests: a cell that overwrites what it can write in its
//! segment with seeded random bytes and plausible lies, while the host, which
//! trusts nothing a cell writes, drives every reading path it has.
//!
//! The requirement these tests check: the reading side only ever returns
//! errors. No panic (each iteration runs under `catch_unwind`; the library's
//! bounds checks panic on any out-of-bounds access, so an out-of-bounds access
//! also shows up as a panic), and no hang (the work runs on a worker thread that
//! the test thread watches, failing with the seed after [`STALL_LIMIT`] without
//! progress). On top of that, the sequential test checks that the validation
//! has teeth: every [`Rule`] is reported at some point, a targeted lie made on
//! its own is reported as the rule it breaks, and an iteration with no lie
//! gets no violation and receives exactly what the cell sent.
//!
//! Environment:
//! - `OSMOS_HOSTILE_ITERS`: iterations of the sequential test (default 5000);
//! - `OSMOS_HOSTILE_SEED`: base seed (decimal or `0x` hex); iteration `i` uses
//!   `base ^ i`, so `OSMOS_HOSTILE_SEED=<seed> OSMOS_HOSTILE_ITERS=1` reruns
//!   one seed;
//! - `OSMOS_HOSTILE_OPS`: library calls the host makes in the concurrent test
//!   (default 100,000).
//!
//! The offsets of the words inside the control blocks are not public; the
//! constants below mirror `RingCtrl`, `PoolCtrl`, `CreditEntry` and
//! `LivenessWords`, and `hostile_scribbler_offsets_match_the_library` checks
//! each of them against the library's behaviour, so a layout change cannot
//! quietly turn the scribbler into a no-op.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hint::black_box;
use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::{Rng, checksum, pattern};
use memmap2::{MmapOptions, MmapRaw};
use osmos_shm::{
    CreditReceiver, CreditSender, Direction, Endpoint, Error, FRAME_HEADER, Layout, PeerState, PoolLayout,
    Rule, Segment, SegmentConfig, Side, SlotClass,
};

type TestResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const DEFAULT_SEED: u64 = 0x6f73_6d6f_735f_6873;
const DEFAULT_ITERS: u64 = 5000;
const DEFAULT_OPS: u64 = 100_000;
/// How long the worker may go without progress before the test calls it a hang.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// Credit every channel starts with. Small, so that a forged burst of frames
/// on one channel overruns it.
const INITIAL_CREDIT: u32 = 1024;
/// Channels the host sends on (the cell grants); the cell sends on 4..8.
const HOST_TX_CHANNELS: u32 = 4;
const CHANNELS: u32 = 8;

fn config() -> SegmentConfig {
    SegmentConfig {
        ring_bytes: 4096,
        max_frame: 256,
        slot_classes: vec![
            SlotClass { size: 1024, count: 4 },
            SlotClass { size: 8192, count: 2 },
        ],
        max_channels: CHANNELS,
        initial_credit: INITIAL_CREDIT,
    }
}

// Word offsets inside the control blocks (each side's words on their own
// 128-byte line), mirroring the library's `#[repr(C)]` structs.

/// `RingCtrl::head`: the consumer's position.
const RING_HEAD: usize = 0;
/// `RingCtrl::tail`: the producer's position.
const RING_TAIL: usize = 128;
/// `RingCtrl::readable.seq`: rung by the producer.
const RING_READABLE_SEQ: usize = 256;
const RING_CTRL_BYTES: usize = 768;
/// `PoolCtrl::rel_tail`: release queue write position (the receiver's).
const POOL_REL_TAIL: usize = 0;
/// `PoolCtrl::rel_head`: release queue read position (the owner's).
const POOL_REL_HEAD: usize = 128;
/// `CreditEntry`: the receiver's line, then the sender's.
const CREDIT_GRANTED: usize = 0;
const CREDIT_RECEIVER_STATE: usize = 4;
const CREDIT_SENT: usize = 128;
const CREDIT_SENDER_STATE: usize = 132;
const CREDIT_ENTRY_BYTES: usize = 256;
/// `LivenessWords`: the host's line, then the cell's; in each, state, epoch, cpu.
const LIVE_HOST: usize = 0;
const LIVE_CELL: usize = 128;
const LIVE_STATE: usize = 0;
const LIVE_EPOCH: usize = 4;
const LIVE_CPU: usize = 8;
const LIVENESS_BYTES: usize = 256;
/// Frame kinds in the high half of a frame header.
const KIND_INLINE: u32 = 1;
const KIND_SLOT: u32 = 2;
const KIND_PAD: u32 = 3;
/// `Rule::CreditGrantMonotonic`'s window.
const MAX_WINDOW: u32 = 1 << 31;

const ALL_RULES: [Rule; 15] = [
    Rule::RingTailInRange,
    Rule::RingHeadInRange,
    Rule::FrameKindKnown,
    Rule::FrameLengthInBounds,
    Rule::FrameContiguous,
    Rule::PadToRingEnd,
    Rule::SlotRefWellFormed,
    Rule::SlotIndexInRange,
    Rule::SlotLengthFitsClass,
    Rule::SlotGenerationNext,
    Rule::SlotNotHeldTwice,
    Rule::SlotReleaseInFlight,
    Rule::ReleaseQueueInRange,
    Rule::CreditGrantMonotonic,
    Rule::CreditNoOverrun,
];

// ---------------------------------------------------------------------------
// The cell's view of memory.

/// The cell's own mapping of the segment: a hostile cell can write any of it.
/// Every access here is a single atomic load or store of an aligned word.
#[derive(Clone)]
struct CellMem {
    map: Arc<MmapRaw>,
    /// Per 8-byte word: writes to it are dropped (see [`CellMem::cell_words_only`]).
    guard: Option<Arc<Vec<bool>>>,
}

impl CellMem {
    fn map(cell: &Segment) -> std::io::Result<Self> {
        let map = MmapOptions::new()
            .len(cell.layout().total)
            .map_raw(cell.fd().as_raw_fd())?;
        Ok(Self {
            map: Arc::new(map),
            guard: None,
        })
    }

    /// The same mapping, writing only the words the cell owns: the host's
    /// published positions, counters and doorbell words, and the data it
    /// writes, stay the host's. The host never reads those back, as the
    /// sequential test shows; but a cell that overwrites the host's head no
    /// longer knows where the host reads, and every tail it publishes after
    /// that is refused, which would stop a long concurrent run from reaching
    /// anything past the first check.
    fn cell_words_only(&self, l: &Layout) -> Self {
        let mut host = vec![false; self.len() / 8];
        let mut mark = |off: usize, len: usize| host[off / 8..(off + len) / 8].fill(true);
        mark(0, 256); // header
        mark(l.liveness + LIVE_HOST, 128);
        let (c2h, h2c) = (ring(l, Direction::CellToHost), ring(l, Direction::HostToCell));
        // Doorbells are (seq line, parked line); `readable` at 256, `writable` at 512.
        mark(c2h.ctrl + RING_HEAD, 128);
        mark(c2h.ctrl + 384, 128); // readable.parked: the host waits for frames
        mark(c2h.ctrl + 512, 128); // writable.seq: the host rings after consuming
        mark(h2c.ctrl + RING_TAIL, 128);
        mark(h2c.ctrl + 256, 128); // readable.seq
        mark(h2c.ctrl + 640, 128); // writable.parked
        mark(h2c.data, h2c.cap as usize);
        let (hp, cp) = (pool(l, Direction::HostToCell), pool(l, Direction::CellToHost));
        mark(hp.ctrl + POOL_REL_HEAD, 128);
        mark(hp.ctrl + 384, 128); // released.parked: the host waits for releases
        for c in &hp.classes {
            mark(c.offset, c.size * c.count);
        }
        mark(cp.ctrl + POOL_REL_TAIL, 128);
        mark(cp.ctrl + 256, 128); // released.seq: the host rings after releasing
        mark(cp.queue, cp.queue_cap * 8);
        for ch in 0..CHANNELS {
            let line = if ch < HOST_TX_CHANNELS {
                CREDIT_SENT
            } else {
                CREDIT_GRANTED
            };
            mark(credit_entry(l, ch) + line, 128);
        }
        Self {
            map: self.map.clone(),
            guard: Some(Arc::new(host)),
        }
    }

    fn guarded(&self, off: usize) -> bool {
        self.guard.as_ref().is_some_and(|g| g[off / 8])
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn word64(&self, off: usize) -> &AtomicU64 {
        assert!(
            off.is_multiple_of(8) && off + 8 <= self.len(),
            "test bug: u64 at {off} outside the segment"
        );
        // SAFETY: in bounds and 8-aligned (the mapping is page-aligned), and
        // the mapping lives as long as `self`. This test accesses shared words
        // only atomically; the library's own non-atomic copies of ring and slot
        // bytes racing with a hostile writer are its documented contract with
        // the peer that this test plays.
        unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().add(off).cast()) }
    }

    fn word32(&self, off: usize) -> &AtomicU32 {
        assert!(
            off.is_multiple_of(4) && off + 4 <= self.len(),
            "test bug: u32 at {off} outside the segment"
        );
        // SAFETY: as in `word64`, with 4-byte alignment.
        unsafe { AtomicU32::from_ptr(self.map.as_mut_ptr().add(off).cast()) }
    }

    /// A native-endian control word (the library's atomics).
    fn load(&self, off: usize) -> u64 {
        self.word64(off).load(Ordering::Relaxed)
    }

    fn store(&self, off: usize, v: u64) {
        let word = self.word64(off);
        if !self.guarded(off) {
            word.store(v, Ordering::Relaxed);
        }
    }

    fn load32(&self, off: usize) -> u32 {
        self.word32(off).load(Ordering::Relaxed)
    }

    fn store32(&self, off: usize, v: u32) {
        let word = self.word32(off);
        if !self.guarded(off) {
            word.store(v, Ordering::Relaxed);
        }
    }

    /// A little-endian word of ring data (frame headers, slot references).
    fn load_le(&self, off: usize) -> u64 {
        u64::from_le(self.load(off))
    }

    fn store_le(&self, off: usize, v: u64) {
        self.store(off, v.to_le());
    }

    /// `bytes` at 8-aligned `off`, word by word, the last word zero-padded.
    fn write_bytes(&self, off: usize, bytes: &[u8]) {
        for (i, chunk) in bytes.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.store(off + 8 * i, u64::from_ne_bytes(w));
        }
    }

    /// Random bytes over `[off, off + len)` (both multiples of 8).
    fn fill(&self, off: usize, len: usize, rng: &mut Rng) {
        for at in (off..off + len).step_by(8) {
            self.store(at, rng.next_u64());
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Ring {
    ctrl: usize,
    data: usize,
    cap: u64,
}

fn ring(l: &Layout, dir: Direction) -> Ring {
    let r = l.rings[dir as usize];
    Ring {
        ctrl: r.ctrl,
        data: r.data,
        cap: r.bytes as u64,
    }
}

fn pool(l: &Layout, dir: Direction) -> &PoolLayout {
    &l.pools[dir as usize]
}

/// Bytes of the slot class holding `index` (0 if none does).
fn class_size(p: &PoolLayout, index: u32) -> u64 {
    p.classes
        .iter()
        .find(|c| index >= c.first_index && ((index - c.first_index) as usize) < c.count)
        .map_or(0, |c| c.size as u64)
}

fn credit_entry(l: &Layout, channel: u32) -> usize {
    l.channels + channel as usize * CREDIT_ENTRY_BYTES
}

fn frame_size(len: u64) -> u64 {
    (FRAME_HEADER as u64 + len + 7) & !7
}

fn frame_header(len: u64, kind: u32) -> u64 {
    (len & 0xffff_ffff) | (u64::from(kind) << 32)
}

/// The regions a hostile cell writes that the host reads (plus the cell's own
/// slot data, which the host reads in place), as (random-fill name,
/// perturbation name, offset, bytes).
fn cell_regions(l: &Layout) -> [(&'static str, &'static str, usize, usize); 8] {
    let c2h = ring(l, Direction::CellToHost);
    let h2c = ring(l, Direction::HostToCell);
    let hp = pool(l, Direction::HostToCell);
    let cp = pool(l, Direction::CellToHost);
    let pool_ctrl_len = |p: &PoolLayout| p.queue + p.queue_cap * 8 - p.ctrl;
    let first = cp.classes.first().expect("the config has slot classes");
    let last = cp.classes.last().expect("the config has slot classes");
    [
        (
            "random:c2h-ring-ctrl",
            "perturb:c2h-ring-ctrl",
            c2h.ctrl,
            RING_CTRL_BYTES,
        ),
        (
            "random:c2h-ring-data",
            "perturb:c2h-ring-data",
            c2h.data,
            c2h.cap as usize,
        ),
        (
            "random:h2c-ring-ctrl",
            "perturb:h2c-ring-ctrl",
            h2c.ctrl,
            RING_CTRL_BYTES,
        ),
        (
            "random:host-pool-release-queue",
            "perturb:host-pool-release-queue",
            hp.ctrl,
            pool_ctrl_len(hp),
        ),
        (
            "random:cell-pool-ctrl",
            "perturb:cell-pool-ctrl",
            cp.ctrl,
            pool_ctrl_len(cp),
        ),
        (
            "random:cell-pool-slots",
            "perturb:cell-pool-slots",
            first.offset,
            last.offset + last.size * last.count - first.offset,
        ),
        (
            "random:credit-table",
            "perturb:credit-table",
            l.channels,
            l.config.max_channels as usize * CREDIT_ENTRY_BYTES,
        ),
        ("random:liveness", "perturb:liveness", l.liveness, LIVENESS_BYTES),
    ]
}

// ---------------------------------------------------------------------------
// Scribbling.

/// What the host must report when this scribble is the only one made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Rule(Rule),
    /// An `Error` variant name, as given by [`error_kind`].
    Error(&'static str),
}

#[derive(Clone, Copy, Debug)]
struct Scribble {
    name: &'static str,
    expect: Option<Expect>,
}

fn scribbled(name: &'static str, expect: Option<Expect>) -> Scribble {
    Scribble { name, expect }
}

fn broken(rule: Rule) -> Option<Expect> {
    Some(Expect::Rule(rule))
}

/// Makes one random change to what the cell can write.
fn scribble(mem: &CellMem, l: &Layout, rng: &mut Rng) -> Scribble {
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

fn random_region(mem: &CellMem, l: &Layout, rng: &mut Rng) -> Scribble {
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
fn perturb(mem: &CellMem, l: &Layout, rng: &mut Rng) -> Scribble {
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
fn lie(mem: &CellMem, l: &Layout, rng: &mut Rng) -> Scribble {
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
fn pending_frames(mem: &CellMem, l: &Layout) -> Vec<(u64, u64)> {
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
fn corrupt_pending_frame(mem: &CellMem, l: &Layout, rng: &mut Rng) -> Scribble {
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

/// Writes frames into the cell→host ring as a rogue producer: from the
/// published tail, honestly padding at the ring end, within the space the
/// host's published head leaves.
struct Forger<'a> {
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

fn random_payload(rng: &mut Rng, len: u64) -> Vec<u8> {
    let mut p = vec![0u8; len as usize];
    rng.fill(&mut p);
    if let Some(b) = p.first_mut() {
        *b = 0; // untagged: no channel credit involved
    }
    p
}

/// Appends forged frames after the cell's honest ones and publishes them.
fn forge(mem: &CellMem, l: &Layout, rng: &mut Rng) -> Scribble {
    let kind = rng.below(FORGERIES);
    forge_kind(mem, l, rng, kind)
}

/// Kinds of forgery `forge_kind` knows; 0 is a plausible stream.
const FORGERIES: u64 = 15;

fn forge_kind(mem: &CellMem, l: &Layout, rng: &mut Rng, kind: u64) -> Scribble {
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

/// Puts every word the host reads back to a plausible value: an empty ring
/// each way, empty release queues, fresh credit, both sides attached. The
/// concurrent scribbler does this between bursts so that the host keeps
/// getting past its first checks into the deeper reading paths.
fn heal(mem: &CellMem, l: &Layout) {
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

// ---------------------------------------------------------------------------
// Both sides of a segment, with honest traffic.

struct HostSide {
    ep: Endpoint,
    /// Channels 0..4.
    tx_credit: Vec<CreditSender>,
    /// Channels 4..8.
    rx_credit: Vec<CreditReceiver>,
}

struct CellSide {
    ep: Endpoint,
    /// Channels 4..8.
    tx_credit: Vec<CreditSender>,
    /// Channels 0..4.
    rx_credit: Vec<CreditReceiver>,
}

/// A host and a cell on one segment, each through its own mapping, plus a
/// third mapping for the test to scribble through as the cell.
struct Pair {
    _host_seg: Segment,
    _cell_seg: Segment,
    host: HostSide,
    cell: CellSide,
    mem: CellMem,
    layout: Layout,
    /// (len, checksum) of every message the cell sent that the host has not received.
    expected: VecDeque<(usize, u64)>,
    seed: u64,
    sent: u64,
}

impl Pair {
    fn new(seed: u64) -> TestResult<Pair> {
        let host_seg = Segment::create(&config(), seed as u32)?;
        let cell_seg = Segment::attach(host_seg.fd().try_clone_to_owned()?)?;
        let mem = CellMem::map(&cell_seg)?;
        let layout = host_seg.layout().clone();
        assert_eq!(cell_seg.layout(), &layout);
        let host = host_seg.endpoint()?;
        let cell = cell_seg.endpoint()?;
        // The host allocates channel ids, so it resets the entries.
        for ch in 0..CHANNELS {
            host.credit.reset(ch, INITIAL_CREDIT)?;
        }
        let host_tx = 0..HOST_TX_CHANNELS;
        let cell_tx = HOST_TX_CHANNELS..CHANNELS;
        let host = HostSide {
            tx_credit: host_tx
                .clone()
                .map(|ch| host.credit.sender(ch, INITIAL_CREDIT))
                .collect::<Result<_, _>>()?,
            rx_credit: cell_tx
                .clone()
                .map(|ch| host.credit.receiver(ch, INITIAL_CREDIT))
                .collect::<Result<_, _>>()?,
            ep: host,
        };
        let cell = CellSide {
            tx_credit: cell_tx
                .map(|ch| cell.credit.sender(ch, INITIAL_CREDIT))
                .collect::<Result<_, _>>()?,
            rx_credit: host_tx
                .map(|ch| cell.credit.receiver(ch, INITIAL_CREDIT))
                .collect::<Result<_, _>>()?,
            ep: cell,
        };
        Ok(Pair {
            _host_seg: host_seg,
            _cell_seg: cell_seg,
            host,
            cell,
            mem,
            layout,
            expected: VecDeque::new(),
            seed,
            sent: 0,
        })
    }
}

/// The channel (index into the cell's senders / the host's receivers) a cell
/// message is accounted to: its first byte is `5 + i`, or anything else for none.
fn cell_tag(msg: &[u8]) -> Option<usize> {
    match msg.first() {
        Some(&t @ 5..=8) => Some(usize::from(t - 5)),
        _ => None,
    }
}

/// Same for host messages: `1 + i` for host channel `i`.
fn host_tag(msg: &[u8]) -> Option<usize> {
    match msg.first() {
        Some(&t @ 1..=4) => Some(usize::from(t - 1)),
        _ => None,
    }
}

fn message_len(rng: &mut Rng, max_inline: u64, max_slot: u64) -> usize {
    if rng.below(10) < 7 {
        rng.below(max_inline + 1) as usize
    } else {
        (max_inline + 1 + rng.below(max_slot - max_inline)) as usize
    }
}

/// A send that may find the ring full or every slot in flight, and nothing worse.
fn honest<T>(what: &str, r: Result<T, Error>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(Error::Timeout { .. }) => None,
        Err(e) => panic!("honest {what} failed: {e}"),
    }
}

fn cell_send(p: &mut Pair, rng: &mut Rng) {
    let len = message_len(rng, 256, 8192);
    let mut buf = vec![0u8; len];
    pattern(p.seed, p.sent, &mut buf);
    p.sent += 1;
    if len > 0 {
        buf[0] = 0;
        let ch = rng.below(u64::from(CHANNELS - HOST_TX_CHANNELS)) as usize;
        if rng.below(2) == 0
            && p.cell.tx_credit[ch]
                .try_take(len as u32)
                .unwrap_or_else(|e| panic!("honest credit take failed: {e}"))
        {
            buf[0] = 5 + ch as u8;
        }
    }
    if honest("cell send", p.cell.ep.sender.send(&buf, Some(Instant::now()))).is_some() {
        p.expected.push_back((len, checksum(&buf)));
    }
}

fn host_recv_honest(p: &mut Pair, max: u64) {
    for _ in 0..max {
        let msg = match p.host.ep.receiver.try_recv() {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => panic!("honest host receive failed: {e}"),
        };
        let v = msg.to_vec();
        let (len, sum) = p
            .expected
            .pop_front()
            .expect("the host received a message the cell never sent");
        assert_eq!((v.len(), checksum(&v)), (len, sum), "honest message corrupted");
        let mut copy = Vec::new();
        msg.append_to(&mut copy);
        assert_eq!(copy, v);
        if let Some(ch) = cell_tag(&v) {
            let rx = &mut p.host.rx_credit[ch];
            rx.on_received(len as u32)
                .unwrap_or_else(|e| panic!("honest credit overrun: {e}"));
            rx.grant(len as u32)
                .unwrap_or_else(|e| panic!("honest grant failed: {e}"));
        }
        msg.finish()
            .unwrap_or_else(|e| panic!("honest host release failed: {e}"));
    }
}

fn host_send_honest(p: &mut Pair, rng: &mut Rng) {
    let len = message_len(rng, 256, 8192);
    let mut buf = vec![0u8; len];
    rng.fill(&mut buf);
    if len > 0 {
        buf[0] = 0;
        let ch = rng.below(u64::from(HOST_TX_CHANNELS)) as usize;
        if rng.below(2) == 0
            && p.host.tx_credit[ch]
                .try_take(len as u32)
                .unwrap_or_else(|e| panic!("honest credit take failed: {e}"))
        {
            buf[0] = 1 + ch as u8;
        }
    }
    honest("host send", p.host.ep.sender.send(&buf, Some(Instant::now())));
}

fn cell_recv_honest(p: &mut Pair, max: u64) {
    for _ in 0..max {
        let msg = match p.cell.ep.receiver.try_recv() {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => panic!("honest cell receive failed: {e}"),
        };
        let v = msg.to_vec();
        if let Some(ch) = host_tag(&v) {
            let rx = &mut p.cell.rx_credit[ch];
            rx.on_received(v.len() as u32)
                .unwrap_or_else(|e| panic!("honest credit overrun: {e}"));
            rx.grant(v.len() as u32)
                .unwrap_or_else(|e| panic!("honest grant failed: {e}"));
        }
        msg.finish()
            .unwrap_or_else(|e| panic!("honest cell release failed: {e}"));
    }
}

/// A few rounds of honest traffic both ways, leaving messages in the cell's
/// ring for the host, releases in the host's queue, slots in flight both ways
/// and credit moved on every kind of channel.
fn honest_traffic(p: &mut Pair, rng: &mut Rng) {
    for _ in 0..2 + rng.below(4) {
        for _ in 0..rng.below(4) {
            cell_send(p, rng);
        }
        host_recv_honest(p, rng.below(4));
        for _ in 0..rng.below(4) {
            host_send_honest(p, rng);
        }
        cell_recv_honest(p, rng.below(4));
        if rng.below(3) == 0 {
            honest("host reclaim", p.host.ep.sender.slots().reclaim());
        }
        if rng.below(3) == 0 {
            honest("cell reclaim", p.cell.ep.sender.slots().reclaim());
        }
    }
    for _ in 0..1 + rng.below(4) {
        cell_send(p, rng);
    }
}

// ---------------------------------------------------------------------------
// The host's reading paths.

/// Outcomes of every library call the host made.
#[derive(Default)]
struct Tally {
    calls: u64,
    oks: u64,
    /// Messages received and read.
    messages: u64,
    errors: BTreeMap<&'static str, u64>,
    rules: BTreeMap<&'static str, u64>,
    /// Rules and error kinds seen since last cleared (one iteration).
    seen_rules: BTreeSet<&'static str>,
    seen_errors: BTreeSet<&'static str>,
    /// The first violation since last cleared, for failure messages.
    first_violation: Option<String>,
}

impl Tally {
    fn record<T>(&mut self, r: &Result<T, Error>) {
        self.calls += 1;
        match r {
            Ok(_) => self.oks += 1,
            Err(e) => {
                let kind = error_kind(e);
                *self.errors.entry(kind).or_default() += 1;
                self.seen_errors.insert(kind);
                assert_eq!(
                    e.rule().is_some(),
                    kind == "Violation",
                    "rule() disagrees with {e:?}"
                );
                if let Some(rule) = e.rule() {
                    *self.rules.entry(rule.name()).or_default() += 1;
                    self.seen_rules.insert(rule.name());
                    self.first_violation.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }

    fn saw(&self, e: Expect) -> bool {
        match e {
            Expect::Rule(r) => self.seen_rules.contains(r.name()),
            Expect::Error(k) => self.seen_errors.contains(k),
        }
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "  {} library calls: {} Ok, {} messages read\n",
            self.calls, self.oks, self.messages
        );
        for (k, n) in &self.errors {
            s += &format!("  Err({k}): {n}\n");
        }
        for (k, n) in &self.rules {
            s += &format!("    rule {k}: {n}\n");
        }
        s
    }
}

fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Io { .. } => "Io",
        Error::InvalidConfig { .. } => "InvalidConfig",
        Error::BadSegment { .. } => "BadSegment",
        Error::VersionMismatch { .. } => "VersionMismatch",
        Error::Violation(_) => "Violation",
        Error::FrameTooLarge { .. } => "FrameTooLarge",
        Error::PayloadTooLarge { .. } => "PayloadTooLarge",
        Error::PeerGone { .. } => "PeerGone",
        Error::Shutdown => "Shutdown",
        Error::Timeout { .. } => "Timeout",
        Error::ChannelClosed { .. } => "ChannelClosed",
        Error::InvalidArgument { .. } => "InvalidArgument",
        _ => "other",
    }
}

/// Mostly an already-passed deadline (the whole wait path runs, then times
/// out); now and then a real 2 ms wait.
fn deadline(rng: &mut Rng) -> Option<Instant> {
    if rng.below(32) == 0 {
        Some(Instant::now() + Duration::from_millis(2))
    } else {
        Some(Instant::now())
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Recv,
    SendInline,
    SendSlot,
    Reclaim,
    CreditSend,
    CreditGrant,
    Liveness,
    Frames,
}

const PHASE_ONE: [Op; 7] = [
    Op::Recv,
    Op::SendInline,
    Op::SendSlot,
    Op::Reclaim,
    Op::CreditSend,
    Op::Liveness,
    Op::Frames,
];

struct Driver<'a> {
    h: &'a mut HostSide,
    rng: &'a mut Rng,
    t: &'a mut Tally,
    /// Honest messages still to arrive, checked in order (iterations without lies).
    expected: Option<&'a mut VecDeque<(usize, u64)>>,
    /// No one writes the segment while the host reads it.
    exclusive: bool,
    /// Receive attempts per `Op::Recv`.
    recv_budget: u32,
}

impl Driver<'_> {
    fn run(&mut self, op: Op) {
        match op {
            Op::Recv => self.recv(),
            Op::SendInline => self.send(128, 256, 48),
            Op::SendSlot => self.send(257, 8192, 8),
            Op::Reclaim => {
                let r = self.h.ep.sender.slots().reclaim();
                self.t.record(&r);
                black_box(self.h.ep.sender.slots().in_flight());
            }
            Op::CreditSend => self.credit_send(),
            Op::CreditGrant => {
                for rx in &mut self.h.rx_credit {
                    let r = rx.grant(self.rng.below(513) as u32);
                    self.t.record(&r);
                    black_box(rx.outstanding());
                }
            }
            Op::Liveness => {
                let live = &self.h.ep.liveness;
                let r = live.check();
                self.t.record(&r);
                let states = [live.state(Side::Cell), live.state(Side::Host)];
                black_box(states.map(|s| matches!(s, PeerState::Unknown(_))));
                black_box((live.epoch(Side::Cell), live.epoch(Side::Host)));
            }
            Op::Frames => self.frames(),
        }
    }

    /// Receives until the ring is empty or keeps failing, reading every message.
    fn recv(&mut self) {
        let mut failures = 0;
        for _ in 0..self.recv_budget {
            let r = if self.rng.below(8) == 0 {
                let d = deadline(self.rng);
                self.h.ep.receiver.recv(d).map(Some)
            } else {
                self.h.ep.receiver.try_recv()
            };
            self.t.record(&r);
            let msg = match r {
                Ok(Some(m)) => m,
                Ok(None) | Err(Error::Timeout { .. } | Error::PeerGone { .. } | Error::Shutdown) => break,
                Err(_) => {
                    // Keep going: later calls must not panic either.
                    failures += 1;
                    if failures == 3 {
                        break;
                    }
                    continue;
                }
            };
            self.t.messages += 1;
            let v = msg.to_vec();
            assert_eq!(v.len(), msg.len(), "to_vec() and len() disagree");
            if self.exclusive {
                let mut appended = vec![7u8];
                msg.append_to(&mut appended);
                assert_eq!(
                    &appended[1..],
                    &v[..],
                    "append_to() and to_vec() disagree with no writer running"
                );
            }
            if let Some(expected) = self.expected.as_deref_mut() {
                let (len, sum) = expected
                    .pop_front()
                    .expect("the host received a message the cell never sent");
                assert_eq!((v.len(), checksum(&v)), (len, sum), "honest message corrupted");
            }
            if let Some(ch) = cell_tag(&v) {
                let r = self.h.rx_credit[ch].on_received(v.len() as u32);
                self.t.record(&r);
            }
            let r = msg.finish();
            self.t.record(&r);
        }
    }

    /// Sends until something fails (the ring fills, the slots run out, or a
    /// lie in the head or release queue is caught).
    fn send(&mut self, min: u64, max: u64, count: u32) {
        let mut buf = vec![0u8; max as usize];
        for _ in 0..count {
            let len = (min + self.rng.below(max - min + 1)) as usize;
            self.rng.fill(&mut buf[..len]);
            buf[0] = 0;
            let d = deadline(self.rng);
            let r = self.h.ep.sender.send(&buf[..len], d);
            self.t.record(&r);
            if r.is_err() {
                break;
            }
        }
    }

    fn credit_send(&mut self) {
        for tx in &mut self.h.tx_credit {
            let r = tx.available();
            self.t.record(&r);
            let r = tx.try_take(self.rng.below(513) as u32);
            self.t.record(&r);
            if self.rng.below(4) == 0 {
                let n = self.rng.below(2049) as u32;
                let d = deadline(self.rng);
                let r = tx.take(n, d);
                self.t.record(&r);
            }
        }
    }

    /// The frame- and slot-level sending calls.
    fn frames(&mut self) {
        let mut buf = [0u8; 256];
        let len = self.rng.below(self.h.ep.sender.max_inline() as u64 + 1) as usize;
        let r = self.h.ep.sender.producer().try_reserve(len);
        self.t.record(&r);
        if let Ok(Some(mut grant)) = r {
            let w = grant.write(0, &buf[..len]);
            self.t.record(&w);
            let c = grant.commit(len);
            self.t.record(&c);
        }
        let len = 1 + self.rng.below(8192) as usize;
        let r = self.h.ep.sender.slots().try_alloc(len);
        self.t.record(&r);
        if let Ok(Some(mut grant)) = r {
            buf[0] = 0;
            let w = grant.write(len - 1, &buf[..1]);
            self.t.record(&w);
            // Dropped unfinished: the slot goes back to the free list.
        }
    }
}

fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i as u64 + 1) as usize);
    }
}

// ---------------------------------------------------------------------------
// The sequential test.

#[derive(Default)]
struct ScribbleStats {
    applied: u64,
    alone: u64,
    alone_reported: u64,
}

#[derive(Default)]
struct Report {
    iterations: u64,
    control: u64,
    with_violation: u64,
    with_error: u64,
    targeted_alone: u64,
    tally: Tally,
    by_scribble: BTreeMap<&'static str, ScribbleStats>,
    panics: Vec<String>,
    setup_failures: Vec<String>,
    missed: Vec<String>,
    false_alarms: Vec<String>,
}

fn one_iteration(seed: u64, report: &mut Report) -> TestResult<()> {
    let mut rng = Rng::new(seed);
    let mut p = Pair::new(seed)?;
    honest_traffic(&mut p, &mut rng);

    let control = rng.below(32) == 0;
    let mut scribbles = Vec::new();
    if !control {
        for _ in 0..1 + [0, 0, 1, 2][rng.below(4) as usize] {
            scribbles.push(scribble(&p.mem, &p.layout, &mut rng));
        }
    }

    let t = &mut report.tally;
    t.seen_rules.clear();
    t.seen_errors.clear();
    t.first_violation = None;
    let mut ops = PHASE_ONE;
    shuffle(&mut ops, &mut rng);
    let mut d = Driver {
        h: &mut p.host,
        rng: &mut rng,
        t,
        expected: control.then_some(&mut p.expected),
        exclusive: true,
        recv_budget: 64,
    };
    for op in ops {
        d.run(op);
    }
    for _ in 0..d.rng.below(4) {
        let op = PHASE_ONE[d.rng.below(PHASE_ONE.len() as u64) as usize];
        d.run(op);
    }
    // Grants last, so that the credit the cell had before the lies is all it has.
    for op in [Op::CreditGrant, Op::Recv, Op::Liveness] {
        d.run(op);
    }

    let t = &report.tally;
    report.iterations += 1;
    if !t.seen_rules.is_empty() {
        report.with_violation += 1;
    }
    if t.seen_errors.iter().any(|&k| k != "Timeout") {
        report.with_error += 1;
    }
    if control {
        report.control += 1;
        if !t.seen_rules.is_empty() {
            report.false_alarms.push(format!(
                "seed {seed:#x}: no lie told, yet the host reported {:?}",
                t.seen_rules
            ));
        }
        assert!(
            p.expected.is_empty(),
            "seed {seed:#x}: {} honest messages never arrived",
            p.expected.len()
        );
    }
    for s in &scribbles {
        report.by_scribble.entry(s.name).or_default().applied += 1;
    }
    if let [only] = scribbles[..] {
        let stats = report.by_scribble.entry(only.name).or_default();
        stats.alone += 1;
        let reported = match only.expect {
            Some(e) => t.saw(e),
            None => !t.seen_rules.is_empty() || t.seen_errors.iter().any(|&k| k != "Timeout"),
        };
        if reported {
            stats.alone_reported += 1;
        }
        if let Some(e) = only.expect {
            report.targeted_alone += 1;
            if !reported {
                report.missed.push(format!(
                    "seed {seed:#x}: {} alone should be reported as {e:?}; saw rules {:?}, errors {:?}, first: {:?}",
                    only.name, t.seen_rules, t.seen_errors, t.first_violation
                ));
            }
        }
    }
    Ok(())
}

fn run_iterations(base: u64, iters: u64, current: &AtomicU64) -> Report {
    let mut report = Report::default();
    for i in 0..iters {
        let seed = base ^ i;
        current.store(seed, Ordering::Relaxed);
        match catch_unwind(AssertUnwindSafe(|| one_iteration(seed, &mut report))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => report.setup_failures.push(format!("seed {seed:#x}: {e}")),
            Err(payload) => report
                .panics
                .push(format!("seed {seed:#x}: {}", panic_message(&*payload))),
        }
    }
    report
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("{name}={v}: {e}"))
        }
        Err(_) => default,
    }
}

/// Waits for the worker's result, failing if `progress` stops moving for
/// [`STALL_LIMIT`] (a hang) or the worker dies without answering.
fn watch<T>(rx: &mpsc::Receiver<T>, progress: &AtomicU64, what: impl Fn(u64) -> String) -> T {
    let mut last = progress.load(Ordering::Relaxed);
    let mut since = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(v) => return v,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = progress.load(Ordering::Relaxed);
                if now != last {
                    last = now;
                    since = Instant::now();
                } else if since.elapsed() >= STALL_LIMIT {
                    panic!("hang: no progress for {STALL_LIMIT:?} at {}", what(now));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!(
                    "the worker died without reporting, at {}",
                    what(progress.load(Ordering::Relaxed))
                )
            }
        }
    }
}

fn list(items: &[String]) -> String {
    let shown: Vec<_> = items.iter().take(20).map(String::as_str).collect();
    format!(
        "{} (showing {}):\n  {}",
        items.len(),
        shown.len(),
        shown.join("\n  ")
    )
}

#[test]
fn hostile_random_overwrites_only_yield_errors() {
    let iters = env_u64("OSMOS_HOSTILE_ITERS", DEFAULT_ITERS);
    let base = env_u64("OSMOS_HOSTILE_SEED", DEFAULT_SEED);
    let current = Arc::new(AtomicU64::new(base));
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    let worker_current = current.clone();
    std::thread::Builder::new()
        .name("hostile-host".into())
        .spawn(move || {
            let report = run_iterations(base, iters, &worker_current);
            let _ = tx.send(report);
        })
        .expect("spawn the worker");
    let report = watch(&rx, &current, |seed| {
        format!("seed {seed:#x} (rerun with OSMOS_HOSTILE_SEED={seed:#x} OSMOS_HOSTILE_ITERS=1)")
    });
    let elapsed = started.elapsed();

    let mut s = format!(
        "hostile: {} iterations (base seed {base:#x}) in {elapsed:.2?}; {} without lies; \
         {} ended with a violation, {} with an error other than a timeout\n",
        report.iterations, report.control, report.with_violation, report.with_error
    );
    s += &report.tally.summary();
    s += "  scribble: applied / alone / alone and reported\n";
    for (name, st) in &report.by_scribble {
        s += &format!(
            "    {name}: {} / {} / {}\n",
            st.applied, st.alone, st.alone_reported
        );
    }
    eprintln!("{s}");

    assert!(
        report.panics.is_empty(),
        "the host panicked on hostile input, {}",
        list(&report.panics)
    );
    assert!(
        report.setup_failures.is_empty(),
        "segment setup failed, {}",
        list(&report.setup_failures)
    );
    assert!(
        report.false_alarms.is_empty(),
        "violations reported with no lie told, {}",
        list(&report.false_alarms)
    );
    assert!(
        report.missed.is_empty(),
        "targeted lies not reported as the rule they break, {}",
        list(&report.missed)
    );
    // Teeth: the run must have exercised the validation, not skated past it.
    let missing: Vec<_> = ALL_RULES
        .iter()
        .filter(|r| !report.tally.rules.contains_key(r.name()))
        .map(|r| r.name())
        .collect();
    if iters >= DEFAULT_ITERS {
        assert!(missing.is_empty(), "rules never reported: {missing:?}");
        assert!(
            report.targeted_alone >= iters / 10,
            "only {} iterations checked a targeted lie on its own",
            report.targeted_alone
        );
    }
    let lied = report.iterations - report.control;
    assert!(
        report.with_violation * 2 >= lied,
        "only {} of {lied} iterations with lies reported a violation",
        report.with_violation
    );
}

// ---------------------------------------------------------------------------
// The concurrent test.

struct ConcurrentOutcome {
    tally: Tally,
    /// A panic in the host or the scribbler, which ended the run.
    failure: Option<String>,
    scribbles: u64,
    rounds: u64,
    elapsed: Duration,
}

/// Host calls per round of the concurrent test. Each round has a fresh
/// segment: the first violation the host's receiver reports about a frame
/// stays reported (the session is over), so later rounds explore anew.
const CALLS_PER_ROUND: u64 = 500;

fn concurrent_run(seed: u64, ops: u64, progress: &AtomicU64) -> TestResult<ConcurrentOutcome> {
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut scribbles = 0;
    let mut round = 0;
    while tally.calls < ops {
        let seed = seed ^ round;
        round += 1;
        let mut rng = Rng::new(seed);
        let mut p = Pair::new(seed)?;
        honest_traffic(&mut p, &mut rng);

        let stop = Arc::new(AtomicBool::new(false));
        let scribbler = {
            let mem = p.mem.cell_words_only(&p.layout);
            let (layout, stop) = (p.layout.clone(), stop.clone());
            std::thread::Builder::new()
                .name("hostile-cell".into())
                .spawn(move || {
                    let mut rng = Rng::new(seed ^ 0x5c21_bb1e);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        heal(&mem, &layout);
                        forge_kind(&mem, &layout, &mut rng, 0);
                        for _ in 0..1 + rng.below(3) {
                            scribble(&mem, &layout, &mut rng);
                            n += 1;
                        }
                    }
                    n
                })?
        };

        let until = (tally.calls + CALLS_PER_ROUND).min(ops);
        let host = catch_unwind(AssertUnwindSafe(|| {
            let all = [
                Op::Recv,
                Op::SendInline,
                Op::SendSlot,
                Op::Reclaim,
                Op::CreditSend,
                Op::CreditGrant,
                Op::Liveness,
                Op::Frames,
            ];
            let mut d = Driver {
                h: &mut p.host,
                rng: &mut rng,
                t: &mut tally,
                expected: None,
                exclusive: false,
                recv_budget: 8,
            };
            while d.t.calls < until {
                let op = all[d.rng.below(all.len() as u64) as usize];
                d.run(op);
                progress.store(d.t.calls, Ordering::Relaxed);
            }
        }));
        stop.store(true, Ordering::Relaxed);
        let joined = scribbler.join().map_err(|e| panic_message(&*e));
        let failure = match (host, joined) {
            (Err(e), _) => Some(format!(
                "the host panicked (round seed {seed:#x}): {}",
                panic_message(&*e)
            )),
            (Ok(()), Err(msg)) => Some(format!("the scribbler panicked (round seed {seed:#x}): {msg}")),
            (Ok(()), Ok(n)) => {
                scribbles += n;
                None
            }
        };
        if failure.is_some() {
            return Ok(ConcurrentOutcome {
                tally,
                failure,
                scribbles,
                rounds: round,
                elapsed: started.elapsed(),
            });
        }
    }
    Ok(ConcurrentOutcome {
        tally,
        failure: None,
        scribbles,
        rounds: round,
        elapsed: started.elapsed(),
    })
}

#[test]
fn hostile_concurrent_scribbler_only_yields_errors() {
    let ops = env_u64("OSMOS_HOSTILE_OPS", DEFAULT_OPS);
    let seed = env_u64("OSMOS_HOSTILE_SEED", DEFAULT_SEED) ^ 0xc0c0_c0c0_c0c0_c0c0;
    let progress = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let worker_progress = progress.clone();
    std::thread::Builder::new()
        .name("hostile-host".into())
        .spawn(move || {
            let outcome = catch_unwind(AssertUnwindSafe(|| concurrent_run(seed, ops, &worker_progress)));
            let _ = tx.send(outcome.map_err(|e| panic_message(&*e)));
        })
        .expect("spawn the worker");
    let outcome = watch(&rx, &progress, |calls| {
        format!("library call {calls} of {ops} (seed {seed:#x})")
    });
    let outcome = match outcome {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => panic!("concurrent run setup failed (seed {seed:#x}): {e}"),
        Err(msg) => panic!("concurrent run panicked outside the host loop (seed {seed:#x}): {msg}"),
    };
    eprintln!(
        "hostile concurrent: {} host calls in {} rounds against {} scribbles in {:.2?} (seed {seed:#x})\n{}",
        outcome.tally.calls,
        outcome.rounds,
        outcome.scribbles,
        outcome.elapsed,
        outcome.tally.summary()
    );
    if let Some(msg) = outcome.failure {
        panic!("{msg}, after {} host calls", outcome.tally.calls);
    }
    assert!(outcome.tally.calls >= ops);
    assert!(outcome.scribbles > 0, "the scribbler never ran");
    assert!(
        outcome.tally.messages > 0,
        "the host never got a message past the scribbler"
    );
    assert!(
        outcome.tally.rules.len() >= 5,
        "only {:?} rules were reported under a concurrent scribbler",
        outcome.tally.rules.keys()
    );
}

// ---------------------------------------------------------------------------
// The scribbler's offsets.

/// Pins every word offset this file writes to what the library actually
/// reads and writes there, so the scribbling cannot silently miss.
#[test]
fn hostile_scribbler_offsets_match_the_library() -> TestResult<()> {
    let mut p = Pair::new(7)?;
    let l = p.layout.clone();
    let m = p.mem.clone();
    let live = l.liveness;
    assert_eq!(m.load32(live + LIVE_HOST + LIVE_STATE), 1, "host state: attached");
    assert_eq!(m.load32(live + LIVE_CELL + LIVE_STATE), 1, "cell state: attached");
    assert_eq!(m.load32(live + LIVE_HOST + LIVE_EPOCH), 7);
    assert_eq!(m.load32(live + LIVE_CELL + LIVE_EPOCH), 7);

    // The cell→host ring: tail, doorbell, frame header, head.
    let c2h = ring(&l, Direction::CellToHost);
    let bell = m.load32(c2h.ctrl + RING_READABLE_SEQ);
    p.cell.ep.sender.send(&[], None)?;
    assert_eq!(m.load(c2h.ctrl + RING_TAIL), 8);
    assert_eq!(m.load32(c2h.ctrl + RING_READABLE_SEQ), bell.wrapping_add(1));
    assert_eq!(m.load_le(c2h.data), frame_header(0, KIND_INLINE));
    let msg = p.host.ep.receiver.try_recv()?.expect("the empty frame");
    assert!(msg.is_empty());
    msg.finish()?;
    assert_eq!(m.load(c2h.ctrl + RING_HEAD), 8);

    // A slot message host→cell: its reference frame, then the release in
    // the host's queue and the host's read position after reclaiming it.
    let h2c = ring(&l, Direction::HostToCell);
    p.host.ep.sender.send(&[0xab; 1000], None)?;
    assert_eq!(m.load(h2c.ctrl + RING_TAIL), 24);
    assert_eq!(m.load_le(h2c.data), frame_header(16, KIND_SLOT));
    let reference = m.load_le(h2c.data + 8);
    assert_eq!(reference >> 32, 1, "first generation");
    assert_eq!(m.load_le(h2c.data + 16), 1000, "length, reserved word zero");
    let msg = p.cell.ep.receiver.try_recv()?.expect("the slot message");
    assert_eq!(msg.to_vec(), vec![0xab; 1000]);
    msg.finish()?;
    assert_eq!(m.load(h2c.ctrl + RING_HEAD), 24);
    let hp = pool(&l, Direction::HostToCell);
    assert_eq!(m.load(hp.ctrl + POOL_REL_TAIL), 1);
    assert_eq!(
        m.load_le(hp.queue),
        reference,
        "release entry: generation << 32 | index"
    );
    assert_eq!(p.host.ep.sender.slots().reclaim()?, 1);
    assert_eq!(m.load(hp.ctrl + POOL_REL_HEAD), 1);

    // Credit words of a host-sent channel.
    let e = credit_entry(&l, 2);
    assert_eq!(m.load32(e + CREDIT_GRANTED), INITIAL_CREDIT);
    assert!(p.host.tx_credit[2].try_take(100)?);
    assert_eq!(m.load32(e + CREDIT_SENT), 100);
    p.cell.rx_credit[2].on_received(100)?;
    p.cell.rx_credit[2].grant(50)?;
    assert_eq!(m.load32(e + CREDIT_GRANTED), INITIAL_CREDIT + 50);
    // The sender's parked bit: set while the cell waits for credit on
    // channel 4, seen by the host's grant, which wakes it.
    let e4 = credit_entry(&l, 4);
    let mut cell_tx = p.cell.tx_credit.remove(0);
    let waiter = std::thread::spawn(move || {
        let r = cell_tx.take(INITIAL_CREDIT + 1, Some(Instant::now() + Duration::from_secs(20)));
        r.map(|()| cell_tx.channel())
    });
    let until = Instant::now() + Duration::from_secs(10);
    while m.load32(e4 + CREDIT_SENDER_STATE) & 1 == 0 && Instant::now() < until {
        std::thread::yield_now();
    }
    assert_eq!(
        m.load32(e4 + CREDIT_SENDER_STATE) & 1,
        1,
        "a parked sender sets its bit"
    );
    p.host.rx_credit[0].grant(1)?;
    assert_eq!(waiter.join().expect("the waiting cell sender")?, 4);
    assert_eq!(m.load32(e4 + CREDIT_SENT), INITIAL_CREDIT + 1);
    assert_eq!(
        m.load32(e4 + CREDIT_SENDER_STATE),
        0,
        "parked bit cleared after the wait"
    );

    // Writes through the cell's mapping reach the host's reading paths.
    m.store32(e + CREDIT_RECEIVER_STATE, 1);
    assert!(matches!(
        p.host.tx_credit[2].available(),
        Err(Error::ChannelClosed { channel: 2 })
    ));
    m.store32(e + CREDIT_RECEIVER_STATE, 0);
    m.store32(e + CREDIT_GRANTED, 99);
    assert_eq!(
        p.host.tx_credit[2].available().err().and_then(|e| e.rule()),
        Some(Rule::CreditGrantMonotonic)
    );
    m.store(hp.ctrl + POOL_REL_TAIL, 100);
    assert_eq!(
        p.host.ep.sender.slots().reclaim().err().and_then(|e| e.rule()),
        Some(Rule::ReleaseQueueInRange)
    );
    m.store(c2h.ctrl + RING_TAIL, 12);
    assert_eq!(
        p.host.ep.receiver.try_recv().err().and_then(|e| e.rule()),
        Some(Rule::RingTailInRange)
    );
    m.store32(live + LIVE_CELL + LIVE_STATE, 3);
    assert!(matches!(
        p.host.ep.liveness.check(),
        Err(Error::PeerGone { peer: Side::Cell, .. })
    ));
    m.store32(live + LIVE_CELL + LIVE_STATE, 1);
    // The cell cannot shut the host down by writing the host's state word:
    // a local shutdown is process-private.
    m.store32(live + LIVE_HOST + LIVE_STATE, 3);
    assert!(p.host.ep.liveness.check().is_ok());
    Ok(())
}
