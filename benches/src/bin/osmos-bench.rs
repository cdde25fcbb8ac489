//! The osmos report binary: every figure beside a floor measured in the same
//! run, unpinned and then pinned to CPU 0.
//!
//! ```text
//! cargo run --release -p osmos-benches --bin osmos-bench [-- --quick] [--json PATH] [--repeat N]
//! ```
//!
//! - `--quick`: well under a minute (fewer iterations, 1 s of idle, 16 cells
//!   instead of 64, one pinned repetition);
//! - `--json PATH`: also write `{"machine": {...}, "results": [...]}`;
//! - `--repeat N`: run the pinned pass N times, each in a fresh process
//!   (default 3, 1 with `--quick`); every pinned row then shows each
//!   repetition's p50, so a pass that lands in a slow mode shows;
//! - `--unpinned-only` / `--pinned-only`: run one of the two passes;
//! - `--only PATTERN`: run only the cases whose name contains PATTERN (the
//!   floors always run, for the ratios);
//! - `--calls N [--pin]`: no report: spawn one bench cell, make N `add`
//!   calls over shm on a default runtime (pinned to CPU 0 with `--pin`) and
//!   print their p50 and context switches; a steady load to run under
//!   `perf record` or `perf sched`;
//! - `--streams N [--pin] [--spawned]`: the same for N rounds of
//!   `stream_1000/shm` (of `stream_1000_spawned/shm` with `--spawned`; p50
//!   and p99 only).
//!
//! Each pass measures the shm floors, the raw Unix-socket floors
//! (`floor_uds/*`) and then the cases, and gives every case row its ratio to
//! the adaptive shm floor and to its `floor_uds/<case>` twin. The host side
//! of the cases runs the runtime a user of `#[tokio::main]` gets: a
//! multi-thread runtime with one worker per CPU this process may run on
//! (`std::thread::available_parallelism`), so one worker when pinned.
//!
//! The pinned pass is this program re-executed with a private `--pinned-pass
//! ROWS` argument: it pins itself to CPU 0 before starting any thread, so its
//! runtimes, its floor peers and its cells all inherit the mask. Started
//! with `OSMOS_CELL_NAME` set (by a host) it is a bench cell; started with
//! `--floor-child` it is the peer of a floor.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use osmos_benches::cases::{self, Floors, Params};
use osmos_benches::report::{self, Machine, Row};
use osmos_benches::service::{BenchDispatcher, BenchImpl};
use osmos_benches::{floor, sys};

struct Options {
    quick: bool,
    json: Option<PathBuf>,
    pinned_pass: Option<PathBuf>,
    unpinned: bool,
    pinned: bool,
    repeat: Option<usize>,
    only: Option<&'static str>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        quick: false,
        json: None,
        pinned_pass: None,
        unpinned: true,
        pinned: true,
        repeat: None,
        only: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--json" => o.json = Some(it.next().ok_or("--json needs a path")?.into()),
            "--pinned-pass" => o.pinned_pass = Some(it.next().ok_or("--pinned-pass needs a path")?.into()),
            "--only" => {
                let pattern = it.next().ok_or("--only needs a pattern, e.g. --only echo_")?;
                // Lives for the whole run.
                o.only = Some(Box::leak(pattern.clone().into_boxed_str()));
            }
            "--repeat" => {
                let n = it.next().ok_or("--repeat needs a count, e.g. --repeat 5")?;
                let n: usize = n.parse().map_err(|_| format!("--repeat {n:?}: not a count"))?;
                o.repeat = Some(n.max(1));
            }
            "--unpinned-only" => o.pinned = false,
            "--pinned-only" => o.unpinned = false,
            "-h" | "--help" => {
                return Err(
                    "usage: osmos-bench [--quick] [--json PATH] [--repeat N] [--unpinned-only | --pinned-only] [--only PATTERN]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(o)
}

/// `--calls N [--pin]`: N `add` calls on one cell; `--streams N [--pin]
/// [--spawned]`: N rounds of `stream_1000/shm` (or its spawned form).
/// Nothing else runs, for a profiler.
fn profile_only(mode: &str, args: &[String]) -> ExitCode {
    let n: usize = match args.first().map(|a| a.parse()) {
        Some(Ok(n)) => n,
        _ => {
            eprintln!("usage: osmos-bench {mode} N [--pin] [--spawned]");
            return ExitCode::from(2);
        }
    };
    let flags = &args[1..];
    if let Some(bad) = flags
        .iter()
        .find(|f| !matches!(f.as_str(), "--pin" | "--spawned"))
    {
        eprintln!("osmos-bench {mode}: unknown argument {bad:?} (--pin, --spawned)");
        return ExitCode::from(2);
    }
    let spawned = flags.iter().any(|f| f == "--spawned");
    if flags.iter().any(|f| f == "--pin")
        && let Err(e) = sys::pin_to_cpu0()
    {
        eprintln!("osmos-bench: cannot pin to CPU 0: {e}");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("osmos-bench: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let run = async {
        if mode == "--streams" {
            cases::streams_only(n, spawned).await
        } else {
            cases::calls_only(n).await
        }
    };
    match rt.block_on(run) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("osmos-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One pass over every floor and case. Errors of one group of cases are
/// reported and the pass goes on.
fn pass(p: Params, errors: &mut Vec<String>) -> Vec<Row> {
    let label = if p.pinned { "pinned to CPU 0" } else { "unpinned" };
    let started = Instant::now();
    eprintln!("osmos-bench: {label} pass, {} CPUs allowed", sys::allowed_cpus());
    let mut rows = Vec::new();
    let cap = p.cap();
    eprintln!("  floors: ping-pong");
    match floor::pingpongs(p.rounds(), cap, p.pinned) {
        Ok(r) => rows.extend(r),
        Err(e) => errors.push(format!("{label}: ping-pong floors: {e}")),
    }
    if !p.pinned && sys::allowed_cpus() >= 2 {
        eprintln!("  floors: ping-pong split across CPUs 0 and 1");
        match floor::pingpongs_split(p.rounds(), cap) {
            Ok(r) => rows.extend(r),
            Err(e) => errors.push(format!("{label}: split ping-pong floors: {e}")),
        }
    }
    eprintln!("  floors: ring copy");
    match floor::ring_copy(p.runs(), p.stream_items(), p.pinned) {
        Ok(r) => rows.push(r),
        Err(e) => errors.push(format!("{label}: ring copy floor: {e}")),
    }
    eprintln!("  floors: raw Unix socket");
    let (uds_rows, uds_errors) = floor::uds::floors(&p.uds_plan());
    rows.extend(uds_rows);
    errors.extend(uds_errors.into_iter().map(|e| format!("{label}: {e}")));
    let find = |name: &str| rows.iter().find(|r| r.name == name).map_or(0.0, |r| r.p50);
    let floors = Floors {
        adaptive_ns: find(floor::ADAPTIVE),
        ring_gbps: find(floor::RING_COPY),
    };
    // What `#[tokio::main]` gives a user: one worker per allowed CPU.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!("  host runtime: multi-thread, {workers} worker(s)");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errors.push(format!("{label}: cannot start a runtime: {e}"));
            return rows;
        }
    };
    rt.block_on(async {
        if p.wants_any(&["add_rtt/memory", "add_rtt/unix"]) {
            eprintln!("  add over memory and unix");
            match cases::in_process(&p, &floors).await {
                Ok(r) => rows.extend(r),
                Err(e) => errors.push(format!("{label}: in-process links: {e}")),
            }
        }
        if osmos_benches::network::wanted(&p) {
            eprintln!("  add, echo and stream over loopback TCP: plain, stable, stable over TLS");
            match osmos_benches::network::network(&p, &floors).await {
                Ok(r) => rows.extend(r),
                Err(e) => errors.push(format!("{label}: network links: {e}")),
            }
        }
        if p.wants_any(cases::ONE_CELL) {
            eprintln!("  one cell: idle, add, echo, stream, concurrency");
            match cases::one_cell(&p, &floors).await {
                Ok(r) => rows.extend(r),
                Err(e) => errors.push(format!("{label}: one-cell cases: {e}")),
            }
        }
        if p.wants_cells() {
            eprintln!("  many cells");
            match cases::many_cells(&p).await {
                Ok(r) => rows.extend(r),
                Err(e) => errors.push(format!("{label}: many cells: {e}")),
            }
        }
        if p.wants_any(&["spawn_reply/shm", "kill_error/shm"]) {
            eprintln!("  spawn and kill");
            match cases::spawn_and_kill(&p).await {
                Ok(r) => rows.extend(r),
                Err(e) => errors.push(format!("{label}: spawn/kill: {e}")),
            }
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    report::attach_uds_twins(&mut rows);
    eprintln!("  {label} pass took {:.1?}", started.elapsed());
    rows
}

/// Runs the pinned pass `repeat` times, each in a fresh copy of this
/// program, and merges their rows (see [`report::merge_repetitions`]).
fn pinned_passes(quick: bool, repeat: usize, only: Option<&str>, errors: &mut Vec<String>) -> Vec<Row> {
    let reps = (1..=repeat)
        .map(|i| {
            if repeat > 1 {
                eprintln!("osmos-bench: pinned repetition {i} of {repeat}");
            }
            pinned_child(quick, only, errors)
        })
        .collect();
    report::merge_repetitions(reps)
}

/// Runs the pinned pass in a fresh copy of this program and reads its rows.
fn pinned_child(quick: bool, only: Option<&str>, errors: &mut Vec<String>) -> Vec<Row> {
    let path = std::env::temp_dir().join(format!("osmos-bench-pinned-{}.rows", std::process::id()));
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            errors.push(format!("pinned pass: {e}"));
            return Vec::new();
        }
    };
    let mut cmd = Command::new(exe);
    cmd.arg("--pinned-pass").arg(&path);
    if quick {
        cmd.arg("--quick");
    }
    if let Some(o) = only {
        cmd.arg("--only").arg(o);
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => errors.push(format!("pinned pass exited with {s}")),
        Err(e) => errors.push(format!("pinned pass: {e}")),
    }
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    text.lines().filter_map(Row::from_line).collect()
}

fn main() -> ExitCode {
    if std::env::var_os(osmos_session::control::ENV_CELL_NAME).is_some() {
        osmos_plugin_sdk::run("osmos-bench cell", || BenchDispatcher::new(BenchImpl));
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--floor-child") {
        return ExitCode::from(u8::try_from(floor::child(&args[1..])).unwrap_or(1));
    }
    if let Some(mode @ ("--calls" | "--streams")) = args.first().map(String::as_str) {
        return profile_only(mode, &args[1..]);
    }
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut errors = Vec::new();

    if let Some(path) = &opts.pinned_pass {
        // First thing, before any thread exists: everything started from
        // here on inherits the mask.
        if let Err(e) = sys::pin_to_cpu0() {
            eprintln!("osmos-bench: cannot pin to CPU 0: {e}");
            return ExitCode::FAILURE;
        }
        let rows = pass(
            Params {
                quick: opts.quick,
                pinned: true,
                only: opts.only,
            },
            &mut errors,
        );
        let text: String = rows.iter().map(|r| r.to_line() + "\n").collect();
        if let Err(e) = std::fs::write(path, text) {
            errors.push(format!("writing {}: {e}", path.display()));
        }
        for e in &errors {
            eprintln!("osmos-bench: error: {e}");
        }
        return if errors.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }

    let machine = Machine::probe(opts.quick);
    let started = Instant::now();
    let mut rows = Vec::new();
    if opts.unpinned {
        rows.extend(pass(
            Params {
                quick: opts.quick,
                pinned: false,
                only: opts.only,
            },
            &mut errors,
        ));
    }
    let repeat = opts.repeat.unwrap_or(if opts.quick { 1 } else { 3 });
    if opts.pinned {
        rows.extend(pinned_passes(opts.quick, repeat, opts.only, &mut errors));
    }

    println!(
        "osmos-bench{}: {} CPUs ({} allowed), {}, {}",
        if opts.quick { " --quick" } else { "" },
        machine.cpus,
        machine.allowed_cpus,
        machine.kernel,
        machine.cpu_model
    );
    println!(
        "latencies: p50 and p99 in the p50|median and p99|lowest columns; rates: median and lowest of the runs.\n\
         ratio = p50 / floor p50 (latency: × slower than the floor; rate: fraction of the floor's rate);\n\
         vs uds = p50 / p50 of floor_uds/<case>, the same workload over a raw blocking Unix socket, read the same way;\n\
         cs/call = context switches per call, voluntary + involuntary, every thread of host and peer."
    );
    if opts.pinned && repeat > 1 {
        println!(
            "the pinned pass ran {repeat} times, each in a fresh process: pinned rows are the repetition with the median p50."
        );
    }
    if opts.quick {
        println!(
            "--quick: fewer iterations, 1 s of idle instead of 5 s, 16 cells instead of 64, {repeat} pinned repetition(s)."
        );
    }
    println!();
    print!("{}", report::table(&rows));
    println!("\ntotal {:.1?}", started.elapsed());

    if let Some(path) = &opts.json {
        match std::fs::write(path, report::to_json(&machine, &rows)) {
            Ok(()) => println!("wrote {}", path.display()),
            Err(e) => errors.push(format!("writing {}: {e}", path.display())),
        }
    }
    for e in &errors {
        eprintln!("osmos-bench: error: {e}");
    }
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
