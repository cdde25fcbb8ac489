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

use osmos_host::{CellBuilder, CellHandle, CellState, RestartPolicy};
use osmos_session::{CallContext, Rx};

/// What each demo cell serves.
#[osmos_macros::service]
pub trait Demo {
    /// Adds two numbers, or says why it cannot.
    async fn add(&self, a: u32, b: u32) -> Result<u32, String>;
    /// Echoes bytes.
    async fn echo(&self, data: &[u8]) -> Vec<u8>;
    /// The first `n` squares, as a stream the cell produces.
    async fn squares(&self, n: u32) -> Result<Rx<u64>, String>;
    /// The cell's pid.
    async fn pid(&self) -> u32;
}

struct Cell;
impl Demo for Cell {
    async fn add(&self, a: u32, b: u32) -> Result<u32, String> {
        a.checked_add(b).ok_or_else(|| format!("{a} + {b} overflows"))
    }
    async fn echo(&self, data: &[u8]) -> Vec<u8> {
        data.to_vec()
    }
    async fn squares(&self, n: u32) -> Result<Rx<u64>, String> {
        tracing::info!(n, "streaming squares");
        let ctx = CallContext::current().ok_or("called outside a handler")?;
        let (tx, rx) = ctx.connection().channel::<u64>().map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            for i in 0..u64::from(n) {
                if tx.send(&(i * i)).await.is_err() {
                    return;
                }
            }
            let _ = tx.close().await;
        });
        Ok(rx)
    }
    async fn pid(&self) -> u32 {
        std::process::id()
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
        assert_eq!(c.echo(&payload).await?.len(), payload.len());
    }
    let start = Instant::now();
    let mut rx = c.squares(20_000).await?;
    let mut n = 0u64;
    while let Some(v) = rx.recv().await {
        assert_eq!(v?, n * n);
        n += 1;
    }
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
    // The cell's client follows it across restarts; this one is taken
    // before the kill.
    let beta_client: DemoClient = beta.client()?;
    let in_flight = tokio::spawn({
        let c = beta_client.clone();
        async move { c.add(1, 1).await }
    });
    beta.kill();
    match in_flight.await? {
        Err(e) => println!("  the call in flight failed: {e}"),
        Ok(v) => println!("  the call in flight was answered ({v}) before the kill"),
    }
    // A call made before the supervisor has seen the death would go to the
    // dying process and fail with it: wait for the next incarnation.
    let t = Instant::now();
    let back = |s: &CellState| matches!(s, CellState::Running { incarnation, .. } if *incarnation > 0);
    tokio::time::timeout(Duration::from_secs(10), beta.wait_for(back))
        .await
        .map_err(|_| "beta did not come back within 10 s of the kill")?;
    let sum = beta_client.add(40, 2).await?;
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
