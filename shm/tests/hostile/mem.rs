//! The cell's view of memory: its own mapping of the segment, read and
//! written one aligned word at a time, and where the rings, slot pools,
//! credit entries and liveness words lie in it.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};
use osmos_shm::{Direction, FRAME_HEADER, Layout, PoolLayout, Segment};

use super::*;
use crate::common::Rng;

/// The cell's own mapping of the segment: a hostile cell can write any of it.
/// Every access here is a single atomic load or store of an aligned word.
#[derive(Clone)]
pub struct CellMem {
    map: Arc<MmapRaw>,
    /// Per 8-byte word: writes to it are dropped (see [`CellMem::cell_words_only`]).
    guard: Option<Arc<Vec<bool>>>,
}

impl CellMem {
    pub fn map(cell: &Segment) -> std::io::Result<Self> {
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
    pub fn cell_words_only(&self, l: &Layout) -> Self {
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

    pub fn guarded(&self, off: usize) -> bool {
        self.guard.as_ref().is_some_and(|g| g[off / 8])
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn word64(&self, off: usize) -> &AtomicU64 {
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

    pub fn word32(&self, off: usize) -> &AtomicU32 {
        assert!(
            off.is_multiple_of(4) && off + 4 <= self.len(),
            "test bug: u32 at {off} outside the segment"
        );
        // SAFETY: as in `word64`, with 4-byte alignment.
        unsafe { AtomicU32::from_ptr(self.map.as_mut_ptr().add(off).cast()) }
    }

    /// A native-endian control word (the library's atomics).
    pub fn load(&self, off: usize) -> u64 {
        self.word64(off).load(Ordering::Relaxed)
    }

    pub fn store(&self, off: usize, v: u64) {
        let word = self.word64(off);
        if !self.guarded(off) {
            word.store(v, Ordering::Relaxed);
        }
    }

    pub fn load32(&self, off: usize) -> u32 {
        self.word32(off).load(Ordering::Relaxed)
    }

    pub fn store32(&self, off: usize, v: u32) {
        let word = self.word32(off);
        if !self.guarded(off) {
            word.store(v, Ordering::Relaxed);
        }
    }

    /// A little-endian word of ring data (frame headers, slot references).
    pub fn load_le(&self, off: usize) -> u64 {
        u64::from_le(self.load(off))
    }

    pub fn store_le(&self, off: usize, v: u64) {
        self.store(off, v.to_le());
    }

    /// `bytes` at 8-aligned `off`, word by word, the last word zero-padded.
    pub fn write_bytes(&self, off: usize, bytes: &[u8]) {
        for (i, chunk) in bytes.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.store(off + 8 * i, u64::from_ne_bytes(w));
        }
    }

    /// Random bytes over `[off, off + len)` (both multiples of 8).
    pub fn fill(&self, off: usize, len: usize, rng: &mut Rng) {
        for at in (off..off + len).step_by(8) {
            self.store(at, rng.next_u64());
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Ring {
    pub ctrl: usize,
    pub data: usize,
    pub cap: u64,
}

pub fn ring(l: &Layout, dir: Direction) -> Ring {
    let r = l.rings[dir as usize];
    Ring {
        ctrl: r.ctrl,
        data: r.data,
        cap: r.bytes as u64,
    }
}

pub fn pool(l: &Layout, dir: Direction) -> &PoolLayout {
    &l.pools[dir as usize]
}

/// Bytes of the slot class holding `index` (0 if none does).
pub fn class_size(p: &PoolLayout, index: u32) -> u64 {
    p.classes
        .iter()
        .find(|c| index >= c.first_index && ((index - c.first_index) as usize) < c.count)
        .map_or(0, |c| c.size as u64)
}

pub fn credit_entry(l: &Layout, channel: u32) -> usize {
    l.channels + channel as usize * CREDIT_ENTRY_BYTES
}

pub fn frame_size(len: u64) -> u64 {
    (FRAME_HEADER as u64 + len + 7) & !7
}

pub fn frame_header(len: u64, kind: u32) -> u64 {
    (len & 0xffff_ffff) | (u64::from(kind) << 32)
}

/// The regions a hostile cell writes that the host reads (plus the cell's own
/// slot data, which the host reads in place), as (random-fill name,
/// perturbation name, offset, bytes).
pub fn cell_regions(l: &Layout) -> [(&'static str, &'static str, usize, usize); 8] {
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
