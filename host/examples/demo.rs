//! The osmos demo: a host spawns sandboxed cells, calls them, streams from
//! them, kills one, watches it restart, and prints what happened.
//!
//! ```text
//! cargo run --release -p osmos-host --example demo
//! ```
//!
//! The cells are this same program, re-executed by the host: run with the
//! `OSMOS_*` bootstrap it serves the `Demo` service through the plugin SDK.

use std::time::{Duration, Instant};

use osmos_host::{CellBuilder, CellHandle, RestartPolicy};
use osmos_session::Tx;

/// What each demo cell serves.
#[osmos_macros::service]
pub trait Demo {
    /// Adds two numbers.
    async fn add(&self, a: u32, b: u32) -> Result<u32, String>;
    /// Echoes bytes.
    async fn echo(&self, data: Vec<u8>) -> Result<Vec<u8>, String>;
    /// Streams the first `n` squares.
    async fn squares(&self, n: u32, out: Tx<u64>) -> Result<(), String>;
    /// The cell's pid.
    async fn pid(&self) -> Result<u32, String>;
}

struct Cell;
impl Demo for Cell {
    async fn add(&self, a: u32, b: u32) -> Result<u32, String> {
        a.checked_add(b).ok_or_else(|| format!("{a} + {b} overflows"))
    }
    async fn echo(&self, data: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(data)
    }
    async fn squares(&self, n: u32, out: Tx<u64>) -> Result<(), String> {
        tracing::info!(n, "streaming squares");
        for i in 0..u64::from(n) {
            out.send(&(i * i)).await.map_err(|e| e.to_string())?;
        }
        out.close().await.map_err(|e| e.to_string())
    }
    async fn pid(&self) -> Result<u32, String> {
        Ok(std::process::id())
    }
}

struct Row {
    name: String,
    pid: u32,
    restarts: u32,
    calls: u64,
    bytes: u64,
    add_p50: Duration,
    add_p99: Duration,
    stream_rate: f64,
}

async fn exercise(cell: &CellHandle) -> Result<(Duration, Duration, f64), Box<dyn std::error::Error>> {
    let c: DemoClient = cell.client()?;
    let mut lat = Vec::with_capacity(2000);
    for i in 0..2000u32 {
        let t = Instant::now();
        assert_eq!(c.add(i, 1).await?, i + 1);
        lat.push(t.elapsed());
    }
    lat.sort();
    let payload = vec![0xa5u8; 64 << 10];
    for _ in 0..50 {
        assert_eq!(c.echo(payload.clone()).await?.len(), payload.len());
    }
    let (tx, mut rx) = c.connection().channel::<u64>()?;
    let start = Instant::now();
    let streaming = tokio::spawn({
        let c = c.clone();
        async move { c.squares(20_000, tx).await }
    });
    let mut n = 0u64;
    while let Some(v) = rx.recv().await {
        assert_eq!(v?, n * n);
        n += 1;
    }
    streaming.await??;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    Ok((lat[lat.len() / 2], lat[lat.len() * 99 / 100], rate))
}

async fn host() -> Result<(), Box<dyn std::error::Error>> {
    let me = std::env::current_exe()?;
    println!("osmos demo: spawning 3 sandboxed cells ({})", me.display());
    let mut cells = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        let t = Instant::now();
        let cell = CellBuilder::new(&me)
            .name(name)
            .restart(RestartPolicy::on_failure(3))
            .spawn()
            .await?;
        let up = t.elapsed();
        let pid = cell.client::<DemoClient>()?.pid().await?;
        println!(
            "  {name}: pid {pid} up in {up:.1?}, first reply {:.1?} after spawn",
            t.elapsed()
        );
        cells.push(cell);
    }
    if let Some(report) = cells[0].sandbox_report() {
        println!("  sandbox: {report}");
    }

    println!("\ncalls and streams on every cell...");
    for cell in &cells {
        exercise(cell).await?;
    }

    let beta = &cells[1];
    let old = beta.pid().unwrap_or(0);
    println!("\nkilling beta (pid {old}) with SIGKILL...");
    // A client that follows beta across restarts, taken before the kill.
    let beta_calls = beta.following_client::<DemoClient>();
    let in_flight = tokio::spawn({
        let b = beta_calls.clone();
        async move { b.call(|c| async move { c.add(1, 1).await }).await }
    });
    beta.kill();
    match in_flight.await? {
        Err(e) => println!("  the call in flight failed: {e}"),
        Ok(v) => println!("  the call in flight was answered ({v}) before the kill"),
    }
    let t = Instant::now();
    let sum = beta_calls.call(|c| async move { c.add(40, 2).await }).await?;
    println!(
        "  the same client answers again after {:?} (beta is {}): 40 + 2 = {sum}",
        t.elapsed(),
        beta.state()
    );

    println!("\nmeasuring...");
    let mut rows = Vec::new();
    for cell in &cells {
        let (p50, p99, rate) = exercise(cell).await?;
        let stats = cell.stats();
        rows.push(Row {
            name: cell.name().to_string(),
            pid: cell.pid().unwrap_or(0),
            restarts: stats.restarts,
            calls: stats.session.calls_made,
            bytes: stats.session.bytes_sent + stats.session.bytes_received,
            add_p50: p50,
            add_p99: p99,
            stream_rate: rate,
        });
    }
    println!(
        "\n{:<6} {:>7} {:>8} {:>7} {:>10} {:>10} {:>10} {:>14}",
        "cell", "pid", "restarts", "calls", "bytes", "add p50", "add p99", "stream items/s"
    );
    for r in &rows {
        println!(
            "{:<6} {:>7} {:>8} {:>7} {:>10} {:>7.1} µs {:>7.1} µs {:>14.0}",
            r.name,
            r.pid,
            r.restarts,
            r.calls,
            r.bytes,
            r.add_p50.as_secs_f64() * 1e6,
            r.add_p99.as_secs_f64() * 1e6,
            r.stream_rate
        );
    }
    println!("\n(calls and bytes count the current incarnation; beta's restarted one started fresh)");
    println!("\nshutting down...");
    for cell in &cells {
        let exit = cell.shutdown(Duration::from_secs(5)).await;
        println!("  {}: {exit}", cell.name());
    }
    Ok(())
}

fn main() {
    if std::env::var_os(osmos_session::control::ENV_CELL_NAME).is_some() {
        osmos_plugin_sdk::run("osmos demo cell", || DemoDispatcher::new(Cell));
    }
    let filter = tracing_subscriber::filter::LevelFilter::WARN;
    tracing_subscriber::fmt()
        .with_max_level(filter)
        .with_target(false)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    if let Err(e) = rt.block_on(host()) {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}
