//! A hostile scribbler running concurrently: a cell thread keeps healing,
//! forging frames and scribbling over the words it owns while the host makes
//! library calls at random on another thread. The host must only ever get
//! errors (no panic, no hang: see `hostile/mod.rs`), still receive messages
//! past the scribbler, and report several rules.
//!
//! Environment:
//! - `OSMOS_HOSTILE_OPS`: library calls the host makes (default 100,000);
//! - `OSMOS_HOSTILE_SEED`: base seed (decimal or `0x` hex).

mod common;
mod hostile;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::Rng;
use hostile::driver::{Driver, Op, Tally};
use hostile::forge::forge_kind;
use hostile::pair::{Pair, honest_traffic};
use hostile::scribble::{heal, scribble};
use hostile::{DEFAULT_SEED, TestResult, env_u64, panic_message, watch};

const DEFAULT_OPS: u64 = 100_000;

struct ConcurrentOutcome {
    tally: Tally,
    /// A panic in the host or the scribbler, which ended the run.
    failure: Option<String>,
    scribbles: u64,
    rounds: u64,
    elapsed: Duration,
}

/// Host calls per round of the concurrent test. Each round has a fresh
/// segment: the first violation the host's receiver reports about a frame
/// stays reported (the session is over), so later rounds explore anew.
const CALLS_PER_ROUND: u64 = 500;

fn concurrent_run(seed: u64, ops: u64, progress: &AtomicU64) -> TestResult<ConcurrentOutcome> {
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut scribbles = 0;
    let mut round = 0;
    while tally.calls < ops {
        let seed = seed ^ round;
        round += 1;
        let mut rng = Rng::new(seed);
        let mut p = Pair::new(seed)?;
        honest_traffic(&mut p, &mut rng);

        let stop = Arc::new(AtomicBool::new(false));
        let scribbler = {
            let mem = p.mem.cell_words_only(&p.layout);
            let (layout, stop) = (p.layout.clone(), stop.clone());
            std::thread::Builder::new()
                .name("hostile-cell".into())
                .spawn(move || {
                    let mut rng = Rng::new(seed ^ 0x5c21_bb1e);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        heal(&mem, &layout);
                        forge_kind(&mem, &layout, &mut rng, 0);
                        for _ in 0..1 + rng.below(3) {
                            scribble(&mem, &layout, &mut rng);
                            n += 1;
                        }
                    }
                    n
                })?
        };

        let until = (tally.calls + CALLS_PER_ROUND).min(ops);
        let host = catch_unwind(AssertUnwindSafe(|| {
            let all = [
                Op::Recv,
                Op::SendInline,
                Op::SendSlot,
                Op::Reclaim,
                Op::CreditSend,
                Op::CreditGrant,
                Op::Liveness,
                Op::Frames,
            ];
            let mut d = Driver {
                h: &mut p.host,
                rng: &mut rng,
                t: &mut tally,
                expected: None,
                exclusive: false,
                recv_budget: 8,
            };
            while d.t.calls < until {
                let op = all[d.rng.below(all.len() as u64) as usize];
                d.run(op);
                progress.store(d.t.calls, Ordering::Relaxed);
            }
        }));
        stop.store(true, Ordering::Relaxed);
        let joined = scribbler.join().map_err(|e| panic_message(&*e));
        let failure = match (host, joined) {
            (Err(e), _) => Some(format!(
                "the host panicked (round seed {seed:#x}): {}",
                panic_message(&*e)
            )),
            (Ok(()), Err(msg)) => Some(format!("the scribbler panicked (round seed {seed:#x}): {msg}")),
            (Ok(()), Ok(n)) => {
                scribbles += n;
                None
            }
        };
        if failure.is_some() {
            return Ok(ConcurrentOutcome {
                tally,
                failure,
                scribbles,
                rounds: round,
                elapsed: started.elapsed(),
            });
        }
    }
    Ok(ConcurrentOutcome {
        tally,
        failure: None,
        scribbles,
        rounds: round,
        elapsed: started.elapsed(),
    })
}

#[test]
fn hostile_concurrent_scribbler_only_yields_errors() {
    let ops = env_u64("OSMOS_HOSTILE_OPS", DEFAULT_OPS);
    let seed = env_u64("OSMOS_HOSTILE_SEED", DEFAULT_SEED) ^ 0xc0c0_c0c0_c0c0_c0c0;
    let progress = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let worker_progress = progress.clone();
    std::thread::Builder::new()
        .name("hostile-host".into())
        .spawn(move || {
            let outcome = catch_unwind(AssertUnwindSafe(|| concurrent_run(seed, ops, &worker_progress)));
            let _ = tx.send(outcome.map_err(|e| panic_message(&*e)));
        })
        .expect("spawn the worker");
    let outcome = watch(&rx, &progress, |calls| {
        format!("library call {calls} of {ops} (seed {seed:#x})")
    });
    let outcome = match outcome {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => panic!("concurrent run setup failed (seed {seed:#x}): {e}"),
        Err(msg) => panic!("concurrent run panicked outside the host loop (seed {seed:#x}): {msg}"),
    };
    eprintln!(
        "hostile concurrent: {} host calls in {} rounds against {} scribbles in {:.2?} (seed {seed:#x})\n{}",
        outcome.tally.calls,
        outcome.rounds,
        outcome.scribbles,
        outcome.elapsed,
        outcome.tally.summary()
    );
    if let Some(msg) = outcome.failure {
        panic!("{msg}, after {} host calls", outcome.tally.calls);
    }
    assert!(outcome.tally.calls >= ops);
    assert!(outcome.scribbles > 0, "the scribbler never ran");
    assert!(
        outcome.tally.messages > 0,
        "the host never got a message past the scribbler"
    );
    assert!(
        outcome.tally.rules.len() >= 5,
        "only {:?} rules were reported under a concurrent scribbler",
        outcome.tally.rules.keys()
    );
}
