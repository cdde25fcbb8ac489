//! Floors: what two processes sharing an osmos-shm segment can do with no
//! session on top, measured in the same run as the cases they bound.
//!
//! - `floor_spin/shm`, `floor_park/shm`, `floor_adaptive/shm`: round trip of
//!   a 32-byte frame, host → peer → host, through the segment's
//!   [`FrameSender`](osmos_shm::FrameSender) /
//!   [`FrameReceiver`](osmos_shm::FrameReceiver), both sides waiting with
//!   the same [`WaitStrategy`]: spinning only (1 s spin, no yields), parking
//!   on the futex at once ([`WaitStrategy::PARK`]), and osmos's adaptive
//!   default.
//! - `floor_ring_copy/shm`: GB/s of 64 KiB messages the peer writes into the
//!   segment (one copy in, through the slot pool and the ring) and the host
//!   copies out (one copy out) — the limit for `stream_64k/shm`.
//!
//! The peer is this program re-executed with `--floor-child` and the segment
//! at fd 3.
//!
//! [`uds`] holds the other floor: the same workloads as the session cases
//! over a raw blocking Unix socket between two processes.

pub mod uds;

use std::os::fd::{FromRawFd, OwnedFd};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use osmos_shm::{Endpoint, Segment, SegmentConfig, Side, WaitStrategy};

use crate::report::Row;

/// Name of the pure-spin ping-pong floor row.
pub const SPIN: &str = "floor_spin/shm";
/// Name of the futex-parking ping-pong floor row.
pub const PARK: &str = "floor_park/shm";
/// Name of the adaptive (osmos default) ping-pong floor row.
pub const ADAPTIVE: &str = "floor_adaptive/shm";
/// Name of the raw shared-ring copy floor row.
pub const RING_COPY: &str = "floor_ring_copy/shm";

/// Bytes per ping-pong frame.
const FRAME: usize = 32;
/// Bytes per streamed message in the ring copy floor.
pub const CHUNK: usize = 64 << 10;

/// The three ping-pong strategies, by row name.
pub fn strategies() -> [(&'static str, WaitStrategy); 3] {
    [
        (
            SPIN,
            WaitStrategy {
                spin: Duration::from_secs(1),
                yields: 0,
            },
        ),
        (PARK, WaitStrategy::PARK),
        (ADAPTIVE, WaitStrategy::default()),
    ]
}

fn set_strategy(ep: &mut Endpoint, s: WaitStrategy) {
    ep.sender.set_wait_strategy(s);
    ep.receiver.set_wait_strategy(s);
}

/// The host side of one floor: the segment, the peer process and a thread
/// that marks the peer dead when it exits, so no wait here can hang.
struct Peer {
    ep: Endpoint,
    watcher: JoinHandle<std::io::Result<std::process::ExitStatus>>,
    _seg: Segment,
}

impl Peer {
    fn start(args: &[&str]) -> Result<Peer, Box<dyn std::error::Error>> {
        let seg = Segment::create(&SegmentConfig::default(), 1)?;
        let mut child = crate::sys::spawn_self_with_segment(args, &seg)?;
        let ep = seg.endpoint()?;
        let live = ep.liveness.clone();
        let watcher = std::thread::spawn(move || {
            let status = child.wait();
            live.mark_dead(Side::Cell);
            status
        });
        Ok(Peer {
            ep,
            watcher,
            _seg: seg,
        })
    }

    /// Sends the empty "stop" message and waits for the peer to exit.
    fn finish(mut self) -> Result<(), Box<dyn std::error::Error>> {
        self.ep.sender.send(&[], None)?;
        let status = self.watcher.join().map_err(|_| "floor watcher panicked")??;
        if !status.success() {
            return Err(format!("floor peer failed: {status}").into());
        }
        Ok(())
    }
}

/// Measures the three ping-pong floors: `rounds` timed round trips after a
/// tenth as many warm-up ones, each strategy stopping early after `cap`.
pub fn pingpongs(rounds: usize, cap: Duration, pinned: bool) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    pingpongs_on(rounds, cap, pinned, None)
}

/// The same floors with the host on CPU 1 and the peer on CPU 0
/// (`floor_*_split/shm`): the cross-CPU figure an unpinned run lands on
/// only some of the time. Needs two CPUs; restores this thread's mask.
pub fn pingpongs_split(rounds: usize, cap: Duration) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let saved = crate::sys::affinity()?;
    crate::sys::pin_to(1)?;
    let rows = pingpongs_on(rounds, cap, false, Some(0));
    crate::sys::set_affinity(&saved)?;
    Ok(rows?
        .into_iter()
        .map(|mut r| {
            r.name = r.name.replace("/shm", "_split/shm");
            r.note("host on CPU 1, peer on CPU 0")
        })
        .collect())
}

fn pingpongs_on(
    rounds: usize,
    cap: Duration,
    pinned: bool,
    peer_cpu: Option<usize>,
) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let mut rows = Vec::new();
    for (i, (name, strategy)) in strategies().into_iter().enumerate() {
        let idx = i.to_string();
        let cpu = peer_cpu.map_or_else(String::new, |c| c.to_string());
        let mut args = vec!["--floor-child", "pingpong", &idx];
        if peer_cpu.is_some() {
            args.push(&cpu);
        }
        let mut peer = Peer::start(&args)?;
        set_strategy(&mut peer.ep, strategy);
        let msg = [7u8; FRAME];
        let warmup = rounds / 10;
        let mut times = Vec::with_capacity(rounds);
        let start = Instant::now();
        for round in 0..warmup + rounds {
            let t = Instant::now();
            peer.ep.sender.send(&msg, None)?;
            let m = peer.ep.receiver.recv(None)?;
            let n = m.len();
            drop(m);
            let dt = t.elapsed();
            if n != FRAME {
                return Err(format!("floor peer echoed {n} bytes, not {FRAME}").into());
            }
            if round >= warmup {
                times.push(dt);
            }
            if start.elapsed() > cap && times.len() >= 10 {
                break;
            }
        }
        peer.finish()?;
        let mut row = Row::latency(name, &mut times, pinned);
        if times.len() < rounds {
            row = row.note(&format!("stopped early after {cap:?}"));
        }
        if peer_cpu.is_none() && pinned && name == SPIN {
            // The doorbell spins only while the peer last ran on another CPU.
            row = row.note("on one CPU the wait finds the peer on this CPU and, with no yields, parks");
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Measures the ring copy floor: `runs` runs of `items` messages of
/// [`CHUNK`] bytes, peer → host, each copied into a private buffer.
pub fn ring_copy(runs: usize, items: usize, pinned: bool) -> Result<Row, Box<dyn std::error::Error>> {
    let count = items.to_string();
    let mut peer = Peer::start(&["--floor-child", "stream", &count])?;
    let mut buf = vec![0u8; CHUNK];
    let mut rates = Vec::with_capacity(runs);
    for run in 0..runs + 1 {
        let start = Instant::now();
        peer.ep.sender.send(&[1], None)?;
        for _ in 0..items {
            let m = peer.ep.receiver.recv(None)?;
            if m.len() != CHUNK {
                return Err(format!("floor peer streamed {} bytes, not {CHUNK}", m.len()).into());
            }
            buf.clear();
            m.append_to(&mut buf);
            drop(m);
        }
        std::hint::black_box(&buf);
        // The first run warms the pages and slots up.
        if run > 0 {
            rates.push((items * CHUNK) as f64 / start.elapsed().as_secs_f64() / 1e9);
        }
    }
    peer.finish()?;
    Ok(Row::rate(RING_COPY, "GB/s", &mut rates, pinned).note(&format!("{items} x 64 KiB per run")))
}

/// The floor peer: `args` are what followed `--floor-child`. Returns the
/// process exit code.
pub fn child(args: &[String]) -> i32 {
    let result = match args.first().map(String::as_str) {
        Some("uds") => uds::child(&args[1..]).map_err(|e| e as Box<dyn std::error::Error>),
        _ => child_inner(args),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("osmos-bench floor peer: {e}");
            1
        }
    }
}

fn child_inner(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: the parent placed the segment at fd 3 for us alone, and
    // nothing else in this process uses fd 3.
    let fd = unsafe { OwnedFd::from_raw_fd(3) };
    let seg = Segment::attach(fd)?;
    let mut ep = seg.endpoint()?;
    match args.first().map(String::as_str) {
        Some("pingpong") => {
            let idx: usize = args.get(1).ok_or("missing strategy")?.parse()?;
            let (_, strategy) = *strategies().get(idx).ok_or("no such strategy")?;
            set_strategy(&mut ep, strategy);
            if let Some(cpu) = args.get(2) {
                crate::sys::pin_to(cpu.parse()?)?;
            }
            loop {
                let m = ep.receiver.recv(None)?;
                if m.is_empty() {
                    return Ok(());
                }
                let n = m.len().min(FRAME);
                let mut copy = Vec::with_capacity(m.len());
                m.append_to(&mut copy);
                drop(m);
                ep.sender.send(&copy[..n], None)?;
            }
        }
        Some("stream") => {
            let items: usize = args.get(1).ok_or("missing count")?.parse()?;
            let src = vec![0x5au8; CHUNK];
            loop {
                let go = ep.receiver.recv(None)?;
                let stop = go.is_empty();
                drop(go);
                if stop {
                    return Ok(());
                }
                for _ in 0..items {
                    ep.sender.send(&src, None)?;
                }
            }
        }
        other => Err(format!("unknown floor peer mode {other:?}").into()),
    }
}
