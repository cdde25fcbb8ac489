//! A cell's stdout and stderr: drained for its whole life, in bounded chunks.
//!
//! Each stream has one forwarder task that reads the pipe [`READ_CHUNK`]
//! bytes at a time until EOF, whatever it reads, so the cell never blocks on
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

use tokio::io::AsyncReadExt;

use crate::logs::{CELL_TARGET, Kind, LogGate, escape_into};

/// Bytes read from a pipe at a time.
const READ_CHUNK: usize = 16 << 10;
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
}

impl Lines<'_> {
    fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            match chunk.iter().position(|&b| b == b'\n') {
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
        if self.gate.admit(Kind::Line) {
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
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok()?;
    Some(tokio::spawn(async move {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut lines = Lines {
            gate: &gate,
            stream,
            line: Vec::new(),
            skipping: false,
        };
        let idle = gate.limits().summary_every;
        loop {
            let read = if gate.summary_pending() {
                tokio::time::timeout(idle, pipe.read(&mut buf)).await
            } else {
                Ok(pipe.read(&mut buf).await)
            };
            let n = match read {
                Err(_) => {
                    gate.summarize(false);
                    continue;
                }
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => n,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => {
                    tracing::warn!(cell = %gate.name(), "reading the cell's {} failed: {e}", stream.name());
                    break;
                }
            };
            gate.output_bytes(n);
            if let Some(t) = &tail {
                t.push(&buf[..n]);
            }
            lines.feed(&buf[..n]);
        }
        lines.finish();
        gate.summarize(true);
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
