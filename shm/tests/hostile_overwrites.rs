//! Hostile random overwrites, one scribble set at a time: each iteration
//! runs honest traffic, then overwrites what the cell can write with seeded
//! random bytes and plausible lies while no one else touches the segment,
//! and drives every reading path of the host. The host must only ever get
//! errors (no panic, no hang: see `hostile/mod.rs`). On top of that, the
//! test checks that the validation has teeth: every [`Rule`] is reported at
//! some point, a targeted lie made on its own is reported as the rule it
//! breaks, and an iteration with no lie gets no violation and receives
//! exactly what the cell sent.
//!
//! Environment:
//! - `OSMOS_HOSTILE_ITERS`: iterations (default 5000);
//! - `OSMOS_HOSTILE_SEED`: base seed (decimal or `0x` hex); iteration `i` uses
//!   `base ^ i`, so `OSMOS_HOSTILE_SEED=<seed> OSMOS_HOSTILE_ITERS=1` reruns
//!   one seed.

mod common;
mod hostile;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use common::Rng;
use hostile::driver::{Driver, Op, PHASE_ONE, Tally, shuffle};
use hostile::pair::{Pair, honest_traffic};
use hostile::scribble::scribble;
use hostile::{DEFAULT_SEED, TestResult, env_u64, panic_message, watch};
use osmos_shm::Rule;

const DEFAULT_ITERS: u64 = 5000;

const ALL_RULES: [Rule; 15] = [
    Rule::RingTailInRange,
    Rule::RingHeadInRange,
    Rule::FrameKindKnown,
    Rule::FrameLengthInBounds,
    Rule::FrameContiguous,
    Rule::PadToRingEnd,
    Rule::SlotRefWellFormed,
    Rule::SlotIndexInRange,
    Rule::SlotLengthFitsClass,
    Rule::SlotGenerationNext,
    Rule::SlotNotHeldTwice,
    Rule::SlotReleaseInFlight,
    Rule::ReleaseQueueInRange,
    Rule::CreditGrantMonotonic,
    Rule::CreditNoOverrun,
];

#[derive(Default)]
struct ScribbleStats {
    applied: u64,
    alone: u64,
    alone_reported: u64,
}

#[derive(Default)]
struct Report {
    iterations: u64,
    control: u64,
    with_violation: u64,
    with_error: u64,
    targeted_alone: u64,
    tally: Tally,
    by_scribble: BTreeMap<&'static str, ScribbleStats>,
    panics: Vec<String>,
    setup_failures: Vec<String>,
    missed: Vec<String>,
    false_alarms: Vec<String>,
}

fn one_iteration(seed: u64, report: &mut Report) -> TestResult<()> {
    let mut rng = Rng::new(seed);
    let mut p = Pair::new(seed)?;
    honest_traffic(&mut p, &mut rng);

    let control = rng.below(32) == 0;
    let mut scribbles = Vec::new();
    if !control {
        for _ in 0..1 + [0, 0, 1, 2][rng.below(4) as usize] {
            scribbles.push(scribble(&p.mem, &p.layout, &mut rng));
        }
    }

    let t = &mut report.tally;
    t.seen_rules.clear();
    t.seen_errors.clear();
    t.first_violation = None;
    let mut ops = PHASE_ONE;
    shuffle(&mut ops, &mut rng);
    let mut d = Driver {
        h: &mut p.host,
        rng: &mut rng,
        t,
        expected: control.then_some(&mut p.expected),
        exclusive: true,
        recv_budget: 64,
    };
    for op in ops {
        d.run(op);
    }
    for _ in 0..d.rng.below(4) {
        let op = PHASE_ONE[d.rng.below(PHASE_ONE.len() as u64) as usize];
        d.run(op);
    }
    // Grants last, so that the credit the cell had before the lies is all it has.
    for op in [Op::CreditGrant, Op::Recv, Op::Liveness] {
        d.run(op);
    }

    let t = &report.tally;
    report.iterations += 1;
    if !t.seen_rules.is_empty() {
        report.with_violation += 1;
    }
    if t.seen_errors.iter().any(|&k| k != "Timeout") {
        report.with_error += 1;
    }
    if control {
        report.control += 1;
        if !t.seen_rules.is_empty() {
            report.false_alarms.push(format!(
                "seed {seed:#x}: no lie told, yet the host reported {:?}",
                t.seen_rules
            ));
        }
        assert!(
            p.expected.is_empty(),
            "seed {seed:#x}: {} honest messages never arrived",
            p.expected.len()
        );
    }
    for s in &scribbles {
        report.by_scribble.entry(s.name).or_default().applied += 1;
    }
    if let [only] = scribbles[..] {
        let stats = report.by_scribble.entry(only.name).or_default();
        stats.alone += 1;
        let reported = match only.expect {
            Some(e) => t.saw(e),
            None => !t.seen_rules.is_empty() || t.seen_errors.iter().any(|&k| k != "Timeout"),
        };
        if reported {
            stats.alone_reported += 1;
        }
        if let Some(e) = only.expect {
            report.targeted_alone += 1;
            if !reported {
                report.missed.push(format!(
                    "seed {seed:#x}: {} alone should be reported as {e:?}; saw rules {:?}, errors {:?}, first: {:?}",
                    only.name, t.seen_rules, t.seen_errors, t.first_violation
                ));
            }
        }
    }
    Ok(())
}

fn run_iterations(base: u64, iters: u64, current: &AtomicU64) -> Report {
    let mut report = Report::default();
    for i in 0..iters {
        let seed = base ^ i;
        current.store(seed, Ordering::Relaxed);
        match catch_unwind(AssertUnwindSafe(|| one_iteration(seed, &mut report))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => report.setup_failures.push(format!("seed {seed:#x}: {e}")),
            Err(payload) => report
                .panics
                .push(format!("seed {seed:#x}: {}", panic_message(&*payload))),
        }
    }
    report
}

fn list(items: &[String]) -> String {
    let shown: Vec<_> = items.iter().take(20).map(String::as_str).collect();
    format!(
        "{} (showing {}):\n  {}",
        items.len(),
        shown.len(),
        shown.join("\n  ")
    )
}

#[test]
fn hostile_random_overwrites_only_yield_errors() {
    let iters = env_u64("OSMOS_HOSTILE_ITERS", DEFAULT_ITERS);
    let base = env_u64("OSMOS_HOSTILE_SEED", DEFAULT_SEED);
    let current = Arc::new(AtomicU64::new(base));
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    let worker_current = current.clone();
    std::thread::Builder::new()
        .name("hostile-host".into())
        .spawn(move || {
            let report = run_iterations(base, iters, &worker_current);
            let _ = tx.send(report);
        })
        .expect("spawn the worker");
    let report = watch(&rx, &current, |seed| {
        format!("seed {seed:#x} (rerun with OSMOS_HOSTILE_SEED={seed:#x} OSMOS_HOSTILE_ITERS=1)")
    });
    let elapsed = started.elapsed();

    let mut s = format!(
        "hostile: {} iterations (base seed {base:#x}) in {elapsed:.2?}; {} without lies; \
         {} ended with a violation, {} with an error other than a timeout\n",
        report.iterations, report.control, report.with_violation, report.with_error
    );
    s += &report.tally.summary();
    s += "  scribble: applied / alone / alone and reported\n";
    for (name, st) in &report.by_scribble {
        s += &format!(
            "    {name}: {} / {} / {}\n",
            st.applied, st.alone, st.alone_reported
        );
    }
    eprintln!("{s}");

    assert!(
        report.panics.is_empty(),
        "the host panicked on hostile input, {}",
        list(&report.panics)
    );
    assert!(
        report.setup_failures.is_empty(),
        "segment setup failed, {}",
        list(&report.setup_failures)
    );
    assert!(
        report.false_alarms.is_empty(),
        "violations reported with no lie told, {}",
        list(&report.false_alarms)
    );
    assert!(
        report.missed.is_empty(),
        "targeted lies not reported as the rule they break, {}",
        list(&report.missed)
    );
    // Teeth: the run must have exercised the validation, not skated past it.
    let missing: Vec<_> = ALL_RULES
        .iter()
        .filter(|r| !report.tally.rules.contains_key(r.name()))
        .map(|r| r.name())
        .collect();
    if iters >= DEFAULT_ITERS {
        assert!(missing.is_empty(), "rules never reported: {missing:?}");
        assert!(
            report.targeted_alone >= iters / 10,
            "only {} iterations checked a targeted lie on its own",
            report.targeted_alone
        );
    }
    let lied = report.iterations - report.control;
    assert!(
        report.with_violation * 2 >= lied,
        "only {} of {lied} iterations with lies reported a violation",
        report.with_violation
    );
}
