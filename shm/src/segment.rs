//! The shared memory segment: a sealed memfd, mapped by both sides.
//!
//! The host calls [`Segment::create`]: `memfd_create(MFD_CLOEXEC |
//! MFD_ALLOW_SEALING)`, `ftruncate` to the layout's size, then
//! `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL` so that no process can ever
//! resize it (a shrunk shared mapping turns every access past the new end
//! into `SIGBUS`). There is no file path; the cell gets the fd by
//! inheritance and calls [`Segment::attach`], which checks the seals, copies
//! the header out once, and refuses a segment whose recorded layout differs
//! from the one it computes. The host keeps its own [`Layout`] and never
//! reads a size or offset back from shared memory.
//!
//! [`Segment::endpoint`] turns a segment into one side's [`Endpoint`]: the
//! producer of its outgoing ring and the owner of its outgoing slot pool,
//! the consumer of its incoming ring and the reader of its incoming pool,
//! the credit table and the liveness words.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32};

use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{MemfdFlags, SealFlags};

use crate::credit::{CreditEntry, CreditTable};
use crate::endpoint::{Endpoint, FrameReceiver, FrameSender};
use crate::error::{Error, Result};
use crate::layout::{Direction, HEADER_BYTES, Layout, RawHeader, SegmentConfig};
use crate::liveness::{Liveness, LivenessWords, PeerState, Side};
use crate::pinned::{Keepalive, Pinned};
use crate::pool::{self, PoolCtrl, PoolMem};
use crate::ring::{self, RingCtrl, RingMem};
use crate::sync::SharedBytes;
use crate::wake::{Notifier, WakePair};

/// The seals every segment carries.
pub const REQUIRED_SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW).union(SealFlags::SEAL);

/// The mapping and the fd behind it; shared by every handle of a segment.
struct Mapped {
    map: MmapRaw,
    fd: OwnedFd,
}

/// One cell's shared memory segment, as seen from one side.
pub struct Segment {
    mapped: Arc<Mapped>,
    layout: Layout,
    side: Side,
    epoch: u32,
    endpoint_taken: AtomicBool,
    /// This side's process-local shutdown word, shared by its liveness handles.
    shutdown: Arc<AtomicU32>,
    /// This side's wake descriptors, shared by its liveness handles.
    notifier: Arc<Notifier>,
    /// The cell's end of the wake pair (host side, until the segment is dropped).
    cell_wake: Option<OwnedFd>,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("side", &self.side)
            .field("epoch", &self.epoch)
            .field("bytes", &self.layout.total)
            .field("fd", &self.mapped.fd.as_raw_fd())
            .finish()
    }
}

impl Segment {
    /// Creates, sizes, seals, maps and initializes a segment (host side).
    /// `epoch` identifies this incarnation of the cell (e.g. its restart count).
    pub fn create(config: &SegmentConfig, epoch: u32) -> Result<Segment> {
        let layout = Layout::compute(config)?;
        let fd = rustix::fs::memfd_create("osmos-segment", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(|e| Error::io("memfd_create", e))?;
        rustix::fs::ftruncate(&fd, layout.total as u64).map_err(|e| Error::io("ftruncate", e))?;
        rustix::fs::fcntl_add_seals(&fd, REQUIRED_SEALS).map_err(|e| Error::io("fcntl(F_ADD_SEALS)", e))?;
        let map = MmapOptions::new()
            .len(layout.total)
            .map_raw(fd.as_raw_fd())
            .map_err(|e| Error::io("mmap", e))?;
        let header = layout.header(epoch);
        // SAFETY: the mapping is `layout.total >= HEADER_BYTES` bytes, page
        // aligned, and nobody else has the fd yet.
        unsafe { map.as_mut_ptr().cast::<RawHeader>().write(header) };
        let wake = WakePair::new()?;
        let mut seg = Segment::attached(map, fd, layout, Side::Host, epoch, Some(wake.host))?;
        seg.cell_wake = Some(wake.cell);
        Ok(seg)
    }

    /// Attaches to a segment created by a host (cell side): checks the seals,
    /// validates the header and maps it. Without the wake pair, only blocking
    /// (futex) waits work on this side, and this side's rings cannot wake a
    /// peer that waits in an async runtime (the host's session does): a cell
    /// that talks to a host session needs [`attach_with_wake`](Self::attach_with_wake).
    pub fn attach(fd: OwnedFd) -> Result<Segment> {
        Self::attach_inner(fd, None)
    }

    /// Attaches as [`attach`](Self::attach) does, with the cell's end of the
    /// segment's wake pair (from [`cell_wake_fd`](Self::cell_wake_fd) on the
    /// host side), so that async waiters on this side can sleep in their
    /// reactor and the host can wake them.
    pub fn attach_with_wake(fd: OwnedFd, wake: OwnedFd) -> Result<Segment> {
        Self::attach_inner(fd, Some(wake))
    }

    /// A second, cell-side handle on this host segment in the same process
    /// (tests, benchmarks and in-process peers): the memfd and the cell's wake
    /// end are duplicated and attached as a cell would.
    pub fn attach_peer(&self) -> Result<Segment> {
        let dup = |fd: BorrowedFd<'_>| fd.try_clone_to_owned().map_err(|e| Error::io("dup", e));
        let wake = self.cell_wake_fd().map(dup).transpose()?;
        Self::attach_inner(dup(self.fd())?, wake)
    }

    fn attach_inner(fd: OwnedFd, wake: Option<OwnedFd>) -> Result<Segment> {
        let bad = |reason: String| Error::BadSegment { reason };
        let size = rustix::fs::fstat(&fd).map_err(|e| Error::io("fstat", e))?.st_size;
        let size = usize::try_from(size).map_err(|_| bad(format!("negative size {size}")))?;
        if size < HEADER_BYTES {
            return Err(bad(format!(
                "it is {size} bytes, smaller than a header ({HEADER_BYTES})"
            )));
        }
        let seals = rustix::fs::fcntl_get_seals(&fd)
            .map_err(|e| bad(format!("cannot read its seals ({e}); it is not a sealed memfd")))?;
        if !seals.contains(REQUIRED_SEALS) {
            return Err(bad(format!(
                "it is not sealed against resizing (seals {seals:?}, need {REQUIRED_SEALS:?}); a resize would crash this process"
            )));
        }
        let map = MmapOptions::new()
            .len(size)
            .map_raw(fd.as_raw_fd())
            .map_err(|e| Error::io("mmap", e))?;
        // SAFETY: the mapping holds at least HEADER_BYTES >= size_of::<RawHeader>()
        // bytes and is page aligned; the header is plain integers (any bit
        // pattern is valid). One volatile copy: the header is fetched once.
        let header = unsafe { map.as_ptr().cast::<RawHeader>().read_volatile() };
        let (layout, epoch) = Layout::from_header(&header)?;
        if layout.total != size {
            return Err(bad(format!(
                "header says {} bytes but the memfd has {size}",
                layout.total
            )));
        }
        Segment::attached(map, fd, layout, Side::Cell, epoch, wake)
    }

    /// Wraps a validated mapping and publishes this side as attached to `epoch`.
    fn attached(
        map: MmapRaw,
        fd: OwnedFd,
        layout: Layout,
        side: Side,
        epoch: u32,
        wake: Option<OwnedFd>,
    ) -> Result<Segment> {
        let seg = Segment {
            mapped: Arc::new(Mapped { map, fd }),
            layout,
            side,
            epoch,
            endpoint_taken: AtomicBool::new(false),
            shutdown: Arc::new(AtomicU32::new(0)),
            notifier: Arc::new(Notifier::new(wake)?),
            cell_wake: None,
        };
        let live = seg.liveness();
        live.set_epoch(epoch);
        live.publish(PeerState::Attached);
        Ok(seg)
    }

    /// The cell's end of the wake pair, to hand to the cell process beside
    /// the memfd ([`pass_to`](Self::pass_to) passes both); `None` on the cell
    /// side.
    pub fn cell_wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.cell_wake.as_ref().map(AsFd::as_fd)
    }

    /// The memfd, to hand to the cell.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.mapped.fd.as_fd()
    }

    /// Arranges for the child `cmd` spawns to inherit this segment's fd at
    /// fd number `target` (and only there: the fd stays close-on-exec
    /// everywhere else). The child then calls [`Segment::attach`] on it.
    pub fn pass_to(&self, cmd: &mut std::process::Command, target: i32) {
        inherit_at(cmd, self.mapped.fd.as_raw_fd(), target);
    }

    /// Arranges for the child `cmd` spawns to inherit the cell's end of the
    /// wake pair at fd number `target` (host side; a no-op on the cell side).
    /// The child then calls [`Segment::attach_with_wake`] with it.
    pub fn pass_wake_to(&self, cmd: &mut std::process::Command, target: i32) {
        if let Some(fd) = &self.cell_wake {
            inherit_at(cmd, fd.as_raw_fd(), target);
        }
    }

    /// The layout this side computed (the host's own copy, never re-read).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Which side this handle is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The epoch the host gave this segment.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    #[cfg(test)]
    pub(crate) fn test_ptr(&self, off: usize) -> *mut u8 {
        assert!(off < self.layout.total);
        // SAFETY: in bounds of the mapping (asserted).
        unsafe { self.mapped.map.as_mut_ptr().add(off) }
    }

    fn keep(&self) -> Keepalive {
        self.mapped.clone()
    }

    fn at<T>(&self, off: usize) -> NonNull<T> {
        assert!(off + std::mem::size_of::<T>() <= self.layout.total);
        // SAFETY: in bounds of the mapping (asserted); the base is non-null.
        unsafe { NonNull::new_unchecked(self.mapped.map.as_mut_ptr().add(off).cast()) }
    }

    fn bytes(&self, off: usize, len: usize) -> SharedBytes {
        assert!(off + len <= self.layout.total);
        // SAFETY: in bounds of the mapping (asserted), which `keep` keeps
        // mapped; offsets are 128-aligned by the layout.
        unsafe { SharedBytes::from_raw(self.mapped.map.as_mut_ptr().add(off), len, self.keep()) }
    }

    /// A handle on the liveness words, speaking for this side.
    pub fn liveness(&self) -> Liveness {
        let words = self.at::<LivenessWords>(self.layout.liveness);
        // SAFETY: the layout places the liveness block (atomics only, valid
        // for any bit pattern) at this 128-aligned offset inside the mapping,
        // which `keep` keeps mapped.
        let words = unsafe { Pinned::new(words, self.keep()) };
        Liveness::new(words, self.side, self.shutdown.clone(), self.notifier.clone())
    }

    /// The channel credit table.
    pub fn credit_table(&self) -> CreditTable {
        let n = self.layout.config.max_channels;
        let base = self.at::<CreditEntry>(self.layout.channels);
        assert!(self.layout.channels + n as usize * std::mem::size_of::<CreditEntry>() <= self.layout.total);
        // SAFETY: the layout places `n` credit entries (atomics only, valid
        // for any bit pattern) at this 128-aligned offset, inside the mapping
        // (asserted), which `keep` keeps mapped.
        let entries = unsafe { Pinned::from_raw_parts(base, n as usize, self.keep()) };
        CreditTable::new(entries, self.liveness())
    }

    fn ring_mem(&self, dir: Direction) -> RingMem {
        let r = self.layout.rings[dir as usize];
        let ctrl = self.at::<RingCtrl>(r.ctrl);
        RingMem {
            // SAFETY: the layout places the ring's control block (atomics
            // only, valid for any bit pattern) at this 128-aligned offset
            // inside the mapping, which `keep` keeps mapped.
            ctrl: unsafe { Pinned::new(ctrl, self.keep()) },
            data: self.bytes(r.data, r.bytes),
        }
    }

    fn pool_mem(&self, dir: Direction) -> PoolMem {
        let p = &self.layout.pools[dir as usize];
        let slots_start = p.classes.first().map_or(p.queue + p.queue_cap * 8, |c| c.offset);
        let slots_end = p
            .classes
            .last()
            .map_or(slots_start, |c| c.offset + c.size * c.count);
        let classes = p
            .classes
            .iter()
            .map(|c| crate::layout::ClassLayout {
                offset: c.offset - slots_start,
                ..*c
            })
            .collect();
        let ctrl = self.at::<PoolCtrl>(p.ctrl);
        PoolMem {
            // SAFETY: the layout places the pool's control block (atomics
            // only, valid for any bit pattern) at this 128-aligned offset
            // inside the mapping, which `keep` keeps mapped.
            ctrl: unsafe { Pinned::new(ctrl, self.keep()) },
            queue: self.bytes(p.queue, p.queue_cap * 8),
            slots: self.bytes(slots_start, slots_end - slots_start),
            classes,
        }
    }

    /// This side's endpoint. Each segment handle gives out one endpoint.
    pub fn endpoint(&self) -> Result<Endpoint> {
        if self
            .endpoint_taken
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return Err(Error::InvalidArgument {
                reason: format!("the {} endpoint of this segment was already taken", self.side),
            });
        }
        let (out_dir, in_dir) = match self.side {
            Side::Host => (Direction::HostToCell, Direction::CellToHost),
            Side::Cell => (Direction::CellToHost, Direction::HostToCell),
        };
        let live = self.liveness();
        let max = self.layout.config.max_frame;
        let (producer, _) = ring::split(self.ring_mem(out_dir), max, live.clone(), live.clone());
        let (_, consumer) = ring::split(self.ring_mem(in_dir), max, live.clone(), live.clone());
        let (slots_out, _) = pool::split(self.pool_mem(out_dir), live.clone());
        let (_, slots_in) = pool::split(self.pool_mem(in_dir), live.clone());
        Ok(Endpoint {
            sender: FrameSender::new(producer, slots_out),
            receiver: FrameReceiver::new(consumer, slots_in),
            credit: self.credit_table(),
            liveness: live,
        })
    }
}

/// Makes the child `cmd` spawns inherit `raw` at fd number `target`.
fn inherit_at(cmd: &mut std::process::Command, raw: i32, target: i32) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and makes only
    // async-signal-safe system calls. dup2 gives the new fd no FD_CLOEXEC;
    // dup2 onto the same number would keep it, so clear the flag instead in
    // that case.
    unsafe {
        cmd.pre_exec(move || {
            let r = if raw == target {
                libc::fcntl(raw, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, target)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(all(test, not(osmos_loom)))]
mod tests {
    use super::*;
    use crate::layout::FORMAT_VERSION;
    use crate::test_support::small_config;

    fn dup(seg: &Segment) -> OwnedFd {
        seg.fd().try_clone_to_owned().unwrap()
    }

    #[test]
    fn attach_agrees_on_layout_epoch_and_states() {
        let host = Segment::create(&small_config(), 9).unwrap();
        let cell = Segment::attach(dup(&host)).unwrap();
        assert_eq!(host.layout(), cell.layout());
        assert_eq!((host.side(), cell.side()), (Side::Host, Side::Cell));
        assert_eq!(cell.epoch(), 9);
        let live = host.liveness();
        assert_eq!(live.state(Side::Host), PeerState::Attached);
        assert_eq!(live.state(Side::Cell), PeerState::Attached);
        assert_eq!(
            live.epoch(Side::Cell),
            9,
            "the cell acknowledges the epoch it attached to"
        );
    }

    #[test]
    fn sealed_segment_cannot_be_resized() {
        let seg = Segment::create(&small_config(), 1).unwrap();
        let total = seg.layout().total as u64;
        for len in [0, total / 2, total + 4096] {
            let err = rustix::fs::ftruncate(seg.fd(), len).unwrap_err();
            assert_eq!(
                err,
                rustix::io::Errno::PERM,
                "ftruncate to {len} must fail with EPERM"
            );
        }
        let err = rustix::fs::fcntl_add_seals(seg.fd(), SealFlags::WRITE).unwrap_err();
        assert_eq!(err, rustix::io::Errno::PERM, "F_SEAL_SEAL forbids further seals");
        assert_eq!(rustix::fs::fstat(seg.fd()).unwrap().st_size as u64, total);
    }

    fn memfd(len: u64, seals: SealFlags) -> OwnedFd {
        let fd = rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, len).unwrap();
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
        fd
    }

    fn attach_err(fd: OwnedFd) -> String {
        Segment::attach(fd).unwrap_err().to_string()
    }

    #[test]
    fn attach_refuses_unsealed_tiny_and_foreign_fds() {
        let unsealed = memfd(1 << 20, SealFlags::empty());
        assert!(attach_err(unsealed).contains("not sealed against resizing"));
        let tiny = memfd(16, REQUIRED_SEALS);
        assert!(attach_err(tiny).contains("smaller than a header"));
        let zeros = memfd(1 << 20, REQUIRED_SEALS);
        assert!(attach_err(zeros).contains("not an osmos segment"));
        let pipe: OwnedFd = std::io::pipe().unwrap().0.into();
        assert!(attach_err(pipe).contains("refusing"));
    }

    #[test]
    fn attach_refuses_a_size_that_differs_from_the_header() {
        let host = Segment::create(&small_config(), 1).unwrap();
        let total = host.layout().total;
        let fd = rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, total as u64 + 4096).unwrap();
        let mut header = vec![0u8; HEADER_BYTES];
        // SAFETY: the host mapping holds at least HEADER_BYTES bytes.
        unsafe { std::ptr::copy_nonoverlapping(host.raw_at(0), header.as_mut_ptr(), HEADER_BYTES) };
        rustix::io::pwrite(&fd, &header, 0).unwrap();
        rustix::fs::fcntl_add_seals(&fd, REQUIRED_SEALS).unwrap();
        let err = attach_err(fd);
        assert!(err.contains(&format!("header says {total} bytes")), "{err}");
    }

    #[test]
    fn attach_refuses_another_format_version_naming_both() {
        let host = Segment::create(&small_config(), 1).unwrap();
        // SAFETY: the version word is at offset 8 of the header, in bounds.
        unsafe { host.raw_at(8).cast::<u32>().write(FORMAT_VERSION + 6) };
        match Segment::attach(dup(&host)).unwrap_err() {
            Error::VersionMismatch { ours, theirs } => {
                assert_eq!((ours, theirs), (FORMAT_VERSION, FORMAT_VERSION + 6))
            }
            e => panic!("expected a version mismatch, got {e}"),
        }
    }

    #[test]
    fn each_side_takes_its_endpoint_once() {
        let host = Segment::create(&small_config(), 1).unwrap();
        let _e = host.endpoint().unwrap();
        let err = host.endpoint().unwrap_err();
        assert!(err.to_string().contains("already taken"), "{err}");
    }
}
