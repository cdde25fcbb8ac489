//! `add(u32, u32)` round trip and calls/s over every link, in one run.
//!
//! ```text
//! cargo run --release -p osmos-session --example rtt
//! taskset -c 0 cargo run --release -p osmos-session --example rtt
//! ```
//!
//! Rows: the memory, Unix, TCP and shm links with both peers in this process
//! (two tokio runtimes), and the shm link with the server in a second process
//! (this program re-executed with the segment at fd 3).
//!
//! An argument keeps only the rows whose name contains it, e.g.
//! `cargo run --release -p osmos-session --example rtt -- processes`.

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use osmos_session::link::shm::ShmLink;
use osmos_session::link::stream::StreamLink;
use osmos_session::link::{Link, memory};
use osmos_session::{Connection, SessionBuilder};
use osmos_shm::{Segment, SegmentConfig, Side};

/// The measured service.
#[osmos_macros::service]
pub trait Adder {
    /// Adds.
    async fn add(&self, a: u32, b: u32) -> Result<u32, String>;
}

struct Add;
impl Adder for Add {
    async fn add(&self, a: u32, b: u32) -> Result<u32, String> {
        Ok(a.wrapping_add(b))
    }
}

const WARMUP: usize = 2_000;
const ROUNDS: usize = 20_000;
const CONCURRENT: usize = 16;
const PER_TASK: usize = 2_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts a server on its own runtime (its own thread) over `link`.
fn serve<L: Link>(link: L) -> tokio::runtime::Runtime {
    let rt = runtime();
    rt.spawn(async move {
        let conn = SessionBuilder::new()
            .serve(AdderDispatcher::new(Add))
            .accept(link)
            .await
            .expect("server handshake");
        conn.closed().await;
    });
    rt
}

struct Row {
    name: &'static str,
    p50: Duration,
    p99: Duration,
    calls_per_sec: f64,
}

async fn measure(name: &'static str, conn: Connection) -> Row {
    let client = AdderClient::new(conn);
    let mut times = Vec::with_capacity(ROUNDS);
    for i in 0..(WARMUP + ROUNDS) as u32 {
        let t = Instant::now();
        let r = client.add(i, 1).await.expect("add");
        let dt = t.elapsed();
        assert_eq!(r, i.wrapping_add(1));
        if i as usize >= WARMUP {
            times.push(dt);
        }
    }
    times.sort();
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move {
                for i in 0..PER_TASK as u32 {
                    c.add(i, i).await.expect("add");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = (CONCURRENT * PER_TASK) as f64 / start.elapsed().as_secs_f64();
    client.connection().goodbye("measured").await;
    Row {
        name,
        p50: times[times.len() / 2],
        p99: times[times.len() * 99 / 100],
        calls_per_sec: rate,
    }
}

async fn in_process<L: Link>(name: &'static str, client: L, server: L) -> Row {
    let server_rt = serve(server);
    let conn = SessionBuilder::new()
        .initiate(client)
        .await
        .expect("client handshake");
    let row = measure(name, conn).await;
    server_rt.shutdown_background();
    row
}

/// CPU time (user + system) a process used so far, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces): utime is the
    // 12th and stime the 13th after the closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    Duration::from_millis(ticks * 1000 / hz)
}

async fn shm_cross_process() -> Row {
    let seg = Segment::create(&SegmentConfig::default(), 1).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg("--cell").stdin(Stdio::null());
    seg.pass_to(&mut cmd, 3);
    seg.pass_wake_to(&mut cmd, 5);
    let mut child = cmd.spawn().expect("spawn the cell");
    let pid = child.id();
    let endpoint = seg.endpoint().unwrap();
    let live = endpoint.liveness.clone();
    let watcher = std::thread::spawn(move || {
        let status = child.wait();
        live.mark_dead(Side::Cell);
        status
    });
    let conn = SessionBuilder::new()
        .initiate(ShmLink::new(endpoint))
        .await
        .expect("handshake with the cell");
    // Idle cost: a connected host and cell doing nothing for a while.
    let idle = Duration::from_secs(3);
    let (host0, cell0) = (cpu_time(std::process::id()), cpu_time(pid));
    tokio::time::sleep(idle).await;
    let (host1, cell1) = (cpu_time(std::process::id()), cpu_time(pid));
    println!(
        "idle connected host + cell over shm for {idle:?}: host used {:?}, cell used {:?} of CPU (10 ms clock ticks)",
        host1 - host0,
        cell1 - cell0
    );
    let row = measure("shm (2 processes)", conn).await;
    let _ = watcher.join();
    row
}

fn cell() {
    runtime().block_on(async {
        // SAFETY: the parent placed the segment at fd 3 and its wake end at
        // fd 5 for us alone.
        let (fd, wake) = unsafe { (OwnedFd::from_raw_fd(3), OwnedFd::from_raw_fd(5)) };
        let seg = Segment::attach_with_wake(fd, wake).expect("attach");
        let conn = SessionBuilder::new()
            .serve(AdderDispatcher::new(Add))
            .accept(ShmLink::new(seg.endpoint().expect("endpoint")))
            .await
            .expect("cell handshake");
        conn.closed().await;
    });
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--cell") {
        cell();
        return;
    }
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let only = std::env::args().nth(1).unwrap_or_default();
    let wanted = |name: &str| name.contains(only.as_str());
    let rows = runtime().block_on(async {
        let mut rows = Vec::new();
        if wanted("memory") {
            let (a, b) = memory::pair(1 << 20, 64);
            rows.push(in_process("memory", a, b).await);
        }
        if wanted("unix") {
            let (a, b) = tokio::net::UnixStream::pair().unwrap();
            rows.push(in_process("unix", StreamLink::unix(a, 1 << 20), StreamLink::unix(b, 1 << 20)).await);
        }
        if wanted("tcp (loopback)") {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (a, b) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
            let (a, b) = (
                StreamLink::tcp(a.unwrap(), 1 << 20).unwrap(),
                StreamLink::tcp(b.unwrap().0, 1 << 20).unwrap(),
            );
            rows.push(in_process("tcp (loopback)", a, b).await);
        }
        if wanted("shm (1 process)") {
            let host = Segment::create(&SegmentConfig::default(), 1).unwrap();
            let cell = host.attach_peer().unwrap();
            let (h, c) = (
                ShmLink::new(host.endpoint().unwrap()),
                ShmLink::new(cell.endpoint().unwrap()),
            );
            rows.push(in_process("shm (1 process)", h, c).await);
        }
        if wanted("shm (2 processes)") {
            rows.push(shm_cross_process().await);
        }
        rows
    });
    println!(
        "add(u32, u32) round trip, {ROUNDS} sequential calls; calls/s with {CONCURRENT} concurrent callers; {cpus} CPUs allowed"
    );
    println!("{:<20} {:>10} {:>10} {:>12}", "link", "p50", "p99", "calls/s");
    let base = rows
        .iter()
        .find(|r| r.name == "memory")
        .map(|r| r.p50)
        .unwrap_or(Duration::from_nanos(1));
    for r in &rows {
        println!(
            "{:<20} {:>7.1} µs {:>7.1} µs {:>12.0}   (p50 {:.2}× memory)",
            r.name,
            r.p50.as_secs_f64() * 1e6,
            r.p99.as_secs_f64() * 1e6,
            r.calls_per_sec,
            r.p50.as_secs_f64() / base.as_secs_f64()
        );
    }
}
