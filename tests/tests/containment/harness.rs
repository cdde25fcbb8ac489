//! What every containment test shares: the captured host log, the host's
//! own resource use read from `/proc/self`, the well-behaved sibling called
//! throughout an attack, and the bounds the host must stay within.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use osmos_host::{CellBuilder, CellHandle, ExitInfo, LogLimits};
use osmos_tests::{AttackClient, AttackKind, TestCellClient};

pub const ATTACKER: &str = env!("CARGO_BIN_EXE_attack-cell");
pub const SIBLING: &str = env!("CARGO_BIN_EXE_test-cell");

/// Bound on every wait; only reached when something hangs.
pub const BOUND: Duration = Duration::from_secs(60);

/// The host's resident memory may grow at most this much during an attack.
pub const PEAK_RSS_KIB: u64 = 48 << 10;
/// ... and must come back within this much of where it started once the
/// attack is over.
pub const AFTER_RSS_KIB: u64 = 16 << 10;
/// The host's threads may grow at most this much during an attack.
pub const PEAK_THREADS: i64 = 4;
/// The host's open fds may grow at most this much during an attack (the
/// attack passes hundreds of them: none may land in the host).
pub const PEAK_FDS: i64 = 6;

/// Whether to run the long versions (`OSMOS_CONTAINMENT_LONG=1`).
pub fn long() -> bool {
    std::env::var("OSMOS_CONTAINMENT_LONG").is_ok_and(|v| v == "1")
}

/// `short`, or `long` under `OSMOS_CONTAINMENT_LONG=1`.
pub fn size(short: u64, long_: u64) -> u64 {
    if long() { long_ } else { short }
}

pub async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Polls `cond` (every few milliseconds) until it holds, within [`BOUND`].
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    bounded(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// One event the host's tracing received.
#[derive(Clone, Debug)]
pub struct Event {
    pub level: tracing::Level,
    pub target: String,
    /// The message, then ` key=value` for each field, as recorded (no escaping added).
    pub text: String,
}

impl Event {
    /// Whether a cell's event (target `osmos::cell`) from cell `name`.
    pub fn by_cell(&self, name: &str) -> bool {
        self.target == osmos_host::CELL_TARGET && self.text.contains(&format!(" cell={name} "))
    }

    /// Whether one of the host's own events about cell `name`.
    pub fn about_cell(&self, name: &str) -> bool {
        self.target.starts_with("osmos_host") && self.text.contains(&format!(" cell={name} "))
    }
}

/// The events captured since the test began (at most [`Log::CAP`]).
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Event>>>);

impl Log {
    pub const CAP: usize = 50_000;

    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }

    pub fn any(&self, f: impl Fn(&Event) -> bool) -> bool {
        self.0.lock().unwrap().iter().any(f)
    }

    pub async fn wait_for(&self, what: &str, f: impl Fn(&Event) -> bool) {
        until(what, || self.any(&f)).await;
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Log {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct V(String, String);
        impl tracing::field::Visit for V {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 = format!("{v:?}");
                } else {
                    self.1.push_str(&format!(" {}={v:?}", f.name()));
                }
            }
            fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                if f.name() == "message" {
                    self.0 = v.to_string();
                } else {
                    self.1.push_str(&format!(" {}={v}", f.name()));
                }
            }
        }
        let mut events = self.0.lock().unwrap();
        if events.len() >= Self::CAP {
            return;
        }
        let mut v = V(String::new(), String::new());
        event.record(&mut v);
        events.push(Event {
            level: *event.metadata().level(),
            target: event.metadata().target().to_string(),
            text: format!("{}{} ", v.0, v.1),
        });
    }
}

/// Runs one test body alone (the tests measure the whole process), on a
/// two-worker runtime, with the host's events captured into the `Log` it
/// gets.
pub fn run<F: Future<Output = ()>>(body: impl FnOnce(Log) -> F) {
    use tracing_subscriber::prelude::*;
    static SERIAL: Mutex<()> = Mutex::new(());
    static LOG: OnceLock<Log> = OnceLock::new();
    let _alone = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let log = LOG
        .get_or_init(|| {
            let log = Log::default();
            tracing_subscriber::registry()
                .with(
                    log.clone()
                        .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
                )
                .init();
            log
        })
        .clone();
    log.0.lock().unwrap().clear();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(body(log.clone()))));
    if let Err(panic) = result {
        let events = log.events();
        eprintln!("the host's last events:");
        for e in &events[events.len().saturating_sub(40)..] {
            let text: String = e.text.chars().take(300).collect();
            eprintln!("  {} {}: {text}", e.level, e.target);
        }
        std::panic::resume_unwind(panic);
    }
}

/// The host's own use of memory, threads and fds, from `/proc/self`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub rss_kib: u64,
    pub threads: i64,
    pub fds: i64,
}

/// The CPU time this process has used (user + system, `/proc/self/stat`).
pub fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which ends at the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 1000 / hz)
}

impl Usage {
    pub fn now() -> Usage {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64 - 1);
        Usage {
            rss_kib: field("VmRSS:"),
            threads: field("Threads:") as i64,
            fds,
        }
    }
}

/// One line per entry of `dir` (a `/proc` directory), sorted and joined,
/// for a failure message.
fn listing(dir: &str, line: impl Fn(&std::fs::DirEntry) -> String) -> String {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return format!("({dir} unreadable)");
    };
    let mut all: Vec<String> = entries.flatten().map(|e| line(&e)).collect();
    all.sort();
    all.join(", ")
}

/// Where each of this process's open fds points (`/proc/self/fd`).
pub fn fd_targets() -> String {
    listing("/proc/self/fd", |e| {
        let target = std::fs::read_link(e.path()).map_or_else(|e| e.to_string(), |t| t.display().to_string());
        format!("{}={target}", e.file_name().to_string_lossy())
    })
}

/// The names of this process's threads (`/proc/self/task/*/comm`).
pub fn thread_names() -> String {
    listing("/proc/self/task", |e| {
        std::fs::read_to_string(e.path().join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string()
    })
}

/// Samples [`Usage`] every 2 ms on a thread of its own, keeping the peak of each.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Usage>,
}

impl Sampler {
    pub fn start() -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = Usage::now();
            while !flag.load(Ordering::Relaxed) {
                let u = Usage::now();
                peak.rss_kib = peak.rss_kib.max(u.rss_kib);
                peak.threads = peak.threads.max(u.threads);
                peak.fds = peak.fds.max(u.fds);
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        });
        Sampler { stop, thread }
    }

    /// The peak of each measure since [`start`](Self::start).
    pub fn stop(self) -> Usage {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// What the sibling's calls did.
#[derive(Debug, Default)]
pub struct Calls {
    pub ok: u64,
    pub failed: Vec<String>,
    pub latencies: Vec<Duration>,
}

impl Calls {
    pub fn percentile(&self, p: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    }
}

/// A well-behaved cell called every millisecond while an attack runs.
pub struct Sibling {
    pub cell: CellHandle,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<Calls>>,
}

impl Sibling {
    pub async fn spawn() -> Sibling {
        let cell = bounded("the sibling", CellBuilder::new(SIBLING).name("sibling").spawn())
            .await
            .expect("spawn the sibling");
        Sibling {
            cell,
            stop: Arc::default(),
            task: None,
        }
    }

    /// Starts calling it.
    pub fn call_throughout(&mut self) {
        let client = self.cell.client::<TestCellClient>().unwrap();
        let stop = self.stop.clone();
        self.task = Some(tokio::spawn(async move {
            let mut calls = Calls::default();
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let t = Instant::now();
                match tokio::time::timeout(Duration::from_secs(5), client.add(i, 1)).await {
                    Ok(Ok(v)) if v == i + 1 => calls.ok += 1,
                    other => calls.failed.push(format!("{other:?}")),
                }
                calls.latencies.push(t.elapsed());
                i = i.wrapping_add(1) % 1_000_000;
            }
            calls
        }));
    }

    /// Stops calling; every call must have succeeded.
    pub async fn calls(&mut self) -> Calls {
        self.stop.store(true, Ordering::Relaxed);
        let calls = bounded("the sibling's calls", self.task.take().unwrap())
            .await
            .unwrap();
        assert!(
            calls.failed.is_empty(),
            "sibling calls failed: {:?}",
            calls.failed
        );
        assert!(calls.ok > 0, "the sibling was never called");
        calls
    }

    pub async fn shutdown(self) {
        assert_eq!(
            bounded(
                "the sibling's shutdown",
                self.cell.shutdown(Duration::from_secs(5))
            )
            .await,
            ExitInfo::Exited(0)
        );
    }
}

/// An attacker and a sibling, and the host's use before the attack.
pub struct Scene {
    pub name: &'static str,
    pub attacker: CellHandle,
    pub sibling: Sibling,
    pub baseline: Usage,
    /// Where the host's fds pointed when `baseline` was taken.
    pub baseline_fds: String,
}

/// Log limits that summarize drops quickly (a test waits for the summary).
pub fn quick_summary() -> LogLimits {
    LogLimits {
        summary_every: Duration::from_millis(250),
        ..LogLimits::default()
    }
}

impl Scene {
    /// Spawns the sibling and an attacker (`builder` adds to the attacker's
    /// builder), then measures the host.
    pub async fn new(name: &'static str, builder: impl FnOnce(CellBuilder) -> CellBuilder) -> Scene {
        let sibling = Sibling::spawn().await;
        let attacker = bounded(
            "the attacker",
            builder(CellBuilder::new(ATTACKER).name("attacker")).spawn(),
        )
        .await
        .expect("spawn the attacker");
        // Both sessions have carried a call: their buffers exist.
        assert_eq!(
            sibling
                .cell
                .client::<TestCellClient>()
                .unwrap()
                .add(1, 1)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            attacker
                .client::<AttackClient>()
                .unwrap()
                .add(1, 1)
                .await
                .unwrap(),
            2
        );
        Scene {
            name,
            attacker,
            sibling,
            baseline: Usage::now(),
            baseline_fds: fd_targets(),
        }
    }

    pub fn client(&self) -> AttackClient {
        self.attacker.client::<AttackClient>().unwrap()
    }

    /// Runs `kind` of size `amount` while the sibling is called, until the
    /// attacker says it is done and `settled` (the host has taken all of
    /// it in); returns the host's peak use meanwhile.
    pub async fn attack(&mut self, kind: AttackKind, amount: u64, settled: impl AsyncFnOnce()) -> Usage {
        let sampler = Sampler::start();
        self.sibling.call_throughout();
        let c = self.client();
        c.start(kind.name().into(), amount)
            .await
            .expect("start the attack");
        let started = Instant::now();
        let cpu = cpu_time();
        let (done, _, error) = bounded("the attack to finish", async {
            loop {
                let p = c.progress().await.expect("the attacker answers while it attacks");
                if p.1 {
                    break p;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(error.is_empty(), "the attacker's {} failed: {error}", kind.name());
        settled().await;
        let took = started.elapsed();
        let cpu = cpu_time().saturating_sub(cpu);
        let peak = sampler.stop();
        let calls = self.sibling.calls().await;
        let growth = Usage {
            rss_kib: peak.rss_kib.saturating_sub(self.baseline.rss_kib),
            threads: peak.threads - self.baseline.threads,
            fds: peak.fds - self.baseline.fds,
        };
        eprintln!(
            "containment {}: {} x{done} in {took:.2?}; host CPU {cpu:.2?} (sibling calls included); host peak growth: rss {} KiB, threads {:+}, fds {:+}; sibling: {} calls, p50 {:.2?}, p99 {:.2?}, max {:.2?}",
            self.name,
            kind.name(),
            growth.rss_kib,
            growth.threads,
            growth.fds,
            calls.ok,
            calls.percentile(0.5),
            calls.percentile(0.99),
            calls.percentile(1.0),
        );
        assert!(
            growth.rss_kib <= PEAK_RSS_KIB && growth.threads <= PEAK_THREADS && growth.fds <= PEAK_FDS,
            "{}: the host grew past its bound: {growth:?} (bounds: {PEAK_RSS_KIB} KiB, {PEAK_THREADS} threads, {PEAK_FDS} fds)",
            self.name
        );
        growth
    }

    /// The host comes back near its baseline with the attacker still
    /// running; then both cells shut down, and the host's fds and threads
    /// are back where they were before either was spawned (`before`).
    pub async fn finish(self, before: Usage) {
        let base = self.baseline;
        let back = |u: &Usage| {
            u.rss_kib <= base.rss_kib + AFTER_RSS_KIB && u.fds <= base.fds && u.threads <= base.threads + 1
        };
        let came_back = tokio::time::timeout(BOUND, async {
            while !back(&Usage::now()) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        if came_back.is_err() {
            panic!(
                "{}: the host's use did not come back near its baseline within {BOUND:?}: now {:?}, baseline {base:?} (allowed: rss +{AFTER_RSS_KIB} KiB, threads +1, fds +0); open fds at the baseline: {}; now: {}; threads now: {}",
                self.name,
                Usage::now(),
                self.baseline_fds,
                fd_targets(),
                thread_names(),
            );
        }
        assert_eq!(
            self.client().add(2, 3).await.unwrap(),
            5,
            "the attacker is still served: it was throttled, not cut off"
        );
        let exit = bounded(
            "the attacker's shutdown",
            self.attacker.shutdown(Duration::from_secs(5)),
        )
        .await;
        assert_eq!(exit, ExitInfo::Exited(0), "{}", self.name);
        self.sibling.shutdown().await;
        until("the host's fds to come back", || Usage::now().fds <= before.fds).await;
    }
}
