//! A host and its cell confined to one CPU, the way a container limited to
//! one core runs them.
//!
//! On one CPU the two processes cannot both run: every handover is a
//! context switch, and a side that waits for the other must give the CPU
//! up. The shm link then hands over by yielding to a peer that last ran on
//! the same CPU, instead of sleeping and being woken. This binary holds a
//! single test that pins its own thread to one CPU before anything starts,
//! so the runtime's threads, the spawner and the cell all inherit the mask,
//! and checks that every kind of traffic completes, answers stay right, and
//! a ping-pong, from the thread of `block_on` or from a task on the
//! runtime's worker, does not put a side to sleep for each call.

use std::time::Duration;

use osmos_host::sandbox::CpuPriority;
use osmos_host::{CellBuilder, CellHandle, ExitInfo, SandboxPolicy};
use osmos_tests::{TestCellClient, bounded, streams_both_ways};

const CELL: &str = env!("CARGO_BIN_EXE_test-cell");
/// Pins the calling thread to the first CPU it may run on; what it starts
/// afterwards inherits the mask. Returns that CPU.
fn pin_to_one_cpu() -> usize {
    // SAFETY: an all-zero cpu_set_t is a valid empty set, and both calls get
    // its exact size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &set))
            .expect("some CPU allowed");
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one),
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
        cpu
    }
}

/// A `/proc/<pid>/status` field.
fn status_field(pid: u32, name: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the cell's status");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// Voluntary context switches of every thread of `pid` (a thread sleeping
/// counts one each time it goes to sleep).
fn voluntary_switches(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the cell's threads") {
        let path = task.expect("a thread").path().join("status");
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        total += text
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// Voluntary context switches of the calling thread.
fn this_thread_slept() -> u64 {
    std::fs::read_to_string("/proc/thread-self/status")
        .expect("this thread's status")
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches")
}

#[test]
fn one_cpu_carries_calls_streams_and_echoes_without_sleeping_per_call() {
    let cpu = pin_to_one_cpu();
    // What `#[tokio::main]` builds: one worker per allowed CPU, here one.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // The cell competes for the CPU with the same weight as the host: in
    // the host's session (a session of its own puts it in an autogroup of
    // its own where the kernel has autogroups, and that group's weight
    // against the host's depends on the rest of the host's session) and at
    // the host's nice. With unequal weights the kernel runs the lighter side
    // only when the heavier one sleeps: a yield cannot hand over, and the
    // link falls back to parking (see the README, "One CPU"). The rest of
    // the sandbox stays on.
    let policy = SandboxPolicy {
        new_session: false,
        cpu_priority: CpuPriority::Inherit,
        ..SandboxPolicy::default()
    };
    let cell: CellHandle = rt
        .block_on(bounded(
            "spawn",
            CellBuilder::new(CELL).name("one-cpu").sandbox(policy).spawn(),
        ))
        .expect("spawn the test cell");
    let c: TestCellClient = cell.client().expect("a running cell");
    let pid = rt.block_on(bounded("pid", c.pid())).unwrap();
    assert_eq!(
        status_field(pid, "Cpus_allowed_list"),
        cpu.to_string(),
        "the cell inherited the one-CPU mask"
    );

    // Calls from the thread that runs `block_on` (it may block for its
    // answer), with warm-up first: the link learns where each side runs.
    const CALLS: u32 = 4000;
    rt.block_on(async {
        for i in 0..200 {
            assert_eq!(c.add(i, 1).await.unwrap(), i + 1);
        }
    });
    // A side that parks for every call sleeps once per call; handing over
    // by yielding, it sleeps only when the other is slow to go on (another
    // process on this CPU can make it so: the best of three rounds
    // counts, a broken handover fails all three).
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let before = (voluntary_switches(pid), this_thread_slept());
        rt.block_on(async {
            for i in 0..CALLS {
                assert_eq!(bounded("add", c.add(i, i)).await.unwrap(), 2 * i);
            }
        });
        let slept = (voluntary_switches(pid) - before.0, this_thread_slept() - before.1);
        rounds.push(slept);
        if slept.0 < u64::from(CALLS) * 5 / 8 && slept.1 < u64::from(CALLS) / 4 {
            break;
        }
    }
    let (cell_slept, host_slept) = *rounds.last().expect("a round");
    assert!(
        cell_slept < u64::from(CALLS) * 5 / 8 && host_slept < u64::from(CALLS) / 4,
        "in {CALLS} one-CPU round trips (three rounds, sleeps of the cell and of the calling thread): {rounds:?}"
    );

    // The same from a task on the runtime's one worker, which may not
    // block but may yield: the host's threads (all of them) sleep only
    // now and then, not for each call. Best of three rounds, as above.
    let mut worker_rounds = Vec::new();
    for _ in 0..3 {
        let before = voluntary_switches(std::process::id());
        rt.block_on(async {
            let c = c.clone();
            tokio::spawn(async move {
                for i in 0..CALLS {
                    assert_eq!(c.add(i, 7).await.unwrap(), i + 7);
                }
            })
            .await
            .unwrap();
        });
        let slept = voluntary_switches(std::process::id()) - before;
        worker_rounds.push(slept);
        if slept < u64::from(CALLS) / 4 {
            break;
        }
    }
    assert!(
        *worker_rounds.last().expect("a round") < u64::from(CALLS) / 4,
        "in {CALLS} one-CPU round trips from a worker, the host's threads slept {worker_rounds:?} times"
    );

    rt.block_on(async {
        // Calls from tasks on the one worker, several at once.
        let tasks: Vec<_> = (0..8u32)
            .map(|t| {
                let c = c.clone();
                tokio::spawn(async move {
                    for i in 0..500u32 {
                        assert_eq!(c.add(t, i).await.unwrap(), t + i);
                    }
                })
            })
            .collect();
        for t in tasks {
            bounded("concurrent calls", t).await.unwrap();
        }

        // A stream from the cell, and one to it.
        streams_both_ways(&c, 20_000).await;

        // Large payloads both ways.
        for len in [64usize, 4096, 65_536, 1 << 20] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            assert_eq!(bounded("echo", c.echo(data.clone())).await.unwrap(), data);
        }
        assert_eq!(cell.shutdown(Duration::from_secs(10)).await, ExitInfo::Exited(0));
    });
}
