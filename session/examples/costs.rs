//! What routing, forwarding, tunnels and reconnection cost, measured in one
//! run (this class of machine drifts 2× within minutes: compare the ratios).
//!
//! - call round trip (`add`): direct, through a two-service router, and
//!   forwarded through a proxy (client ↔ proxy ↔ server, both hops on the
//!   same link);
//! - streaming 64 KiB items one way: a `Tx<Vec<u8>>` channel direct and
//!   forwarded, and a byte tunnel direct and forwarded;
//! - reconnection: from the server coming back to the next call answered.
//!
//! ```sh
//! cargo run --release -p osmos-session --example costs            # memory, unix and shm links
//! cargo run --release -p osmos-session --example costs -- --quick
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use osmos_session::link::Link;
use osmos_session::link::memory;
use osmos_session::link::stream::StreamLink;
use osmos_session::{
    Connection, Dispatcher, Forward, Reconnecting, RetryPolicy, Router, Rx, SessionBuilder, Tunnel, TunnelEnd,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The measured service.
#[osmos_macros::service]
pub trait Bench {
    /// Adds.
    async fn add(&self, a: u32, b: u32) -> Result<u32, String>;
    /// Reads a channel to its end; returns the bytes received.
    async fn sink(&self, input: Rx<Vec<u8>>) -> Result<u64, String>;
    /// Reads a tunnel to its end; returns the bytes received.
    async fn drain(&self, end: TunnelEnd) -> Result<u64, String>;
}

/// A second service, for the router.
#[osmos_macros::service]
pub trait Other {
    /// Nothing.
    async fn nothing(&self) -> Result<(), String>;
}

struct Impl;
impl Bench for Impl {
    async fn add(&self, a: u32, b: u32) -> Result<u32, String> {
        Ok(a.wrapping_add(b))
    }
    async fn sink(&self, mut input: Rx<Vec<u8>>) -> Result<u64, String> {
        let mut n = 0u64;
        while let Some(v) = input.recv().await {
            n += v.map_err(|e| e.to_string())?.len() as u64;
        }
        Ok(n)
    }
    async fn drain(&self, end: TunnelEnd) -> Result<u64, String> {
        let mut t = Tunnel::from_end(end);
        let mut buf = vec![0u8; 256 << 10];
        let mut n = 0u64;
        loop {
            let k = t.read(&mut buf).await.map_err(|e| e.to_string())?;
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        t.shutdown().await.map_err(|e| e.to_string())?;
        Ok(n)
    }
}

struct Nothing;
impl Other for Nothing {
    async fn nothing(&self) -> Result<(), String> {
        Ok(())
    }
}

const MAX_FRAME: usize = 1 << 20;

/// Three client connections onto one kind of link: direct, routed, forwarded.
struct Setup {
    direct: Connection,
    routed: Connection,
    forwarded: Connection,
    _keep: Vec<Connection>,
}

async fn connect<L: Link>(a: L, b: L, serve: Arc<dyn Dispatcher>) -> (Connection, Connection) {
    let (s, c) = tokio::join!(
        SessionBuilder::new().serve(serve).accept(b),
        SessionBuilder::new().initiate(a)
    );
    (s.expect("server handshake"), c.expect("client handshake"))
}

async fn setup<L: Link, F, Fut>(pair: F) -> Setup
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = (L, L)>,
{
    let (a, b) = pair().await;
    let (s1, direct) = connect(a, b, BenchDispatcher::new(Impl)).await;
    let router = Router::builder()
        .route(BenchDispatcher::new(Impl))
        .route(OtherDispatcher::new(Nothing))
        .build()
        .expect("distinct services");
    let (a, b) = pair().await;
    let (s2, routed) = connect(a, b, router).await;
    let (a, b) = pair().await;
    let (s3, back) = connect(a, b, BenchDispatcher::new(Impl)).await;
    let (a, b) = pair().await;
    let (front, forwarded) = connect(a, b, Forward::to(back.clone())).await;
    Setup {
        direct,
        routed,
        forwarded,
        _keep: vec![s1, s2, s3, back, front],
    }
}

fn p50(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn rtt(conn: &Connection, n: usize) -> Vec<Duration> {
    let c = BenchClient::new(conn.clone());
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        c.add(i as u32, 1).await.expect("add");
        v.push(t.elapsed());
    }
    v
}

async fn channel_throughput(conn: &Connection, total: usize) -> f64 {
    let c = BenchClient::new(conn.clone());
    let (tx, rx) = conn.channel::<Vec<u8>>().expect("channel");
    let t = Instant::now();
    let sink = tokio::spawn(async move { c.sink(rx).await });
    let item = vec![0x5a; 64 << 10];
    for _ in 0..total / item.len() {
        tx.send(&item).await.expect("send");
    }
    tx.close().await.expect("close");
    let n = sink.await.expect("join").expect("sink");
    n as f64 / t.elapsed().as_secs_f64() / (1 << 20) as f64
}

async fn tunnel_throughput(conn: &Connection, total: usize) -> f64 {
    let c = BenchClient::new(conn.clone());
    let (mut tunnel, end) = Tunnel::open(conn).expect("tunnel");
    let t = Instant::now();
    let drain = tokio::spawn(async move { c.drain(end).await });
    let chunk = vec![0x5a; 64 << 10];
    for _ in 0..total / chunk.len() {
        tunnel.write_all(&chunk).await.expect("write");
    }
    tunnel.shutdown().await.expect("shutdown");
    let n = drain.await.expect("join").expect("drain");
    n as f64 / t.elapsed().as_secs_f64() / (1 << 20) as f64
}

async fn measure<L: Link, F, Fut>(name: &str, pair: F, quick: bool)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = (L, L)>,
{
    let s = setup(pair).await;
    let (calls, total) = if quick {
        (2_000, 16 << 20)
    } else {
        (10_000, 128 << 20)
    };
    for conn in [&s.direct, &s.routed, &s.forwarded] {
        rtt(conn, 500).await;
    }
    // Interleaved rounds, so drift hits every case alike.
    let (mut d, mut r, mut f) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        d.extend(rtt(&s.direct, calls / 5).await);
        r.extend(rtt(&s.routed, calls / 5).await);
        f.extend(rtt(&s.forwarded, calls / 5).await);
    }
    let (d, r, f) = (p50(&mut d), p50(&mut r), p50(&mut f));
    println!("{name}: call round trip (add), p50 of {calls}");
    println!("  direct     {:>9.1} µs", d.as_secs_f64() * 1e6);
    println!(
        "  routed     {:>9.1} µs   ×{:.2} direct (router of two services)",
        r.as_secs_f64() * 1e6,
        r.as_secs_f64() / d.as_secs_f64()
    );
    println!(
        "  forwarded  {:>9.1} µs   ×{:.2} direct (client → proxy → server)",
        f.as_secs_f64() * 1e6,
        f.as_secs_f64() / d.as_secs_f64()
    );
    let mut rows = [
        (0.0, "Tx<Vec<u8>> direct"),
        (0.0, "Tx<Vec<u8>> forwarded"),
        (0.0, "tunnel direct"),
        (0.0, "tunnel forwarded"),
    ];
    for _ in 0..2 {
        rows[0].0 += channel_throughput(&s.direct, total / 2).await;
        rows[1].0 += channel_throughput(&s.forwarded, total / 2).await;
        rows[2].0 += tunnel_throughput(&s.direct, total / 2).await;
        rows[3].0 += tunnel_throughput(&s.forwarded, total / 2).await;
    }
    let base = rows[0].0;
    println!("{name}: one-way streaming of {} MiB in 64 KiB items", total >> 20);
    for (mbs, what) in rows {
        println!(
            "  {what:<22} {:>8.0} MiB/s   ×{:.2} of Tx<Vec<u8>> direct",
            mbs / 2.0,
            mbs / base
        );
    }
}

async fn reconnection(quick: bool) {
    let path = std::env::temp_dir().join(format!("osmos-costs-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let sessions: Arc<tokio::sync::Mutex<Vec<Connection>>> = Arc::default();
    let accepting = tokio::spawn({
        let sessions = sessions.clone();
        async move {
            while let Ok((s, _)) = listener.accept().await {
                let server = SessionBuilder::new()
                    .serve(BenchDispatcher::new(Impl))
                    .accept(StreamLink::unix(s, MAX_FRAME))
                    .await;
                if let Ok(c) = server {
                    sessions.lock().await.push(c);
                }
            }
        }
    });
    let policy = RetryPolicy {
        max_attempts: 1000,
        initial_backoff: Duration::from_micros(100),
        max_backoff: Duration::from_micros(100),
    };
    let rc = Reconnecting::unix(&path, MAX_FRAME, SessionBuilder::new(), policy);
    let c: BenchClient = rc.client().await.expect("connected");
    c.add(1, 1).await.expect("add");
    let mut samples = Vec::new();
    for _ in 0..if quick { 10 } else { 50 } {
        let server = sessions.lock().await.pop().expect("a server session");
        let t = Instant::now();
        // The server's side of the session goes away (its link is dropped).
        server.terminate(osmos_session::SessionError::Closed {
            reason: "gone".into(),
        });
        loop {
            let c: BenchClient = rc.client().await.expect("reconnected");
            if c.add(2, 2).await.is_ok() {
                break;
            }
        }
        samples.push(t.elapsed());
    }
    accepting.abort();
    let _ = std::fs::remove_file(&path);
    println!(
        "unix: reconnection, server session lost → next call answered: p50 {:.0} µs over {} rounds (retry backoff 100 µs)",
        p50(&mut samples).as_secs_f64() * 1e6,
        samples.len()
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        measure("memory", || async { memory::pair(MAX_FRAME, 256) }, quick).await;
        measure(
            "unix",
            || async {
                let (a, b) = tokio::net::UnixStream::pair().expect("socketpair");
                (StreamLink::unix(a, MAX_FRAME), StreamLink::unix(b, MAX_FRAME))
            },
            quick,
        )
        .await;
        measure(
            "shm (in one process)",
            || async {
                use osmos_shm::{Segment, SegmentConfig};
                let host = Segment::create(&SegmentConfig::default(), 1).expect("segment");
                let cell = host.attach_peer().expect("attach");
                let (h, c) = (
                    host.endpoint().expect("endpoint"),
                    cell.endpoint().expect("endpoint"),
                );
                (
                    osmos_session::link::shm::ShmLink::new(h),
                    osmos_session::link::shm::ShmLink::new(c),
                )
            },
            quick,
        )
        .await;
        reconnection(quick).await;
    });
}
