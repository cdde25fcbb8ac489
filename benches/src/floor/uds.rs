//! Raw Unix-socket floors: the session's workloads over a plain blocking
//! `socketpair(2)` between two processes, with no framework — what a plugin
//! host written by hand over a Unix socket gets, and so the figure osmos has
//! to beat.
//!
//! Every row is named `floor_uds/<case>` after the session case it bounds
//! ([`attach_uds_twins`](crate::report::attach_uds_twins) gives each
//! `<case>/<link>` row its ratio to it):
//!
//! - `floor_uds/add_rtt`: 8 bytes host → peer, the peer adds one and sends
//!   8 bytes back; one `write(2)` and one `read(2)` per side and trip;
//! - `floor_uds/add_cold`: the same round trip, one every millisecond (the
//!   host sleeps to the next point of a 1 ms grid, both processes block in
//!   between), only the round trip timed — the issue's `floor_uds_cold`;
//! - `floor_uds/echo_64` … `floor_uds/echo_1m`: a 4-byte little-endian length
//!   prefix and the payload, echoed back the same way;
//! - `floor_uds/stream_1000`: the host asks for 1000 items; the peer writes
//!   each `u32` as its own length-prefixed 8-byte message (one `write(2)`
//!   per item), then an empty message that ends the stream; the host reads
//!   through a 64 KiB buffer. Timed from the request to the end message, as
//!   `stream_1000/shm` is timed from the call to its response;
//! - `floor_uds/stream_64k`: the same with 64 KiB items (one `write(2)` of
//!   prefix and payload per item), in GB/s of payload.
//!
//! - `floor_uds/cells_<n>`: `n` `pingpong` peers at once, each driven by
//!   its own host thread doing blocking `add` round trips back to back for
//!   the window, in calls per second over all of them — the many-cells
//!   case written by hand, one thread per peer.
//!
//! The peer is this program re-executed as `--floor-child uds <mode>` with
//! its end of the pair as stdin. Both ends block; when the host closes its
//! end the peer reads end-of-file and exits, and when the peer dies the
//! host reads end-of-file and fails the floor, so nothing here can hang.

use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ctxsw::Pair;
use crate::report::{Row, UDS_PREFIX};

/// Any error, sendable between threads.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The largest message a peer accepts (a corrupt prefix fails, not OOMs).
const MAX_MESSAGE: usize = 64 << 20;
/// Items per `floor_uds/stream_1000` run.
pub const SMALL_ITEMS: u32 = 1000;
/// Payload of each `floor_uds/stream_64k` item.
pub const CHUNK: usize = 64 << 10;
/// The sizes of the echo floors, by case name.
pub const ECHOES: [(&str, usize); 4] = [
    ("echo_64", 64),
    ("echo_4k", 4 << 10),
    ("echo_64k", 64 << 10),
    ("echo_1m", 1 << 20),
];
/// How far apart the cold round trips are.
pub const COLD_GAP: Duration = Duration::from_millis(1);

/// How much to measure, from the pass's parameters.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Timed round trips per latency floor (after a tenth as many warm-up
    /// ones); a tenth of it for `echo_1m` and `stream_1000`.
    pub rounds: usize,
    /// Longest one latency floor may take before it stops early.
    pub cap: Duration,
    /// Timed runs behind `stream_64k` (after one warm-up run).
    pub runs: usize,
    /// Items of 64 KiB per `stream_64k` run.
    pub stream_items: usize,
    /// Timed round trips of `add_cold`, [`COLD_GAP`] apart.
    pub cold_calls: usize,
    /// Peer counts of `floor_uds/cells_<n>` (empty: none measured).
    pub cell_counts: &'static [usize],
    /// How long each `floor_uds/cells_<n>` run calls.
    pub cells_window: Duration,
    /// Whether this pass is pinned to one CPU (labels the rows).
    pub pinned: bool,
}

/// The host end of a socket pair whose other end is a peer process.
pub struct UdsPeer {
    sock: UnixStream,
    child: Child,
}

impl UdsPeer {
    /// Starts `exe --floor-child uds <mode>` with the other end of a fresh
    /// socket pair as its stdin. `mode` is `pingpong`, `echo`, `count` or
    /// `stream`.
    pub fn start(exe: &Path, mode: &str) -> io::Result<UdsPeer> {
        let (sock, theirs) = UnixStream::pair()?;
        // The Command owns the peer's end until it is dropped at the end of
        // this statement: after that only the child holds it, so its death
        // reaches us as end-of-file.
        let child = Command::new(exe)
            .args(["--floor-child", "uds", mode])
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .spawn()?;
        Ok(UdsPeer { sock, child })
    }

    /// [`UdsPeer::start`] with this program as the peer.
    pub fn start_self(mode: &str) -> io::Result<UdsPeer> {
        UdsPeer::start(&std::env::current_exe()?, mode)
    }

    /// The peer's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One `add` round trip of the `pingpong` peer: sends `x`, returns what
    /// came back (`x + 1`).
    pub fn add(&mut self, x: u64) -> io::Result<u64> {
        self.sock.write_all(&x.to_le_bytes())?;
        let mut back = [0u8; 8];
        self.sock.read_exact(&mut back)?;
        Ok(u64::from_le_bytes(back))
    }

    /// One round trip of the `echo` peer: sends `framed` (from [`framed`])
    /// and reads the echo into `back`, which must hold the payload. Returns
    /// the payload length that came back.
    pub fn echo(&mut self, framed: &[u8], back: &mut [u8]) -> io::Result<usize> {
        self.sock.write_all(framed)?;
        let mut len = [0u8; 4];
        self.sock.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        let into = back
            .get_mut(..len)
            .ok_or_else(|| io::Error::other(format!("echo of {len} bytes does not fit")))?;
        self.sock.read_exact(into)?;
        Ok(len)
    }

    /// One run of the `count` peer: asks for `n` items and reads them up to
    /// the end message, checking each. Returns how many arrived.
    pub fn count(&mut self, n: u32) -> io::Result<u32> {
        self.sock.write_all(&n.to_le_bytes())?;
        let mut r = BufReader::with_capacity(64 << 10, &self.sock);
        let mut expected = 0u32;
        loop {
            let mut len = [0u8; 4];
            r.read_exact(&mut len)?;
            match u32::from_le_bytes(len) {
                0 => return Ok(expected),
                4 => {}
                other => return Err(io::Error::other(format!("item of {other} bytes, not 4"))),
            }
            let mut item = [0u8; 4];
            r.read_exact(&mut item)?;
            let item = u32::from_le_bytes(item);
            if item != expected {
                return Err(io::Error::other(format!("item {expected} arrived as {item}")));
            }
            expected += 1;
        }
    }

    /// One run of the `stream` peer: asks for `n` items of `buf.len()`
    /// bytes and reads them into `buf` up to the end message. Returns the
    /// payload bytes that arrived.
    pub fn stream(&mut self, n: u32, buf: &mut [u8]) -> io::Result<usize> {
        let size = u32::try_from(buf.len()).map_err(io::Error::other)?;
        let mut req = [0u8; 8];
        req[..4].copy_from_slice(&n.to_le_bytes());
        req[4..].copy_from_slice(&size.to_le_bytes());
        self.sock.write_all(&req)?;
        let mut bytes = 0;
        loop {
            let mut len = [0u8; 4];
            self.sock.read_exact(&mut len)?;
            let len = u32::from_le_bytes(len) as usize;
            if len == 0 {
                return Ok(bytes);
            }
            let into = buf
                .get_mut(..len)
                .ok_or_else(|| io::Error::other(format!("item of {len} bytes does not fit")))?;
            self.sock.read_exact(into)?;
            bytes += len;
        }
    }

    /// Closes our end and waits for the peer to exit.
    pub fn finish(self) -> Result<(), BoxError> {
        let UdsPeer { sock, mut child } = self;
        drop(sock);
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("uds floor peer failed: {status}").into());
        }
        Ok(())
    }
}

/// `payload_len` bytes of payload behind their 4-byte length prefix: the
/// message [`UdsPeer::echo`] sends.
pub fn framed(payload_len: usize) -> Vec<u8> {
    let mut m = vec![0xa5u8; 4 + payload_len];
    m[..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    m
}

/// Times `op` `rounds` times after a tenth as many warm-up rounds, stopping
/// early after `cap` (with at least 10 samples). Counts the context
/// switches of this process and `peer_pid` over the timed rounds.
fn timed(
    rounds: usize,
    cap: Duration,
    peer_pid: u32,
    mut op: impl FnMut(usize) -> Result<(), BoxError>,
) -> Result<(Vec<Duration>, Option<crate::ctxsw::CtxSwitches>), BoxError> {
    let warmup = rounds / 10;
    for i in 0..warmup {
        op(i)?;
    }
    let ctx = Pair::take(peer_pid);
    let mut times = Vec::with_capacity(rounds);
    let start = Instant::now();
    for i in 0..rounds {
        let t = Instant::now();
        op(warmup + i)?;
        times.push(t.elapsed());
        if start.elapsed() > cap && times.len() >= 10 {
            break;
        }
    }
    let ctx = ctx.and_then(|c| c.per_call(times.len()));
    Ok((times, ctx))
}

fn latency(case: &str, times: &mut [Duration], wanted: usize, plan: &Plan) -> Row {
    let row = Row::latency(format!("{UDS_PREFIX}{case}"), times, plan.pinned);
    if times.len() < wanted {
        row.note(&format!("stopped early after {:?}", plan.cap))
    } else {
        row
    }
}

/// One checked `add` round trip.
fn check(peer: &mut UdsPeer, i: usize) -> Result<(), BoxError> {
    let x = i as u64;
    let back = peer.add(x)?;
    if back != x.wrapping_add(1) {
        return Err(format!("add({x}) came back as {back}").into());
    }
    Ok(())
}

/// `floor_uds/add_rtt` and `floor_uds/add_cold`, on one `pingpong` peer.
fn add(plan: &Plan) -> Result<Vec<Row>, BoxError> {
    let mut peer = UdsPeer::start_self("pingpong")?;
    let pid = peer.pid();
    let (mut times, ctx) = timed(plan.rounds, plan.cap, pid, |i| check(&mut peer, i))?;
    let rtt = latency("add_rtt", &mut times, plan.rounds, plan)
        .with_ctx(ctx)
        .note("8 bytes each way over a blocking socketpair, two processes");
    let rtt = match ctx {
        Some(c) => rtt.note(&c.breakdown()),
        None => rtt,
    };

    // Cold: both processes block between calls, as a plugin called once a
    // millisecond does.
    check(&mut peer, 0)?;
    let ctx = Pair::take(pid);
    let mut times = Vec::with_capacity(plan.cold_calls);
    let start = Instant::now();
    for i in 0..plan.cold_calls {
        // On a 1 ms grid, as the session case's timer: sleep to the next
        // point, the call itself taking far less than a millisecond.
        let next = start + COLD_GAP * (i as u32 + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let t = Instant::now();
        check(&mut peer, i)?;
        times.push(t.elapsed());
    }
    let period = start.elapsed() / plan.cold_calls.max(1) as u32;
    let ctx = ctx.and_then(|c| c.per_call(times.len()));
    let mut cold = latency("add_cold", &mut times, plan.cold_calls, plan)
        .with_ctx(ctx)
        .note(&format!(
            "one round trip per millisecond, sleeping in between (mean period {period:.2?}); only the round trip timed"
        ));
    if let Some(c) = ctx {
        cold = cold.note(&format!("{} (the sleeps' switches included)", c.breakdown()));
    }
    peer.finish()?;
    Ok(vec![rtt, cold])
}

/// `floor_uds/echo_*`, on one `echo` peer.
fn echoes(plan: &Plan) -> Result<Vec<Row>, BoxError> {
    let mut peer = UdsPeer::start_self("echo")?;
    let pid = peer.pid();
    let mut rows = Vec::new();
    for (case, size) in ECHOES {
        let msg = framed(size);
        let mut back = vec![0u8; size];
        // Fewer rounds for the big payloads, as the session cases do.
        let rounds = if size >= 1 << 20 {
            plan.rounds / 10
        } else {
            plan.rounds
        };
        let (mut times, _) = timed(rounds, plan.cap, pid, |_| {
            let n = peer.echo(&msg, &mut back)?;
            if n != size {
                return Err(format!("echo of {size} bytes returned {n}").into());
            }
            Ok(())
        })?;
        rows.push(latency(case, &mut times, rounds, plan).note("4-byte length prefix + payload, each way"));
    }
    peer.finish()?;
    Ok(rows)
}

/// `floor_uds/stream_1000`, on one `count` peer.
fn small_stream(plan: &Plan) -> Result<Row, BoxError> {
    let mut peer = UdsPeer::start_self("count")?;
    let pid = peer.pid();
    let rounds = plan.rounds / 10;
    let (mut times, _) = timed(rounds, plan.cap, pid, |_| {
        let n = peer.count(SMALL_ITEMS)?;
        if n != SMALL_ITEMS {
            return Err(format!("{n} items arrived, not {SMALL_ITEMS}").into());
        }
        Ok(())
    })?;
    peer.finish()?;
    Ok(latency("stream_1000", &mut times, rounds, plan)
        .note("1000 u32 items peer → host, one write(2) each, request to end message"))
}

/// `floor_uds/stream_64k`, on one `stream` peer.
fn stream(plan: &Plan) -> Result<Row, BoxError> {
    let mut peer = UdsPeer::start_self("stream")?;
    let items = u32::try_from(plan.stream_items)?;
    let mut buf = vec![0u8; CHUNK];
    let mut rates = Vec::with_capacity(plan.runs);
    for run in 0..plan.runs + 1 {
        let start = Instant::now();
        let bytes = peer.stream(items, &mut buf)?;
        let secs = start.elapsed().as_secs_f64();
        if bytes != plan.stream_items * CHUNK {
            return Err(format!("streamed {bytes} bytes, expected {} items", plan.stream_items).into());
        }
        std::hint::black_box(&buf);
        // The first run warms the socket buffers up.
        if run > 0 {
            rates.push(bytes as f64 / secs / 1e9);
        }
    }
    peer.finish()?;
    Ok(
        Row::rate(format!("{UDS_PREFIX}stream_64k"), "GB/s", &mut rates, plan.pinned).note(&format!(
            "{} x 64 KiB per run peer → host, one write(2) each",
            plan.stream_items
        )),
    )
}

/// `floor_uds/cells_<n>` for each of the plan's counts: `n` `pingpong`
/// peers, one host thread per peer calling back to back until the window
/// closes.
fn cells(plan: &Plan) -> Result<Vec<Row>, BoxError> {
    let mut rows = Vec::new();
    for &n in plan.cell_counts {
        let peers = (0..n)
            .map(|_| UdsPeer::start_self("pingpong"))
            .collect::<io::Result<Vec<_>>>()?;
        let start = Instant::now();
        let deadline = start + plan.cells_window;
        let threads: Vec<_> = peers
            .into_iter()
            .map(|mut peer| {
                std::thread::spawn(move || -> Result<(UdsPeer, u64), String> {
                    let mut calls = 0u64;
                    while Instant::now() < deadline {
                        check(&mut peer, calls as usize).map_err(|e| e.to_string())?;
                        calls += 1;
                    }
                    Ok((peer, calls))
                })
            })
            .collect();
        let mut total = 0u64;
        let mut finished = Vec::with_capacity(n);
        for t in threads {
            let (peer, calls) = t.join().map_err(|_| "a uds cells thread panicked")??;
            total += calls;
            finished.push(peer);
        }
        let rate = total as f64 / start.elapsed().as_secs_f64();
        for peer in finished {
            peer.finish()?;
        }
        rows.push(
            Row::rate(
                format!("{UDS_PREFIX}cells_{n}"),
                "calls/s",
                &mut [rate],
                plan.pinned,
            )
            .note(&format!(
                "{n} pingpong peers, one blocking host thread each, calling for {:?}",
                plan.cells_window
            )),
        );
    }
    Ok(rows)
}

/// Measures every `floor_uds/*` row. One failing workload does not stop
/// the others: their errors come back beside the rows.
pub fn floors(plan: &Plan) -> (Vec<Row>, Vec<String>) {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    match add(plan) {
        Ok(r) => rows.extend(r),
        Err(e) => errors.push(format!("uds add floors: {e}")),
    }
    match echoes(plan) {
        Ok(r) => rows.extend(r),
        Err(e) => errors.push(format!("uds echo floors: {e}")),
    }
    match small_stream(plan) {
        Ok(r) => rows.push(r),
        Err(e) => errors.push(format!("uds stream_1000 floor: {e}")),
    }
    match stream(plan) {
        Ok(r) => rows.push(r),
        Err(e) => errors.push(format!("uds stream_64k floor: {e}")),
    }
    match cells(plan) {
        Ok(r) => rows.extend(r),
        Err(e) => errors.push(format!("uds cells floors: {e}")),
    }
    (rows, errors)
}

/// The peer: `args` are what followed `--floor-child uds`; the socket is
/// stdin. Serves requests until the host closes its end.
pub fn child(args: &[String]) -> Result<(), BoxError> {
    let mut sock = UnixStream::from(io::stdin().as_fd().try_clone_to_owned()?);
    match args.first().map(String::as_str) {
        Some("pingpong") => {
            let mut buf = [0u8; 8];
            while read_or_eof(&mut sock, &mut buf)? {
                let x = u64::from_le_bytes(buf).wrapping_add(1);
                sock.write_all(&x.to_le_bytes())?;
            }
        }
        Some("echo") => {
            let mut buf = vec![0u8; 4];
            while read_or_eof(&mut sock, &mut buf[..4])? {
                let len = length(&buf[..4])?;
                if buf.len() < 4 + len {
                    buf.resize(4 + len, 0);
                }
                sock.read_exact(&mut buf[4..4 + len])?;
                sock.write_all(&buf[..4 + len])?;
            }
        }
        Some("count") => {
            let mut req = [0u8; 4];
            while read_or_eof(&mut sock, &mut req)? {
                for i in 0..u32::from_le_bytes(req) {
                    let mut item = [4u8, 0, 0, 0, 0, 0, 0, 0];
                    item[4..].copy_from_slice(&i.to_le_bytes());
                    sock.write_all(&item)?;
                }
                sock.write_all(&0u32.to_le_bytes())?;
            }
        }
        Some("stream") => {
            let mut req = [0u8; 8];
            let mut item = Vec::new();
            while read_or_eof(&mut sock, &mut req)? {
                let len = length(&req[4..])?;
                if item.len() != 4 + len {
                    item = vec![0x5au8; 4 + len];
                    item[..4].copy_from_slice(&req[4..]);
                }
                for _ in 0..u32::from_le_bytes([req[0], req[1], req[2], req[3]]) {
                    sock.write_all(&item)?;
                }
                sock.write_all(&0u32.to_le_bytes())?;
            }
        }
        other => return Err(format!("unknown uds floor peer mode {other:?}").into()),
    }
    Ok(())
}

/// Fills `buf`, or returns `false` on end-of-file before its first byte.
fn read_or_eof(sock: &mut UnixStream, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match sock.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// A 4-byte little-endian length prefix, bounded by [`MAX_MESSAGE`].
fn length(prefix: &[u8]) -> io::Result<usize> {
    let bytes: [u8; 4] = prefix.try_into().map_err(io::Error::other)?;
    let len = u32::from_le_bytes(bytes) as usize;
    if len > MAX_MESSAGE {
        return Err(io::Error::other(format!("message of {len} bytes")));
    }
    Ok(len)
}
