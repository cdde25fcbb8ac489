//! What the session test suites share: a bound on every wait, and factories
//! of connected link pairs, one per link.
//!
//! Each suite compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::time::Duration;

use osmos_session::link::stream::StreamLink;
use osmos_session::link::{Link, memory as mem};

/// Bound on every wait in the tests; only reached when something hangs.
pub const BOUND: Duration = Duration::from_secs(20);
/// Largest frame of the links the factories make.
pub const MAX_FRAME: usize = 1 << 20;

/// Awaits `f`, failing the test with `what` if it takes longer than [`BOUND`].
pub async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Makes connected link pairs.
pub trait Factory {
    type L: Link;
    /// Whether the link tells a peer blocked on a full link that this side
    /// stopped reading (the shm link does not reliably yet: see
    /// `a_peer_that_never_reads_its_answers_is_cut_off`).
    const RELEASES_A_BLOCKED_PEER: bool = true;
    fn pair(&self) -> impl std::future::Future<Output = (Self::L, Self::L)> + Send;
}

pub struct MemoryFactory;
impl Factory for MemoryFactory {
    type L = mem::MemoryLink;
    async fn pair(&self) -> (Self::L, Self::L) {
        mem::pair(MAX_FRAME, 64)
    }
}

pub struct UnixFactory;
impl Factory for UnixFactory {
    type L = StreamLink<tokio::net::unix::OwnedReadHalf, tokio::net::unix::OwnedWriteHalf>;
    async fn pair(&self) -> (Self::L, Self::L) {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        (StreamLink::unix(a, MAX_FRAME), StreamLink::unix(b, MAX_FRAME))
    }
}

pub struct TcpFactory;
impl Factory for TcpFactory {
    type L = StreamLink<tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf>;
    async fn pair(&self) -> (Self::L, Self::L) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        (
            StreamLink::tcp(a.unwrap(), MAX_FRAME).unwrap(),
            StreamLink::tcp(b.unwrap().0, MAX_FRAME).unwrap(),
        )
    }
}

pub struct ShmFactory;
impl Factory for ShmFactory {
    type L = osmos_session::link::shm::ShmLink;
    const RELEASES_A_BLOCKED_PEER: bool = false;
    async fn pair(&self) -> (Self::L, Self::L) {
        use osmos_shm::{Segment, SegmentConfig as ShmConfig};
        let host = Segment::create(&ShmConfig::default(), 1).unwrap();
        let cell = host.attach_peer().unwrap();
        let (h, c) = (host.endpoint().unwrap(), cell.endpoint().unwrap());
        (Self::L::new(h), Self::L::new(c))
    }
}
