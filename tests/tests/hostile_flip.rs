//! A cell that rewrites its frames while the host decodes them
//! (`hostile-cell flip-bytes`, see `src/bin/hostile-cell/`): it sends
//! well-formed calls to a service of the host, answers the host's `echo`
//! calls and ends with a `Goodbye` or a `ProtocolError`, inline and through
//! slots, and from a second thread keeps writing random bytes (invalid UTF-8
//! among them) over the strings and payloads of the frames it sends, from
//! just before their commit until their memory is reused, while the host
//! reads them.
//!
//! The host copies every frame out of the segment once and decodes the copy
//! (`FrameReceiver::try_recv_into`, used by the shm link), so whatever the
//! cell writes, what the host decodes is one fixed set of bytes: a frame
//! read before a flip decodes to the values sent, one read after decodes to
//! the flipped values (bytes and strings, all valid) or fails to decode, and
//! the session ends with a named violation. What must hold, run after run:
//! - every `String` the host hands out is valid UTF-8: the metadata keys and
//!   strings and the `String` argument the host's dispatcher receives, the
//!   error strings of the cell's answers, the `Goodbye` reason and the
//!   `ProtocolError` rule and detail, each validated again here;
//! - the argument bytes the host's dispatcher receives never lie in a
//!   segment mapping (safe code never holds a slice over peer-writable
//!   memory);
//! - a session ends with a violation naming its rule, or with the cell's
//!   last word; a cell that broke a rule is killed (SIGKILL, even when it
//!   had already sent its last word and would exit on its own once the host
//!   lets go of the link), and its last session end names the rule;
//!   nothing panics and nothing hangs (every call and wait here is bounded).
//!
//! Why this fails if the host decoded in place: the argument check fails on
//! the first call whose arguments are a slice over the segment. A decoder
//! that validates a string in the segment and then copies it (the host
//! before the copy-out did this) lets a flip between the check and the copy
//! through: the `String` it makes holds bytes `0x80..=0xff` that are not
//! UTF-8, which `std::str::from_utf8` here refuses. The flipper toggles a
//! byte of the longest string of the newest frames between ASCII and such
//! a byte thousands of times in a row, ending on ASCII. Shown by hand, with
//! the shm link made to hand the session a slice over the frame (released
//! at once) instead of the copy: every argument slice was counted in the segment (all 23,493 of
//! a 20-second run, all 33,583 of a 30-second one), so the test fails on
//! the first call; the strings are a race, and the 20-second run caught 3
//! `String`s that were not UTF-8, the 30-second one none.
//!
//! Environment: `OSMOS_HOSTILE_FLIP_SECS` how long to keep starting cells
//! (default 3; the long version is `OSMOS_HOSTILE_FLIP_SECS=60`),
//! `OSMOS_HOSTILE_FLIP_SEED` the base seed (run `i` uses `seed + i`). The
//! figures are printed: frames decoded, values checked, how runs ended.
//! This file holds a single test.

mod common;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{env_u64, panics};
use osmos_host::{CellBuilder, CellState, ExitInfo};
use osmos_session::wire::{MetaValue, Metadata};
use osmos_session::{
    CallError, CallOptions, Dispatch, Dispatcher, ReplyValue, SessionConfig, SessionError, decode_args,
    method_id,
};
use osmos_tests::hostile::{FLIP_METHOD, Hostility};

const HOSTILE: &str = env!("CARGO_BIN_EXE_hostile-cell");
/// Bound on every wait; only reached when something hangs.
const BOUND: Duration = Duration::from_secs(20);
/// Deadline of each call to the cell.
const CALL_DEADLINE: Duration = Duration::from_millis(500);

/// What the host decoded, over all runs.
#[derive(Default)]
struct Checks {
    /// Calls the host's dispatcher decoded, arguments included.
    calls: AtomicU64,
    /// Calls whose arguments did not decode (a flipped string no longer
    /// UTF-8); the host answered `InvalidPayload`.
    refused_args: AtomicU64,
    /// Answers to the host's own calls that decoded.
    answers: AtomicU64,
    /// Strings checked.
    strings: AtomicU64,
    /// Strings that were not UTF-8: must stay 0.
    invalid_strings: AtomicU64,
    /// Argument slices handed to the dispatcher that lay in a segment
    /// mapping: must stay 0.
    args_in_segment: AtomicU64,
}

impl Checks {
    /// Validates `s` again, from its bytes.
    fn string(&self, s: &str) {
        self.strings.fetch_add(1, Ordering::Relaxed);
        if std::str::from_utf8(std::hint::black_box(s.as_bytes())).is_err() {
            self.invalid_strings.fetch_add(1, Ordering::Relaxed);
            let b = s.as_bytes();
            eprintln!(
                "hostile-flip: the host decoded a string that is not UTF-8 ({} bytes, from {:?})",
                b.len(),
                &b[..b.len().min(48)]
            );
        }
    }

    fn metadata(&self, metadata: &Metadata) {
        for entry in metadata {
            self.string(&entry.key);
            if let MetaValue::Str(s) = &entry.value {
                self.string(s);
            }
        }
    }

    fn get(&self, counter: &AtomicU64) -> u64 {
        let _ = self;
        counter.load(Ordering::Relaxed)
    }
}

/// The address ranges of this process's segment mappings.
fn segment_mappings() -> Vec<Range<usize>> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines()
        .filter(|l| l.contains("memfd:osmos-segment"))
        .filter_map(|l| {
            let (start, end) = l.split_whitespace().next()?.split_once('-')?;
            Some(usize::from_str_radix(start, 16).ok()?..usize::from_str_radix(end, 16).ok()?)
        })
        .collect()
}

/// Serves [`FLIP_METHOD`] by hand, to see the metadata and the argument
/// bytes exactly as the session hands them over.
struct FlipSink {
    checks: Arc<Checks>,
    /// The segment mappings, read at the first call (the cell's segment is
    /// mapped by then).
    segments: OnceLock<Vec<Range<usize>>>,
}

impl Dispatcher for FlipSink {
    fn dispatch(&self, method: u64, metadata: &Metadata, args: &[u8]) -> Dispatch {
        if method != FLIP_METHOD {
            return Dispatch::UnknownMethod;
        }
        let c = &self.checks;
        let segments = self.segments.get_or_init(segment_mappings);
        let (first, last) = (args.as_ptr() as usize, args.as_ptr() as usize + args.len());
        if segments.iter().any(|r| r.start < last && first < r.end) {
            c.args_in_segment.fetch_add(1, Ordering::Relaxed);
        }
        c.metadata(metadata);
        match decode_args::<(String, Vec<u8>)>(args) {
            Ok((text, data)) => {
                c.string(&text);
                c.calls.fetch_add(1, Ordering::Relaxed);
                let n = (text.len() + data.len()) as u64;
                Dispatch::Run(Box::pin(async move {
                    Box::new(Ok::<u64, String>(n)) as Box<dyn ReplyValue>
                }))
            }
            Err(e) => {
                c.refused_args.fetch_add(1, Ordering::Relaxed);
                Dispatch::InvalidPayload(e)
            }
        }
    }
}

/// Calls the cell's `echo` until its session ends, checking the answers.
async fn call_echo(conn: osmos_session::Connection, checks: Arc<Checks>) -> Result<(), String> {
    let echo = method_id("TestCell", "echo");
    let mut n = 0usize;
    while conn.ended().is_none() {
        // Mostly inline, now and then through a slot.
        let args = (vec![n as u8; (n * 997) % (20 << 10)],);
        let call = conn.call::<_, Vec<u8>, String>(echo, &args, CallOptions::timeout(CALL_DEADLINE));
        match tokio::time::timeout(CALL_DEADLINE * 4, call).await {
            Err(_) => return Err("a call to the cell outlived its deadline".into()),
            Ok(Ok(_)) => {
                checks.answers.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(CallError::User(s))) => {
                checks.string(&s);
                checks.answers.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(CallError::Internal { detail } | CallError::InvalidPayload { detail })) => {
                checks.string(&detail);
                checks.answers.fetch_add(1, Ordering::Relaxed);
            }
            // The session ended, or the cell was not serving yet.
            Ok(Err(_)) => {}
        }
        n += 1;
    }
    Ok(())
}

/// Runs one flipping cell to the end of its session; returns how it ended.
async fn run_one(seed: u64, checks: &Arc<Checks>) -> Result<String, String> {
    let ctx = format!("flip-bytes (seed {seed})");
    let sink = Arc::new(FlipSink {
        checks: checks.clone(),
        segments: OnceLock::new(),
    });
    let cell = tokio::time::timeout(
        BOUND,
        CellBuilder::new(HOSTILE)
            .name(format!("flip-{seed}"))
            .args([Hostility::FlipBytes.name(), seed.to_string()])
            .serve(sink)
            .session(SessionConfig {
                keepalive_interval: Duration::from_millis(200),
                keepalive_timeout: Duration::from_secs(5),
                ..SessionConfig::default()
            })
            .spawn(),
    )
    .await
    .map_err(|_| format!("{ctx}: spawn hung"))?
    .map_err(|e| format!("{ctx}: spawn failed: {e}"))?;
    let conn = cell
        .connection()
        .map_err(|e| format!("{ctx}: no connection after the handshake: {e}"))?;
    let caller = tokio::spawn(call_echo(conn.clone(), checks.clone()));
    let why = tokio::time::timeout(BOUND, conn.closed())
        .await
        .map_err(|_| format!("{ctx}: the session never ended"))?;
    tokio::time::timeout(BOUND, caller)
        .await
        .map_err(|_| format!("{ctx}: the caller never stopped"))?
        .map_err(|e| format!("{ctx}: the caller failed: {e}"))?
        .map_err(|e| format!("{ctx}: {e}"))?;
    let outcome = match &why {
        SessionError::Violation { rule, .. } if rule.contains('.') => rule.to_string(),
        SessionError::Goodbye { reason } => {
            checks.string(reason);
            "goodbye".into()
        }
        SessionError::PeerReportedViolation { rule, detail } => {
            checks.string(rule);
            checks.string(detail);
            "protocol error from the cell".into()
        }
        other => {
            return Err(format!(
                "{ctx}: the session ended with neither a named violation nor the cell's last word: {other}; the cell's stderr: {:?}",
                cell.stderr_tail()
            ));
        }
    };
    let state = tokio::time::timeout(
        BOUND,
        cell.wait_for(|s| matches!(s, CellState::Stopped { .. } | CellState::Failed { .. })),
    )
    .await
    .map_err(|_| format!("{ctx}: the cell was never stopped (state {})", cell.state()))?;
    if matches!(why, SessionError::Violation { .. })
        && state
            != (CellState::Stopped {
                exit: ExitInfo::Signaled(libc::SIGKILL),
            })
    {
        return Err(format!(
            "{ctx}: the host did not kill a cell that broke a rule: {state}"
        ));
    }
    if matches!(why, SessionError::Violation { .. }) && cell.last_session_end().as_ref() != Some(&why) {
        return Err(format!(
            "{ctx}: the cell was killed for {why}, but its last session end says {:?}",
            cell.last_session_end()
        ));
    }
    Ok(outcome)
}

#[test]
fn a_cell_flipping_its_frames_while_the_host_decodes_them_shows_it_only_valid_values() {
    common::count_panics();
    let secs = env_u64("OSMOS_HOSTILE_FLIP_SECS", 3);
    let seed = env_u64("OSMOS_HOSTILE_FLIP_SEED", 0xf11b_b17e);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let checks = Arc::new(Checks::default());
        let started = Instant::now();
        let until = started + Duration::from_secs(secs);
        let (mut runs, mut tally, mut failures) = (0u64, BTreeMap::<String, u64>::new(), Vec::new());
        while runs == 0 || Instant::now() < until {
            match run_one(seed.wrapping_add(runs), &checks).await {
                Ok(outcome) => *tally.entry(outcome).or_default() += 1,
                Err(e) => failures.push(e),
            }
            runs += 1;
        }
        let c = &checks;
        eprintln!(
            "hostile-flip: {runs} cells in {:.1?} (seed {seed:#x}); the host decoded {} calls \
             ({} more refused as invalid arguments) and {} answers, checked {} strings \
             ({} not UTF-8), {} argument slices in a segment; sessions ended: {tally:?}",
            started.elapsed(),
            c.get(&c.calls),
            c.get(&c.refused_args),
            c.get(&c.answers),
            c.get(&c.strings),
            c.get(&c.invalid_strings),
            c.get(&c.args_in_segment),
        );
        assert!(
            failures.is_empty(),
            "runs that went wrong:\n{}",
            failures.join("\n")
        );
        assert_eq!(
            c.get(&c.invalid_strings),
            0,
            "the host decoded strings that are not UTF-8"
        );
        assert_eq!(
            c.get(&c.args_in_segment),
            0,
            "the host handed its dispatcher arguments in the segment"
        );
        assert!(c.get(&c.calls) > 0, "the host decoded no call at all");
        assert_eq!(panics(), 0, "something panicked in the host process");
    });
}
