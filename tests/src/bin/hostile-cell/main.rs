//! The hostile cell: speaks the protocol by hand over its segment, honestly
//! through the handshake, then misbehaves as its arguments say.
//!
//! Usage (by a host): `hostile-cell <hostility> <seed>`, where `<hostility>`
//! is a name from [`osmos_tests::hostile::Hostility`] (`oversized-frame`,
//! `credit-overrun`, `scribble:cell-ring-ctrl`, ...). Before it misbehaves it
//! answers `TestCell.add` and `TestCell.pid` calls and pings; once it has
//! lied (or once its own side of the link fails under its own scribbling)
//! it stops talking and waits to be killed: ending it is the host's job.
//!
//! `flip-bytes` is the one mode that lies about nothing: every frame it
//! sends is encoded well formed. A second thread then keeps rewriting the
//! strings and payloads of the frames (and slots) it has written, from
//! just before their commit until their memory is reused, through pointers
//! taken from the grants, while the host reads them (`flip.rs`).
//!
//! The cell maps its segment a second time (the inherited fd 3) to write
//! where the library would not. The ring's control block layout is not
//! public: [`RING_TAIL`] mirrors it, and the cell checks it against the
//! library before relying on it.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering, compiler_fence};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use osmos_plugin_sdk::{Bootstrap, CellError, EXIT_FAILED, EXIT_NOT_LAUNCHED_BY_HOST};
use osmos_session::wire::{self, Message, MetaEntry, MetaValue, Outcome, PROTOCOL_VERSION, Settings};
use osmos_session::{decode_args, method_id};
use osmos_shm::{Direction, Endpoint, FRAME_HEADER, Layout, Segment, SlotRef};
use osmos_tests::hostile::{FLIP_METHOD, Hostility, Region};

/// Offset of the producer's published tail in a ring's control block.
const RING_TAIL: usize = 128;
/// Frame kind word of an inline frame, in the high half of a frame header.
const KIND_INLINE: u64 = 1;
/// How long a send may wait for room before the cell gives up on it.
const SEND_WAIT: Duration = Duration::from_secs(2);

const ADD: u64 = method_id("TestCell", "add");
const PID: u64 = method_id("TestCell", "pid");
const COUNT: u64 = method_id("TestCell", "count");
const ECHO: u64 = method_id("TestCell", "echo");
/// Calls a flipping cell keeps in flight at most.
const FLIP_IN_FLIGHT: u32 = 32;
/// How long a flipping cell sends before it says goodbye.
const FLIP_FOR: Duration = Duration::from_secs(2);

/// A SplitMix64 generator: the same seed gives the same damage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A second, writable mapping of the whole segment. Every access is one
/// atomic load or store, so racing the library's own accesses is harmless
/// to this process.
struct Mem {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is never unmapped while the process runs, and every
// access through it is atomic, so threads may share it.
unsafe impl Send for Mem {}
// SAFETY: as above.
unsafe impl Sync for Mem {}

impl Mem {
    fn map(segment: &Segment) -> Result<Mem, String> {
        let len = segment.layout().total;
        // SAFETY: a fresh shared mapping of `len` bytes of the segment's fd;
        // the kernel picks the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                segment.fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(Mem { base: p.cast(), len })
    }

    fn byte(&self, off: usize) -> &AtomicU8 {
        assert!(off < self.len);
        // SAFETY: in bounds of a mapping that lives as long as `self`.
        unsafe { AtomicU8::from_ptr(self.base.add(off)) }
    }

    fn word32(&self, off: usize) -> &AtomicU32 {
        assert!(off.is_multiple_of(4) && off + 4 <= self.len);
        // SAFETY: in bounds and aligned (the mapping is page-aligned).
        unsafe { AtomicU32::from_ptr(self.base.add(off).cast()) }
    }

    fn word64(&self, off: usize) -> &AtomicU64 {
        assert!(off.is_multiple_of(8) && off + 8 <= self.len);
        // SAFETY: in bounds and aligned (the mapping is page-aligned).
        unsafe { AtomicU64::from_ptr(self.base.add(off).cast()) }
    }
}

/// Writes seeded random bytes and plausible values over a region.
struct Scribbler {
    mem: std::sync::Arc<Mem>,
    rng: Rng,
    ranges: Vec<std::ops::Range<usize>>,
    /// For the cell's ring data: (tail word, data offset, data bytes), to aim
    /// at the frames the host is about to read.
    near_tail: Option<(usize, usize, usize)>,
}

impl Scribbler {
    fn pick(&mut self) -> std::ops::Range<usize> {
        self.ranges[self.rng.below(self.ranges.len() as u64) as usize].clone()
    }

    /// Where to write in `r`: anywhere, or (half the time, when aiming)
    /// around the cell's published tail.
    fn target(&mut self, r: &std::ops::Range<usize>) -> usize {
        if let Some((tail_word, data, bytes)) = self.near_tail
            && self.rng.below(2) == 0
        {
            let tail = self.mem.word64(tail_word).load(Ordering::Relaxed) as usize;
            let at = data + (tail.wrapping_sub(self.rng.below(256) as usize) % bytes);
            if r.contains(&at) {
                return at;
            }
        }
        r.start + self.rng.below((r.end - r.start) as u64) as usize
    }

    fn once(&mut self) {
        let r = self.pick();
        if r.is_empty() {
            return;
        }
        let at = self.target(&r);
        let value = self.rng.next();
        match self.rng.below(6) {
            0 => self.mem.byte(at).store(value as u8, Ordering::Relaxed),
            1 if at & !3 >= r.start && (at & !3) + 4 <= r.end => {
                self.mem.word32(at & !3).store(value as u32, Ordering::Relaxed)
            }
            2 | 3 if at & !7 >= r.start && (at & !7) + 8 <= r.end => {
                // A plausible lie: near the current value, or a boundary.
                let w = self.mem.word64(at & !7);
                let old = w.load(Ordering::Relaxed);
                let delta = 1u64 << self.rng.below(20);
                let new = match value % 6 {
                    0 => old.wrapping_add(delta),
                    1 => old.wrapping_sub(delta),
                    2 => 0,
                    3 => u64::MAX,
                    4 => old ^ (1 << (value >> 58)),
                    _ => value,
                };
                w.store(new, Ordering::Relaxed)
            }
            _ => {
                let n = 1 + self.rng.below(64) as usize;
                for i in at..(at + n).min(r.end) {
                    self.mem.byte(i).store(self.rng.next() as u8, Ordering::Relaxed);
                }
            }
        }
    }
}

mod flip;

/// The cell's end of the segment, spoken by hand.
struct Peer {
    _segment: Segment,
    endpoint: Endpoint,
    mem: std::sync::Arc<Mem>,
    layout: Layout,
    rng: Rng,
    /// Calls answered so far.
    answered: u32,
    /// Channels the host passed in a `count` call.
    count_channels: Vec<u64>,
}

/// Stops talking and waits to be killed.
fn hang(why: &str) -> ! {
    eprintln!("hostile-cell: {why}; waiting to be killed");
    loop {
        std::thread::park();
    }
}

impl Peer {
    /// Leaves as a cell whose session ended would: reads (and drops) what
    /// the host sends until the host lets go of the link, then exits with
    /// status 0. After a lie the host must have killed the cell before it
    /// let go, so this exit never happens; if it does, the host reports a
    /// cell that stopped on its own instead of one killed for the lie.
    fn leave(&mut self, why: &str) -> ! {
        eprintln!("hostile-cell: {why}; leaving once the host lets go of the link");
        loop {
            if let Err(e) = self.recv(Duration::from_millis(100)) {
                eprintln!("hostile-cell: the host let go ({e}); exiting");
                std::process::exit(0);
            }
        }
    }

    fn new(segment: Segment, seed: u64) -> Result<Peer, String> {
        let endpoint = segment.endpoint().map_err(|e| e.to_string())?;
        let mem = std::sync::Arc::new(Mem::map(&segment)?);
        Ok(Peer {
            layout: segment.layout().clone(),
            _segment: segment,
            endpoint,
            mem,
            rng: Rng(seed ^ 0x0068_6f73_7469_6c65),
            answered: 0,
            count_channels: Vec::new(),
        })
    }

    fn send(&mut self, msg: &Message<'_>) -> Result<(), String> {
        let bytes = msg.to_vec();
        self.endpoint
            .sender
            .send(&bytes, Some(Instant::now() + SEND_WAIT))
            .map_err(|e| format!("send {}: {e}", msg.kind()))
    }

    /// The next message's bytes, waiting at most `wait`; `None` if none came.
    fn recv(&mut self, wait: Duration) -> Result<Option<Vec<u8>>, String> {
        match self.endpoint.receiver.recv(Some(Instant::now() + wait)) {
            Ok(m) => {
                let bytes = m.to_vec();
                m.finish().map_err(|e| format!("release: {e}"))?;
                Ok(Some(bytes))
            }
            Err(osmos_shm::Error::Timeout { .. }) => Ok(None),
            Err(e) => Err(format!("receive: {e}")),
        }
    }

    fn handshake(&mut self) -> Result<(), String> {
        let bytes = self
            .recv(Duration::from_secs(10))?
            .ok_or("no hello from the host")?;
        match wire::decode(&bytes)? {
            Message::Hello { .. } => {}
            other => return Err(format!("expected Hello, got {}", other.kind())),
        }
        self.send(&Message::HelloYourself {
            version: PROTOCOL_VERSION,
            settings: Settings::default(),
        })
    }

    /// Answers one message honestly.
    fn answer(&mut self, bytes: &[u8]) -> Result<(), String> {
        match wire::decode(bytes)? {
            Message::Call {
                conn,
                request,
                method,
                deadline_us: _,
                args,
                channels,
                ..
            } => {
                let value = match method {
                    ADD => decode_args::<(u32, u32)>(args)
                        .ok()
                        .map(|(a, b)| wire::encode(&a.wrapping_add(b))),
                    PID => Some(wire::encode(&std::process::id())),
                    COUNT => {
                        // Kept for the credit lie; never answered.
                        self.count_channels.extend(channels);
                        return Ok(());
                    }
                    _ => None,
                };
                let value = match value {
                    Some(v) => Some(v?),
                    None => None,
                };
                let outcome = match &value {
                    Some(v) => Outcome::Ok(v),
                    None => Outcome::UnknownMethod,
                };
                self.answered += 1;
                self.send(&Message::Response {
                    conn,
                    request,
                    metadata: Vec::new(),
                    channels: Vec::new(),
                    outcome,
                })
            }
            Message::Ping { nonce } => self.send(&Message::Pong { nonce }),
            Message::Goodbye { .. } => std::process::exit(0),
            _ => Ok(()),
        }
    }

    /// Answers what arrives for up to `wait`, or until `until` holds.
    fn serve(&mut self, wait: Duration, until: impl Fn(&Peer) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + wait;
        while !until(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Some(bytes) = self.recv(left.min(Duration::from_millis(10)))? {
                self.answer(&bytes)?;
            }
        }
        Ok(())
    }

    fn cell_ring(&self) -> osmos_shm::RingLayout {
        self.layout.rings[Direction::CellToHost as usize]
    }

    /// The tail this cell last published on its ring, checked against the
    /// library: a ping must move it by exactly one frame.
    fn published_tail(&mut self) -> Result<u64, String> {
        let tail_word = self.cell_ring().ctrl + RING_TAIL;
        let before = self.mem.word64(tail_word).load(Ordering::Acquire);
        let ping = Message::Ping { nonce: 0 }.to_vec();
        self.send(&Message::Ping { nonce: 0 })?;
        let after = self.mem.word64(tail_word).load(Ordering::Acquire);
        let frame = (FRAME_HEADER + ping.len()).next_multiple_of(8) as u64;
        // A pad frame may precede the ping at the ring's end.
        if after.wrapping_sub(before) < frame
            || after.wrapping_sub(before) > frame + self.cell_ring().bytes as u64
        {
            return Err(format!(
                "the ring tail is not at offset {RING_TAIL} of its control block (moved from {before} to {after} for a {frame}-byte frame); update RING_TAIL"
            ));
        }
        Ok(after)
    }

    fn scribble(&mut self, region: Region) -> Result<(), String> {
        let cell_ring = self.cell_ring();
        let mut scribbler = Scribbler {
            mem: self.mem.clone(),
            rng: Rng(self.rng.next()),
            ranges: region.ranges(&self.layout),
            near_tail: matches!(region, Region::CellRingData | Region::Anywhere).then_some((
                cell_ring.ctrl + RING_TAIL,
                cell_ring.data,
                cell_ring.bytes,
            )),
        };
        let how_long = Duration::from_millis(50 + self.rng.below(300));
        let pause = Duration::from_micros(20 + self.rng.below(500));
        let writes = std::thread::spawn(move || {
            let end = Instant::now() + how_long;
            let mut n = 0u64;
            while Instant::now() < end {
                for _ in 0..1 + scribbler.rng.below(8) {
                    scribbler.once();
                    n += 1;
                }
                std::thread::sleep(pause);
            }
            n
        });
        // Keep traffic flowing over the damage: pings inline and in slots,
        // answers to the host's calls.
        let mut nonce = 0;
        while !writes.is_finished() {
            nonce += 1;
            if nonce % 4 == 0 {
                self.ping_in_slot(nonce)?;
            } else {
                self.send(&Message::Ping { nonce })?;
            }
            self.serve(Duration::from_micros(200), |_| false)?;
        }
        let n = writes.join().map_err(|_| "the scribbler panicked")?;
        eprintln!("hostile-cell: {n} writes over {} in {how_long:?}", region.name());
        // Then carry on honestly, for as long as both sides hold up.
        loop {
            self.serve(Duration::from_secs(1), |_| false)?;
        }
    }

    /// Sends a ping whose bytes travel in a slot; returns the slot reference.
    fn ping_in_slot(&mut self, nonce: u64) -> Result<SlotRef, String> {
        let ping = Message::Ping { nonce }.to_vec();
        let (producer, slots) = self.endpoint.sender.parts();
        let _ = slots.reclaim();
        let mut slot = slots
            .alloc(ping.len(), Some(Instant::now() + SEND_WAIT))
            .map_err(|e| e.to_string())?;
        slot.write(0, &ping).map_err(|e| e.to_string())?;
        let r = slot.finish(ping.len()).map_err(|e| e.to_string())?;
        let mut frame = producer
            .try_reserve_slot_ref()
            .map_err(|e| e.to_string())?
            .ok_or("no room for a frame")?;
        frame.write(0, &r.encode()).map_err(|e| e.to_string())?;
        frame.commit(SlotRef::ENCODED_LEN).map_err(|e| e.to_string())?;
        Ok(r)
    }

    fn lie(&mut self, how: Hostility) -> Result<(), String> {
        let n = self.rng.below(1000);
        match how {
            Hostility::Scribble(region) => return self.scribble(region),
            Hostility::FlipBytes => return self.flip(),
            Hostility::OversizedFrame => {
                let ring = self.cell_ring();
                let mut tail = self.published_tail()?;
                while tail % ring.bytes as u64 + 16 > ring.bytes as u64 {
                    tail = self.published_tail()?;
                }
                let max = self.layout.config.max_frame as u64;
                let len = max + 1 + self.rng.below(u32::MAX as u64 - max);
                let at = ring.data + (tail % ring.bytes as u64) as usize;
                self.mem
                    .word64(at)
                    .store(len | (KIND_INLINE << 32), Ordering::Relaxed);
                // ORDERING: Release, as the library publishes a tail: the
                // header above is visible to the host's Acquire load of it.
                self.mem
                    .word64(ring.ctrl + RING_TAIL)
                    .store(tail + 16, Ordering::Release);
                self.endpoint.sender.producer().wake_consumer();
            }
            Hostility::OversizedSlot => {
                let class = self.layout.pools[Direction::CellToHost as usize].classes[0].size as u32;
                let ping = Message::Ping { nonce: 1 }.to_vec();
                let (producer, slots) = self.endpoint.sender.parts();
                let mut slot = slots
                    .try_alloc(ping.len())
                    .map_err(|e| e.to_string())?
                    .ok_or("no free slot")?;
                slot.write(0, &ping).map_err(|e| e.to_string())?;
                let mut r = slot.finish(ping.len()).map_err(|e| e.to_string())?;
                r.len = class + 1 + self.rng.below(1 << 20) as u32;
                let mut frame = producer
                    .try_reserve_slot_ref()
                    .map_err(|e| e.to_string())?
                    .ok_or("no room for a frame")?;
                frame.write(0, &r.encode()).map_err(|e| e.to_string())?;
                frame.commit(SlotRef::ENCODED_LEN).map_err(|e| e.to_string())?;
            }
            Hostility::OversizedPrefix => {
                let goodbye = Message::Goodbye {
                    reason: String::new(),
                }
                .to_vec();
                // The reason's length prefix claims up to 4 GiB; a few bytes follow.
                let mut bytes = vec![goodbye[0], 0xff, 0xff, 0xff, 0xff, 0x0f];
                bytes.extend((0..self.rng.below(32)).map(|i| i as u8));
                self.endpoint
                    .sender
                    .send(&bytes, Some(Instant::now() + SEND_WAIT))
                    .map_err(|e| e.to_string())?;
            }
            Hostility::StaleGeneration => {
                let r = self.ping_in_slot(7)?;
                // Wait for the pong (the host read and released the slot),
                // or not, as the seed says; then replay the reference.
                if self.rng.below(2) == 0 {
                    let mut pong = false;
                    let deadline = Instant::now() + Duration::from_secs(2);
                    while !pong && Instant::now() < deadline {
                        if let Some(b) = self.recv(Duration::from_millis(10))? {
                            pong = matches!(wire::decode(&b), Ok(Message::Pong { nonce: 7 }));
                            if !pong {
                                self.answer(&b)?;
                            }
                        }
                    }
                }
                let mut frame = self
                    .endpoint
                    .sender
                    .producer()
                    .try_reserve_slot_ref()
                    .map_err(|e| e.to_string())?
                    .ok_or("no room for a frame")?;
                frame.write(0, &r.encode()).map_err(|e| e.to_string())?;
                frame.commit(SlotRef::ENCODED_LEN).map_err(|e| e.to_string())?;
            }
            Hostility::CreditOverrun => {
                self.serve(Duration::from_secs(10), |p| !p.count_channels.is_empty())?;
                let channel = *self.count_channels.first().ok_or("the host never called count")?;
                // Far past the initial credit, in items that travel in slots.
                let item = vec![0x5a; 60 << 10];
                let total = 2 * self.layout.config.initial_credit as usize + (1 << 20);
                for _ in 0..total.div_ceil(item.len()) {
                    self.send(&Message::Item {
                        channel,
                        payload: &item,
                    })?;
                }
            }
            Hostility::UnknownRequest => self.send(&Message::Response {
                conn: 0,
                // The host's parity, but no call of the host's has this id.
                request: 1_000_001 + 2 * n,
                metadata: Vec::new(),
                channels: Vec::new(),
                outcome: Outcome::Ok(&[0]),
            })?,
            Hostility::UnknownChannel => self.send(&Message::Item {
                channel: 4242 + 2 * n,
                payload: &[0],
            })?,
            Hostility::UnknownConnection => self.send(&Message::Call {
                conn: 7 + 2 * n,
                request: 2,
                method: ADD,
                deadline_us: 0,
                metadata: Vec::new(),
                channels: Vec::new(),
                args: &[1, 2],
            })?,
            Hostility::WrongParity => self.send(&Message::Call {
                conn: 0,
                request: 3 + 2 * n,
                method: ADD,
                deadline_us: 0,
                metadata: Vec::new(),
                channels: Vec::new(),
                args: &[1, 2],
            })?,
            Hostility::PingFlood => {
                for nonce in 0..1_000_000u64 {
                    self.send(&Message::Ping { nonce })?;
                }
            }
            Hostility::BatchedPingFlood => {
                for first in (0..1_000_000u64).step_by(100) {
                    let mut messages = Vec::new();
                    for nonce in first..first + 100 {
                        let ping = Message::Ping { nonce }.to_vec();
                        messages.push(ping.len() as u8);
                        messages.extend(ping);
                    }
                    self.send(&Message::Batch { messages: &messages })?;
                }
            }
            Hostility::NestedBatch => {
                let ping = Message::Ping { nonce: 1 }.to_vec();
                let inner = Message::Batch {
                    messages: &[&[ping.len() as u8][..], &ping].concat(),
                }
                .to_vec();
                self.send(&Message::Batch {
                    messages: &[&[inner.len() as u8][..], &inner].concat(),
                })?;
            }
            Hostility::StalledReader => {}
        }
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "hostile-cell: a cell for the osmos hostile-cell tests that breaks the protocol on purpose.\n\
                 usage (from a host): hostile-cell <hostility> <seed>";
    let bootstrap = match Bootstrap::from_env() {
        Ok(b) => b,
        Err(e @ CellError::NotLaunchedByHost { .. }) => {
            eprintln!("{}\n({e})", osmos_plugin_sdk::usage(usage));
            std::process::exit(EXIT_NOT_LAUNCHED_BY_HOST);
        }
        Err(e) => {
            eprintln!("hostile-cell: {e}");
            std::process::exit(EXIT_FAILED);
        }
    };
    let (Some(how), Some(seed)) = (
        args.first().and_then(|a| Hostility::parse(a)),
        args.get(1).and_then(|s| s.parse::<u64>().ok()),
    ) else {
        eprintln!("{usage}");
        std::process::exit(EXIT_FAILED);
    };
    let segment = match Segment::attach_with_wake(bootstrap.segment, bootstrap.wake) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hostile-cell: {e}");
            std::process::exit(EXIT_FAILED);
        }
    };
    let mut peer = match Peer::new(segment, seed) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hostile-cell: {e}");
            std::process::exit(EXIT_FAILED);
        }
    };
    if let Err(e) = peer.handshake() {
        eprintln!("hostile-cell: handshake: {e}");
        std::process::exit(EXIT_FAILED);
    }
    // Honest for a while: answer a seeded number of calls (or 50 ms).
    let honest = peer.rng.below(4) as u32;
    let lie = peer
        .serve(Duration::from_millis(50), move |p| p.answered >= honest)
        .and_then(|()| peer.lie(how));
    match lie {
        // A stalled reader never reads; scribbles and flips may end the
        // session in ways the host does not kill for at once.
        Ok(()) if how != Hostility::StalledReader && Hostility::LIES.contains(&how) => {
            peer.leave(&format!("{} done", how.name()))
        }
        Ok(()) => hang(&format!("{} done", how.name())),
        Err(e) => hang(&format!("{}: {e}", how.name())),
    }
}
