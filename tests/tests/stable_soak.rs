//! The stable conduit between two processes, through a fault-injecting
//! proxy that cuts, resets, splits, delays and pauses its connections.
//!
//! `stable-peer` serves [`osmos_tests::soak::Soak`] over a `StableAcceptor`;
//! this process is the client, connected through a
//! [`FaultProxy`](osmos_tests::fault_proxy::FaultProxy). Over Unix and over
//! loopback TCP it runs, all at once: unary calls (each with its own
//! argument, each answer checked, the server counting duplicates), streams
//! both ways (items numbered, checked in order, exactly once), and a tunnel
//! carrying a seeded pseudo-random byte sequence that the server echoes.
//! Calls go on until the proxy has cut at least the planned number of
//! connections.
//!
//! The proxy closes or resets each connection after a random number of
//! bytes (now and then within the first 256, cutting resume handshakes), or
//! leaves it silent (the client notices after three heartbeats), and splits,
//! delays and pauses what it forwards.
//!
//! The short run (the default) makes ≥ 1,000 calls across ≥ 20 cuts per
//! transport; `OSMOS_SOAK=long` makes ≥ 100,000 calls, 200,000 stream items
//! each way and 64 MiB through the tunnel, across ≥ 1,000 cuts. Both print
//! their figures (run with `--nocapture`). Each run draws a seed and prints
//! it; `OSMOS_SOAK_SEED`
//! replays one.

use std::ops::RangeInclusive;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use osmos_session::link::stable::{StableConfig, StableLink, Transport};
use osmos_session::{Connection, RetryPolicy, SessionBuilder, Tunnel};
use osmos_tests::fault_proxy::{Endpoint, FaultConfig, FaultProxy, Rng};
use osmos_tests::soak::{SoakClient, answer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};
use tokio::process::{Child, Command};

const PEER: &str = env!("CARGO_BIN_EXE_stable-peer");

/// Bound on any one wait; only reached when something hangs.
const BOUND: Duration = Duration::from_secs(60);

/// How much a run does.
struct Plan {
    calls: u64,
    min_cuts: u64,
    /// Streams each way, and items per stream.
    streams: u64,
    items: u32,
    tunnel_bytes: u64,
    cut_after: RangeInclusive<u64>,
    /// Probability that a connection goes silent instead of being cut (the
    /// client notices after three heartbeats).
    stall_chance: f64,
    /// How long calls may go on waiting for `min_cuts`.
    deadline: Duration,
}

fn plan() -> Plan {
    if std::env::var("OSMOS_SOAK").as_deref() == Ok("long") {
        Plan {
            calls: 100_000,
            min_cuts: 1_000,
            streams: 40,
            items: 5_000,
            tunnel_bytes: 64 << 20,
            cut_after: 20_000..=200_000,
            stall_chance: 0.01,
            deadline: Duration::from_secs(600),
        }
    } else {
        Plan {
            calls: 1_000,
            min_cuts: 20,
            streams: 4,
            items: 500,
            tunnel_bytes: 256 << 10,
            cut_after: 4_000..=40_000,
            stall_chance: 0.05,
            deadline: Duration::from_secs(60),
        }
    }
}

fn seed() -> u64 {
    match std::env::var("OSMOS_SOAK_SEED") {
        Ok(s) => {
            let s = s.trim_start_matches("0x");
            u64::from_str_radix(s, 16).expect("OSMOS_SOAK_SEED is a hex number")
        }
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}

/// What every failure message starts with: the transport and the seed.
#[derive(Clone)]
struct Ctx(Arc<str>);

impl std::fmt::Display for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Ctx {
    async fn within<F: Future>(&self, what: &str, f: F) -> F::Output {
        tokio::time::timeout(BOUND, f)
            .await
            .unwrap_or_else(|_| panic!("{self}: timed out after {BOUND:?} waiting for {what}"))
    }
}

/// The server process.
struct Peer {
    child: Child,
    addr: Endpoint,
}

async fn spawn_peer(ctx: &Ctx, listen: &Endpoint) -> Peer {
    let mut child = Command::new(PEER)
        .arg(listen.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{ctx}: spawning {PEER}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let line = ctx
        .within(
            "the peer's ready line",
            BufReader::new(stdout).lines().next_line(),
        )
        .await
        .unwrap_or_else(|e| panic!("{ctx}: reading the peer's stdout: {e}"))
        .unwrap_or_else(|| panic!("{ctx}: the peer exited before it was ready"));
    let addr = line
        .strip_prefix("READY ")
        .map(Endpoint::parse)
        .unwrap_or_else(|| panic!("{ctx}: the peer said '{line}', not READY"))
        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
    Peer { child, addr }
}

impl Peer {
    /// Closes its stdin, which makes it exit.
    async fn stop(mut self, ctx: &Ctx) {
        drop(self.child.stdin.take());
        let status = ctx.within("the peer to exit", self.child.wait()).await;
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "{ctx}: the peer exited with {status:?}"
        );
    }
}

/// A pseudo-random byte sequence, the same however it is read.
struct Bytes {
    rng: Rng,
    word: [u8; 8],
    at: usize,
}

impl Bytes {
    fn new(seed: u64) -> Bytes {
        Bytes {
            rng: Rng::derived(seed, &[0x7E]),
            word: [0; 8],
            at: 8,
        }
    }

    fn next(&mut self) -> u8 {
        if self.at == 8 {
            self.word = self.rng.next_u64().to_le_bytes();
            self.at = 0;
        }
        self.at += 1;
        self.word[self.at - 1]
    }
}

/// The figures a run reports.
#[derive(Default)]
struct Figures {
    calls: AtomicU64,
    items_down: AtomicU64,
    items_up: AtomicU64,
    tunnel_bytes: AtomicU64,
}

/// Unary calls from `workers` tasks, each argument used once, until `plan.calls`
/// were made and the proxy cut `plan.min_cuts` connections (or the deadline passed).
async fn calls(ctx: Ctx, client: SoakClient, proxy: Arc<FaultProxy>, plan: Arc<Plan>, figs: Arc<Figures>) {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (ctx, client, proxy, plan, figs, next) = (
            ctx.clone(),
            client.clone(),
            proxy.clone(),
            plan.clone(),
            figs.clone(),
            next.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let x = next.fetch_add(1, Ordering::Relaxed);
                if x >= plan.calls && (proxy.stats().cuts >= plan.min_cuts || start.elapsed() > plan.deadline)
                {
                    return;
                }
                let got = ctx
                    .within(&format!("call({x})"), client.call(x))
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: call({x}) failed: {e}"));
                assert_eq!(got, answer(x), "{ctx}: call({x}) got someone else's answer");
                figs.calls.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for w in workers {
        w.await
            .unwrap_or_else(|e| panic!("{ctx}: a caller panicked: {e}"));
    }
}

/// `plan.streams` downloads, one after another, each item checked.
async fn downloads(ctx: Ctx, conn: Connection, client: SoakClient, plan: Arc<Plan>, figs: Arc<Figures>) {
    for k in 0..plan.streams {
        let base = k << 32;
        let (tx, mut rx) = conn.channel::<u64>().expect("a channel");
        let call = tokio::spawn({
            let client = client.clone();
            let n = plan.items;
            async move { client.download(base, n, tx).await }
        });
        let mut got = 0u64;
        while let Some(v) = ctx.within("a downloaded item", rx.recv()).await {
            let v = v.unwrap_or_else(|e| panic!("{ctx}: download {k}, item {got}: {e}"));
            assert_eq!(
                v,
                base + got,
                "{ctx}: download {k}: item {got} arrived as {}",
                v - base
            );
            got += 1;
            figs.items_down.fetch_add(1, Ordering::Relaxed);
        }
        assert_eq!(got, u64::from(plan.items), "{ctx}: download {k} ended early");
        let sent = ctx
            .within("a download's answer", call)
            .await
            .expect("the call's task");
        assert_eq!(
            sent.unwrap_or_else(|e| panic!("{ctx}: download {k}: {e}")),
            plan.items
        );
    }
}

/// `plan.streams` uploads, one after another; the server checks the order
/// and returns the count and a checksum.
async fn uploads(ctx: Ctx, conn: Connection, client: SoakClient, plan: Arc<Plan>, figs: Arc<Figures>) {
    for k in 0..plan.streams {
        let base = (1 << 48) | (k << 32);
        let (tx, rx) = conn.channel::<u64>().expect("a channel");
        let call = tokio::spawn({
            let client = client.clone();
            async move { client.upload(rx).await }
        });
        let mut sum = 0u64;
        for i in 0..u64::from(plan.items) {
            ctx.within("room to upload an item", tx.send(&(base + i)))
                .await
                .unwrap_or_else(|e| panic!("{ctx}: upload {k}, item {i}: {e}"));
            sum = sum.wrapping_add(answer(base + i));
            figs.items_up.fetch_add(1, Ordering::Relaxed);
        }
        ctx.within("an upload's close", tx.close())
            .await
            .unwrap_or_else(|e| panic!("{ctx}: closing upload {k}: {e}"));
        let got = ctx
            .within("an upload's answer", call)
            .await
            .expect("the call's task");
        let got = got.unwrap_or_else(|e| panic!("{ctx}: upload {k}: {e}"));
        assert_eq!(
            got,
            (u64::from(plan.items), sum),
            "{ctx}: upload {k}: (count, checksum)"
        );
    }
}

/// A seeded byte sequence through a tunnel the server echoes.
async fn tunnel(
    ctx: Ctx,
    seed: u64,
    conn: Connection,
    client: SoakClient,
    plan: Arc<Plan>,
    figs: Arc<Figures>,
) {
    let (tunnel, end) = Tunnel::open(&conn).expect("a tunnel");
    let echo = tokio::spawn(async move { client.echo(end).await });
    let (mut r, mut w) = tokio::io::split(tunnel);
    let total = plan.tunnel_bytes;
    let writer = tokio::spawn({
        let ctx = ctx.clone();
        async move {
            let mut bytes = Bytes::new(seed);
            let mut sizes = Rng::derived(seed, &[0x517E]);
            let mut buf = Vec::new();
            let mut left = total;
            while left > 0 {
                let n = sizes.range(1..=(64 << 10)).min(left);
                buf.clear();
                buf.extend((0..n).map(|_| bytes.next()));
                ctx.within("a tunnel write", w.write_all(&buf))
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: writing the tunnel: {e}"));
                left -= n;
            }
            ctx.within("the tunnel's shutdown", w.shutdown())
                .await
                .unwrap_or_else(|e| panic!("{ctx}: shutting the tunnel: {e}"));
        }
    });
    let mut expected = Bytes::new(seed);
    let mut buf = vec![0u8; 32 << 10];
    let mut at = 0u64;
    loop {
        let n = ctx
            .within("tunnel bytes", r.read(&mut buf))
            .await
            .unwrap_or_else(|e| panic!("{ctx}: reading the tunnel at byte {at}: {e}"));
        if n == 0 {
            break;
        }
        for (i, &b) in buf[..n].iter().enumerate() {
            let want = expected.next();
            assert_eq!(b, want, "{ctx}: tunnel byte {} differs", at + i as u64);
        }
        at += n as u64;
        figs.tunnel_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    assert_eq!(at, total, "{ctx}: the tunnel ended early");
    writer.await.expect("the tunnel writer");
    let echoed = ctx
        .within("the echo's answer", echo)
        .await
        .expect("the echo's task");
    assert_eq!(echoed.unwrap_or_else(|e| panic!("{ctx}: echo: {e}")), total);
}

fn connector(
    to: Endpoint,
) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<Transport>> + Send>> {
    move || {
        let to = to.clone();
        Box::pin(async move {
            match to {
                Endpoint::Unix(p) => Ok(Transport::unix(UnixStream::connect(p).await?)),
                Endpoint::Tcp(a) => Transport::tcp(TcpStream::connect(a).await?),
            }
        })
    }
}

async fn soak(unix: bool) {
    let plan = Arc::new(plan());
    let seed = seed();
    let transport = if unix { "unix" } else { "tcp" };
    let ctx = Ctx(format!(
        "stable soak over {transport} (seed {seed:#x}; replay with OSMOS_SOAK_SEED={seed:#x})"
    )
    .into());
    println!("{ctx}: starting");
    let dir = std::env::temp_dir();
    let tag = format!("{}-{seed:x}", std::process::id());
    let (listen, front) = if unix {
        (
            Endpoint::Unix(dir.join(format!("osmos-soak-{tag}-peer.sock"))),
            Endpoint::Unix(dir.join(format!("osmos-soak-{tag}-proxy.sock"))),
        )
    } else {
        let any = "127.0.0.1:0".parse().expect("an address");
        (Endpoint::Tcp(any), Endpoint::Tcp(any))
    };
    let peer = spawn_peer(&ctx, &listen).await;
    let faults = FaultConfig {
        seed,
        cut_after: Some(plan.cut_after.clone()),
        reset_chance: 0.5,
        early_cut_chance: 0.1,
        stall_chance: plan.stall_chance,
        split_max: Some(4096),
        delay_chance: 0.002,
        delay: Duration::from_micros(100)..=Duration::from_millis(5),
        pause_chance: 0.002,
        pause: Duration::from_millis(1)..=Duration::from_millis(50),
    };
    let proxy = Arc::new(
        FaultProxy::start(front, peer.addr.clone(), faults)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: starting the proxy: {e}")),
    );
    let config = StableConfig::default()
        .retry(RetryPolicy {
            max_attempts: 1000,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(20),
        })
        .heartbeat(Duration::from_millis(500))
        // A resume on a connection that stalls mid-handshake gives up soon.
        .handshake_timeout(Duration::from_secs(2));
    let start = Instant::now();
    let link = ctx
        .within(
            "the stable link",
            StableLink::connect(connector(proxy.addr().clone()), config),
        )
        .await
        .unwrap_or_else(|e| panic!("{ctx}: connecting: {e}"));
    let monitor = link.monitor();
    let conn = ctx
        .within("the session", SessionBuilder::new().initiate(link))
        .await
        .unwrap_or_else(|e| panic!("{ctx}: the session's handshake: {e}"));
    let client = SoakClient::new(conn.clone());
    let figs = Arc::new(Figures::default());
    let half = Arc::new(Plan {
        streams: plan.streams.div_ceil(2),
        cut_after: plan.cut_after.clone(),
        ..*plan
    });
    let c = || {
        (
            ctx.clone(),
            conn.clone(),
            client.clone(),
            half.clone(),
            figs.clone(),
        )
    };
    let work = async {
        tokio::join!(
            calls(
                ctx.clone(),
                client.clone(),
                proxy.clone(),
                plan.clone(),
                figs.clone()
            ),
            async {
                let (a, b, x, d, e) = c();
                downloads(a, b, x, d, e).await
            },
            async {
                let (a, b, x, d, e) = c();
                downloads(a, b, x, d, e).await
            },
            async {
                let (a, b, x, d, e) = c();
                uploads(a, b, x, d, e).await
            },
            async {
                let (a, b, x, d, e) = c();
                uploads(a, b, x, d, e).await
            },
            tunnel(
                ctx.clone(),
                seed,
                conn.clone(),
                client.clone(),
                plan.clone(),
                figs.clone()
            ),
        )
    };
    work.await;
    let elapsed = start.elapsed();
    let (served, duplicates) = ctx
        .within("the server's tally", client.tally())
        .await
        .unwrap_or_else(|e| panic!("{ctx}: tally: {e}"));
    let made = figs.calls.load(Ordering::Relaxed);
    assert_eq!(duplicates, 0, "{ctx}: the server saw {duplicates} calls twice");
    assert_eq!(
        served, made,
        "{ctx}: the server answered {served} calls, the client made {made}"
    );
    let stats = proxy.stats();
    let resumes = monitor.resumes();
    println!(
        "{ctx}: {made} calls, {} stream items ({} down, {} up), {} tunnel bytes echoed, \
         {} cuts ({} resets, {} more stalled), {resumes} resumes, {} connections, {} pauses, {} delays, \
         {} bytes up / {} down through the proxy, in {elapsed:.2?}",
        figs.items_down.load(Ordering::Relaxed) + figs.items_up.load(Ordering::Relaxed),
        figs.items_down.load(Ordering::Relaxed),
        figs.items_up.load(Ordering::Relaxed),
        figs.tunnel_bytes.load(Ordering::Relaxed),
        stats.cuts,
        stats.resets,
        stats.stalls,
        stats.connections,
        stats.pauses,
        stats.delays,
        stats.bytes_up,
        stats.bytes_down,
    );
    assert!(made >= plan.calls, "{ctx}: only {made} calls");
    assert!(
        stats.cuts >= plan.min_cuts,
        "{ctx}: only {} cuts within the deadline; the plan wants {}",
        stats.cuts,
        plan.min_cuts
    );
    assert!(resumes >= 1, "{ctx}: the conduit never resumed");
    drop((client, conn));
    peer.stop(&ctx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_streams_and_a_tunnel_survive_cuts_over_unix() {
    soak(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_streams_and_a_tunnel_survive_cuts_over_tcp() {
    soak(false).await;
}
