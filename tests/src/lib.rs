//! # osmos-tests: cross-process tests and their test cells
//!
//! The services the test cells serve (and the host serves to them) are
//! defined here once, so the cell binaries and the tests share them:
//!
//! - [`TestCell`] is what `test-cell` (`src/bin/test-cell.rs`) serves: calls,
//!   streams, hangs, exits, and probes of its own environment and sandbox.
//! - [`HostDirectory`] is a service a host exposes to its cells.
//! - [`Relay`] is what `relay-cell` (`src/bin/relay-cell.rs`) serves: it
//!   calls other cells through the host.
//! - [`fuzz`] holds the bodies of the fuzz targets (`fuzz/`), which the
//!   stable test `tests/fuzz.rs` runs over the committed seed corpus.
//! - [`hostile`] names the ways `hostile-cell` (`src/bin/hostile-cell/`)
//!   misbehaves after its handshake, and what the host must conclude.
//! - [`TokioCell`] is what `tokio-cell` (`src/bin/tokio-cell.rs`) serves: a
//!   cell whose `main` is `#[tokio::main]`, entering the SDK through `run`
//!   inside that runtime or through the async `serve`.
//! - [`Attack`] is what `attack-cell` (`src/bin/attack-cell.rs`) serves:
//!   ordinary calls, and attacks on the host through everything but the
//!   segment (output pipes, log records, the control socket, crash loops),
//!   named by [`AttackKind`].
//! - [`fault_proxy`] is a proxy that forwards connections and cuts, splits,
//!   delays and pauses them under a seeded PRNG; [`soak`] is the service
//!   `stable-peer` (`src/bin/stable-peer.rs`) serves over stable conduits
//!   through it.
//!
//! The tests themselves are in `tests/`: `host.rs` (spawning, calls, streams,
//! cancellation, death, restart, logs, bootstrap, many cells),
//! `restarts.rs` (clients that follow a cell across restarts),
//! `tokio_cell.rs` (the SDK's entry points inside a program's own runtime),
//! `containment.rs` (attacks on the host's output, logs, control socket,
//! restart policy and exit reporting, with a well-behaved sibling),
//! `sandbox_*.rs` (escape attempts), `chaos.rs` (cells killed at random under
//! load), `hostile.rs` (cells that scribble over their segment or lie),
//! `hostile_flip.rs` (a cell that rewrites its frames' strings and payloads
//! while the host decodes them), `stable_soak.rs` (sessions over stable
//! conduits through the fault proxy, to another process, across hundreds of
//! cuts; `OSMOS_SOAK=long` for the long run).

use std::future::Future;
use std::time::Duration;

use osmos_session::{Rx, Tx};

pub mod fault_proxy;
pub mod fuzz;
pub mod hostile;
pub mod soak;

/// What the `test-cell` binary serves.
#[osmos_macros::service]
pub trait TestCell {
    /// Adds.
    async fn add(&self, a: u32, b: u32) -> Result<u32, String>;
    /// Echoes bytes.
    async fn echo(&self, data: Vec<u8>) -> Result<Vec<u8>, String>;
    /// Sends `0..n` on `out`, then closes it.
    async fn count(&self, n: u32, out: Tx<u32>) -> Result<u32, String>;
    /// Sums what arrives on `input`.
    async fn sum(&self, input: Rx<u64>) -> Result<u64, String>;
    /// Never returns (until cancelled or the cell dies).
    async fn hang(&self) -> Result<(), String>;
    /// Exits the process with `code` right away.
    async fn exit(&self, code: i32) -> Result<(), String>;
    /// The cell's pid.
    async fn pid(&self) -> Result<u32, String>;
    /// The cell's environment, sorted `KEY=VALUE` lines.
    async fn env(&self) -> Result<Vec<String>, String>;
    /// The fd numbers open in the cell (excluding the one used to list them).
    async fn fds(&self) -> Result<Vec<i32>, String>;
    /// Logs `message` through tracing (info) and prints it on stdout and stderr.
    async fn log(&self, message: String) -> Result<(), String>;
    /// Asks the host's `HostDirectory` for `key` and returns its answer.
    async fn ask_host(&self, key: String) -> Result<String, String>;
    /// Tries to read a file; `Ok(bytes read)` or `Err(the OS error)`.
    async fn try_read(&self, path: String) -> Result<u64, String>;
    /// Tries to create and write a file; `Err(the OS error)` if refused.
    async fn try_write(&self, path: String) -> Result<(), String>;
    /// Tries to open a TCP connection to `addr`.
    async fn try_connect(&self, addr: String) -> Result<(), String>;
    /// Tries to attach to its parent with ptrace.
    async fn try_ptrace_parent(&self) -> Result<(), String>;
    /// Who calls, as the cell's session reports it
    /// (`CallContext::caller`), and the `osmos.caller` entry of the
    /// call's own metadata, if one reached the cell.
    async fn caller(&self) -> Result<(String, Option<String>), String>;
}

/// A service the host exposes to its cells.
#[osmos_macros::service]
pub trait HostDirectory {
    /// Looks up a key.
    async fn lookup(&self, key: String) -> Result<String, String>;
}

/// What the `relay-cell` binary serves: calls to other cells, made
/// through the host.
#[osmos_macros::service]
pub trait Relay {
    /// Adds (to show the relay cell still works).
    async fn add(&self, a: u32, b: u32) -> Result<u32, String>;
    /// Through the host, has `cell` stream `0..n` to this cell
    /// (`TestCell::count`) and sums it, then streams `1..=n` to `cell`
    /// (`TestCell::sum`); returns both sums.
    async fn stream_via(&self, cell: String, n: u32) -> Result<(u64, u64), String>;
    /// Through the host, calls `TestCell::hang` on `cell`; returns the
    /// error the call ends with (`Err` if it did not fail).
    async fn hang_via(&self, cell: String) -> Result<String, String>;
    /// Through the host, asks `cell` for its pid.
    async fn pid_via(&self, cell: String) -> Result<u32, String>;
    /// Through the host, asks `cell` who calls (`TestCell::caller`). A
    /// non-empty `claim` is sent as `osmos.caller`, both when opening
    /// the connection and with the call: an impersonation the host
    /// must not pass on.
    async fn caller_via(&self, cell: String, claim: String) -> Result<(String, Option<String>), String>;
}

/// What the `tokio-cell` binary serves.
#[osmos_macros::service]
pub trait TokioCell {
    /// Emits `message` as a `debug!` event, and says how the cell
    /// serves: its entry point and the flavor of the runtime the call
    /// runs on (e.g. `run on MultiThread`).
    async fn debug(&self, message: String) -> Result<String, String>;
    /// Emits `message` as an `info!` event.
    async fn info(&self, message: String) -> Result<(), String>;
}

/// What the `greedy-cell` binary serves: attacks on the host's
/// resources, to show what the default sandbox limits stop.
#[osmos_macros::service]
pub trait Greedy {
    /// Adds (to show the cell still answers).
    async fn add(&self, a: u32, b: u32) -> Result<u32, String>;
    /// Allocates and touches memory in 16 MiB chunks, and keeps it, until
    /// an allocation fails or `max_mib` is reached. `Ok(bytes held)` when
    /// an allocation failed, `Err` if nothing stopped it.
    async fn hog_memory(&self, max_mib: u32) -> Result<u64, String>;
    /// Starts threads that sleep forever until starting one fails or
    /// `max` is reached. `Ok((threads started, the error))` when one
    /// failed, `Err` if nothing stopped it.
    async fn spawn_threads(&self, max: u32) -> Result<(u32, String), String>;
    /// Spins on the CPU for `seconds` of CPU time (then returns them).
    async fn spin(&self, seconds: u32) -> Result<u32, String>;
    /// The cell's real uid, real gid and nice value.
    async fn identity(&self) -> Result<(u32, u32, i32), String>;
    /// `kill(pid, signal)`: `Err(the OS error)` if refused.
    async fn signal(&self, pid: u32, signal: i32) -> Result<(), String>;
    /// `ptrace(PTRACE_SEIZE, pid)`: `Err(the OS error)` if refused.
    async fn ptrace(&self, pid: u32) -> Result<(), String>;
}

/// What the `attack-cell` binary serves.
#[osmos_macros::service]
pub trait Attack {
    /// Adds (to show the cell still serves).
    async fn add(&self, a: u32, b: u32) -> Result<u32, String>;
    /// Starts the attack named `kind` ([`AttackKind::name`]) of size
    /// `amount` on a thread of its own; returns at once.
    async fn start(&self, kind: String, amount: u64) -> Result<(), String>;
    /// How the attack goes: units done, whether it finished, and the
    /// first error it met (empty if none; a write that failed, say).
    async fn progress(&self) -> Result<(u64, bool, String), String>;
}

/// The attacks `attack-cell` runs; `amount` sizes each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttackKind {
    /// One stdout line of `amount` bytes, written in 64 KiB pieces, then a newline.
    LongLine,
    /// `amount` lines of invalid UTF-8 (Latin-1, stray continuation bytes)
    /// on stdout and stderr, then an ordinary line on each.
    InvalidUtf8,
    /// `amount` short lines on stderr, as fast as the pipe takes them.
    StderrFlood,
    /// `amount` tracing events whose message, fields and target carry
    /// newlines, forged host log lines and terminal escape sequences.
    LogFlood,
    /// `amount` rounds of garbage on the control socket (empty, tiny,
    /// random, oversized and truncated packets, packets passing file
    /// descriptors), then one valid record saying it is done.
    ControlGarbage,
    /// Exits with status `amount` at once.
    Exit,
}

impl AttackKind {
    /// Every attack.
    pub const ALL: [AttackKind; 6] = [
        AttackKind::LongLine,
        AttackKind::InvalidUtf8,
        AttackKind::StderrFlood,
        AttackKind::LogFlood,
        AttackKind::ControlGarbage,
        AttackKind::Exit,
    ];

    /// The name `Attack::start` takes.
    pub fn name(self) -> &'static str {
        match self {
            AttackKind::LongLine => "long-line",
            AttackKind::InvalidUtf8 => "invalid-utf8",
            AttackKind::StderrFlood => "stderr-flood",
            AttackKind::LogFlood => "log-flood",
            AttackKind::ControlGarbage => "control-garbage",
            AttackKind::Exit => "exit",
        }
    }

    /// Parses [`name`](Self::name)'s output.
    pub fn parse(s: &str) -> Option<AttackKind> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// The record `attack-cell` sends after its control-socket garbage.
pub const CONTROL_GARBAGE_DONE: &str = "control garbage sent; the host still reads";
/// The line `attack-cell` writes after its long line.
pub const LONG_LINE_DONE: &str = "long line written; the pipe still flows";
/// The line `attack-cell` writes on stdout and stderr after invalid UTF-8.
pub const INVALID_UTF8_DONE: &str = "invalid utf-8 written; println still works";

/// Bound on every wait of a cross-process test; only reached when
/// something hangs.
pub const BOUND: Duration = Duration::from_secs(30);

/// Awaits `f`, panicking with `what` if it takes longer than [`BOUND`].
pub async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Streams `0..n` from the cell (`count`) and `1..=n` to it (`sum`),
/// checking every item that arrives, the count and the sum.
pub async fn streams_both_ways(c: &TestCellClient, n: u32) {
    let (tx, mut rx) = c.connection().channel::<u32>().expect("a channel");
    let counting = tokio::spawn({
        let c = c.clone();
        async move { c.count(n, tx).await }
    });
    let mut got = 0;
    while let Some(v) = bounded("item", rx.recv()).await {
        assert_eq!(v.expect("an item"), got);
        got += 1;
    }
    assert_eq!(got, n);
    assert_eq!(
        bounded("count", counting)
            .await
            .expect("the count task")
            .expect("count"),
        n
    );
    let (tx, rx) = c.connection().channel::<u64>().expect("a channel");
    let summing = tokio::spawn({
        let c = c.clone();
        async move { c.sum(rx).await }
    });
    for i in 1..=u64::from(n) {
        bounded("send", tx.send(&i)).await.expect("send");
    }
    tx.close().await.expect("close");
    let n = u64::from(n);
    assert_eq!(
        bounded("sum", summing).await.expect("the sum task").expect("sum"),
        n * (n + 1) / 2
    );
}
