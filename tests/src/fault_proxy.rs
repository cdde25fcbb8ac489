//! A fault-injecting proxy for byte-stream connections, to prove that what
//! runs over them (the stable conduit) survives a bad network.
//!
//! [`FaultProxy::start`] listens on a Unix path or a loopback TCP port and
//! forwards every connection it accepts to an upstream address (Unix or TCP),
//! both directions at once. On the way it injects faults, each drawn from a
//! PRNG ([`Rng`], SplitMix64) seeded from [`FaultConfig::seed`]:
//!
//! - **Cuts.** Each connection gets a byte budget drawn from
//!   [`FaultConfig::cut_after`] and a direction drawn at random; once that
//!   direction has forwarded its budget (the last chunk is forwarded only up
//!   to it, so frames break in the middle), both sockets are closed. A TCP
//!   connection is reset instead (`SO_LINGER` 0, so the peer reads
//!   `ECONNRESET`) with probability [`FaultConfig::reset_chance`]. With
//!   probability [`FaultConfig::early_cut_chance`] the budget is drawn from
//!   `0..=256` instead, which cuts handshakes and the first frames.
//! - **Stalls.** With probability [`FaultConfig::stall_chance`] a connection
//!   that reaches its budget is not closed but goes silent: nothing more is
//!   read from or written to either socket, which stay open (a pulled
//!   cable: no FIN, no reset) until the proxy is dropped.
//! - **Splits.** Each chunk read is written in pieces of random sizes up to
//!   [`FaultConfig::split_max`] bytes.
//! - **Delays.** Before a piece is written, it waits for a duration drawn
//!   from [`FaultConfig::delay`] with probability [`FaultConfig::delay_chance`].
//! - **Pauses.** After a chunk, a direction stops reading for a duration
//!   drawn from [`FaultConfig::pause`] with probability
//!   [`FaultConfig::pause_chance`], then carries on.
//!
//! Determinism: connection `k` (counted from 0 in accept order) and each of
//! its directions draw from PRNGs seeded from `(seed, k, direction)`, so a
//! seed fixes where every connection is cut and how every byte stream is
//! split, delayed and paused (what the peers do meanwhile depends on
//! timing). Print the seed when a test fails: [`FaultProxy::seed`].
//!
//! [`FaultProxy::stats`] reads the counters (connections, cuts, resets,
//! pauses, delays, bytes each way); [`FaultProxy::set_active`] turns the
//! faults off and on (a proxy that is not active forwards faithfully).
//! Dropping the proxy stops it and closes every connection it forwards.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;

/// SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
/// generators", 2014): small, fast and good enough to choose faults and to
/// make test data. Not for secrets.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// A generator for the `parts` of something seeded with `seed` (e.g. a
    /// connection and its direction), independent of its siblings.
    pub fn derived(seed: u64, parts: &[u64]) -> Rng {
        let mut r = Rng::new(seed);
        for &p in parts {
            r = Rng::new(r.next_u64() ^ p.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        r
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `range` (both ends included).
    pub fn range(&mut self, range: RangeInclusive<u64>) -> u64 {
        let (lo, hi) = (*range.start(), *range.end());
        if hi <= lo {
            return lo;
        }
        match (hi - lo).checked_add(1) {
            Some(span) => lo + self.next_u64() % span,
            None => self.next_u64(),
        }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// A duration in `range`, to the microsecond.
    pub fn duration(&mut self, range: &RangeInclusive<Duration>) -> Duration {
        let lo = range.start().as_micros() as u64;
        let hi = range.end().as_micros() as u64;
        Duration::from_micros(self.range(lo..=hi))
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// Where the proxy listens, or where it forwards to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix stream socket's path.
    Unix(PathBuf),
    /// A TCP address (the proxy listens on loopback only).
    Tcp(SocketAddr),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

impl Endpoint {
    /// Reads `unix:PATH` or `tcp:ADDR` (what `Display` writes).
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            Ok(Endpoint::Unix(p.into()))
        } else if let Some(a) = s.strip_prefix("tcp:") {
            a.parse()
                .map(Endpoint::Tcp)
                .map_err(|e| format!("'{a}' is not a TCP address: {e}"))
        } else {
            Err(format!("'{s}' is neither unix:PATH nor tcp:ADDR"))
        }
    }
}

/// Which faults the proxy injects (see the module docs). The default
/// injects none.
#[derive(Clone, Debug)]
pub struct FaultConfig {
    /// Seeds every random choice.
    pub seed: u64,
    /// Cut each connection after this many bytes in one direction (drawn
    /// per connection); `None`: never cut.
    pub cut_after: Option<RangeInclusive<u64>>,
    /// Probability that a TCP cut is a reset (`SO_LINGER` 0) rather than a close.
    pub reset_chance: f64,
    /// Probability that a connection's budget is drawn from `0..=256`
    /// rather than `cut_after`.
    pub early_cut_chance: f64,
    /// Probability that a connection stalls at its budget instead of being cut.
    pub stall_chance: f64,
    /// Write each chunk in random pieces of 1 to this many bytes; `None`:
    /// as read.
    pub split_max: Option<usize>,
    /// Probability that a piece waits before it is written.
    pub delay_chance: f64,
    /// How long a delayed piece waits.
    pub delay: RangeInclusive<Duration>,
    /// Probability that a direction pauses after a chunk.
    pub pause_chance: f64,
    /// How long a paused direction stops reading.
    pub pause: RangeInclusive<Duration>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            seed: 0,
            cut_after: None,
            reset_chance: 0.0,
            early_cut_chance: 0.0,
            stall_chance: 0.0,
            split_max: None,
            delay_chance: 0.0,
            delay: Duration::ZERO..=Duration::ZERO,
            pause_chance: 0.0,
            pause: Duration::ZERO..=Duration::ZERO,
        }
    }
}

/// The proxy's counters, as [`FaultProxy::stats`] read them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Connections accepted.
    pub connections: u64,
    /// Connections the proxy cut (resets included).
    pub cuts: u64,
    /// Cuts made with a TCP reset.
    pub resets: u64,
    /// Connections that stalled at their budget (not counted in `cuts`).
    pub stalls: u64,
    /// Pauses of a direction.
    pub pauses: u64,
    /// Pieces delayed.
    pub delays: u64,
    /// Bytes forwarded from clients to the upstream.
    pub bytes_up: u64,
    /// Bytes forwarded from the upstream to clients.
    pub bytes_down: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    cuts: AtomicU64,
    resets: AtomicU64,
    stalls: AtomicU64,
    pauses: AtomicU64,
    delays: AtomicU64,
    bytes: [AtomicU64; 2],
}

/// What the connections share with the proxy.
struct Shared {
    config: FaultConfig,
    upstream: Endpoint,
    counters: Counters,
    /// Whether faults are injected (see [`FaultProxy::set_active`]).
    active: AtomicBool,
    /// Becomes true when the proxy is dropped.
    stop: watch::Sender<bool>,
}

/// A running fault-injecting proxy (see the module docs).
pub struct FaultProxy {
    addr: Endpoint,
    shared: Arc<Shared>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
        if let Endpoint::Unix(p) = &self.addr {
            let _ = std::fs::remove_file(p);
        }
    }
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// An accepted or connected socket.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

impl Stream {
    async fn connect(to: &Endpoint) -> io::Result<Stream> {
        Ok(match to {
            Endpoint::Unix(p) => Stream::Unix(UnixStream::connect(p).await?),
            Endpoint::Tcp(a) => {
                let s = TcpStream::connect(a).await?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
        })
    }

    /// Makes closing the socket send a reset (TCP only).
    fn reset_on_close(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_zero_linger(),
            Stream::Unix(_) => Ok(()),
        }
    }

    /// The two halves. `tokio::io::split`, not `into_split`: dropping its
    /// write half does not shut the socket down, so a cut is one close (or
    /// one reset), not a FIN first.
    fn split(self) -> (BoxRead, BoxWrite) {
        match self {
            Stream::Unix(s) => {
                let (r, w) = tokio::io::split(s);
                (Box::new(r), Box::new(w))
            }
            Stream::Tcp(s) => {
                let (r, w) = tokio::io::split(s);
                (Box::new(r), Box::new(w))
            }
        }
    }
}

impl FaultProxy {
    /// Listens on `listen` (a Unix path, which must not exist, or a
    /// loopback TCP address; port 0 picks one) and forwards every
    /// connection to `upstream`, injecting the faults of `config`.
    pub async fn start(listen: Endpoint, upstream: Endpoint, config: FaultConfig) -> io::Result<FaultProxy> {
        let (listener, addr) = match &listen {
            Endpoint::Unix(p) => (Listener::Unix(UnixListener::bind(p)?), listen.clone()),
            Endpoint::Tcp(a) => {
                let l = TcpListener::bind(a).await?;
                let addr = Endpoint::Tcp(l.local_addr()?);
                (Listener::Tcp(l), addr)
            }
        };
        let shared = Arc::new(Shared {
            config,
            upstream,
            counters: Counters::default(),
            active: AtomicBool::new(true),
            stop: watch::Sender::new(false),
        });
        tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(FaultProxy { addr, shared })
    }

    /// Where the proxy listens (with the TCP port it picked).
    pub fn addr(&self) -> &Endpoint {
        &self.addr
    }

    /// The seed of its faults.
    pub fn seed(&self) -> u64 {
        self.shared.config.seed
    }

    /// Its counters now.
    pub fn stats(&self) -> FaultStats {
        let c = &self.shared.counters;
        FaultStats {
            connections: c.connections.load(Ordering::Relaxed),
            cuts: c.cuts.load(Ordering::Relaxed),
            resets: c.resets.load(Ordering::Relaxed),
            stalls: c.stalls.load(Ordering::Relaxed),
            pauses: c.pauses.load(Ordering::Relaxed),
            delays: c.delays.load(Ordering::Relaxed),
            bytes_up: c.bytes[Dir::Up as usize].load(Ordering::Relaxed),
            bytes_down: c.bytes[Dir::Down as usize].load(Ordering::Relaxed),
        }
    }

    /// Turns fault injection on (the default) or off, for the connections
    /// open and those to come.
    pub fn set_active(&self, active: bool) {
        self.shared.active.store(active, Ordering::Relaxed);
    }
}

async fn accept_loop(listener: Listener, shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    let mut index = 0u64;
    loop {
        let accepted = tokio::select! {
            a = async {
                match &listener {
                    Listener::Unix(l) => l.accept().await.map(|(s, _)| Stream::Unix(s)),
                    Listener::Tcp(l) => l.accept().await.and_then(|(s, _)| {
                        s.set_nodelay(true)?;
                        Ok(Stream::Tcp(s))
                    }),
                }
            } => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok(client) => {
                shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(forward_connection(client, index, shared.clone()));
                index += 1;
            }
            Err(e) => tracing::debug!("the fault proxy could not accept: {e}"),
        }
    }
}

/// A direction of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    /// Client to upstream.
    Up = 0,
    /// Upstream to client.
    Down = 1,
}

/// How a direction ended.
enum End {
    /// Its source closed; the end was passed on.
    Eof,
    /// It forwarded its budget: cut the connection.
    Cut,
    /// Reading or writing failed.
    Failed,
}

/// Forwards one connection until both directions end, one fails or is cut,
/// or the proxy stops.
async fn forward_connection(client: Stream, index: u64, shared: Arc<Shared>) {
    let seed = shared.config.seed;
    let upstream = match Stream::connect(&shared.upstream).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("the fault proxy could not reach {}: {e}", shared.upstream);
            return;
        }
    };
    let mut rng = Rng::derived(seed, &[index]);
    let active = shared.active.load(Ordering::Relaxed);
    let cut = match &shared.config.cut_after {
        Some(range) if active => {
            let budget = if rng.chance(shared.config.early_cut_chance) {
                rng.range(0..=256)
            } else {
                rng.range(range.clone())
            };
            let dir = if rng.chance(0.5) { Dir::Up } else { Dir::Down };
            Some((dir, budget))
        }
        _ => None,
    };
    let reset = matches!(client, Stream::Tcp(_)) && rng.chance(shared.config.reset_chance);
    let stall = rng.chance(shared.config.stall_chance);
    if reset {
        let _ = client.reset_on_close();
        let _ = upstream.reset_on_close();
    }
    let budget = |d: Dir| cut.filter(|(dir, _)| *dir == d).map(|(_, b)| b);
    let (client_read, client_write) = client.split();
    let (up_read, up_write) = upstream.split();
    let up = forward(
        client_read,
        up_write,
        Dir::Up,
        Rng::derived(seed, &[index, 0]),
        budget(Dir::Up),
        &shared,
    );
    let down = forward(
        up_read,
        client_write,
        Dir::Down,
        Rng::derived(seed, &[index, 1]),
        budget(Dir::Down),
        &shared,
    );
    tokio::pin!(up, down);
    let mut stop = shared.stop.subscribe();
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        let end = tokio::select! {
            e = &mut up, if !up_done => { up_done = true; e }
            e = &mut down, if !down_done => { down_done = true; e }
            _ = stop.wait_for(|s| *s) => return,
        };
        match end {
            End::Eof => {}
            End::Cut if stall => {
                // Go silent: keep both sockets open, poll neither direction.
                shared.counters.stalls.fetch_add(1, Ordering::Relaxed);
                let _ = stop.wait_for(|s| *s).await;
                return;
            }
            End::Cut => {
                shared.counters.cuts.fetch_add(1, Ordering::Relaxed);
                if reset {
                    shared.counters.resets.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            End::Failed => return,
        }
    }
    // Returning drops both sockets' halves: both are closed.
}

/// Forwards `from` to `to`, injecting faults, until `from` ends, something
/// fails, or `budget` bytes went through.
async fn forward(
    mut from: BoxRead,
    mut to: BoxWrite,
    dir: Dir,
    mut rng: Rng,
    budget: Option<u64>,
    shared: &Shared,
) -> End {
    let cfg = &shared.config;
    let counters = &shared.counters;
    let mut buf = vec![0u8; 64 << 10];
    let mut sent = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => {
                let _ = to.shutdown().await;
                return End::Eof;
            }
            Ok(n) => n,
            Err(_) => return End::Failed,
        };
        let active = shared.active.load(Ordering::Relaxed);
        let mut data = &buf[..n];
        while !data.is_empty() {
            let mut piece = match cfg.split_max {
                Some(max) if active => rng.range(1..=max.max(1) as u64) as usize,
                _ => data.len(),
            }
            .min(data.len());
            let cut_here = budget.is_some_and(|b| sent + piece as u64 >= b);
            if cut_here {
                piece = (budget.unwrap_or(0) - sent) as usize;
            }
            if active && rng.chance(cfg.delay_chance) {
                counters.delays.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(rng.duration(&cfg.delay)).await;
            }
            if to.write_all(&data[..piece]).await.is_err() || to.flush().await.is_err() {
                return End::Failed;
            }
            sent += piece as u64;
            counters.bytes[dir as usize].fetch_add(piece as u64, Ordering::Relaxed);
            if cut_here {
                return End::Cut;
            }
            data = &data[piece..];
        }
        if active && rng.chance(cfg.pause_chance) {
            counters.pauses.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(rng.duration(&cfg.pause)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rng_is_deterministic_and_in_range() {
        let mut a = Rng::derived(42, &[3, 1]);
        let mut b = Rng::derived(42, &[3, 1]);
        let mut c = Rng::derived(42, &[3, 0]);
        let (x, y, z) = (a.next_u64(), b.next_u64(), c.next_u64());
        assert_eq!(x, y);
        assert_ne!(x, z);
        for _ in 0..1000 {
            let v = a.range(10..=20);
            assert!((10..=20).contains(&v));
        }
        assert_eq!(a.range(5..=5), 5);
        assert!(!a.chance(0.0));
        assert!(a.chance(1.0));
    }

    #[test]
    fn endpoints_round_trip_through_their_text() {
        for e in [
            Endpoint::Unix("/tmp/x.sock".into()),
            Endpoint::Tcp("127.0.0.1:4000".parse().unwrap()),
        ] {
            assert_eq!(Endpoint::parse(&e.to_string()), Ok(e));
        }
        assert!(Endpoint::parse("udp:1").is_err());
    }

    #[tokio::test]
    async fn a_connection_is_cut_after_its_budget_and_the_bytes_before_arrive() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = Endpoint::Tcp(upstream.local_addr().unwrap());
        let cfg = FaultConfig {
            seed: 7,
            cut_after: Some(1000..=1000),
            split_max: Some(7),
            ..FaultConfig::default()
        };
        let proxy = FaultProxy::start(Endpoint::Tcp("127.0.0.1:0".parse().unwrap()), up_addr, cfg)
            .await
            .unwrap();
        let Endpoint::Tcp(addr) = proxy.addr().clone() else {
            unreachable!()
        };
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = upstream.accept().await.unwrap();
        let within = |f| tokio::time::timeout(Duration::from_secs(10), f);
        // Both directions carry bytes; whichever drew the budget is cut
        // after exactly 1000 bytes.
        let data = vec![5u8; 4000];
        let (w1, w2) = tokio::join!(client.write_all(&data), server.write_all(&data));
        let _ = (w1, w2);
        let mut got_up = Vec::new();
        let mut got_down = Vec::new();
        let (r1, r2) = tokio::join!(
            within(server.read_to_end(&mut got_up)),
            within(client.read_to_end(&mut got_down))
        );
        // A cut in the other direction may leave bytes unread: a reset, not an end.
        r1.expect("the upstream sees the end").ok();
        r2.expect("the client sees the end").ok();
        let s = proxy.stats();
        assert_eq!((s.connections, s.cuts), (1, 1), "{s:?}");
        assert!(
            got_up.len() == 1000 || got_down.len() == 1000,
            "one direction was cut at its budget: {} up, {} down",
            got_up.len(),
            got_down.len()
        );
    }
}
