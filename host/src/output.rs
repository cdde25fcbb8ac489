//! A cell's stdout and stderr: drained for its whole life, in bounded chunks.
//!
//! Each stream has one forwarder task that reads the pipe [`READ_CHUNK`]
//! bytes at a time (into a buffer per runtime thread, not per cell) until EOF, whatever it reads, so the cell never blocks on
//! a full pipe (or dies of EPIPE) because of the host. Lines are cut at
//! `\n`; a line longer than [`LogLimits::max_line`](crate::LogLimits) is
//! forwarded truncated to that length with a marker saying so as soon as it
//! reaches it, and the rest of it is read and dropped, so the host holds at
//! most one capped line per stream however long the cell's line is. Bytes
//! are converted lossily (invalid UTF-8 becomes U+FFFD) and escaped
//! ([`crate::logs`]), then pass the cell's rate limit.
//!
//! stderr also feeds the [`StderrTail`]: its last [`TAIL_BYTES`] bytes, kept
//! as bytes (so a flood costs a copy, not a conversion per line), rendered
//! into escaped lines only when asked (by
//! [`CellHandle::stderr_tail`](crate::CellHandle::stderr_tail) or a start
//! failure's error). It outlives the incarnation: after a crash, the handle
//! still shows it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::logs::{CELL_TARGET, Kind, LogGate, escape_into};

/// Bytes read from a pipe at a time (a pipe holds 64 KiB by default).
const READ_CHUNK: usize = 64 << 10;
/// Reads in a row before the forwarder lets other tasks run.
const READS_PER_WAKE: usize = 16;

thread_local! {
    /// The buffer a forwarder reads into, one per runtime worker thread:
    /// taken only between a readiness and the end of the reads it allows.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; READ_CHUNK]);
}
/// Bytes of stderr kept for the tail.
pub(crate) const TAIL_BYTES: usize = 4 << 10;
/// Lines of stderr the tail shows at most.
const TAIL_LINES: usize = 10;
/// A line buffer bigger than this after a long line is given back.
const KEEP_CAPACITY: usize = 4 << 10;

/// The last [`TAIL_BYTES`] bytes a cell wrote to stderr.
#[derive(Default)]
pub(crate) struct StderrTail {
    bytes: Mutex<Tail>,
}

#[derive(Default)]
struct Tail {
    /// At most [`TAIL_BYTES`] bytes.
    bytes: VecDeque<u8>,
    /// Whether older bytes were dropped to keep the bound.
    cut: bool,
}

impl StderrTail {
    fn push(&self, chunk: &[u8]) {
        let mut t = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        let chunk = &chunk[chunk.len().saturating_sub(TAIL_BYTES)..];
        let over = (t.bytes.len() + chunk.len()).saturating_sub(TAIL_BYTES);
        if over > 0 {
            t.bytes.drain(..over);
            t.cut = true;
        }
        t.bytes.extend(chunk);
    }

    /// The last lines, lossily converted and escaped, oldest first: at most
    /// [`TAIL_LINES`] of them, together at most [`TAIL_BYTES`] bytes long
    /// (a line cut by the bound starts with `…`).
    pub(crate) fn lines(&self) -> Vec<String> {
        let (bytes, cut) = {
            let t = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
            (t.bytes.iter().copied().collect::<Vec<u8>>(), t.cut)
        };
        let mut parts: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        if parts.last().is_some_and(|l| l.is_empty()) {
            parts.pop();
        }
        let first_cut = cut;
        let mut out = VecDeque::new();
        let mut total = 0;
        for (i, part) in parts.into_iter().enumerate().rev() {
            if out.len() == TAIL_LINES {
                break;
            }
            let mut line = String::new();
            if i == 0 && first_cut {
                line.push('…');
            }
            escape_into(&mut line, &String::from_utf8_lossy(part));
            if total + line.len() > TAIL_BYTES {
                // Keep the end of the line that no longer fits whole.
                let room = TAIL_BYTES.saturating_sub(total);
                if room > 16 {
                    let mut start = line.len() - room + '…'.len_utf8();
                    while !line.is_char_boundary(start) {
                        start += 1;
                    }
                    out.push_front(format!("…{}", &line[start..]));
                }
                break;
            }
            total += line.len();
            out.push_front(line);
        }
        out.into()
    }

    /// The lines joined with newlines (for an error message).
    pub(crate) fn text(&self) -> String {
        self.lines().join("\n")
    }
}

/// The index of the first `\n` in `bytes`, eight bytes at a time (a
/// byte-by-byte scan of a cell's 2 GiB line costs the host most of a
/// second): a word `w` holds a zero byte where `w ^ NL` does, and
/// `(x - 0x01..) & !x & 0x80..` is non-zero exactly when `x` has a zero byte.
fn find_newline(bytes: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const NL: u64 = LO * b'\n' as u64;
    let words = bytes.chunks_exact(8);
    let rest = words.remainder();
    for (i, word) in words.enumerate() {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let x = u64::from_le_bytes(w) ^ NL;
        if x.wrapping_sub(LO) & !x & HI != 0 {
            return word.iter().position(|&b| b == b'\n').map(|p| i * 8 + p);
        }
    }
    let start = bytes.len() - rest.len();
    rest.iter().position(|&b| b == b'\n').map(|p| start + p)
}

/// Which output stream a forwarder reads.
#[derive(Clone, Copy)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Cuts a stream into capped lines and forwards them through the gate.
struct Lines<'a> {
    gate: &'a LogGate,
    stream: Stream,
    /// The current line, at most `max_line` bytes.
    line: Vec<u8>,
    /// The current line passed `max_line` and was forwarded truncated: the
    /// rest of it is being dropped.
    skipping: bool,
    /// The rate limit refused a line, and holds no token before this time:
    /// until then whole lines are counted and dropped in bulk, unexamined.
    dry_until: Option<Instant>,
}

impl Lines<'_> {
    fn feed(&mut self, mut chunk: &[u8]) {
        if self.dry_until.is_some_and(|until| Instant::now() >= until) {
            self.dry_until = None;
        }
        while !chunk.is_empty() {
            if self.dry_until.is_some() {
                self.drop_complete_lines(&mut chunk);
                self.take(chunk);
                return;
            }
            match find_newline(chunk) {
                Some(i) => {
                    self.take(&chunk[..i]);
                    self.end_line();
                    chunk = &chunk[i + 1..];
                }
                None => {
                    self.take(chunk);
                    break;
                }
            }
        }
    }

    /// Drops every line `chunk` completes (counting them) and leaves what
    /// follows the last newline.
    fn drop_complete_lines(&mut self, chunk: &mut &[u8]) {
        let Some(last) = chunk.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let newlines = chunk[..=last].iter().filter(|&&b| b == b'\n').count() as u64;
        // A line already forwarded truncated was counted then.
        let dropped = newlines - u64::from(self.skipping);
        self.gate.drop_lines(dropped);
        self.line.clear();
        self.skipping = false;
        *chunk = &chunk[last + 1..];
    }

    fn take(&mut self, bytes: &[u8]) {
        if self.skipping {
            return;
        }
        let max = self.gate.limits().max_line;
        let room = max.saturating_sub(self.line.len());
        if bytes.len() <= room {
            self.line.extend_from_slice(bytes);
            return;
        }
        self.line.extend_from_slice(&bytes[..room]);
        self.gate.truncated();
        let marker = format!(" [truncated: the line is longer than {max} bytes; the rest of it is dropped]");
        self.forward(Some(&marker));
        self.skipping = true;
    }

    fn end_line(&mut self) {
        if !self.skipping {
            self.forward(None);
        }
        self.skipping = false;
    }

    /// Forwards the current line (if the rate limit lets it) and clears it.
    fn forward(&mut self, marker: Option<&str>) {
        let admitted = self.gate.try_admit(Kind::Line);
        if let Err(until) = admitted {
            self.dry_until = Some(until);
        }
        if admitted.is_ok() {
            let mut text = String::with_capacity(self.line.len() + 16);
            escape_into(&mut text, &String::from_utf8_lossy(&self.line));
            if let Some(m) = marker {
                text.push_str(m);
            }
            let (cell, stream) = (self.gate.name(), self.stream.name());
            tracing::info!(target: CELL_TARGET, cell = %cell, stream, "{text}");
        }
        self.line.clear();
        if self.line.capacity() > KEEP_CAPACITY {
            self.line.shrink_to(KEEP_CAPACITY);
        }
    }

    /// The stream ended: forwards a last line without a newline.
    fn finish(&mut self) {
        if !self.line.is_empty() {
            self.end_line();
        }
    }
}

/// Forwards the pipe `fd` (the cell's `stream`) until EOF; stderr also
/// feeds `tail`. Returns the task, or `None` if the pipe cannot be
/// registered with the runtime.
pub(crate) fn forward(
    gate: Arc<LogGate>,
    stream: Stream,
    fd: std::os::fd::OwnedFd,
    tail: Option<Arc<StderrTail>>,
) -> Option<tokio::task::JoinHandle<()>> {
    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok()?;
    Some(tokio::spawn(async move {
        let mut lines = Lines {
            gate: &gate,
            stream,
            line: Vec::new(),
            skipping: false,
            dry_until: None,
        };
        let idle = gate.limits().summary_every;
        'stream: loop {
            let ready = if gate.summary_pending() {
                tokio::time::timeout(idle, pipe.readable()).await
            } else {
                Ok(pipe.readable().await)
            };
            match ready {
                Err(_) => {
                    gate.summarize(false);
                    continue;
                }
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(cell = %gate.name(), "watching the cell's {} failed: {e}", stream.name());
                    break;
                }
            }
            // Drain what is there (a bounded number of reads, then let other
            // tasks run), into this worker thread's buffer: no buffer is
            // held per cell while it is quiet.
            for _ in 0..READS_PER_WAKE {
                let read = READ_BUFFER.with_borrow_mut(|buf| {
                    let n = pipe.try_read(buf)?;
                    gate.output_bytes(n);
                    if let Some(t) = &tail {
                        t.push(&buf[..n]);
                    }
                    lines.feed(&buf[..n]);
                    Ok::<usize, std::io::Error>(n)
                });
                match read {
                    Ok(0) => break 'stream,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!(cell = %gate.name(), "reading the cell's {} failed: {e}", stream.name());
                        break 'stream;
                    }
                }
            }
            tokio::task::yield_now().await;
        }
        lines.finish();
        gate.summarize(true);
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlines_are_found_wherever_they_are() {
        for len in 0..40 {
            for at in 0..=len {
                let mut v = vec![b'x'; len];
                v.extend(std::iter::repeat_n(0x8a, 3)); // '\n' | 0x80, never a match
                if at < len {
                    v[at] = b'\n';
                }
                let expected = v.iter().position(|&b| b == b'\n');
                assert_eq!(find_newline(&v), expected, "len {len}, at {at}");
            }
        }
    }

    #[test]
    fn lines_are_capped_and_counted_whether_forwarded_or_dropped() {
        let limits = crate::LogLimits {
            per_second: 1,
            burst: 5,
            max_line: 100,
            ..crate::LogLimits::default()
        };
        let gate = LogGate::new("t".into(), limits);
        let mut lines = Lines {
            gate: &gate,
            stream: Stream::Stdout,
            line: Vec::new(),
            skipping: false,
            dry_until: None,
        };
        // Three lines, one of them 1000 bytes long and fed in pieces.
        lines.feed(b"one\ntw");
        lines.feed(b"o\n");
        for _ in 0..10 {
            lines.feed(&[b'x'; 100]);
        }
        lines.feed(b"\n");
        let s = gate.stats();
        assert_eq!(
            (s.lines_forwarded, s.lines_dropped, s.lines_truncated),
            (3, 0, 1),
            "{s:?}"
        );
        assert!(lines.line.capacity() <= KEEP_CAPACITY);
        // A flood: the burst's last two tokens, then drops counted in bulk.
        let flood: Vec<u8> = (0..10_000)
            .flat_map(|i| format!("flood {i}\n").into_bytes())
            .collect();
        for chunk in flood.chunks(READ_CHUNK) {
            lines.feed(chunk);
        }
        lines.finish();
        let s = gate.stats();
        assert_eq!(s.lines_forwarded + s.lines_dropped, 3 + 10_000, "{s:?}");
        assert!(s.lines_forwarded <= 6, "{s:?}");
    }

    #[test]
    fn the_tail_is_bounded_and_shows_the_last_lines_escaped() {
        let tail = StderrTail::default();
        for i in 0..100 {
            tail.push(format!("line {i}\n").as_bytes());
        }
        let lines = tail.lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines.last().unwrap(), "line 99");
        tail.push(&vec![b'x'; 1 << 20]);
        tail.push(b"\x1b[31mred\xff\n");
        let text = tail.text();
        assert!(text.len() <= TAIL_BYTES + 8, "{}", text.len());
        assert!(text.ends_with("\\x1b[31mred\u{fffd}"), "{text}");
        assert!(text.starts_with('…'), "{text}");
    }
}
