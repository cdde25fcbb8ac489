//! Hostile cells: real sandboxed processes that complete the handshake, then
//! scribble over their own segment or send valid-looking lies
//! (`src/bin/hostile-cell/`, modes in `osmos_tests::hostile`), while a
//! well-behaved sibling cell serves calls the whole time.
//!
//! What must hold, for every run:
//! - the host never panics and nothing hangs: every call to the hostile
//!   cell resolves within its deadline, every wait here has a bound;
//! - a lie is detected: the session ends with an error naming the rule it
//!   breaks (a stalled reader: the keepalive timeout);
//! - a cell whose session ended is killed by the host (SIGKILL), and
//!   [`CellHandle::last_session_end`] says why;
//! - random scribbles end the session in any of those ways, or go unnoticed;
//!   the host stays whole either way;
//! - the sibling's calls all succeed, during the runs and after them;
//! - afterwards the host's fds, threads, segment mappings and child
//!   processes are back to what they were.
//!
//! Environment: `OSMOS_HOSTILE_CELL_RUNS` runs (default: each lie once and
//! each scribbled region once; the long version is
//! `OSMOS_HOSTILE_CELL_RUNS=1000`), `OSMOS_HOSTILE_CELL_SEED` the base seed
//! (run `i` uses `seed + i`), `OSMOS_HOSTILE_CELL_PARALLEL` how many hostile
//! cells run at once (default 3). The outcome of every kind of run is printed.
//! This file holds a single test, so that nothing else in its process moves
//! the resource counts.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{env_u64, panics, wait_back_to};
use osmos_host::{CellBuilder, CellState, ExitInfo, HostError};
use osmos_session::{CallOptions, SessionConfig, SessionError};
use osmos_tests::TestCellClient;
use osmos_tests::hostile::{Expect, Hostility, Region};

const CELL: &str = env!("CARGO_BIN_EXE_test-cell");
const HOSTILE: &str = env!("CARGO_BIN_EXE_hostile-cell");
/// Bound on every wait; only reached when something hangs.
const BOUND: Duration = Duration::from_secs(20);
/// Deadline of each call to a hostile cell.
const CALL_DEADLINE: Duration = Duration::from_millis(300);
/// Calls made to a lying cell while it lies.
const LIE_CALLS: u32 = 30;
/// How long a scribbling cell is called before its damage counts as unnoticed.
const SCRIBBLE_TIME: Duration = Duration::from_millis(1200);
/// Memory mappings allowed above the baseline afterwards (allocator arenas
/// and cached thread stacks, see chaos.rs); a mapping leaked per run shows
/// in the long version, and segment mappings must all be gone.
const MAP_SLACK: usize = 24;

/// The kinds of run, in order: every lie, then a scribble over each region;
/// only those whose name contains `OSMOS_HOSTILE_CELL_KIND` when it is set.
fn kinds() -> Vec<Hostility> {
    let filter = std::env::var("OSMOS_HOSTILE_CELL_KIND").unwrap_or_default();
    Hostility::LIES
        .into_iter()
        .chain(Region::ALL.into_iter().map(Hostility::Scribble))
        .filter(|h| h.name().contains(&filter))
        .collect()
}

/// The rule a session's end names: the host saw it broken.
fn violated_rule(e: &SessionError) -> Option<&'static str> {
    match e {
        SessionError::Violation { rule, .. } => Some(rule),
        _ => None,
    }
}

/// How one run ended, for the tally.
fn summary(why: &Option<SessionError>) -> String {
    match why {
        None => "unnoticed".into(),
        Some(SessionError::KeepaliveTimeout { .. }) => "keepalive timeout".into(),
        // Session rules and the link's framing rules alike.
        Some(SessionError::Violation { rule, .. }) => rule.to_string(),
        Some(SessionError::Link { .. }) => "link failed".into(),
        Some(SessionError::Goodbye { .. }) => "goodbye".into(),
        Some(SessionError::PeerReportedViolation { .. }) => "the cell reported a violation".into(),
        Some(SessionError::PeerDied { .. }) => "the cell died".into(),
        Some(other) => format!("ended: {other}"),
    }
}

struct Run {
    how: Hostility,
    outcome: String,
}

/// Spawns one hostile cell, drives it, and checks the host's answer.
async fn run_one(how: Hostility, seed: u64) -> Result<Run, String> {
    let ctx = format!("{} (seed {seed})", how.name());
    let cell = tokio::time::timeout(
        BOUND,
        CellBuilder::new(HOSTILE)
            .name(format!("hostile-{seed}"))
            .args([how.name(), seed.to_string()])
            .session(SessionConfig {
                keepalive_interval: Duration::from_millis(100),
                keepalive_timeout: Duration::from_secs(1),
                ..SessionConfig::default()
            })
            .spawn(),
    )
    .await
    .map_err(|_| format!("{ctx}: spawn hung"))?;
    let cell = match cell {
        Ok(cell) => cell,
        // A scribbler may damage its first frames before the host has read
        // the handshake: the host must refuse it, naming the rule, and kill it.
        Err(e @ HostError::Handshake { .. }) if how.expected() == Expect::Anything => {
            let text = e.to_string();
            let HostError::Handshake { error, exit, .. } = &e else {
                unreachable!("matched above")
            };
            return match violated_rule(error) {
                Some(rule) if *exit == Some(ExitInfo::Signaled(libc::SIGKILL)) => Ok(Run {
                    how,
                    outcome: format!("{rule} (at the handshake)"),
                }),
                _ => Err(format!(
                    "{ctx}: spawn failed without naming a rule, or the cell lives: {text}"
                )),
            };
        }
        Err(e) => return Err(format!("{ctx}: spawn failed: {e}")),
    };
    let conn = match cell.connection() {
        Ok(c) => c,
        Err(e) => return Err(format!("{ctx}: no connection right after the handshake: {e}")),
    };
    let client = TestCellClient::new(conn.clone());

    // Keep calling while the cell misbehaves; for the credit lie, open a
    // stream first and never read it.
    let _unread = if how == Hostility::CreditOverrun {
        let (tx, rx) = conn
            .channel::<u32>()
            .map_err(|e| format!("{ctx}: channel: {e}"))?;
        let c = client.clone();
        tokio::spawn(async move { c.count(u32::MAX, tx).await });
        Some(rx)
    } else {
        None
    };
    // Calls of both sizes: small ones inline, 64 KiB arguments in slots (the
    // hostile cell does not serve `echo`; the host still sends the bytes).
    // Scribblers get calls for a while, so that the host reads and writes
    // while the damage is done.
    let add = osmos_session::method_id("TestCell", "add");
    let echo = osmos_session::method_id("TestCell", "echo");
    let big = vec![0x33u8; 64 << 10];
    let scribbling = matches!(how, Hostility::Scribble(_));
    let started = Instant::now();
    let mut calls = 0u32;
    while conn.ended().is_none() && (calls < LIE_CALLS || (scribbling && started.elapsed() < SCRIBBLE_TIME)) {
        let options = CallOptions::timeout(CALL_DEADLINE);
        let r = if calls % 3 == 2 {
            tokio::time::timeout(
                CALL_DEADLINE * 2,
                conn.call::<_, Vec<u8>, String>(echo, &(big.clone(),), options),
            )
            .await
            .map(drop)
        } else {
            tokio::time::timeout(
                CALL_DEADLINE * 2,
                conn.call::<_, u32, String>(add, &(calls, 1u32), options),
            )
            .await
            .map(drop)
        };
        if r.is_err() {
            return Err(format!("{ctx}: a call outlived its deadline"));
        }
        calls += 1;
        if scribbling {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let why = match how.expected() {
        // Give the damage a little longer to show, then call it unnoticed.
        Expect::Anything => tokio::time::timeout(Duration::from_secs(3), conn.closed())
            .await
            .ok(),
        _ => Some(
            tokio::time::timeout(BOUND, conn.closed())
                .await
                .map_err(|_| format!("{ctx}: the session never ended"))?,
        ),
    };
    let outcome = summary(&why);
    match (how.expected(), &why) {
        (Expect::Rule(rules), Some(e)) if !violated_rule(e).is_some_and(|r| rules.contains(&r)) => {
            return Err(format!(
                "{ctx}: expected a violation of {rules:?}, the session ended with: {e}"
            ));
        }
        (Expect::KeepaliveTimeout, Some(SessionError::KeepaliveTimeout { .. })) => {}
        (Expect::KeepaliveTimeout, Some(e)) => {
            return Err(format!("{ctx}: expected a keepalive timeout, got: {e}"));
        }
        (Expect::Anything, Some(e)) => {
            // Whatever ended it must say so plainly; a violation names its rule.
            let text = e.to_string();
            let names_a_rule = matches!(
                e,
                SessionError::Violation { .. } | SessionError::PeerReportedViolation { .. }
            );
            if text.contains("broke") && !names_a_rule {
                return Err(format!("{ctx}: a violation without a rule: {text}"));
            }
        }
        _ => {}
    }

    // The host kills a cell whose session ended; an unnoticed scribbler is
    // shut down here.
    if why.is_none() {
        tokio::time::timeout(BOUND, cell.shutdown(Duration::from_millis(100)))
            .await
            .map_err(|_| format!("{ctx}: shutdown hung"))?;
    }
    let state = tokio::time::timeout(
        BOUND,
        cell.wait_for(|s| matches!(s, CellState::Stopped { .. } | CellState::Failed { .. })),
    )
    .await
    .map_err(|_| format!("{ctx}: the cell was never stopped (state {})", cell.state()))?;
    if why.is_some() {
        if state
            != (CellState::Stopped {
                exit: ExitInfo::Signaled(libc::SIGKILL),
            })
        {
            return Err(format!("{ctx}: the host did not kill the cell: {state}"));
        }
        let last = cell.last_session_end();
        if last != why {
            return Err(format!(
                "{ctx}: last_session_end {last:?} differs from how the session ended ({why:?})"
            ));
        }
    }
    Ok(Run { how, outcome })
}

/// Runs `runs` hostile cells, `parallel` at once, cycling through `kinds`;
/// run `i` uses seed `seed + i`.
async fn batch(kinds: Vec<Hostility>, runs: u64, parallel: u64, seed: u64) -> Vec<Result<Run, String>> {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..parallel {
        let (next, kinds) = (next.clone(), kinds.clone());
        workers.push(tokio::spawn(async move {
            let mut results = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= runs {
                    return results;
                }
                let how = kinds[(i % kinds.len() as u64) as usize];
                results.push(run_one(how, seed.wrapping_add(i)).await);
            }
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("a run worker"));
    }
    all
}

#[test]
fn hostile_cells_are_detected_and_killed_while_a_sibling_keeps_serving() {
    common::count_panics();
    let kinds = kinds();
    assert!(
        !kinds.is_empty(),
        "OSMOS_HOSTILE_CELL_KIND matches no kind of run"
    );
    let runs = env_u64("OSMOS_HOSTILE_CELL_RUNS", kinds.len() as u64);
    let seed = env_u64("OSMOS_HOSTILE_CELL_SEED", 0x6805_71e5);
    let parallel = env_u64("OSMOS_HOSTILE_CELL_PARALLEL", 3).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(Duration::from_millis(50))
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // Warm up with a batch as concurrent as the runs, beside a cell like
        // the sibling: the spawner thread, the runtime, and the allocator's
        // arenas and cached thread stacks for this much concurrency exist
        // before the baseline is taken.
        let warm_sibling = tokio::time::timeout(BOUND, CellBuilder::new(CELL).name("warm").spawn())
            .await
            .expect("spawn in time")
            .expect("spawn the warm-up cell");
        let warm = batch(vec![Hostility::UnknownChannel], parallel, parallel, seed).await;
        for r in &warm {
            assert_eq!(
                r.as_ref().map(|r| r.outcome.as_str()),
                Ok("channel.known"),
                "the warm-up"
            );
        }
        warm_sibling.shutdown(Duration::from_secs(5)).await;
        drop(warm_sibling);
        let base = common::settled(BOUND).await;
        eprintln!("hostile: baseline {base}");

        let sibling = tokio::time::timeout(BOUND, CellBuilder::new(CELL).name("sibling").spawn())
            .await
            .expect("spawn the sibling in time")
            .expect("spawn the sibling");
        let stop = Arc::new(AtomicBool::new(false));
        let (sibling_ok, sibling_failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let caller = tokio::spawn({
            let client = sibling.client::<TestCellClient>().unwrap();
            let (stop, ok, failed) = (stop.clone(), sibling_ok.clone(), sibling_failed.clone());
            async move {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(BOUND, client.add(i, 1)).await {
                        Ok(Ok(v)) if v == i.wrapping_add(1) => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    i = i.wrapping_add(1);
                    // Pace the sibling's calls so the hostile runs get the CPU.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });

        let started = Instant::now();
        let results = batch(kinds.clone(), runs, parallel, seed).await;
        let mut tally: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        let mut failures = Vec::new();
        for r in results {
            {
                match r {
                    Ok(run) => {
                        let kind = match run.how {
                            Hostility::Scribble(_) => "scribble".to_string(),
                            other => other.name(),
                        };
                        *tally.entry(kind).or_default().entry(run.outcome).or_default() += 1;
                    }
                    Err(e) => failures.push(e),
                }
            }
        }
        let took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(BOUND, caller)
            .await
            .expect("the sibling's caller stops")
            .unwrap();
        let after_runs = sibling.client::<TestCellClient>().unwrap().add(40, 2).await;
        tokio::time::timeout(BOUND, sibling.shutdown(Duration::from_secs(5)))
            .await
            .expect("the sibling shuts down");
        drop(sibling);
        let (after, back) = wait_back_to(&base, MAP_SLACK, BOUND).await;

        eprintln!("hostile: {runs} runs in {took:.1?} (seed {seed:#x}, {parallel} at once):");
        for (kind, outcomes) in &tally {
            eprintln!("  {kind:<20} {outcomes:?}");
        }
        let (ok, failed) = (
            sibling_ok.load(Ordering::Relaxed),
            sibling_failed.load(Ordering::Relaxed),
        );
        eprintln!("hostile: the sibling served {ok} calls ({failed} failed) meanwhile");
        eprintln!("hostile: after {after} (baseline {base})");

        assert!(
            failures.is_empty(),
            "runs that went wrong:\n{}",
            failures.join("\n")
        );
        assert_eq!(failed, 0, "the sibling's calls failed");
        assert!(ok > 0, "the sibling served calls during the runs");
        assert_eq!(after_runs.unwrap(), 42, "the sibling serves after the runs");
        let scribbles = tally.get("scribble").cloned().unwrap_or_default();
        if runs >= kinds.len() as u64 && kinds.iter().any(|k| matches!(k, Hostility::Scribble(_))) {
            assert!(
                scribbles.keys().any(|k| k.contains('.')),
                "some scribble was detected as a named rule: {scribbles:?}"
            );
        }
        assert!(
            back,
            "the host did not return to its baseline: now {after}, before {base}"
        );
        assert_eq!(panics(), 0, "something panicked in the host process");
    });
}
