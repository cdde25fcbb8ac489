//! What a cell may put in the host's logs: the rate limit, the counters, and
//! the escaping that keeps a cell's text from passing for the host's own.
//!
//! Every line a cell writes to stdout or stderr and every log record it
//! sends over the control socket passes one per-cell **token bucket**
//! ([`LogLimits`]): `burst` tokens at most, refilled at `per_second`; a line
//! or record that finds the bucket empty is dropped and counted. While the
//! cell drops, the host says so itself, at most once per
//! [`LogLimits::summary_every`], with how many it dropped and why.
//!
//! Whatever a cell supplies (a line, a record's message, fields and target)
//! reaches the host's tracing [escaped](escape): control characters (C0, DEL,
//! C1, so newlines and terminal escape sequences) and the Unicode characters
//! that reorder or break lines become visible `\n`, `\x1b`, `\u{202e}`
//! sequences, so a cell cannot start a line of its own or repaint the
//! operator's terminal. A cell's events carry target `osmos::cell` and a
//! `cell` field; the host's own events never use that target.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The tracing target of everything a cell writes (output lines and log
/// records); the host's own events use their module paths.
pub const CELL_TARGET: &str = "osmos::cell";

/// Bounds on what one cell may put in the host's logs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogLimits {
    /// Lines and records forwarded per second, on average (the bucket's refill).
    pub per_second: u32,
    /// Lines and records forwarded at once after a quiet spell (the bucket's size).
    pub burst: u32,
    /// Longest output line forwarded whole, in bytes; a longer one is
    /// forwarded truncated to this length, with a marker saying so, and the
    /// rest of it is read and dropped.
    pub max_line: usize,
    /// How often, at most, the host logs how many lines and records it
    /// dropped from this cell.
    pub summary_every: Duration,
}

impl Default for LogLimits {
    /// 200 lines per second with bursts of 1000, lines of 16 KiB, a summary
    /// every 5 s: far more than a cell logs in normal work, far less than
    /// what makes a host's log unusable.
    fn default() -> Self {
        LogLimits {
            per_second: 200,
            burst: 1000,
            max_line: 16 << 10,
            summary_every: Duration::from_secs(5),
        }
    }
}

/// What a cell wrote to the host's logs, and what the host dropped of it.
/// Counted over the cell's whole life (every incarnation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Bytes read from the cell's stdout and stderr.
    pub output_bytes: u64,
    /// Output lines forwarded to the host's tracing.
    pub lines_forwarded: u64,
    /// Output lines dropped by the rate limit.
    pub lines_dropped: u64,
    /// Output lines longer than [`LogLimits::max_line`], forwarded truncated.
    pub lines_truncated: u64,
    /// Log records (the cell's tracing events) forwarded.
    pub records_forwarded: u64,
    /// Log records dropped by the rate limit.
    pub records_dropped: u64,
    /// Control-socket packets refused: empty, oversized, undecodable, or
    /// carrying ancillary data (passed file descriptors).
    pub packets_refused: u64,
    /// Control-socket packets that carried ancillary data (file descriptors
    /// and the like); the host never receives them into its fd table.
    pub packets_with_ancillary: u64,
}

#[derive(Default)]
struct Counters {
    output_bytes: AtomicU64,
    lines_forwarded: AtomicU64,
    lines_dropped: AtomicU64,
    lines_truncated: AtomicU64,
    records_forwarded: AtomicU64,
    records_dropped: AtomicU64,
    packets_refused: AtomicU64,
    packets_with_ancillary: AtomicU64,
}

/// The token bucket and what was dropped since the last summary.
struct Bucket {
    /// Tokens left, in `0.0 ..= burst`.
    tokens: f64,
    /// When `tokens` was last refilled.
    refilled: Instant,
    /// Lines and records dropped since the last summary.
    dropped: u64,
    /// Packets refused since the last summary.
    refused: u64,
    /// When the last summary was logged (or the gate made).
    summarized: Instant,
}

/// What passes, per cell, from its output and records to the host's tracing.
pub(crate) struct LogGate {
    name: String,
    limits: LogLimits,
    bucket: Mutex<Bucket>,
    counters: Counters,
}

/// What a token stands for (the counters it moves).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Line,
    Record,
}

impl LogGate {
    pub(crate) fn new(name: String, limits: LogLimits) -> Self {
        let now = Instant::now();
        LogGate {
            name,
            limits,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(limits.burst),
                refilled: now,
                dropped: 0,
                refused: 0,
                summarized: now,
            }),
            counters: Counters::default(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn limits(&self) -> &LogLimits {
        &self.limits
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.bucket.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a token for one line or record: `Ok` if it may be forwarded;
    /// otherwise when the bucket holds a token again (until then a caller
    /// may drop lines in bulk, [`drop_lines`](Self::drop_lines), or stop
    /// reading, without asking for each). Counts it either way, and logs
    /// the drop summary when one is due.
    pub(crate) fn try_admit(&self, kind: Kind) -> Result<(), Instant> {
        let now = Instant::now();
        let per_second = f64::from(self.limits.per_second);
        let mut b = self.bucket();
        let elapsed = now.saturating_duration_since(b.refilled).as_secs_f64();
        b.tokens = (b.tokens + elapsed * per_second).min(f64::from(self.limits.burst));
        b.refilled = now;
        let admitted = b.tokens >= 1.0;
        if admitted {
            b.tokens -= 1.0;
        } else {
            b.dropped += 1;
        }
        self.summarize_locked(&mut b, now);
        let refill = if per_second > 0.0 {
            Duration::from_secs_f64(((1.0 - b.tokens) / per_second).clamp(0.0, 1.0))
        } else {
            Duration::from_secs(1)
        };
        drop(b);
        let counter = match (kind, admitted) {
            (Kind::Line, true) => &self.counters.lines_forwarded,
            (Kind::Line, false) => &self.counters.lines_dropped,
            (Kind::Record, true) => &self.counters.records_forwarded,
            (Kind::Record, false) => &self.counters.records_dropped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if admitted { Ok(()) } else { Err(now + refill) }
    }

    /// Drops `n` output lines without asking for tokens (the bucket was
    /// found empty until a time not yet reached), counting them.
    pub(crate) fn drop_lines(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.counters.lines_dropped.fetch_add(n, Ordering::Relaxed);
        let now = Instant::now();
        let mut b = self.bucket();
        b.dropped += n;
        self.summarize_locked(&mut b, now);
    }

    /// Counts bytes read from the cell's output.
    pub(crate) fn output_bytes(&self, n: usize) {
        self.counters.output_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts a line forwarded truncated.
    pub(crate) fn truncated(&self) {
        self.counters.lines_truncated.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused control packet (and whether it carried ancillary data).
    pub(crate) fn refused(&self, ancillary: bool) {
        self.counters.packets_refused.fetch_add(1, Ordering::Relaxed);
        if ancillary {
            self.counters
                .packets_with_ancillary
                .fetch_add(1, Ordering::Relaxed);
        }
        let now = Instant::now();
        let mut b = self.bucket();
        b.refused += 1;
        self.summarize_locked(&mut b, now);
    }

    /// Whether drops or refusals wait for a summary (a forwarder then wakes
    /// after [`LogLimits::summary_every`] of quiet to log it; otherwise an
    /// idle forwarder sleeps until the cell writes).
    pub(crate) fn summary_pending(&self) -> bool {
        let b = self.bucket();
        b.dropped > 0 || b.refused > 0
    }

    /// Logs the drop summary if one is due (called by the forwarders when
    /// they have been idle for [`LogLimits::summary_every`], and at their end).
    pub(crate) fn summarize(&self, force: bool) {
        let now = Instant::now();
        let mut b = self.bucket();
        self.summarize_now(&mut b, now, force);
    }

    fn summarize_locked(&self, b: &mut Bucket, now: Instant) {
        self.summarize_now(b, now, false);
    }

    fn summarize_now(&self, b: &mut Bucket, now: Instant, force: bool) {
        let due = force || now.saturating_duration_since(b.summarized) >= self.limits.summary_every;
        if (b.dropped == 0 && b.refused == 0) || !due {
            return;
        }
        let took = now.saturating_duration_since(b.summarized);
        let (dropped, refused) = (std::mem::take(&mut b.dropped), std::mem::take(&mut b.refused));
        b.summarized = now;
        let stats = self.stats();
        if dropped > 0 {
            tracing::warn!(
                cell = %self.name,
                dropped,
                "cell '{}' wrote more than its log rate allows ({} lines/s, bursts of {}): dropped {dropped} of its lines and records in the last {took:.1?} ({} lines and {} records in all); raise CellBuilder::log_limits if it is expected",
                self.name,
                self.limits.per_second,
                self.limits.burst,
                stats.lines_dropped,
                stats.records_dropped,
            );
        }
        if refused > 0 {
            tracing::warn!(
                cell = %self.name,
                refused,
                "cell '{}' sent {refused} malformed control packets in the last {took:.1?} (empty, oversized, undecodable or carrying file descriptors; {} with ancillary data in all): refused, nothing kept",
                self.name,
                stats.packets_with_ancillary,
            );
        }
    }

    /// The counters now.
    pub(crate) fn stats(&self) -> LogStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LogStats {
            output_bytes: get(&c.output_bytes),
            lines_forwarded: get(&c.lines_forwarded),
            lines_dropped: get(&c.lines_dropped),
            lines_truncated: get(&c.lines_truncated),
            records_forwarded: get(&c.records_forwarded),
            records_dropped: get(&c.records_dropped),
            packets_refused: get(&c.packets_refused),
            packets_with_ancillary: get(&c.packets_with_ancillary),
        }
    }
}

/// Whether `c` must not reach a log as itself: control characters (C0, DEL,
/// C1) and the characters that break lines or reorder text on display.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' // line and paragraph separators
            | '\u{200e}' | '\u{200f}' | '\u{061c}' // direction marks
            | '\u{202a}'..='\u{202e}' // bidi embeddings and overrides
            | '\u{2066}'..='\u{2069}' // bidi isolates
            | '\u{feff}' // byte order mark / zero-width no-break space
        )
}

/// Appends `text` to `out` with every character [`needs_escape`] names
/// written as a visible escape (`\n`, `\r`, `\t`, `\x1b`, `\u{202e}`).
pub(crate) fn escape_into(out: &mut String, text: &str) {
    let mut rest = text;
    while let Some(i) = rest.find(needs_escape) {
        out.push_str(&rest[..i]);
        let c = rest[i..].chars().next().unwrap_or('\0');
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
        rest = &rest[i + c.len_utf8()..];
    }
    out.push_str(rest);
}

/// `text` escaped (see [`escape_into`]).
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(&mut out, text);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_line_break_or_control_sequence() {
        let hostile =
            "ok\nINFO osmos_host: forged\r\x1b[2J\x1b]0;title\x07\u{9b}31m\u{202e}gnp.exe\u{2028}é\t\\n";
        let e = escape(hostile);
        assert_eq!(
            e,
            "ok\\nINFO osmos_host: forged\\r\\x1b[2J\\x1b]0;title\\x07\\x9b31m\\u{202e}gnp.exe\\u{2028}é\\t\\n"
        );
        assert!(!e.chars().any(needs_escape), "{e}");
        assert_eq!(escape("plain text, ünïcode 名前"), "plain text, ünïcode 名前");
    }

    #[test]
    fn the_bucket_admits_a_burst_then_drops_and_counts() {
        let gate = LogGate::new(
            "t".into(),
            LogLimits {
                per_second: 1,
                burst: 10,
                ..LogLimits::default()
            },
        );
        let admitted = (0..100).filter(|_| gate.try_admit(Kind::Line).is_ok()).count();
        // 10 from the burst, perhaps one more refilled while the loop ran.
        assert!((10..=11).contains(&admitted), "{admitted}");
        let s = gate.stats();
        assert_eq!(s.lines_forwarded + s.lines_dropped, 100);
        assert_eq!(s.lines_forwarded, admitted as u64);
    }
}
