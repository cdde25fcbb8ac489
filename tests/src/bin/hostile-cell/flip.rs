//! The `flip-bytes` mode: well-formed frames whose strings and payloads a
//! second thread keeps rewriting while the host reads them.

use super::*;

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

impl Peer {
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
                deadline_us: _,
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
    pub(super) fn flip(&mut self) -> Result<(), String> {
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
                deadline_us: 0,
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
}
