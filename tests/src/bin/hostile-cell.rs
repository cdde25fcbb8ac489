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
//! taken from the grants, while the host reads them ([`Flips`]).
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

/// Bytes of a committed frame, or of the slot it points to, that the
/// flipper rewrites: a string's or a payload's contents, never a length, a
/// tag or a frame header.
#[derive(Clone, Copy, Debug)]
struct Target {
    /// Address of the first byte, in the library's own mapping of the
    /// segment (taken from the grant before the commit).
    at: usize,
    /// Bytes, at least 1.
    len: usize,
    /// Whether the bytes are a string's contents.
    text: bool,
    /// Where the frame starts in the ring's byte stream (the producer
    /// position it was written at), for an inline frame; `None` for bytes in
    /// a slot.
    ring_start: Option<u64>,
}

impl Target {
    fn overlaps(&self, at: usize, len: usize) -> bool {
        self.at < at + len && at < self.at + self.len
    }
}

/// What the flipping thread may rewrite, and how.
///
/// The flipper picks a target and marks it busy under the lock, then writes
/// to it without the lock (so the sending thread keeps committing frames
/// while a burst runs), then clears the mark. The sending thread retires a
/// target before it writes anything over the same memory (a new frame in
/// the ring, a reused slot), and `retire` waits until no burst is writing
/// to a retired target: once it returns, no flip lands there again, so the
/// only writes that race in this process are the flipper's own atomic
/// stores to bytes nobody here touches. The host, in its own process, reads
/// them whenever it likes: that is the test.
struct Flips {
    state: Mutex<FlipState>,
    /// Signalled when a burst ends (its target is no longer busy).
    idle: Condvar,
    /// Bursts of writes so far.
    done: AtomicU64,
}

/// The flipper's targets, and the one it is writing to now.
#[derive(Default)]
struct FlipState {
    /// Oldest first.
    targets: Vec<Target>,
    busy: Option<Target>,
}

impl Flips {
    fn state(&self) -> MutexGuard<'_, FlipState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, t: impl IntoIterator<Item = Target>) {
        self.state().targets.extend(t);
    }

    /// Stops flipping every target for which `gone` holds, waiting for a
    /// burst writing to one of them to end (a few microseconds).
    fn retire(&self, gone: impl Fn(&Target) -> bool) {
        let mut s = self.state();
        s.targets.retain(|t| !gone(t));
        while s.busy.as_ref().is_some_and(&gone) {
            s = self.idle.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Picks the next burst's target (mostly among the newest, which the
    /// host is reading now; a string's for a toggling burst) and marks it busy.
    fn pick(&self, rng: &mut Rng, toggle: bool) -> Option<Target> {
        let mut s = self.state();
        let n = s.targets.len() as u64;
        let t = if toggle {
            // The longest string of the newest frames: the longer a string,
            // the longer a check-then-copy reader would take over it.
            *s.targets
                .iter()
                .rev()
                .take(8)
                .filter(|t| t.text)
                .max_by_key(|t| t.len)?
        } else if n == 0 {
            return None;
        } else if rng.below(4) == 0 {
            s.targets[rng.below(n) as usize]
        } else {
            s.targets[(n - 1 - rng.below(n.min(4))) as usize]
        };
        s.busy = Some(t);
        Some(t)
    }

    /// Rewrites bytes of the targets, forever, in bursts on one target at a
    /// time. One write in `invalid_one_in` is a byte that cannot appear
    /// alone in UTF-8 (`0x80..=0xff`); the others are printable ASCII or a
    /// random bit flipped. With `invalid_one_in` 0, strings stay valid
    /// UTF-8: only their ASCII bytes change, to ASCII.
    ///
    /// While strings may break, one burst in two instead toggles one byte of
    /// a recent string between ASCII and a byte that cannot appear alone in
    /// UTF-8, thousands of times in a row, ending on ASCII: a reader that
    /// checked a string in shared memory and then copied it would see the
    /// two differ.
    fn run(&self, mut rng: Rng, invalid_one_in: u64) -> ! {
        loop {
            let toggle = invalid_one_in > 0 && rng.below(2) == 0;
            if let Some(t) = self.pick(&mut rng, toggle) {
                let byte = |rng: &mut Rng| {
                    let at = t.at + rng.below(t.len as u64) as usize;
                    // SAFETY: `at` is inside a target, which lies in the
                    // library's mapping of the segment; the segment stays
                    // mapped until the process exits (the `Peer` owning it
                    // never returns), and nothing else in this process
                    // touches a target's bytes until it is retired, which
                    // waits for this burst to end (see `Flips`), so this
                    // atomic access races only the host's reads, in its
                    // process.
                    unsafe { AtomicU8::from_ptr(at as *mut u8) }
                };
                if toggle {
                    let byte = byte(&mut rng);
                    let (good, bad) = (b'a' + rng.below(26) as u8, 0x80 | rng.next() as u8);
                    for _ in 0..5000 {
                        byte.store(bad, Ordering::Relaxed);
                        // Keeps the compiler from merging the stores.
                        compiler_fence(Ordering::SeqCst);
                        byte.store(good, Ordering::Relaxed);
                        compiler_fence(Ordering::SeqCst);
                    }
                } else {
                    for _ in 0..1 + rng.below(16) {
                        let byte = byte(&mut rng);
                        let old = byte.load(Ordering::Relaxed);
                        if invalid_one_in == 0 && t.text && !old.is_ascii() {
                            continue;
                        }
                        let value = match rng.below(4) {
                            _ if invalid_one_in > 0 && rng.below(invalid_one_in) == 0 => {
                                0x80 | rng.next() as u8
                            }
                            0 => old ^ (1 << rng.below(7)),
                            _ => b' ' + rng.below(95) as u8,
                        };
                        byte.store(value, Ordering::Relaxed);
                    }
                }
                self.state().busy = None;
                self.idle.notify_all();
                self.done.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::yield_now();
        }
    }
}

/// `len` characters of text: mostly ASCII letters and digits, now and then
/// a character of two, three or four bytes.
fn flip_text(rng: &mut Rng, len: usize) -> String {
    const WIDE: [char; 4] = ['\u{e9}', '\u{df}', '\u{65e5}', '\u{1f980}'];
    const ASCII: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.";
    (0..len)
        .map(|_| match rng.below(16) {
            0 => WIDE[rng.below(4) as usize],
            _ => ASCII[rng.below(ASCII.len() as u64) as usize] as char,
        })
        .collect()
}

/// `len` random bytes.
fn flip_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next() as u8).collect()
}

/// A length for a string or payload: mostly small (inline frames), one in
/// eight large enough to send the frame through a slot.
fn flip_len(rng: &mut Rng) -> usize {
    match rng.below(8) {
        0 => 4096 + rng.below(28 << 10) as usize,
        1 => rng.below(8) as usize,
        _ => 8 + rng.below(300) as usize,
    }
}

/// The contents of a string or byte payload in a message, and whether it
/// is a string's.
type Piece<'a> = (&'a [u8], bool);

/// Where `needle` first occurs in `hay` at or after `from`.
fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

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

    /// The next message's bytes, if one is there now.
    fn try_recv(&mut self) -> Result<Option<Vec<u8>>, String> {
        match self.endpoint.receiver.try_recv() {
            Ok(Some(m)) => {
                let bytes = m.to_vec();
                m.finish().map_err(|e| format!("release: {e}"))?;
                Ok(Some(bytes))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(format!("receive: {e}")),
        }
    }

    /// Retires every ring target that the next frame (of at most the ring's
    /// largest payload, after a pad to the ring's end) could overwrite.
    fn make_ring_room(&self, flips: &Flips) {
        let ring = self.cell_ring();
        let tail = self.mem.word64(ring.ctrl + RING_TAIL).load(Ordering::Acquire);
        // A frame is at most `FRAME_HEADER + max payload` rounded up to 8,
        // and a pad before it is shorter than one.
        let next = 2 * (FRAME_HEADER + self.layout.config.max_frame as usize + 8) as u64;
        let cap = ring.bytes as u64;
        flips.retire(|t| t.ring_start.is_some_and(|start| start + cap < tail + next));
    }

    /// Sends `bytes` (one encoded message), inline or through a slot, and
    /// hands the contents of `pieces` (in the order they appear in `bytes`;
    /// those under 4 bytes are skipped) to the flipper once this thread's
    /// own writes are done, just before the commit: a burst may then be
    /// running by the time the host first sees the frame.
    fn send_flippable(&mut self, bytes: &[u8], pieces: &[Piece<'_>], flips: &Flips) -> Result<(), String> {
        let mut found = Vec::new();
        let mut cursor = 0;
        for &(piece, text) in pieces.iter().filter(|p| p.0.len() >= 4) {
            let at = find(bytes, cursor, piece).ok_or("a piece is not in its message")?;
            found.push((at, piece.len(), text));
            cursor = at + piece.len();
        }
        let len = bytes.len();
        let deadline = Instant::now() + SEND_WAIT;
        self.make_ring_room(flips);
        let tail_word = self.cell_ring().ctrl + RING_TAIL;
        if len <= self.endpoint.sender.max_inline() {
            let mut grant = self
                .endpoint
                .sender
                .producer()
                .reserve(len, Some(deadline))
                .map_err(|e| format!("reserve: {e}"))?;
            let slice = &mut grant.as_mut_slice()[..len];
            slice.copy_from_slice(bytes);
            let base = slice.as_mut_ptr() as usize;
            // The frame starts at or after the tail before it: retiring by
            // that start is early, never late.
            let start = self.mem.word64(tail_word).load(Ordering::Acquire);
            flips.add(found.into_iter().map(|(at, len, text)| Target {
                at: base + at,
                len,
                text,
                ring_start: Some(start),
            }));
            grant.commit(len).map_err(|e| e.to_string())?;
            return Ok(());
        }
        let (producer, slots) = self.endpoint.sender.parts();
        let mut slot = slots
            .alloc(len, Some(deadline))
            .map_err(|e| format!("slot: {e}"))?;
        let (base, cap) = {
            let s = slot.as_mut_slice();
            (s.as_mut_ptr() as usize, s.len())
        };
        // The slot may be one the host has released, with targets in it.
        flips.retire(|t| t.ring_start.is_none() && t.overlaps(base, cap));
        slot.as_mut_slice()[..len].copy_from_slice(bytes);
        flips.add(found.into_iter().map(|(at, len, text)| Target {
            at: base + at,
            len,
            text,
            ring_start: None,
        }));
        loop {
            if let Some(mut frame) = producer.try_reserve_slot_ref().map_err(|e| e.to_string())? {
                let r = slot.finish(len).map_err(|e| e.to_string())?;
                frame.write(0, &r.encode()).map_err(|e| e.to_string())?;
                frame.commit(SlotRef::ENCODED_LEN).map_err(|e| e.to_string())?;
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err("no room for a slot reference".into());
            }
            std::thread::yield_now();
        }
    }

    /// Answers one message from the host, with flippable strings and bytes;
    /// counts responses to this cell's calls off `in_flight`.
    fn answer_flipping(&mut self, bytes: &[u8], flips: &Flips, in_flight: &mut u32) -> Result<(), String> {
        match wire::decode(bytes)? {
            Message::Response { .. } => *in_flight = in_flight.saturating_sub(1),
            Message::Ping { nonce } => self.send_flippable(&Message::Pong { nonce }.to_vec(), &[], flips)?,
            Message::Call {
                conn,
                request,
                method,
                args,
                ..
            } => {
                let echoed = (method == ECHO)
                    .then(|| decode_args::<(Vec<u8>,)>(args).ok())
                    .flatten();
                let text = {
                    let n = flip_len(&mut self.rng);
                    flip_text(&mut self.rng, n)
                };
                let (value, error) = match &echoed {
                    Some((data,)) => (wire::encode(data)?, wire::encode(&text)?),
                    None => (Vec::new(), Vec::new()),
                };
                let (outcome, pieces): (Outcome<'_>, Vec<Piece<'_>>) =
                    match (echoed.as_ref(), self.rng.below(3)) {
                        (None, _) => (Outcome::UnknownMethod, vec![]),
                        (Some((data,)), 0) => (Outcome::Ok(&value), vec![(data.as_slice(), false)]),
                        (Some(_), 1) => (Outcome::UserError(&error), vec![(text.as_bytes(), true)]),
                        (Some(_), _) => (Outcome::Internal(text.clone()), vec![(text.as_bytes(), true)]),
                    };
                let msg = Message::Response {
                    conn,
                    request,
                    metadata: Vec::new(),
                    channels: Vec::new(),
                    outcome,
                }
                .to_vec();
                self.send_flippable(&msg, &pieces, flips)?;
            }
            Message::Goodbye { .. } => std::process::exit(0),
            _ => {}
        }
        Ok(())
    }

    /// The `flip-bytes` mode: well-formed traffic whose strings and payloads
    /// a second thread keeps rewriting after the commit (see [`Flips`]).
    fn flip(&mut self) -> Result<(), String> {
        // Checks where the ring's tail word is before relying on it.
        self.published_tail()?;
        let flips = Arc::new(Flips {
            state: Mutex::new(FlipState::default()),
            idle: Condvar::new(),
            done: AtomicU64::new(0),
        });
        // How often a flip is a byte that breaks UTF-8: never, rarely, often.
        let invalid_one_in = [0, 256, 16, 2][self.rng.below(4) as usize];
        std::thread::spawn({
            let (flips, rng) = (flips.clone(), Rng(self.rng.next()));
            move || flips.run(rng, invalid_one_in)
        });
        let frames = 100 + self.rng.below(2000);
        let until = Instant::now() + FLIP_FOR;
        let (mut sent, mut in_flight, mut request) = (0u64, 0u32, 0u64);
        while sent < frames && Instant::now() < until {
            while let Some(bytes) = self.try_recv()? {
                self.answer_flipping(&bytes, &flips, &mut in_flight)?;
            }
            if in_flight >= FLIP_IN_FLIGHT {
                if let Some(bytes) = self.recv(Duration::from_millis(10))? {
                    self.answer_flipping(&bytes, &flips, &mut in_flight)?;
                }
                continue;
            }
            let rng = &mut self.rng;
            let (n1, n2, n3, n4) = (flip_len(rng), flip_len(rng), flip_len(rng), flip_len(rng));
            let (k1, k2) = (4 + rng.below(12) as usize, 4 + rng.below(12) as usize);
            let (key, key2) = (flip_text(rng, k1), flip_text(rng, k2));
            let (meta_text, meta_bytes) = (flip_text(rng, n1 % 512), flip_bytes(rng, n2 % 512));
            let (text, data) = (flip_text(rng, n3), flip_bytes(rng, n4));
            let args = wire::encode(&(text.clone(), data.clone()))?;
            request += 2;
            let msg = Message::Call {
                conn: 0,
                request,
                method: FLIP_METHOD,
                metadata: vec![
                    MetaEntry {
                        key: key.clone(),
                        value: MetaValue::Str(meta_text.clone()),
                    },
                    MetaEntry {
                        key: key2.clone(),
                        value: MetaValue::Bytes(meta_bytes.clone()),
                    },
                    MetaEntry {
                        key: "frame".into(),
                        value: MetaValue::U64(sent),
                    },
                ],
                channels: Vec::new(),
                args: &args,
            }
            .to_vec();
            let pieces = [
                (key.as_bytes(), true),
                (meta_text.as_bytes(), true),
                (key2.as_bytes(), true),
                (&meta_bytes, false),
                (text.as_bytes(), true),
                (&data, false),
            ];
            self.send_flippable(&msg, &pieces, &flips)?;
            in_flight += 1;
            sent += 1;
        }
        // The last word, flipped like the rest.
        let (a, b) = {
            let rng = &mut self.rng;
            let (n1, n2) = (flip_len(rng), flip_len(rng));
            (flip_text(rng, 4 + n1 % 64), flip_text(rng, n2))
        };
        let (last, pieces) = if self.rng.below(2) == 0 {
            (Message::Goodbye { reason: b.clone() }, vec![(b.as_bytes(), true)])
        } else {
            let rule = Message::ProtocolError {
                rule: a.clone(),
                detail: b.clone(),
            };
            (rule, vec![(a.as_bytes(), true), (b.as_bytes(), true)])
        };
        self.send_flippable(&last.to_vec(), &pieces, &flips)?;
        eprintln!(
            "hostile-cell: {sent} calls sent, then a {}; {} bursts of flips so far",
            last.kind(),
            flips.done.load(Ordering::Relaxed)
        );
        // Keep flipping until the host has read the last word and let go of
        // the segment (its receiver marks its side dead when the session
        // ends), then exit rather than wait out the host's grace period.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self
                .endpoint
                .receiver
                .recv(Some(Instant::now() + Duration::from_millis(100)))
            {
                Ok(m) => drop(m),
                Err(osmos_shm::Error::Timeout { .. }) => {}
                Err(_) => std::process::exit(0),
            }
        }
        Ok(())
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
                metadata: Vec::new(),
                channels: Vec::new(),
                args: &[1, 2],
            })?,
            Hostility::WrongParity => self.send(&Message::Call {
                conn: 0,
                request: 3 + 2 * n,
                method: ADD,
                metadata: Vec::new(),
                channels: Vec::new(),
                args: &[1, 2],
            })?,
            Hostility::PingFlood => {
                for nonce in 0..1_000_000u64 {
                    self.send(&Message::Ping { nonce })?;
                }
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
        Ok(()) => hang(&format!("{} done", how.name())),
        Err(e) => hang(&format!("{}: {e}", how.name())),
    }
}
