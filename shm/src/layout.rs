//! Segment configuration, the header, and the one function that turns a
//! configuration into byte offsets.
//!
//! The host computes the [`Layout`] from its [`SegmentConfig`] and keeps that
//! copy: it never reads a size or offset back from shared memory. The header
//! records the configuration and every offset so that the cell can check, on
//! attach, that recomputing the layout from the recorded configuration gives
//! exactly the recorded offsets — a segment written by another format or
//! another layout function is refused with a clear error.
//!
//! ```text
//! 0      header (256 B)
//!        liveness words (2 × 128 B)
//!        ring host→cell: control (head, tail, 2 doorbells), data
//!        ring cell→host: control, data
//!        pool host→cell: control (release queue positions, doorbell),
//!                        release queue, slot data per class (4 KiB aligned)
//!        pool cell→host: same
//!        channel credit table: max_channels × 256 B
//! ```
//! Every structure starts on a 128-byte boundary (two cache lines: the
//! adjacent-line prefetcher pairs lines on x86-64, so a 64-byte boundary is
//! not enough to keep a producer's and a consumer's words apart).

use crate::error::{Error, Result};

/// `b"OSMOSSEG"`, little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"OSMOSSEG");
/// Version of the segment format this build reads and writes.
pub const FORMAT_VERSION: u32 = 2;
/// Most slot classes a segment can have.
pub const MAX_SLOT_CLASSES: usize = 8;
/// Alignment of every structure in the segment.
pub const STRUCT_ALIGN: usize = 128;
/// Alignment of slot data.
pub const SLOT_ALIGN: usize = 4096;
/// Bytes of a frame header in the ring.
pub const FRAME_HEADER: usize = 8;

/// One slot size class of a pool: `count` slots of `size` bytes each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotClass {
    /// Bytes per slot; a multiple of 64.
    pub size: u32,
    /// Number of slots of this size.
    pub count: u32,
}

/// What a segment holds. The same configuration is used for both directions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentConfig {
    /// Bytes of frame ring per direction: a power of two, 1 KiB to 1 GiB.
    pub ring_bytes: u32,
    /// Largest payload sent inline in a frame; `max_frame + 8` must be at
    /// most half the ring. Larger payloads travel in slots.
    pub max_frame: u32,
    /// Slot classes per direction, sizes strictly increasing (at most 8).
    pub slot_classes: Vec<SlotClass>,
    /// Entries in the channel credit table (at most 65,536).
    pub max_channels: u32,
    /// Credit a channel starts with, in bytes (at most 2^30).
    pub initial_credit: u32,
}

impl Default for SegmentConfig {
    /// 256 KiB rings, 8 KiB inline frames, 32 × 68 KiB and 4 × 2 MiB slots
    /// per direction, 256 channels with 1 MiB initial credit: about
    /// 20.8 MiB of address space per cell, of which only touched pages cost
    /// memory. The small class holds a 64 KiB payload with its envelope
    /// (a message of exactly 64 KiB of user bytes is a little over 64 KiB).
    /// A window of 16 such messages lets a sender pinned to the receiver's
    /// CPU write eight of them per wake (a grant comes every half window).
    fn default() -> Self {
        SegmentConfig {
            ring_bytes: 256 << 10,
            max_frame: 8 << 10,
            slot_classes: vec![
                SlotClass {
                    size: 68 << 10,
                    count: 32,
                },
                SlotClass {
                    size: 2 << 20,
                    count: 4,
                },
            ],
            max_channels: 256,
            initial_credit: 1 << 20,
        }
    }
}

/// Where one ring lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    /// Offset of the ring's control block.
    pub ctrl: usize,
    /// Offset of the ring's data area.
    pub data: usize,
    /// Bytes of data area (a power of two).
    pub bytes: usize,
}

/// Where one slot class lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassLayout {
    /// Offset of the class's first slot.
    pub offset: usize,
    /// Bytes per slot.
    pub size: usize,
    /// Number of slots.
    pub count: usize,
    /// Pool-wide index of the class's first slot.
    pub first_index: u32,
}

/// Where one pool lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolLayout {
    /// Offset of the pool's control block.
    pub ctrl: usize,
    /// Offset of the release queue (an array of `queue_cap` 8-byte entries).
    pub queue: usize,
    /// Release queue capacity: the next power of two ≥ the number of slots.
    pub queue_cap: usize,
    /// The slot classes, smallest first.
    pub classes: Vec<ClassLayout>,
    /// Slots in the pool, over all classes.
    pub total_slots: u32,
}

/// Direction of travel of a ring or pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Written by the host, read by the cell.
    HostToCell = 0,
    /// Written by the cell, read by the host.
    CellToHost = 1,
}

/// Byte offsets of everything in a segment, computed from a [`SegmentConfig`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The configuration this layout was computed from.
    pub config: SegmentConfig,
    /// Offset of the liveness block.
    pub liveness: usize,
    /// Rings, indexed by [`Direction`].
    pub rings: [RingLayout; 2],
    /// Pools, indexed by [`Direction`] (the pool of the ring's writer).
    pub pools: [PoolLayout; 2],
    /// Offset of the channel credit table.
    pub channels: usize,
    /// Total bytes of the segment.
    pub total: usize,
}

fn align_up(v: usize, a: usize) -> usize {
    debug_assert!(a.is_power_of_two());
    (v + a - 1) & !(a - 1)
}

fn invalid(reason: String) -> Error {
    Error::InvalidConfig { reason }
}

impl SegmentConfig {
    /// Checks every value against its documented range.
    pub fn validate(&self) -> Result<()> {
        let rb = self.ring_bytes;
        if !rb.is_power_of_two() || !(1 << 10..=1 << 30).contains(&rb) {
            return Err(invalid(format!(
                "ring_bytes must be a power of two from 1024 to 2^30, got {rb}"
            )));
        }
        if self.max_frame == 0 || self.max_frame as usize + FRAME_HEADER > rb as usize / 2 {
            return Err(invalid(format!(
                "max_frame must be 1..={} (half the ring less the 8-byte frame header), got {}",
                rb as usize / 2 - FRAME_HEADER,
                self.max_frame
            )));
        }
        if self.slot_classes.len() > MAX_SLOT_CLASSES {
            return Err(invalid(format!(
                "at most {MAX_SLOT_CLASSES} slot classes, got {}",
                self.slot_classes.len()
            )));
        }
        let mut prev = 0u32;
        let mut slots = 0u64;
        for (i, c) in self.slot_classes.iter().enumerate() {
            if c.size < 64 || c.size % 64 != 0 || c.size > 1 << 30 || c.size <= prev {
                return Err(invalid(format!(
                    "slot class {i}: size must be a multiple of 64 from 64 to 2^30 and larger than the class before, got {}",
                    c.size
                )));
            }
            if c.count == 0 || c.count > 1 << 16 {
                return Err(invalid(format!(
                    "slot class {i}: count must be 1..=65536, got {}",
                    c.count
                )));
            }
            prev = c.size;
            slots += u64::from(c.count);
        }
        if slots > 1 << 20 {
            return Err(invalid(format!("at most 2^20 slots per pool, got {slots}")));
        }
        if self.max_channels > 1 << 16 {
            return Err(invalid(format!(
                "max_channels must be at most 65536, got {}",
                self.max_channels
            )));
        }
        if self.initial_credit > 1 << 30 {
            return Err(invalid(format!(
                "initial_credit must be at most 2^30 bytes, got {}",
                self.initial_credit
            )));
        }
        Ok(())
    }

    /// Largest payload a slot can carry (0 if there are no slot classes).
    pub fn max_slot_payload(&self) -> usize {
        self.slot_classes.last().map_or(0, |c| c.size as usize)
    }
}

impl Layout {
    /// Validates `config` and computes the layout.
    pub fn compute(config: &SegmentConfig) -> Result<Layout> {
        config.validate()?;
        let mut at = HEADER_BYTES;
        let liveness = at;
        at += 256;
        let ring = |at: &mut usize| {
            let ctrl = align_up(*at, STRUCT_ALIGN);
            let data = align_up(ctrl + RING_CTRL_BYTES, STRUCT_ALIGN);
            *at = data + config.ring_bytes as usize;
            RingLayout {
                ctrl,
                data,
                bytes: config.ring_bytes as usize,
            }
        };
        let rings = [ring(&mut at), ring(&mut at)];
        let pool = |at: &mut usize| {
            let ctrl = align_up(*at, STRUCT_ALIGN);
            let queue = align_up(ctrl + POOL_CTRL_BYTES, STRUCT_ALIGN);
            let total_slots: u32 = config.slot_classes.iter().map(|c| c.count).sum();
            let queue_cap = (total_slots as usize).next_power_of_two();
            *at = queue + queue_cap * 8;
            let mut first_index = 0;
            let classes = config
                .slot_classes
                .iter()
                .map(|c| {
                    let offset = align_up(*at, SLOT_ALIGN);
                    *at = offset + c.size as usize * c.count as usize;
                    let l = ClassLayout {
                        offset,
                        size: c.size as usize,
                        count: c.count as usize,
                        first_index,
                    };
                    first_index += c.count;
                    l
                })
                .collect();
            PoolLayout {
                ctrl,
                queue,
                queue_cap,
                classes,
                total_slots,
            }
        };
        let pools = [pool(&mut at), pool(&mut at)];
        let channels = align_up(at, STRUCT_ALIGN);
        at = channels + config.max_channels as usize * CREDIT_ENTRY_BYTES;
        let total = align_up(at, SLOT_ALIGN);
        Ok(Layout {
            config: config.clone(),
            liveness,
            rings,
            pools,
            channels,
            total,
        })
    }

    fn offsets(&self) -> [u64; 8] {
        [
            self.liveness,
            self.rings[0].ctrl,
            self.rings[0].data,
            self.rings[1].ctrl,
            self.rings[1].data,
            self.pools[0].ctrl,
            self.pools[1].ctrl,
            self.channels,
        ]
        .map(|v| v as u64)
    }

    /// The header the host writes at offset 0.
    pub(crate) fn header(&self, epoch: u32) -> RawHeader {
        let c = &self.config;
        let mut slot_classes = [[0u32; 2]; MAX_SLOT_CLASSES];
        for (dst, src) in slot_classes.iter_mut().zip(&c.slot_classes) {
            *dst = [src.size, src.count];
        }
        RawHeader {
            magic: MAGIC,
            version: FORMAT_VERSION,
            header_size: std::mem::size_of::<RawHeader>() as u32,
            total_size: self.total as u64,
            ring_bytes: c.ring_bytes,
            max_frame: c.max_frame,
            max_channels: c.max_channels,
            initial_credit: c.initial_credit,
            slot_class_count: c.slot_classes.len() as u32,
            epoch,
            slot_classes,
            offsets: self.offsets(),
        }
    }

    /// Recomputes the layout from a header copied out of a segment and checks
    /// that it matches the header exactly. Returns the layout and the epoch.
    pub(crate) fn from_header(h: &RawHeader) -> Result<(Layout, u32)> {
        let bad = |reason: String| Error::BadSegment { reason };
        if h.magic != MAGIC {
            return Err(bad(format!(
                "bad magic {:#018x} (expected {MAGIC:#018x}): this fd is not an osmos segment",
                h.magic
            )));
        }
        if h.version != FORMAT_VERSION {
            return Err(Error::VersionMismatch {
                ours: FORMAT_VERSION,
                theirs: h.version,
            });
        }
        if h.header_size as usize != std::mem::size_of::<RawHeader>() {
            return Err(bad(format!(
                "header size {} (expected {})",
                h.header_size,
                std::mem::size_of::<RawHeader>()
            )));
        }
        let n = h.slot_class_count as usize;
        if n > MAX_SLOT_CLASSES {
            return Err(bad(format!("{n} slot classes (at most {MAX_SLOT_CLASSES})")));
        }
        let config = SegmentConfig {
            ring_bytes: h.ring_bytes,
            max_frame: h.max_frame,
            slot_classes: h.slot_classes[..n]
                .iter()
                .map(|&[size, count]| SlotClass { size, count })
                .collect(),
            max_channels: h.max_channels,
            initial_credit: h.initial_credit,
        };
        let layout =
            Layout::compute(&config).map_err(|e| bad(format!("recorded configuration is invalid: {e}")))?;
        if layout.total as u64 != h.total_size || layout.offsets() != h.offsets {
            return Err(bad(format!(
                "recorded layout (size {}, offsets {:?}) differs from the one this build computes (size {}, offsets {:?})",
                h.total_size,
                h.offsets,
                layout.total,
                layout.offsets()
            )));
        }
        Ok((layout, h.epoch))
    }
}

/// Bytes reserved for the header at offset 0.
pub(crate) const HEADER_BYTES: usize = 256;
/// Bytes of a ring control block (`ring::RingCtrl`).
pub(crate) const RING_CTRL_BYTES: usize = 768;
/// Bytes of a pool control block (`pool::PoolCtrl`).
pub(crate) const POOL_CTRL_BYTES: usize = 512;
/// Bytes of one channel credit entry (`credit::CreditEntry`).
pub(crate) const CREDIT_ENTRY_BYTES: usize = 256;

/// The segment header as it sits at offset 0. Written once by the host
/// before the fd is handed to the cell; copied out whole by the cell on attach.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RawHeader {
    /// [`MAGIC`].
    pub magic: u64,
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// `size_of::<RawHeader>()`.
    pub header_size: u32,
    /// Total bytes of the segment (the memfd's size).
    pub total_size: u64,
    pub ring_bytes: u32,
    pub max_frame: u32,
    pub max_channels: u32,
    pub initial_credit: u32,
    /// Number of valid entries in `slot_classes`.
    pub slot_class_count: u32,
    /// The host's incarnation number for this cell.
    pub epoch: u32,
    /// `[size, count]` per class; entries past `slot_class_count` are zero.
    pub slot_classes: [[u32; 2]; MAX_SLOT_CLASSES],
    /// See `Layout::offsets`.
    pub offsets: [u64; 8],
}

const _: () = {
    assert!(std::mem::size_of::<RawHeader>() == 176);
    assert!(std::mem::size_of::<RawHeader>() <= HEADER_BYTES);
    assert!(std::mem::align_of::<RawHeader>() == 8);
};

#[cfg(all(test, not(osmos_loom)))]
mod tests {
    use super::*;

    fn regions(l: &Layout) -> Vec<(usize, usize)> {
        let mut r = vec![(0, HEADER_BYTES), (l.liveness, 256)];
        for ring in &l.rings {
            r.push((ring.ctrl, RING_CTRL_BYTES));
            r.push((ring.data, ring.bytes));
        }
        for pool in &l.pools {
            r.push((pool.ctrl, POOL_CTRL_BYTES));
            r.push((pool.queue, pool.queue_cap * 8));
            for c in &pool.classes {
                r.push((c.offset, c.size * c.count));
            }
        }
        r.push((l.channels, l.config.max_channels as usize * CREDIT_ENTRY_BYTES));
        r
    }

    #[test]
    fn default_layout_is_aligned_disjoint_and_in_bounds() {
        let l = Layout::compute(&SegmentConfig::default()).unwrap();
        let mut r = regions(&l);
        for &(off, len) in &r {
            assert_eq!(off % STRUCT_ALIGN, 0, "region at {off} is not 128-aligned");
            assert!(off + len <= l.total);
        }
        r.sort();
        for w in r.windows(2) {
            assert!(
                w[0].0 + w[0].1 <= w[1].0,
                "regions {:?} and {:?} overlap",
                w[0],
                w[1]
            );
        }
        for pool in &l.pools {
            assert!(pool.queue_cap >= pool.total_slots as usize);
            for c in &pool.classes {
                assert_eq!(c.offset % SLOT_ALIGN, 0);
            }
        }
        assert_eq!(l.total % SLOT_ALIGN, 0);
    }

    #[test]
    fn invalid_configs_are_refused_naming_the_value() {
        let ok = SegmentConfig::default();
        let cases: Vec<(SegmentConfig, &str)> = vec![
            (
                SegmentConfig {
                    ring_bytes: 3000,
                    ..ok.clone()
                },
                "ring_bytes",
            ),
            (
                SegmentConfig {
                    ring_bytes: 512,
                    ..ok.clone()
                },
                "ring_bytes",
            ),
            (
                SegmentConfig {
                    max_frame: 0,
                    ..ok.clone()
                },
                "max_frame",
            ),
            (
                SegmentConfig {
                    max_frame: ok.ring_bytes / 2,
                    ..ok.clone()
                },
                "max_frame",
            ),
            (
                SegmentConfig {
                    slot_classes: vec![
                        SlotClass { size: 4096, count: 1 },
                        SlotClass { size: 1024, count: 1 },
                    ],
                    ..ok.clone()
                },
                "slot class 1",
            ),
            (
                SegmentConfig {
                    slot_classes: vec![SlotClass { size: 100, count: 1 }],
                    ..ok.clone()
                },
                "slot class 0",
            ),
            (
                SegmentConfig {
                    slot_classes: vec![SlotClass { size: 128, count: 0 }],
                    ..ok.clone()
                },
                "count",
            ),
            (
                SegmentConfig {
                    slot_classes: vec![SlotClass { size: 64, count: 1 }; 9],
                    ..ok.clone()
                },
                "at most 8",
            ),
            (
                SegmentConfig {
                    max_channels: 70_000,
                    ..ok.clone()
                },
                "max_channels",
            ),
            (
                SegmentConfig {
                    initial_credit: u32::MAX,
                    ..ok.clone()
                },
                "initial_credit",
            ),
        ];
        for (cfg, needle) in cases {
            let err = Layout::compute(&cfg).unwrap_err();
            assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
            assert!(
                err.to_string().contains(needle),
                "{err:?} should mention {needle}"
            );
        }
    }

    #[test]
    fn header_round_trips_and_tampering_is_refused() {
        let l = Layout::compute(&SegmentConfig::default()).unwrap();
        let h = l.header(42);
        let (back, epoch) = Layout::from_header(&h).unwrap();
        assert_eq!((back, epoch), (l.clone(), 42));

        let mut bad = h;
        bad.magic ^= 1;
        assert!(
            Layout::from_header(&bad)
                .unwrap_err()
                .to_string()
                .contains("not an osmos segment")
        );

        let mut bad = h;
        bad.version = FORMAT_VERSION + 1;
        match Layout::from_header(&bad).unwrap_err() {
            Error::VersionMismatch { ours, theirs } => {
                assert_eq!((ours, theirs), (FORMAT_VERSION, FORMAT_VERSION + 1))
            }
            e => panic!("{e}"),
        }

        let mut bad = h;
        bad.offsets[3] += 128;
        assert!(
            Layout::from_header(&bad)
                .unwrap_err()
                .to_string()
                .contains("differs")
        );

        let mut bad = h;
        bad.slot_class_count = 9;
        assert!(matches!(Layout::from_header(&bad), Err(Error::BadSegment { .. })));

        let mut bad = h;
        bad.ring_bytes = 1000;
        assert!(
            Layout::from_header(&bad)
                .unwrap_err()
                .to_string()
                .contains("recorded configuration is invalid")
        );
    }
}
