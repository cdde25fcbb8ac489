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

/// A validated frame header.
enum Header {
    /// Padding to the end of the data area: advance `head` by `skip`.
    Pad {
        skip: u64,
    },
    Frame(FrameMeta),
}

/// Inline frames copied out of a ring together by
/// [`FrameConsumer::take_run`] (or
/// [`FrameReceiver::try_recv_run`](crate::FrameReceiver::try_recv_run)):
/// private memory, which the peer cannot touch, handed out one frame at a
/// time.
#[derive(Debug, Default)]
pub struct FrameRun {
    bytes: Vec<u8>,
    /// Each frame's payload: (offset in `bytes`, length).
    frames: Vec<(usize, usize)>,
    /// Frames handed out so far.
    next: usize,
}

impl FrameRun {
    /// An empty run.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether every frame of the run was handed out.
    pub fn is_empty(&self) -> bool {
        self.next == self.frames.len()
    }

    /// The next frame's payload, as a range of [`bytes`](Self::bytes).
    pub fn next_frame(&mut self) -> Option<std::ops::Range<usize>> {
        let &(at, len) = self.frames.get(self.next)?;
        self.next += 1;
        Some(at..at + len)
    }

    /// The run's private copy of the ring's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.frames.clear();
        self.next = 0;
    }
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
            // A single 8-byte load: the header is fetched exactly once.
            let header = self.mem.data.read_u64(off as usize);
            match self.check_header(header, self.head, self.tail_seen - self.head)? {
                Header::Pad { skip } => {
                    self.head += skip;
                    self.publish_head();
                }
                Header::Frame(meta) => {
                    self.current = Some(meta);
                    return Ok(Some(meta));
                }
            }
        }
    }

    /// Validates the header of the frame at position `at`, with `avail`
    /// bytes published from there (the header already read, once, from
    /// the ring or from a private copy of it).
    fn check_header(&self, header: u64, at: u64, avail: u64) -> Result<Header> {
        let off = at % self.cap;
        let to_end = self.cap - off;
        let len = header & 0xffff_ffff;
        let kind = match (header >> 32) as u32 {
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
                return Ok(Header::Pad { skip: to_end });
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
        Ok(Header::Frame(FrameMeta {
            payload: off as usize + FRAME_HEADER,
            len: len as usize,
            kind,
            size,
        }))
    }

    /// Copies the inline frames at the head of the ring out together, into
    /// `run` (emptied first), and gives their space back at once: one
    /// published head and one doorbell check for all of them. Frames are
    /// taken in order while they are inline and at most `max_frame` payload
    /// bytes each, while they span at most `max_bytes` of the ring, headers
    /// and padding included (the first frame is always taken), and until
    /// the frames published when the call began are used up; padding
    /// between them is consumed. Each header is read once and
    /// validated as [`peek`](Self::peek) does, and each payload copied out
    /// once. Returns how many frames `run` holds: 0 when the ring is empty
    /// or its first frame is not one to take here (a slot reference, a
    /// larger frame, a broken one), which [`peek`](Self::peek) then handles
    /// (and reports).
    pub fn take_run(&mut self, run: &mut FrameRun, max_bytes: usize, max_frame: usize) -> Result<usize> {
        run.clear();
        if self.current.is_none() && self.head == self.tail_seen {
            self.refresh_tail()?;
        }
        let mut at = self.head;
        // Bounded by the ring bytes the run spans (headers and padding
        // included), so a peer's empty frames cannot make it long.
        let budget = max_bytes as u64;
        while at < self.tail_seen && (run.frames.is_empty() || at - self.head < budget) {
            let header = match self.current.take() {
                Some(meta) => Header::Frame(meta),
                None => {
                    // A single 8-byte load: the header is fetched exactly once.
                    let header = self.mem.data.read_u64((at % self.cap) as usize);
                    // A broken frame ends the run; `peek` reports it once it
                    // is at the head.
                    match self.check_header(header, at, self.tail_seen - at) {
                        Ok(h) => h,
                        Err(_) => break,
                    }
                }
            };
            match header {
                Header::Pad { skip } => at += skip,
                Header::Frame(meta) => {
                    let fits = run.frames.is_empty() || at - self.head + meta.size <= budget;
                    if meta.kind != FrameKind::Inline || meta.len > max_frame || !fits {
                        // The frame at the head once the run is taken: keep
                        // it validated, so its header is not read again.
                        self.current = Some(meta);
                        break;
                    }
                    let start = run.bytes.len();
                    self.mem.data.read_append(meta.payload, meta.len, &mut run.bytes);
                    run.frames.push((start, meta.len));
                    at += meta.size;
                }
            }
        }
        if at != self.head {
            self.head = at;
            self.publish_head();
        }
        Ok(run.frames.len())
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
