//! Chaos soak: many sandboxed cells serving concurrent calls and streams
//! while a seeded killer SIGKILLs them at random and their restart policy
//! brings them back.
//!
//! What must hold:
//! - every call resolves, ok or with an error, within [`OP_BOUND`] (a call
//!   that does not is a hang and fails the test);
//! - a call that succeeds returns the right answer (sums, echoed bytes,
//!   every streamed item in order);
//! - a call that fails does so because its cell died (the cell's death, its
//!   absence while it restarts, or the stream it fed breaking): never a
//!   protocol violation or a garbled payload;
//! - no panic anywhere in the host process;
//! - afterwards the host's file descriptors, threads, memory mappings and
//!   child processes return to what they were before the soak (a bounded poll
//!   on the counts, not a sleep).
//!
//! Environment (the defaults are the short version `cargo test` runs):
//! - `OSMOS_CHAOS_CALLS`: calls to make (default 1500; the long version is
//!   `OSMOS_CHAOS_CALLS=20000`);
//! - `OSMOS_CHAOS_CELLS`: cells (default 6);
//! - `OSMOS_CHAOS_SEED`: the seed of the operations and of the killer.
//!
//! The figures (calls ok and failed by reason, kills, restarts, resolution
//! times, resource counts) are printed; run with `--nocapture` to see them.
//! This file holds a single test, so that nothing else in its process moves
//! the resource counts.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Rng, env_u64, panics, percentile, wait_back_to};
use osmos_host::{CellBuilder, CellHandle, CellState, HostError, RestartPolicy};
use osmos_session::{CallError, CallOptions, ChannelError, SessionError};
use osmos_tests::TestCellClient;

const CELL: &str = env!("CARGO_BIN_EXE_test-cell");
/// Every call must resolve within this bound (including the wait for its
/// cell to be running again). Only reached when something hangs.
const OP_BOUND: Duration = Duration::from_secs(15);
/// Bound on setup and teardown steps, and on the return to baseline.
const BOUND: Duration = Duration::from_secs(30);
/// Memory mappings allowed above the baseline afterwards (the allocator's
/// arenas and cached thread stacks, which the warm-up soak has mostly
/// created already); segment mappings must all be gone.
const MAP_SLACK: usize = 8;
/// Concurrent callers per cell.
const CALLERS_PER_CELL: usize = 3;

#[derive(Clone, Copy, Debug)]
enum Op {
    Add(u32, u32),
    Echo(usize),
    Count(u32),
    Sum(u64),
    Hang,
    Pid,
}

impl Op {
    fn pick(rng: &mut Rng) -> Op {
        match rng.below(100) {
            0..45 => Op::Add(rng.next_u64() as u32, rng.next_u64() as u32),
            // Small inline payloads and large ones that travel in slots.
            45..65 => Op::Echo(if rng.below(4) == 0 {
                rng.range(8 << 10, 256 << 10) as usize
            } else {
                rng.below(2048) as usize
            }),
            65..77 => Op::Count(rng.range(1, 2000) as u32),
            77..89 => Op::Sum(rng.range(1, 2000)),
            89..95 => Op::Hang,
            _ => Op::Pid,
        }
    }
}

/// How one call ended.
enum Outcome {
    Ok,
    /// Failed because its cell died or was not running; the reason's kind.
    Failed(&'static str),
    /// Something that must not happen: a wrong answer, a violation, an
    /// unexpected error.
    Wrong(String),
}

fn call_error<E: std::fmt::Display>(op: Op, e: CallError<E>) -> Outcome {
    match &e {
        CallError::Session(SessionError::PeerDied { .. }) => Outcome::Failed("cell died"),
        // The link may notice a dead peer before the supervisor does. (A
        // peer breaking the framing is a `Violation`, which is wrong here.)
        CallError::Session(SessionError::Link { .. }) => Outcome::Failed("link gone"),
        CallError::Session(SessionError::Closed { .. }) => Outcome::Failed("session closed"),
        CallError::DeadlineExceeded { .. } if matches!(op, Op::Hang) => Outcome::Ok,
        _ => Outcome::Wrong(format!("{op:?}: {e}")),
    }
}

fn channel_error(op: Op, e: &ChannelError) -> Outcome {
    match e {
        ChannelError::SessionEnded { reason } if !reason.contains("broke") => {
            Outcome::Failed("stream broken")
        }
        ChannelError::Reset { .. } => Outcome::Failed("stream reset"),
        _ => Outcome::Wrong(format!("{op:?}: stream error {e}")),
    }
}

/// A client bound to the cell's current incarnation (its streams' channels
/// are opened on that connection), waiting (within the caller's bound)
/// while it restarts.
async fn client(cell: &CellHandle) -> TestCellClient {
    loop {
        match cell.connection() {
            Ok(c) => return TestCellClient::new(c),
            Err(HostError::NotRunning { .. }) => {
                cell.wait_for(|s| matches!(s, CellState::Running { .. } | CellState::Failed { .. }))
                    .await;
            }
            Err(e) => panic!("unexpected host error: {e}"),
        }
    }
}

async fn run_op(cell: &CellHandle, op: Op, rng: &mut Rng) -> Outcome {
    let c = client(cell).await;
    match op {
        Op::Add(a, b) => match c.add(a, b).await {
            Ok(v) if v == a.wrapping_add(b) => Outcome::Ok,
            Ok(v) => Outcome::Wrong(format!("add({a}, {b}) returned {v}")),
            Err(e) => call_error(op, e),
        },
        Op::Echo(len) => {
            let seed = rng.next_u64() as u8;
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
            match c.echo(data.clone()).await {
                Ok(back) if back == data => Outcome::Ok,
                Ok(back) => Outcome::Wrong(format!(
                    "echo of {len} bytes returned {} different bytes",
                    back.len()
                )),
                Err(e) => call_error(op, e),
            }
        }
        Op::Count(n) => {
            let (tx, mut rx) = match c.connection().channel::<u32>() {
                Ok(p) => p,
                Err(e) => return channel_error(op, &e),
            };
            let call = tokio::spawn({
                let c = c.clone();
                async move { c.count(n, tx).await }
            });
            let mut next = 0u32;
            let mut broken = None;
            while let Some(item) = rx.recv().await {
                match item {
                    Ok(v) if v == next => next += 1,
                    Ok(v) => return Outcome::Wrong(format!("count({n}): item {v} where {next} was due")),
                    Err(e) => {
                        broken = Some(channel_error(op, &e));
                        break;
                    }
                }
            }
            let result = call.await.expect("the count task");
            match (result, broken) {
                (Ok(m), None) if m == n && next == n => Outcome::Ok,
                (Ok(m), None) => Outcome::Wrong(format!("count({n}) returned {m} after {next} items")),
                (Err(e), _) => call_error(op, e),
                (Ok(_), Some(b)) => b,
            }
        }
        Op::Sum(n) => {
            let (tx, rx) = match c.connection().channel::<u64>() {
                Ok(p) => p,
                Err(e) => return channel_error(op, &e),
            };
            let call = tokio::spawn({
                let c = c.clone();
                async move { c.sum(rx).await }
            });
            let mut sent_all = true;
            for i in 1..=n {
                if tx.send(&i).await.is_err() {
                    sent_all = false;
                    break;
                }
            }
            if sent_all {
                let _ = tx.close().await;
            } else {
                drop(tx);
            }
            match call.await.expect("the sum task") {
                Ok(s) if sent_all && s == n * (n + 1) / 2 => Outcome::Ok,
                Ok(s) => Outcome::Wrong(format!("sum of 1..={n} returned {s} (sent all: {sent_all})")),
                Err(e) => call_error(op, e),
            }
        }
        Op::Hang => {
            let hang = osmos_session::method_id("TestCell", "hang");
            let r: Result<(), CallError<String>> = c
                .connection()
                .call(hang, &(), CallOptions::timeout(Duration::from_millis(20)))
                .await;
            match r {
                Ok(()) => Outcome::Wrong("hang returned".into()),
                Err(e) => call_error(op, e),
            }
        }
        Op::Pid => match c.pid().await {
            Ok(pid) if pid != std::process::id() => Outcome::Ok,
            Ok(pid) => Outcome::Wrong(format!("pid {pid} is the host's")),
            Err(e) => call_error(op, e),
        },
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: BTreeMap<&'static str, u64>,
    wrong: Vec<String>,
    hung: Vec<String>,
    times: Vec<Duration>,
}

async fn spawn_cell(i: usize) -> CellHandle {
    tokio::time::timeout(
        BOUND,
        CellBuilder::new(CELL)
            .name(format!("chaos-{i}"))
            .restart(RestartPolicy::OnFailure {
                max_restarts: u32::MAX,
                backoff: Duration::from_millis(5),
                max_backoff: Duration::from_millis(50),
                reset_after: Duration::from_secs(60),
            })
            .spawn(),
    )
    .await
    .expect("spawn within the bound")
    .expect("spawn a chaos cell")
}

/// What one soak did.
struct Soak {
    tally: Tally,
    kills: u64,
    restarts: u32,
    took: Duration,
}

/// Runs `calls` calls over `cells_n` restarting cells while the killer
/// works, checks each cell serves afterwards, and shuts them all down.
async fn soak(cells_n: usize, calls: u64, seed: u64) -> Soak {
    let started = Instant::now();
    let mut cells = Vec::new();
    for i in 0..cells_n {
        cells.push(spawn_cell(i).await);
    }
    let cells = Arc::new(cells);
    let tickets = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let done = Arc::new(AtomicBool::new(false));

    let mut callers = Vec::new();
    for w in 0..cells_n * CALLERS_PER_CELL {
        let (cells, tickets, tally) = (cells.clone(), tickets.clone(), tally.clone());
        callers.push(tokio::spawn(async move {
            let cell = &cells[w % cells.len()];
            loop {
                let t = tickets.fetch_add(1, Ordering::Relaxed);
                if t >= calls {
                    return;
                }
                let mut rng = Rng::new(seed ^ t.wrapping_mul(0x2545_f491_4f6c_dd1d));
                let op = Op::pick(&mut rng);
                let t0 = Instant::now();
                let outcome = tokio::time::timeout(OP_BOUND, run_op(cell, op, &mut rng)).await;
                let took = t0.elapsed();
                let mut tally = tally.lock().unwrap();
                tally.times.push(took);
                match outcome {
                    Ok(Outcome::Ok) => tally.ok += 1,
                    Ok(Outcome::Failed(why)) => *tally.failed.entry(why).or_default() += 1,
                    Ok(Outcome::Wrong(what)) => tally.wrong.push(format!("{}: {what}", cell.name())),
                    Err(_) => tally.hung.push(format!(
                        "{}: {op:?} did not resolve within {OP_BOUND:?} (state {})",
                        cell.name(),
                        cell.state()
                    )),
                }
            }
        }));
    }

    // The killer: SIGKILL a random running cell every few milliseconds.
    let killer = tokio::spawn({
        let (cells, done) = (cells.clone(), done.clone());
        async move {
            let mut rng = Rng::new(seed ^ 0x6b69_6c6c);
            let mut kills = 0u64;
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(rng.range(2, 25))).await;
                let cell = &cells[rng.below(cells.len() as u64) as usize];
                if matches!(cell.state(), CellState::Running { .. }) && cell.pid().is_some() {
                    cell.kill();
                    kills += 1;
                }
            }
            kills
        }
    });

    // Each call is bounded (OP_BOUND), so a caller cannot hang.
    for c in callers {
        c.await.expect("a caller task");
    }
    done.store(true, Ordering::Relaxed);
    let kills = killer.await.unwrap();
    let took = started.elapsed();
    let restarts: u32 = cells.iter().map(|c| c.stats().restarts).sum();

    // Every cell still serves, then shuts down cleanly. (The killer's last
    // SIGKILL may still be landing: a call that meets it is made again.)
    for cell in cells.iter() {
        let serves = tokio::time::timeout(BOUND, async {
            loop {
                match client(cell).await.add(2, 3).await {
                    Err(CallError::Session(SessionError::PeerDied { .. })) => continue,
                    other => return other,
                }
            }
        })
        .await;
        assert_eq!(
            serves.expect("a call after the soak").unwrap(),
            5,
            "{} serves after the soak",
            cell.name()
        );
    }
    for cell in cells.iter() {
        tokio::time::timeout(BOUND, cell.shutdown(Duration::from_secs(5)))
            .await
            .expect("shutdown within the bound");
    }
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    Soak {
        tally,
        kills,
        restarts,
        took,
    }
}

#[test]
fn chaos_soak_every_call_resolves_and_the_host_returns_to_baseline() {
    common::count_panics();
    let calls = env_u64("OSMOS_CHAOS_CALLS", 1500);
    let cells_n = env_u64("OSMOS_CHAOS_CELLS", 6) as usize;
    let seed = env_u64("OSMOS_CHAOS_SEED", 0xc4a0_5eed);
    // Idle blocking threads retire quickly, so the thread count can return
    // to its baseline within the bound.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(Duration::from_millis(50))
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // Warm up with a short soak of its own: the host's process-lifetime
        // spawner thread, the runtime's resources, and the allocator's
        // arenas and cached thread stacks for this much concurrency exist
        // before the baseline is taken.
        let warm = soak(cells_n, 200, !seed).await;
        assert!(
            warm.tally.hung.is_empty() && warm.tally.wrong.is_empty(),
            "the warm-up soak went wrong: {:?} {:?}",
            warm.tally.hung,
            warm.tally.wrong
        );
        let base = common::settled(BOUND).await;
        eprintln!("chaos: baseline {base}");

        let Soak {
            mut tally,
            kills,
            restarts,
            took,
        } = soak(cells_n, calls, seed).await;
        let (after, back) = wait_back_to(&base, MAP_SLACK, BOUND).await;

        let failed: u64 = tally.failed.values().sum();
        let p50 = percentile(&mut tally.times, 50.0);
        let p99 = percentile(&mut tally.times, 99.0);
        let max = tally.times.last().copied().unwrap_or_default();
        eprintln!(
            "chaos: {cells_n} cells, {calls} calls in {took:.1?} (seed {seed:#x}): {} ok, {failed} failed {:?}; \
             {kills} kills, {restarts} restarts; resolution p50 {p50:.1?}, p99 {p99:.1?}, max {max:.1?}",
            tally.ok, tally.failed
        );
        eprintln!("chaos: after {after} (baseline {base})");

        assert!(
            tally.hung.is_empty(),
            "calls that never resolved:\n{}",
            tally.hung.join("\n")
        );
        assert!(
            tally.wrong.is_empty(),
            "calls that went wrong:\n{}",
            tally.wrong.join("\n")
        );
        assert_eq!(tally.ok + failed, calls, "every call is accounted for");
        assert!(
            kills > 0 && restarts > 0,
            "the killer killed ({kills}) and cells restarted ({restarts})"
        );
        assert!(
            tally.ok > calls / 2,
            "most calls succeed between kills: {} of {calls}",
            tally.ok
        );
        assert!(
            back,
            "the host did not return to its baseline: now {after}, before {base}"
        );
        assert_eq!(panics(), 0, "something panicked in the host process");
    });
}
