//! The harnesses: connected pairs of each link the suite runs over, and
//! stream links whose peer is a raw byte stream.

use std::future::Future;

use osmos_session::link::Link;
use osmos_session::link::memory::{MemoryLink, pair as memory_pair};
use osmos_session::link::stable::{Accepted, StableAcceptor, StableConfig, StableLink, Transport};
use osmos_session::link::stream::{self, StreamLink, TcpLink, UnixLink};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream, UnixStream};

use crate::within;

/// Frames in flight per direction on the memory harness.
pub const MEMORY_CAPACITY: usize = 8;

/// Buffer of each direction of the duplex harness.
pub const DUPLEX_BUFFER: usize = 256 * 1024;

/// Makes a connected pair of links of one kind.
pub trait Harness {
    type L: Link;
    fn pair(max_frame: usize) -> impl Future<Output = (Self::L, Self::L)> + Send;
}

/// A stream link whose peer is a raw byte stream.
pub trait RawHarness {
    type L: Link;
    type Raw: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn raw_pair(max_frame: usize) -> impl Future<Output = (Self::L, Self::Raw)> + Send;
}

pub struct Memory;

impl Harness for Memory {
    type L = MemoryLink;
    async fn pair(max_frame: usize) -> (MemoryLink, MemoryLink) {
        memory_pair(max_frame, MEMORY_CAPACITY)
    }
}

pub struct Unix;

impl Harness for Unix {
    type L = UnixLink;
    async fn pair(max_frame: usize) -> (UnixLink, UnixLink) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        (StreamLink::unix(a, max_frame), StreamLink::unix(b, max_frame))
    }
}

impl RawHarness for Unix {
    type L = UnixLink;
    type Raw = UnixStream;
    async fn raw_pair(max_frame: usize) -> (UnixLink, UnixStream) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        (StreamLink::unix(a, max_frame), b)
    }
}

pub struct Tcp;

/// A connected pair of TCP sockets over 127.0.0.1.
pub async fn tcp_sockets() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let (accepted, connected) = within("a TCP connection", async {
        tokio::join!(listener.accept(), TcpStream::connect(addr))
    })
    .await;
    (accepted.expect("accept").0, connected.expect("connect"))
}

impl Harness for Tcp {
    type L = TcpLink;
    async fn pair(max_frame: usize) -> (TcpLink, TcpLink) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (accepted, connected) = within("a TCP connection", async {
            tokio::join!(listener.accept(), stream::connect_tcp(addr, max_frame))
        })
        .await;
        let accepted = StreamLink::tcp(accepted.expect("accept").0, max_frame).expect("TCP_NODELAY");
        (accepted, connected.expect("connect_tcp"))
    }
}

impl RawHarness for Tcp {
    type L = TcpLink;
    type Raw = TcpStream;
    async fn raw_pair(max_frame: usize) -> (TcpLink, TcpStream) {
        let (a, b) = tcp_sockets().await;
        (StreamLink::tcp(a, max_frame).expect("TCP_NODELAY"), b)
    }
}

pub struct Stable;

impl Harness for Stable {
    type L = StableLink;
    async fn pair(max_frame: usize) -> (StableLink, StableLink) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let config = StableConfig::default().max_frame(max_frame);
        let acceptor = StableAcceptor::new(config.clone()).expect("an acceptor");
        let accept = async {
            let (s, _) = listener.accept().await.expect("accept");
            match acceptor.accept(Transport::tcp(s).expect("TCP_NODELAY")).await {
                Ok(Accepted::New(link)) => link,
                other => panic!("expected a new session, got {other:?}"),
            }
        };
        let (accepted, connected) = within("a stable conduit", async {
            tokio::join!(accept, StableLink::connect_tcp(addr, config))
        })
        .await;
        (accepted, connected.expect("connect_tcp"))
    }
}

pub struct Duplex;

pub type DuplexLink = StreamLink<ReadHalf<DuplexStream>, WriteHalf<DuplexStream>>;

impl Harness for Duplex {
    type L = DuplexLink;
    async fn pair(max_frame: usize) -> (DuplexLink, DuplexLink) {
        let (a, b) = tokio::io::duplex(DUPLEX_BUFFER);
        (StreamLink::new(a, max_frame), StreamLink::new(b, max_frame))
    }
}

impl RawHarness for Duplex {
    type L = DuplexLink;
    type Raw = DuplexStream;
    async fn raw_pair(max_frame: usize) -> (DuplexLink, DuplexStream) {
        let (a, b) = tokio::io::duplex(DUPLEX_BUFFER);
        (StreamLink::new(a, max_frame), b)
    }
}
