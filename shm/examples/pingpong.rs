//! Two-process ping-pong over one segment: the round-trip time of a small
//! frame, host → cell → host, for each wait strategy.
//!
//! ```text
//! cargo run --release -p osmos-shm --example pingpong            # unpinned
//! taskset -c 0 cargo run --release -p osmos-shm --example pingpong   # one CPU
//! ```
//!
//! The program re-executes itself as the cell with the segment at fd 3.

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use osmos_shm::{Endpoint, Segment, SegmentConfig, Side, WaitStrategy};

const ROUNDS: usize = 20_000;
const WARMUP: usize = 2_000;
const FRAME: usize = 32;

fn strategies() -> Vec<(&'static str, WaitStrategy)> {
    vec![
        ("adaptive (default)", WaitStrategy::default()),
        ("park at once", WaitStrategy::PARK),
        (
            "spin up to 1 ms",
            WaitStrategy {
                spin: Duration::from_millis(1),
                yields: 16,
            },
        ),
    ]
}

fn set_strategy(ep: &mut Endpoint, s: WaitStrategy) {
    ep.sender.set_wait_strategy(s);
    ep.receiver.set_wait_strategy(s);
}

fn cell(strategy: usize) {
    // SAFETY: the parent placed the segment at fd 3 for us alone.
    let fd = unsafe { OwnedFd::from_raw_fd(3) };
    let seg = Segment::attach(fd).expect("attach");
    let mut ep = seg.endpoint().expect("endpoint");
    set_strategy(&mut ep, strategies()[strategy].1);
    let mut buf = Vec::with_capacity(FRAME);
    loop {
        let m = ep.receiver.recv(None).expect("recv");
        if m.is_empty() {
            return;
        }
        buf.clear();
        m.append_to(&mut buf);
        drop(m);
        ep.sender.send(&buf, None).expect("send");
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--cell") {
        cell(args[2].parse().expect("strategy index"));
        return;
    }
    let cpus = rustix::thread::sched_getaffinity(None)
        .map(|s| s.count())
        .unwrap_or(0);
    println!("two-process ping-pong, {FRAME}-byte frames, {ROUNDS} round trips, allowed CPUs: {cpus}");
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10}",
        "wait strategy", "min", "p50", "p99", "mean"
    );
    for (i, (name, strategy)) in strategies().into_iter().enumerate() {
        let seg = Segment::create(&SegmentConfig::default(), 1).expect("create");
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--cell", &i.to_string()]).stdin(Stdio::null());
        seg.pass_to(&mut cmd, 3);
        let mut child = cmd.spawn().expect("spawn cell");
        let mut ep = seg.endpoint().unwrap();
        // If the cell exits (or crashes), mark it dead so no wait here hangs.
        let live = ep.liveness.clone();
        let watcher = std::thread::spawn(move || {
            let status = child.wait().expect("wait for the cell");
            live.mark_dead(Side::Cell);
            status
        });
        set_strategy(&mut ep, strategy);
        let mut times = Vec::with_capacity(ROUNDS);
        let msg = [7u8; FRAME];
        for round in 0..WARMUP + ROUNDS {
            let t = Instant::now();
            ep.sender.send(&msg, None).unwrap();
            let m = ep.receiver.recv(None).unwrap();
            assert_eq!(m.len(), FRAME);
            drop(m);
            if round >= WARMUP {
                times.push(t.elapsed());
            }
        }
        ep.sender.send(&[], None).unwrap();
        let status = watcher.join().unwrap();
        assert!(status.success(), "the cell failed: {status}");
        times.sort();
        let mean = times.iter().sum::<Duration>() / times.len() as u32;
        let us = |d: Duration| format!("{:.2} µs", d.as_secs_f64() * 1e6);
        println!(
            "{name:<22} {:>10} {:>10} {:>10} {:>10}",
            us(times[0]),
            us(percentile(&times, 0.5)),
            us(percentile(&times, 0.99)),
            us(mean)
        );
    }
}
