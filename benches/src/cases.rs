//! The session cases: what a user of osmos sees, host ↔ cell.
//!
//! Every shm case talks to a real cell process: this program re-executed by
//! [`CellBuilder`] with the default sandbox, serving [`Bench`](crate::service::Bench)
//! through `osmos_plugin_sdk::run`. `add_rtt/unix` and `add_rtt/memory` run
//! both peers in this process, each on its own one-worker runtime.

use std::future::Future;
use std::time::{Duration, Instant};

use osmos_host::{CellBuilder, CellHandle};
use osmos_session::SessionBuilder;
use osmos_session::link::stream::StreamLink;
use osmos_session::link::{Link, memory};

use crate::ctxsw::{CtxSwitches, Pair};
use crate::floor;
use crate::report::Row;
use crate::service::{BenchClient, BenchDispatcher, BenchImpl};

/// Any error, sendable between tasks.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// `--quick`: fewer iterations, 1 s of idle, 16 cells instead of 64.
    pub quick: bool,
    /// Whether this pass runs pinned to CPU 0 (labels the rows).
    pub pinned: bool,
    /// `--only PATTERN`: run only the cases whose name contains it (floors
    /// always run).
    pub only: Option<&'static str>,
}

impl Params {
    /// Whether the case `name` runs in this pass.
    pub fn wants(&self, name: &str) -> bool {
        self.only.is_none_or(|o| name.contains(o))
    }
    /// Whether any of `names` runs in this pass.
    pub fn wants_any(&self, names: &[&str]) -> bool {
        names.iter().any(|n| self.wants(n))
    }
    /// Timed sequential round trips per latency case (after a tenth as many
    /// warm-up ones).
    pub fn rounds(&self) -> usize {
        if self.quick { 2_000 } else { 20_000 }
    }
    /// Longest a single latency case may take before it stops early.
    pub fn cap(&self) -> Duration {
        if self.quick {
            Duration::from_millis(1_500)
        } else {
            Duration::from_secs(8)
        }
    }
    /// Repeated runs behind a rate.
    pub fn runs(&self) -> usize {
        if self.quick { 3 } else { 5 }
    }
    /// Items of 64 KiB per streaming run.
    pub fn stream_items(&self) -> usize {
        if self.quick { 1_000 } else { 4_000 }
    }
    /// Seconds of idle measured.
    pub fn idle(&self) -> Duration {
        Duration::from_secs(if self.quick { 1 } else { 5 })
    }
    /// Cell counts for the many-cells case.
    pub fn cell_counts(&self) -> &'static [usize] {
        if self.quick { &[1, 8, 16] } else { &[1, 8, 64] }
    }
    /// Whether any many-cells case runs in this pass (`--only cells_64`
    /// included: its reference, cells_1, runs with it).
    pub fn wants_cells(&self) -> bool {
        self.cell_counts()
            .iter()
            .any(|n| self.wants(&format!("cells_{n}/shm")))
    }
    /// How long each many-cells run calls.
    pub fn cells_window(&self) -> Duration {
        Duration::from_millis(if self.quick { 400 } else { 2_000 })
    }
    /// Spawn/kill samples.
    pub fn spawns(&self) -> usize {
        if self.quick { 3 } else { 15 }
    }
    /// Timed calls of `add_cold` (and its socket floor), each after a 1 ms
    /// pause.
    pub fn cold_calls(&self) -> usize {
        if self.quick { 200 } else { 1_000 }
    }
    /// What the raw Unix-socket floors measure in this pass.
    pub fn uds_plan(&self) -> floor::uds::Plan {
        floor::uds::Plan {
            rounds: self.rounds(),
            cap: self.cap(),
            runs: self.runs(),
            stream_items: self.stream_items(),
            cell_counts: if self.wants_cells() {
                self.cell_counts()
            } else {
                &[]
            },
            cells_window: self.cells_window(),
            cold_calls: self.cold_calls(),
            pinned: self.pinned,
        }
    }
}

/// Floors the cases are compared against, from the same pass.
#[derive(Clone, Copy, Debug)]
pub struct Floors {
    /// p50 of `floor_adaptive/shm`, ns.
    pub adaptive_ns: f64,
    /// Median of `floor_ring_copy/shm`, GB/s.
    pub ring_gbps: f64,
}

/// Times `op` `rounds` times after a tenth as many warm-up calls, stopping
/// early once `cap` has passed (with at least 10 samples).
async fn time_calls<F, Fut>(rounds: usize, cap: Duration, op: F) -> Result<Vec<Duration>, BoxError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    Ok(time_calls_counted(rounds, cap, None, op).await?.0)
}

/// [`time_calls`], also counting the context switches of this process and
/// of `peer` (a pid) over the timed calls, when `peer` is given.
async fn time_calls_counted<F, Fut>(
    rounds: usize,
    cap: Duration,
    peer: Option<u32>,
    mut op: F,
) -> Result<(Vec<Duration>, Option<CtxSwitches>), BoxError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    let warmup = rounds / 10;
    for i in 0..warmup as u32 {
        op(i).await?;
    }
    let before = peer.and_then(Pair::take);
    let mut times = Vec::with_capacity(rounds);
    let start = Instant::now();
    for i in warmup as u32..(warmup + rounds) as u32 {
        let t = Instant::now();
        op(i).await?;
        times.push(t.elapsed());
        if start.elapsed() > cap && times.len() >= 10 {
            break;
        }
    }
    let ctx = before.and_then(|b| b.per_call(times.len()));
    Ok((times, ctx))
}

fn latency_row(name: &str, times: &mut [Duration], p: &Params, floor_name: &str, floor_ns: f64) -> Row {
    let short = times.len() < p.rounds();
    let row = Row::latency(name, times, p.pinned).against(floor_name, floor_ns);
    if short {
        row.note(&format!("stopped early after {:?}", p.cap()))
    } else {
        row
    }
}

/// One checked `add` call.
async fn checked_add(client: &BenchClient, i: u32) -> Result<(), BoxError> {
    let r = client.add(i, 1).await?;
    if r != i.wrapping_add(1) {
        return Err(format!("add({i}, 1) returned {r}").into());
    }
    Ok(())
}

/// `add_rtt/<link>`; with `peer` (the serving process's pid), also the
/// context switches per call of both processes.
pub(crate) async fn add_latency(
    client: &BenchClient,
    name: &str,
    peer: Option<u32>,
    p: &Params,
    f: &Floors,
) -> Result<Row, BoxError> {
    let (mut times, ctx) = time_calls_counted(p.rounds(), p.cap(), peer, |i| {
        let c = client.clone();
        async move { checked_add(&c, i).await }
    })
    .await?;
    let row = latency_row(name, &mut times, p, floor::ADAPTIVE, f.adaptive_ns).with_ctx(ctx);
    Ok(match ctx {
        Some(c) => row.note(&c.breakdown()),
        None => row,
    })
}

/// `add_cold/shm`: one `add` call per millisecond, the host sleeping on a
/// tokio timer in between (a plugin called once a millisecond), only the
/// call timed; context switches per call include the timer's.
async fn add_cold(client: &BenchClient, peer: u32, p: &Params) -> Result<Row, BoxError> {
    let n = p.cold_calls();
    checked_add(client, 0).await?;
    let before = Pair::take(peer);
    let mut times = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n as u32 {
        // On a 1 ms grid (a plugin on a 1 ms timer), as its socket floor.
        tokio::time::sleep_until((start + floor::uds::COLD_GAP * (i + 1)).into()).await;
        let t = Instant::now();
        checked_add(client, i).await?;
        times.push(t.elapsed());
    }
    let period = start.elapsed() / n.max(1) as u32;
    let ctx = before.and_then(|b| b.per_call(times.len()));
    let row = Row::latency("add_cold/shm", &mut times, p.pinned)
        .with_ctx(ctx)
        .note(&format!(
            "one call per millisecond, tokio sleep_until in between (mean period {period:.2?}); only the call timed"
        ));
    Ok(match ctx {
        Some(c) => row.note(&format!("{} (the sleeps' switches included)", c.breakdown())),
        None => row,
    })
}

pub(crate) fn one_worker_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
}

/// `add_rtt/<link>` with both peers in this process, the server on its own
/// one-worker runtime.
async fn add_in_process<L: Link>(
    name: &str,
    client: L,
    server: L,
    p: &Params,
    f: &Floors,
) -> Result<Row, BoxError> {
    let server_rt = one_worker_runtime()?;
    server_rt.spawn(async move {
        if let Ok(conn) = SessionBuilder::new()
            .serve(BenchDispatcher::new(BenchImpl))
            .accept(server)
            .await
        {
            conn.closed().await;
        }
    });
    let conn = SessionBuilder::new().initiate(client).await?;
    let client = BenchClient::new(conn);
    let row = add_latency(&client, name, None, p, f).await;
    client.connection().goodbye("measured").await;
    server_rt.shutdown_background();
    Ok(row?.note("both peers in one process"))
}

/// `add_rtt/memory` and `add_rtt/unix`.
pub async fn in_process(p: &Params, f: &Floors) -> Result<Vec<Row>, BoxError> {
    let mut rows = Vec::new();
    if p.wants("add_rtt/memory") {
        let (a, b) = memory::pair(1 << 20, 64);
        rows.push(add_in_process("add_rtt/memory", a, b, p, f).await?);
    }
    if p.wants("add_rtt/unix") {
        let (a, b) = tokio::net::UnixStream::pair()?;
        rows.push(
            add_in_process(
                "add_rtt/unix",
                StreamLink::unix(a, 1 << 20),
                StreamLink::unix(b, 1 << 20),
                p,
                f,
            )
            .await?,
        );
    }
    Ok(rows)
}

/// Spawns one bench cell (this program) with the default sandbox.
pub async fn spawn_cell(name: &str) -> Result<CellHandle, BoxError> {
    let me = std::env::current_exe()?;
    Ok(CellBuilder::new(me).name(name).spawn().await?)
}

/// `n` `add` calls on a fresh bench cell, one at a time: their p50 and the
/// context switches per call of both processes (`osmos-bench --calls N`).
pub async fn calls_only(n: usize) -> Result<String, BoxError> {
    let cell = spawn_cell("bench").await?;
    let client: BenchClient = cell.client()?;
    let pid = cell.pid().ok_or("the cell has no pid")?;
    let r = time_calls_counted(n, Duration::from_secs(600), Some(pid), |i| {
        let c = client.clone();
        async move { checked_add(&c, i).await }
    })
    .await;
    cell.shutdown(Duration::from_secs(2)).await;
    let (mut times, ctx) = r?;
    times.sort();
    let (p50, p99) = (quantile(&times, 0.5), quantile(&times, 0.99));
    Ok(format!(
        "{n} add calls: p50 {p50:?}, p99 {p99:?}; {}",
        ctx.map_or_else(|| "no context switch counts".to_string(), |c| c.breakdown())
    ))
}

/// The `q` quantile of sorted `times` (zero when there are none).
fn quantile(times: &[Duration], q: f64) -> Duration {
    times
        .get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// The names of the cases [`one_cell`] measures.
pub const ONE_CELL: &[&str] = &[
    "idle_cpu/shm",
    "add_rtt/shm",
    "add_cold/shm",
    "echo_64/shm",
    "echo_4k/shm",
    "echo_64k/shm",
    "echo_1m/shm",
    "stream_64k/shm",
    "stream_1000/shm",
    "stream_1000_spawned/shm",
    "concurrency_1/shm",
    "concurrency_16/shm",
    "concurrency_256/shm",
];

/// The cases on one long-lived cell: `add_rtt/shm`, `add_cold/shm`, the
/// echoes, streaming, concurrency and idle CPU.
pub async fn one_cell(p: &Params, f: &Floors) -> Result<Vec<Row>, BoxError> {
    let cell = spawn_cell("bench").await?;
    let client: BenchClient = cell.client()?;
    let result = one_cell_inner(&cell, &client, p, f).await;
    cell.shutdown(Duration::from_secs(2)).await;
    result
}

async fn one_cell_inner(
    cell: &CellHandle,
    client: &BenchClient,
    p: &Params,
    f: &Floors,
) -> Result<Vec<Row>, BoxError> {
    let mut rows = Vec::new();
    client.pid().await?;

    // Idle first, before any traffic leaves anything running.
    if p.wants("idle_cpu/shm") {
        rows.push(idle_cpu(cell, p).await?);
    }
    let pid = cell.pid().ok_or("the cell has no pid")?;
    if p.wants("add_rtt/shm") {
        rows.push(add_latency(client, "add_rtt/shm", Some(pid), p, f).await?);
    }
    if p.wants("add_cold/shm") {
        rows.push(add_cold(client, pid, p).await?);
    }

    for (name, size) in [
        ("echo_64/shm", 64usize),
        ("echo_4k/shm", 4 << 10),
        ("echo_64k/shm", 64 << 10),
        ("echo_1m/shm", 1 << 20),
    ] {
        if p.wants(name) {
            rows.push(echo(client, name, size, p, f).await?);
        }
    }

    if p.wants("stream_64k/shm") {
        rows.push(stream(client, "stream_64k/shm", p, f).await?);
    }
    if p.wants("stream_1000/shm") {
        rows.push(small_stream(client, false, p, f).await?);
    }
    if p.wants("stream_1000_spawned/shm") {
        rows.push(small_stream(client, true, p, f).await?);
    }
    for callers in [1usize, 16, 256] {
        if p.wants(&format!("concurrency_{callers}/shm")) {
            rows.push(concurrency(client, callers, p, f).await?);
        }
    }
    Ok(rows)
}

/// `idle_cpu/shm`: CPU used by this host process and the cell while
/// connected and doing nothing.
async fn idle_cpu(cell: &CellHandle, p: &Params) -> Result<Row, BoxError> {
    let pid = cell.pid().ok_or("the cell has no pid")?;
    let me = std::process::id();
    // Let the spawn settle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu =
        |pid: u32| crate::sys::cpu_time(pid).ok_or_else(|| format!("cannot read the CPU time of pid {pid}"));
    let (h0, c0) = (cpu(me)?, cpu(pid)?);
    let t = Instant::now();
    tokio::time::sleep(p.idle()).await;
    let secs = t.elapsed().as_secs_f64();
    let (h1, c1) = (cpu(me)?, cpu(pid)?);
    let host = (h1 - h0).as_secs_f64() * 1e3 / secs;
    let cellms = (c1 - c0).as_secs_f64() * 1e3 / secs;
    let mut total = [host + cellms];
    Ok(Row::rate("idle_cpu/shm", "ms/s", &mut total, p.pinned).note(&format!(
        "over {secs:.1} s: host {host:.4} ms/s + cell pid {pid} {cellms:.4} ms/s (all threads, /proc/<pid>/task/*/schedstat)"
    )))
}

/// `echo_<size>/<link>`: one call carrying `size` bytes each way.
pub(crate) async fn echo(
    client: &BenchClient,
    name: &str,
    size: usize,
    p: &Params,
    f: &Floors,
) -> Result<Row, BoxError> {
    // Each answer is the next call's payload (the call takes its vector by
    // value): the timed calls make no copy of their own, as the socket
    // floor makes none.
    let next = std::rc::Rc::new(std::cell::RefCell::new(Some(vec![0xa5u8; size])));
    // Fewer rounds for the big payloads: their cost is in the copies.
    let rounds = if size >= 1 << 20 {
        p.rounds() / 10
    } else {
        p.rounds()
    };
    let mut times = time_calls(rounds, p.cap(), |_| {
        let c = client.clone();
        let next = next.clone();
        async move {
            let data = next.borrow_mut().take().unwrap_or_else(|| vec![0xa5u8; size]);
            let back = c.echo(data).await?;
            if back.len() != size {
                return Err(format!("echo of {size} bytes returned {}", back.len()).into());
            }
            // Ends only: a full scan would be timed with the call.
            if back
                .first()
                .zip(back.last())
                .is_some_and(|(&f, &l)| f != 0xa5 || l != 0xa5)
            {
                return Err(format!("echo of {size} bytes returned other bytes").into());
            }
            *next.borrow_mut() = Some(back);
            Ok(())
        }
    })
    .await?;
    let short = times.len() < rounds;
    let mut row = Row::latency(name, &mut times, p.pinned).against(floor::ADAPTIVE, f.adaptive_ns);
    if short {
        row = row.note(&format!("stopped early after {:?}", p.cap()));
    }
    Ok(row.note("each answer is the next call's payload"))
}

/// `stream_64k/<link>`: 64 KiB items server → caller through a `Tx<Vec<u8>>`.
pub(crate) async fn stream(
    client: &BenchClient,
    name: &str,
    p: &Params,
    f: &Floors,
) -> Result<Row, BoxError> {
    let items = p.stream_items();
    let mut rates = Vec::new();
    for run in 0..p.runs() + 1 {
        let (tx, mut rx) = client.connection().channel::<Vec<u8>>()?;
        let start = Instant::now();
        let c = client.clone();
        let producer = tokio::spawn(async move { c.stream(items as u32, floor::CHUNK as u32, tx).await });
        let mut n = 0usize;
        let mut bytes = 0usize;
        while let Some(item) = rx.recv().await {
            bytes += item?.len();
            n += 1;
        }
        producer.await??;
        let dt = start.elapsed().as_secs_f64();
        if n != items || bytes != items * floor::CHUNK {
            return Err(format!("streamed {n} items / {bytes} bytes, expected {items}").into());
        }
        if run > 0 {
            rates.push(bytes as f64 / dt / 1e9);
        }
    }
    Ok(Row::rate(name, "GB/s", &mut rates, p.pinned)
        .against(floor::RING_COPY, f.ring_gbps)
        .note(&format!("{items} x 64 KiB per run, call to last item")))
}

/// Items per `stream_1000/shm` run.
const SMALL_ITEMS: u32 = 1000;

/// `stream_1000/shm`: a call that streams 1000 `u32` items cell → host,
/// timed from the call to the last item. The call and the loop that
/// receives its items run in one task (`tokio::join!`), as the socket
/// floor's one thread does.
///
/// `stream_1000_spawned/shm` (`spawned`): the same with the call spawned
/// as a task of its own, the other common way to write it; its items then
/// reach a task other than the one that waits for the call's answer.
async fn small_stream(client: &BenchClient, spawned: bool, p: &Params, f: &Floors) -> Result<Row, BoxError> {
    let name = if spawned {
        "stream_1000_spawned/shm"
    } else {
        "stream_1000/shm"
    };
    let rounds = p.rounds() / 10;
    let mut times = time_calls(rounds, p.cap(), |_| one_small_stream(client.clone(), spawned)).await?;
    let short = times.len() < rounds;
    let mut row = Row::latency(name, &mut times, p.pinned).against(floor::ADAPTIVE, f.adaptive_ns);
    if short {
        row = row.note(&format!("stopped early after {:?}", p.cap()));
    }
    let how = if spawned {
        "the call in a task of its own"
    } else {
        "call and items in one task"
    };
    Ok(row.note(&format!("1000 u32 items cell → host, call to last item, {how}")))
}

/// One `stream_1000` round: a call that streams [`SMALL_ITEMS`] items,
/// each checked, received in the calling task or with the call spawned.
async fn one_small_stream(c: BenchClient, spawned: bool) -> Result<(), BoxError> {
    let (tx, mut rx) = c.connection().channel::<u32>()?;
    let items = async {
        let mut expected = 0u32;
        while let Some(item) = rx.recv().await {
            let item = item?;
            if item != expected {
                return Err::<u32, BoxError>(format!("item {expected} arrived as {item}").into());
            }
            expected += 1;
        }
        Ok(expected)
    };
    let expected = if spawned {
        let call = tokio::spawn(async move { c.count(SMALL_ITEMS, tx).await });
        let expected = items.await?;
        call.await??;
        expected
    } else {
        let (answer, expected) = tokio::join!(c.count(SMALL_ITEMS, tx), items);
        answer?;
        expected?
    };
    if expected != SMALL_ITEMS {
        return Err(format!("{expected} items arrived, not {SMALL_ITEMS}").into());
    }
    Ok(())
}

/// `osmos-bench --streams N`: only `n` rounds of `stream_1000/shm` (with
/// the call `spawned`, of `stream_1000_spawned/shm`) against one cell,
/// nothing else, for a profiler; prints p50 and p99.
pub async fn streams_only(n: usize, spawned: bool) -> Result<String, BoxError> {
    let cell = spawn_cell("bench").await?;
    let client: BenchClient = cell.client()?;
    let before = client.connection().stats().frames_received;
    let r = time_calls(n, Duration::from_secs(600), |_| {
        one_small_stream(client.clone(), spawned)
    })
    .await;
    // Frames that brought each stream's items (several share a frame while
    // the host is behind), its answer and its channel's close.
    let frames = (client.connection().stats().frames_received - before) as f64 / n.max(1) as f64;
    cell.shutdown(Duration::from_secs(2)).await;
    let mut times = r?;
    times.sort();
    let (p50, p99) = (quantile(&times, 0.5), quantile(&times, 0.99));
    let max = times.last().copied().unwrap_or_default();
    // The slow tail, counted: a stream that waited for a kernel tick or two
    // (4 ms each at 250 Hz) stands out from the rest.
    let over = |limit: Duration| times.iter().filter(|&&t| t > limit).count();
    let (over_1ms, over_4ms) = (over(Duration::from_millis(1)), over(Duration::from_millis(4)));
    Ok(format!(
        "{n} streams of {SMALL_ITEMS} items: p50 {p50:?}, p99 {p99:?}, max {max:?}; {over_1ms} over 1 ms, {over_4ms} over 4 ms; {frames:.1} frames received per stream"
    ))
}

/// `concurrency_<n>/shm`: calls/s with `callers` tasks calling `add` at once.
async fn concurrency(client: &BenchClient, callers: usize, p: &Params, f: &Floors) -> Result<Row, BoxError> {
    let total = if p.quick { 20_000 } else { 50_000 };
    let per = (total / callers).max(1);
    let mut rates = Vec::new();
    for _ in 0..p.runs() {
        let start = Instant::now();
        let tasks: Vec<_> = (0..callers)
            .map(|_| {
                let c = client.clone();
                tokio::spawn(async move {
                    for i in 0..per as u32 {
                        c.add(i, i).await.map_err(|e| e.to_string())?;
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        rates.push((per * callers) as f64 / start.elapsed().as_secs_f64());
    }
    // Against the rate the adaptive floor allows one caller: 1 / its RTT.
    Ok(Row::rate(
        format!("concurrency_{callers}/shm"),
        "calls/s",
        &mut rates,
        p.pinned,
    )
    .against(floor::ADAPTIVE, 1e9 / f.adaptive_ns)
    .note(&format!(
        "{} calls per run; ratio against 1 / floor RTT",
        per * callers
    )))
}

/// `cells_<n>/shm`: aggregate calls/s of one sequential caller per cell,
/// `n` cells at once; ratios against `cells_1/shm` of the same pass.
pub async fn many_cells(p: &Params) -> Result<Vec<Row>, BoxError> {
    let mut rows: Vec<Row> = Vec::new();
    let mut one = 0.0;
    for &n in p.cell_counts() {
        // cells_1 is the reference of the others: it runs whenever any does.
        if !(n == 1 || p.wants(&format!("cells_{n}/shm"))) {
            continue;
        }
        let mut cells = Vec::with_capacity(n);
        let spawn_start = Instant::now();
        let mut failed = None;
        for i in 0..n {
            match spawn_cell(&format!("many-{i}")).await {
                Ok(c) => cells.push(c),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let spawned_in = spawn_start.elapsed();
        let result = match failed {
            Some(e) => Err(e),
            None => cells_window(&cells, p.cells_window()).await,
        };
        let shutdowns: Vec<_> = cells
            .into_iter()
            .map(|c| tokio::spawn(async move { c.shutdown(Duration::from_secs(2)).await }))
            .collect();
        for s in shutdowns {
            let _ = s.await;
        }
        let rate = result?;
        if n == 1 {
            one = rate;
        }
        let mut r = [rate];
        let mut row = Row::rate(format!("cells_{n}/shm"), "calls/s", &mut r, p.pinned)
            .against("cells_1/shm", one)
            .note(&format!(
                "one sequential caller per cell for {:?}; {n} spawned in {spawned_in:.1?}",
                p.cells_window()
            ));
        if p.quick && n == 16 {
            row = row.note("--quick measures 16 cells instead of 64");
        }
        rows.push(row);
    }
    Ok(rows)
}

async fn cells_window(cells: &[CellHandle], window: Duration) -> Result<f64, BoxError> {
    let mut clients = Vec::new();
    for c in cells {
        let client: BenchClient = c.client()?;
        client.pid().await?;
        clients.push(client);
    }
    let start = Instant::now();
    let deadline = start + window;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| {
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    c.add(1, 2).await.map_err(|e| e.to_string())?;
                    n += 1;
                }
                Ok::<u64, String>(n)
            })
        })
        .collect();
    let mut total = 0u64;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// `spawn_reply/shm` (`CellBuilder::spawn` → first reply) and
/// `kill_error/shm` (SIGKILL with a call in flight → the call's error).
pub async fn spawn_and_kill(p: &Params) -> Result<Vec<Row>, BoxError> {
    let mut spawn = Vec::new();
    let mut kill = Vec::new();
    for i in 0..p.spawns() {
        let t = Instant::now();
        let cell = spawn_cell(&format!("spawn-{i}")).await?;
        let client: BenchClient = cell.client()?;
        client.pid().await?;
        spawn.push(t.elapsed());

        let c = client.clone();
        let in_flight = tokio::spawn(async move { c.hang(30_000).await });
        // Let the call reach the cell.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = Instant::now();
        cell.kill();
        let outcome = tokio::time::timeout(Duration::from_secs(10), in_flight).await;
        let dt = t.elapsed();
        match outcome {
            Ok(Ok(Err(_))) => kill.push(dt),
            Ok(Ok(Ok(v))) => return Err(format!("the in-flight call succeeded ({v}) after SIGKILL").into()),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err("the in-flight call did not fail within 10 s of SIGKILL".into()),
        }
        cell.shutdown(Duration::from_millis(500)).await;
    }
    Ok(vec![
        Row::latency("spawn_reply/shm", &mut spawn, p.pinned)
            .note("default sandbox; spawn() to first pid() reply"),
        Row::latency("kill_error/shm", &mut kill, p.pinned).note("SIGKILL to the in-flight call's error"),
    ])
}
