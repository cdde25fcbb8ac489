//! Resource limits of the default sandbox, across processes: a memory hog
//! and a thread bomb are stopped by the default policy while a sibling cell
//! is called throughout and the host stays bounded; cells run under ids of
//! their own (under a root host), so they cannot signal or trace each other;
//! a cell program kept where only the host can reach it still runs.
//!
//! Short by default; `OSMOS_LIMITS_LONG=1` repeats each attack (see
//! [`rounds`]). Run with `--nocapture` to see the measurements.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use osmos_host::sandbox::{
    CgroupLimits, DEFAULT_MEMORY, DEFAULT_NICE_INCREMENT, DEFAULT_TASKS, Step, prepare,
};
use osmos_host::{CellBuilder, CellHandle, ExitInfo, SandboxPolicy};
use osmos_session::CallError;
use osmos_tests::{GreedyClient, TestCellClient};

const GREEDY: &str = env!("CARGO_BIN_EXE_greedy-cell");
const CELL: &str = env!("CARGO_BIN_EXE_test-cell");
/// Bound on every wait; only reached when something hangs.
const BOUND: Duration = Duration::from_secs(20);
/// How much the host's resident memory may grow during an attack.
const HOST_RSS_GROWTH: u64 = 64 << 20;
/// How many threads the host may gain during an attack (the spawner thread,
/// tokio's blocking pool).
const HOST_THREAD_GROWTH: u64 = 8;
/// The fewest calls the sibling makes during (and right after) an attack.
const MIN_SIBLING_CALLS: usize = 200;
/// At most one call to the sibling per this period.
const SIBLING_PACE: Duration = Duration::from_millis(1);

/// The attacks run one at a time, so that each measures itself alone.
static ONE_ATTACK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// How many descriptors the host may gain during an attack.
const HOST_FD_GROWTH: u64 = 8;

fn root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Attack rounds: 1, or 5 with `OSMOS_LIMITS_LONG` set.
fn rounds() -> usize {
    if std::env::var_os("OSMOS_LIMITS_LONG").is_some() {
        5
    } else {
        1
    }
}

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn spawn(program: &str, name: &str) -> CellHandle {
    bounded("spawn", CellBuilder::new(program).name(name).spawn())
        .await
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"))
}

/// A field of `/proc/<pid>/status` in its unit (kB values in bytes).
fn status_field(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let mut words = line.split_whitespace();
    let value: u64 = words.next().unwrap().parse().unwrap();
    if words.next() == Some("kB") {
        value << 10
    } else {
        value
    }
}

/// The host's (this process's) resident memory and threads.
#[derive(Clone, Copy, Debug)]
struct HostUse {
    rss: u64,
    threads: u64,
    fds: u64,
}

fn host_use() -> HostUse {
    HostUse {
        rss: status_field("self", "VmRSS"),
        threads: status_field("self", "Threads"),
        fds: std::fs::read_dir("/proc/self/fd").unwrap().count() as u64,
    }
}

/// Calls a sibling cell in a loop until stopped; every call must succeed.
struct Sibling {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<Vec<Duration>, String>>,
}

impl Sibling {
    fn start(client: TestCellClient) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut latencies = Vec::new();
                let mut i = 0u32;
                // Paced, so that the sibling and this host do not take the
                // CPU the attacker would use.
                let mut pace = tokio::time::interval(SIBLING_PACE);
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // Past the stop, until enough calls were made to tell: an
                // attack stopped in milliseconds still has its sibling called
                // while the attacker holds what it took.
                while !(stop.load(Ordering::Relaxed) && latencies.len() >= MIN_SIBLING_CALLS) {
                    let start = Instant::now();
                    match tokio::time::timeout(BOUND, client.add(i, 1)).await {
                        Ok(Ok(sum)) if sum == i.wrapping_add(1) => {}
                        other => return Err(format!("call {i} to the sibling: {other:?}")),
                    }
                    latencies.push(start.elapsed());
                    i = i.wrapping_add(1);
                    pace.tick().await;
                }
                Ok(latencies)
            }
        });
        Self { stop, task }
    }

    /// Stops the loop; returns the number of calls and their p99 and max.
    async fn finish(self) -> (usize, Duration, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let mut latencies = bounded("the sibling's calls", self.task)
            .await
            .expect("the sibling loop")
            .unwrap_or_else(|e| panic!("a call to the sibling failed during the attack: {e}"));
        assert!(!latencies.is_empty(), "the sibling was never called");
        latencies.sort();
        let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
        (latencies.len(), p99, *latencies.last().unwrap())
    }
}

/// Checks the host's growth since `before` against the bounds.
fn assert_host_bounded(before: HostUse, what: &str) -> HostUse {
    let now = host_use();
    eprintln!(
        "{what}: host RSS {} -> {} MiB, threads {} -> {}, fds {} -> {}",
        before.rss >> 20,
        now.rss >> 20,
        before.threads,
        now.threads,
        before.fds,
        now.fds
    );
    assert!(
        now.fds <= before.fds + HOST_FD_GROWTH,
        "{what}: the host went from {} to {} descriptors",
        before.fds,
        now.fds
    );
    assert!(
        now.rss <= before.rss + HOST_RSS_GROWTH,
        "{what}: the host grew from {} to {} bytes",
        before.rss,
        now.rss
    );
    assert!(
        now.threads <= before.threads + HOST_THREAD_GROWTH,
        "{what}: the host went from {} to {} threads",
        before.threads,
        now.threads
    );
    now
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_stopped_by_the_default_policy_while_its_sibling_is_served() {
    let _alone = ONE_ATTACK_AT_A_TIME.lock().await;
    let sibling = spawn(CELL, "sibling").await;
    let siblings = sibling.client::<TestCellClient>().unwrap();
    for round in 0..rounds() {
        let hog = spawn(GREEDY, "memory-hog").await;
        let report = hog.sandbox_report().unwrap();
        assert!(report.is_applied(Step::Rlimits), "{report}");
        let greedy = hog.client::<GreedyClient>().unwrap();
        let pid = hog.pid().unwrap().to_string();
        let before = host_use();
        let calls = Sibling::start(siblings.clone());

        // Ask for four times the limit: the limit stops it first.
        let started = Instant::now();
        let max_mib = u32::try_from((DEFAULT_MEMORY >> 20) * 4).unwrap();
        let held = bounded("the hog", greedy.hog_memory(max_mib))
            .await
            .unwrap_or_else(|e| panic!("the memory hog was not stopped: {e}"));
        let stopped_after = started.elapsed();
        let (data, rss) = (status_field(&pid, "VmData"), status_field(&pid, "VmRSS"));
        let (n, p99, max) = calls.finish().await;
        eprintln!(
            "round {round}: the hog held {} MiB (VmData {} MiB, VmRSS {} MiB) when stopped after \
             {stopped_after:?}; sibling: {n} calls, p99 {p99:?}, max {max:?}",
            held >> 20,
            data >> 20,
            rss >> 20
        );
        assert!(held > 0 && held <= DEFAULT_MEMORY, "held {held}");
        assert!(data <= DEFAULT_MEMORY, "VmData {data} over RLIMIT_DATA");
        assert!(rss <= DEFAULT_MEMORY + (64 << 20), "VmRSS {rss}");
        assert_host_bounded(before, "memory hog");
        // The hog is stopped, not broken: it still answers.
        assert_eq!(bounded("add", greedy.add(2, 3)).await.unwrap(), 5);
        bounded("shutdown", hog.shutdown(Duration::from_secs(5))).await;
    }
    assert_eq!(bounded("add", siblings.add(1, 1)).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_bomb_is_stopped_by_the_default_policy_while_its_sibling_is_served() {
    let _alone = ONE_ATTACK_AT_A_TIME.lock().await;
    if !root() {
        eprintln!("not root: RLIMIT_NPROC binds any host's cells; the root case is what this checks");
    }
    let sibling = spawn(CELL, "sibling").await;
    let siblings = sibling.client::<TestCellClient>().unwrap();
    for round in 0..rounds() {
        let bomb = spawn(GREEDY, "thread-bomb").await;
        let report = bomb.sandbox_report().unwrap();
        assert!(
            !report.skipped.iter().any(|(s, _)| *s == Step::RlimitNproc),
            "{report}"
        );
        let greedy = bomb.client::<GreedyClient>().unwrap();
        let pid = bomb.pid().unwrap().to_string();
        let before = host_use();
        let calls = Sibling::start(siblings.clone());

        let started = Instant::now();
        let (started_threads, error) = bounded("the thread bomb", greedy.spawn_threads(100_000))
            .await
            .unwrap_or_else(|e| panic!("the thread bomb was not stopped: {e}"));
        let stopped_after = started.elapsed();
        let threads = status_field(&pid, "Threads");
        let (n, p99, max) = calls.finish().await;
        eprintln!(
            "round {round}: the bomb started {started_threads} threads ({threads} in all) before \
             `{error}` after {stopped_after:?}; sibling: {n} calls, p99 {p99:?}, max {max:?}"
        );
        assert!(threads <= DEFAULT_TASKS, "{threads} threads");
        assert!(
            error.contains("Resource temporarily unavailable"),
            "EAGAIN from RLIMIT_NPROC: {error}"
        );
        assert_host_bounded(before, "thread bomb");
        assert_eq!(bounded("add", greedy.add(2, 3)).await.unwrap(), 5);
        bounded("shutdown", bomb.shutdown(Duration::from_secs(5))).await;
    }
    assert_eq!(bounded("add", siblings.add(1, 1)).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_run_under_their_own_ids_below_the_host_and_cannot_signal_or_trace_each_other() {
    let a = spawn(GREEDY, "a").await;
    let b = spawn(GREEDY, "b").await;
    let (ca, cb) = (
        a.client::<GreedyClient>().unwrap(),
        b.client::<GreedyClient>().unwrap(),
    );
    let (uid_a, gid_a, nice_a) = bounded("identity", ca.identity()).await.unwrap();
    let (uid_b, _, _) = bounded("identity", cb.identity()).await.unwrap();
    eprintln!("cell a runs as {uid_a}:{gid_a} at nice {nice_a}, cell b as uid {uid_b}");
    assert!(nice_a >= DEFAULT_NICE_INCREMENT, "nice {nice_a}");
    let report = a.sandbox_report().unwrap();
    eprintln!("report: {report}");
    if root() {
        assert!(uid_a != 0 && uid_b != 0 && uid_a != uid_b, "{uid_a} {uid_b}");
        assert_eq!(gid_a, uid_a);
        assert!(report.is_applied(Step::CellIds), "{report}");
        assert_eq!(report.cell_ids, Some((uid_a, gid_a)));
    } else {
        eprintln!("not root: cells keep the host's ids (and their own user namespace)");
    }
    let (pid_a, pid_b) = (a.pid().unwrap(), b.pid().unwrap());
    for (from, to, client) in [("a", pid_b, &ca), ("b", pid_a, &cb)] {
        for signal in [0, libc::SIGCONT, libc::SIGKILL] {
            let r = bounded("signal", client.signal(to, signal)).await;
            assert!(
                matches!(r, Err(CallError::User(_))),
                "cell {from} signalled pid {to} with {signal}: {r:?}"
            );
        }
        let r = bounded("ptrace", client.ptrace(to)).await;
        assert!(
            matches!(r, Err(CallError::User(_))),
            "cell {from} traced pid {to}: {r:?}"
        );
        // Nor the host.
        let r = bounded("signal", client.signal(std::process::id(), 0)).await;
        assert!(
            matches!(r, Err(CallError::User(_))),
            "cell {from} signalled the host: {r:?}"
        );
    }
    assert_eq!(bounded("add", ca.add(1, 2)).await.unwrap(), 3);
    assert_eq!(bounded("add", cb.add(1, 2)).await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_program_in_a_root_only_directory_still_runs() {
    use std::os::unix::fs::PermissionsExt;
    if !root() {
        eprintln!("skipped: only a root host has a directory its cells cannot reach");
        return;
    }
    let dir =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("root-only-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let program = dir.join("greedy-cell");
    std::fs::copy(GREEDY, &program).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();

    let cell = bounded("spawn", CellBuilder::new(&program).name("root-only").spawn())
        .await
        .unwrap_or_else(|e| panic!("spawn from a root-only directory: {e}"));
    let c = cell.client::<GreedyClient>().unwrap();
    let (uid, _, _) = bounded("identity", c.identity()).await.unwrap();
    assert_ne!(uid, 0);
    assert_eq!(bounded("add", c.add(40, 2)).await.unwrap(), 42);
    bounded("shutdown", cell.shutdown(Duration::from_secs(5))).await;

    // A program the cell's uid may not execute is refused before the fork,
    // with what to do.
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o700)).unwrap();
    let err = prepare(&SandboxPolicy::default(), &program)
        .unwrap_err()
        .to_string();
    assert!(err.contains("chmod o+x") && err.contains("cell_ids"), "{err}");
    // So is a write directory it may not write.
    let err = prepare(
        &SandboxPolicy::default().with_write_dir(&dir),
        std::path::Path::new(GREEDY),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("write directory") && err.contains("o+wx"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_time_limit_stops_a_spinning_cell() {
    let _alone = ONE_ATTACK_AT_A_TIME.lock().await;
    let cell = bounded(
        "spawn",
        CellBuilder::new(GREEDY)
            .name("spinner")
            .sandbox(SandboxPolicy::default().with_cpu_time(1))
            .spawn(),
    )
    .await
    .unwrap();
    let report = cell.sandbox_report().unwrap();
    assert!(report.to_string().contains("RLIMIT_CPU=1/2"), "{report}");
    let c = cell.client::<GreedyClient>().unwrap();
    let started = Instant::now();
    // Asks for more CPU time than the limit allows: SIGXCPU ends the cell.
    let r = bounded("the spin", c.spin(30)).await;
    assert!(r.is_err(), "the spinning cell finished: {r:?}");
    let exit = bounded("the exit", cell.shutdown(Duration::from_secs(5))).await;
    eprintln!("the spinner ended after {:?}: {exit}", started.elapsed());
    assert!(
        matches!(exit, ExitInfo::Signaled(s) if s == libc::SIGXCPU || s == libc::SIGKILL),
        "{exit}"
    );
}

/// Names a cgroup v2 directory delegated to this test process, for
/// `cgroup_limits_apply_in_a_delegated_cgroup_v2`.
const CGROUP_ENV: &str = "OSMOS_TEST_CGROUP_V2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_limits_apply_in_a_delegated_cgroup_v2() {
    // Refused, untouched, where the directory is no cgroup v2 (nothing is
    // created: the check only reads).
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let err = prepare(
        &SandboxPolicy::default().with_cgroup(CgroupLimits {
            pids_max: Some(64),
            ..CgroupLimits::new(tmp)
        }),
        std::path::Path::new(GREEDY),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`cgroup`") && err.contains("not a cgroup v2"),
        "{err}"
    );

    let Some(parent) = std::env::var_os(CGROUP_ENV) else {
        eprintln!(
            "skipped: set {CGROUP_ENV} to a cgroup v2 directory delegated to this user (with the \
             memory, pids and cpu controllers in its cgroup.subtree_control) to run it"
        );
        return;
    };
    let limits = CgroupLimits {
        memory_max: Some(256 << 20),
        pids_max: Some(64),
        cpu_max: Some((50_000, 100_000)),
        ..CgroupLimits::new(&parent)
    };
    let cell = bounded(
        "spawn",
        CellBuilder::new(GREEDY)
            .name("cgroup")
            .sandbox(SandboxPolicy::default().with_cgroup(limits))
            .spawn(),
    )
    .await
    .unwrap_or_else(|e| panic!("spawn in {parent:?}: {e}"));
    let report = cell.sandbox_report().unwrap();
    let dir = report
        .cgroup
        .clone()
        .unwrap_or_else(|| panic!("no cgroup: {report}"));
    assert!(dir.starts_with(&parent), "{dir:?}");
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap();
    assert_eq!(read("memory.max").trim(), (256u64 << 20).to_string());
    assert_eq!(read("pids.max").trim(), "64");
    assert_eq!(read("cpu.max").trim(), "50000 100000");
    let pid = cell.pid().unwrap();
    assert!(
        read("cgroup.procs").lines().any(|l| l == pid.to_string()),
        "pid {pid} in {dir:?}"
    );
    let c = cell.client::<GreedyClient>().unwrap();
    let (started, _) = bounded("the thread bomb", c.spawn_threads(10_000)).await.unwrap();
    assert!(started < 64, "{started} threads under pids.max 64");
    bounded("shutdown", cell.shutdown(Duration::from_secs(5))).await;
    drop(cell);
    // The host removes the cgroup it created once the cell is gone.
    let deadline = Instant::now() + BOUND;
    while dir.exists() {
        assert!(Instant::now() < deadline, "{dir:?} was not removed");
        tokio::task::yield_now().await;
    }
}
