//! One conformance suite for every [`Link`] implementation.
//!
//! Each test body below is generic over a [`Harness`] that makes a connected
//! pair of links; the `conformance!` macro runs every body against every
//! link, as a module per link: `memory::…` (the in-process pair), `unix::…`
//! (a Unix socketpair), `tcp::…` (TCP over 127.0.0.1) and `duplex::…` (the
//! generic [`StreamLink::new`] over `tokio::io::duplex`) and `stable::…` (the
//! stable conduit over TCP). Run one link's
//! suite with e.g. `cargo test -p osmos-session --test link_conformance unix::`.
//!
//! The stream links also get `stream_conformance!` bodies, in which the peer
//! is a raw byte stream that writes whatever the test wants: forged lengths,
//! truncated frames, garbage.
//!
//! No test sleeps to synchronise. Every wait that should end is bounded by
//! [`WAIT`] so that a bug fails the test instead of hanging it; a wait that
//! should *not* end (backpressure, nothing sent yet) is probed with [`PROBE`].

use std::future::Future;
use std::time::Duration;

use osmos_session::link::memory::{MemoryLink, pair as memory_pair};
use osmos_session::link::stable::{Accepted, StableAcceptor, StableConfig, StableLink, Transport};
use osmos_session::link::stream::{self, StreamLink, TcpLink, UnixLink};
use osmos_session::link::{CreditMode, Link, LinkError, LinkRx, LinkTx, SendPermit};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::time::timeout;

/// Bound on any wait that should end.
const WAIT: Duration = Duration::from_secs(10);

/// How long a wait that should block is watched before concluding it blocks.
const PROBE: Duration = Duration::from_millis(100);

/// Bound on a whole test.
const TEST: Duration = Duration::from_secs(60);

/// Frames in flight per direction on the memory harness.
const MEMORY_CAPACITY: usize = 8;

/// Buffer of each direction of the duplex harness.
const DUPLEX_BUFFER: usize = 256 * 1024;

/// Awaits `fut`, failing the test if it takes longer than [`WAIT`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

// ---------------------------------------------------------------------------
// Harnesses
// ---------------------------------------------------------------------------

/// Makes a connected pair of links of one kind.
trait Harness {
    type L: Link;
    fn pair(max_frame: usize) -> impl Future<Output = (Self::L, Self::L)> + Send;
}

/// A stream link whose peer is a raw byte stream.
trait RawHarness {
    type L: Link;
    type Raw: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn raw_pair(max_frame: usize) -> impl Future<Output = (Self::L, Self::Raw)> + Send;
}

struct Memory;

impl Harness for Memory {
    type L = MemoryLink;
    async fn pair(max_frame: usize) -> (MemoryLink, MemoryLink) {
        memory_pair(max_frame, MEMORY_CAPACITY)
    }
}

struct Unix;

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

struct Tcp;

/// A connected pair of TCP sockets over 127.0.0.1.
async fn tcp_sockets() -> (TcpStream, TcpStream) {
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

struct Stable;

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

struct Duplex;

type DuplexLink = StreamLink<ReadHalf<DuplexStream>, WriteHalf<DuplexStream>>;

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

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Fills `buf` with bytes determined by `seed` (xorshift64).
fn fill(seed: u64, buf: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

/// The bytes [`fill`] makes for `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    fill(seed, &mut buf);
    buf
}

/// A small deterministic random number generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..=max`.
    fn upto(&mut self, max: usize) -> usize {
        (self.next() % (max as u64 + 1)) as usize
    }
}

/// Reserves, fills and commits one frame.
async fn send<T: LinkTx>(tx: &mut T, bytes: &[u8]) -> Result<(), LinkError> {
    let mut permit = tx.reserve(bytes.len()).await?;
    permit.buf().copy_from_slice(bytes);
    permit.commit().await
}

/// Sends frame number `seq`: `len` bytes (at least 8), the number first, then
/// `pattern(seq)`.
async fn send_numbered<T: LinkTx>(tx: &mut T, seq: u64, len: usize) -> Result<(), LinkError> {
    let mut permit = tx.reserve(len).await?;
    let buf = permit.buf();
    fill(seq, &mut buf[8..]);
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    permit.commit().await
}

/// Checks a frame made by [`send_numbered`] and returns its number.
fn check_numbered(frame: &[u8], len: usize) -> u64 {
    assert_eq!(frame.len(), len, "a numbered frame changed length in transit");
    let seq = u64::from_le_bytes(frame[..8].try_into().expect("8 bytes"));
    assert!(
        frame[8..] == pattern(seq, len - 8)[..],
        "frame {seq} arrived corrupted"
    );
    seq
}

/// Receives one frame as an owned vector, failing the test on a timeout.
async fn recv_vec<R: LinkRx>(rx: &mut R) -> Result<Option<Vec<u8>>, LinkError> {
    Ok(within("a frame", rx.recv()).await?.map(|frame| frame.to_vec()))
}

/// Receives one frame and expects it to be `expected`.
async fn expect_frame<R: LinkRx>(rx: &mut R, expected: &[u8]) {
    match recv_vec(rx).await {
        Ok(Some(frame)) => assert!(
            frame == expected,
            "expected a frame of {} bytes, got {} bytes {:?}…",
            expected.len(),
            frame.len(),
            &frame[..frame.len().min(16)]
        ),
        Ok(None) => panic!(
            "expected a frame of {} bytes, got the end of the link",
            expected.len()
        ),
        Err(e) => panic!("expected a frame of {} bytes, got an error: {e}", expected.len()),
    }
}

/// Receives and expects the end of the link.
async fn expect_end<R: LinkRx>(rx: &mut R) {
    match recv_vec(rx).await {
        Ok(None) => {}
        Ok(Some(frame)) => panic!(
            "expected the end of the link, got a frame of {} bytes",
            frame.len()
        ),
        Err(e) => panic!("expected the end of the link, got an error: {e}"),
    }
}

/// What went through one direction: frames, bytes, and an order-sensitive
/// checksum of every frame's length and bytes.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
struct Tally {
    frames: u64,
    bytes: u64,
    checksum: u64,
}

impl Tally {
    fn add(&mut self, frame: &[u8]) {
        const PRIME: u64 = 0x0000_0100_0000_01B3;
        let step = |h: u64, word: u64| (h ^ word).wrapping_mul(PRIME).rotate_left(29);
        let mut h = step(self.checksum, frame.len() as u64);
        let mut words = frame.chunks_exact(8);
        for word in &mut words {
            h = step(h, u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
        for &byte in words.remainder() {
            h = step(h, u64::from(byte));
        }
        self.checksum = h;
        self.frames += 1;
        self.bytes += frame.len() as u64;
    }
}

// ---------------------------------------------------------------------------
// Conformance bodies, run against every link
// ---------------------------------------------------------------------------

/// Frames of many sizes (0, 1, 4095, 64 KiB, max_frame, …) arrive intact and
/// in order, while the sender runs concurrently with the receiver.
async fn frames_arrive_in_order<H: Harness>() {
    const MAX: usize = 256 * 1024;
    let (a, b) = H::pair(MAX).await;
    assert_eq!(a.max_frame(), MAX);
    assert!(matches!(a.credit_mode(), CreditMode::Messages));
    let (mut tx, _a_rx) = a.split();
    let (_b_tx, mut rx) = b.split();
    let sizes = [0, 1, 4095, 4096, 65536, MAX, 0, 7, MAX - 1, 1, 100, MAX, 3];

    let writer = tokio::spawn(async move {
        for (i, &len) in sizes.iter().enumerate() {
            let mut permit = tx.reserve(len).await.expect("reserve");
            fill(i as u64, permit.buf());
            permit.commit().await.expect("commit");
        }
        tx
    });
    for (i, &len) in sizes.iter().enumerate() {
        expect_frame(&mut rx, &pattern(i as u64, len)).await;
    }
    let _tx = within("the writer", writer).await.expect("writer task");
}

/// 20 MiB each way, both directions at once, frames of random sizes up to
/// max_frame, checked by count, bytes and checksum; the senders then close
/// and the receivers see the end.
async fn large_volumes_both_directions<H: Harness>() {
    const MAX: usize = 64 * 1024;
    const VOLUME: u64 = 20 << 20;
    let (a, b) = H::pair(MAX).await;
    let (a_tx, a_rx) = a.split();
    let (b_tx, b_rx) = b.split();

    async fn pump<T: LinkTx>(mut tx: T, seed: u64) -> (Tally, T) {
        let mut rng = Rng(seed);
        let mut tally = Tally::default();
        let mut seq = seed << 32;
        while tally.bytes < VOLUME {
            let len = rng.upto(MAX);
            let mut permit = within("a reservation", tx.reserve(len)).await.expect("reserve");
            fill(seq, permit.buf());
            tally.add(permit.buf());
            within("a commit", permit.commit()).await.expect("commit");
            seq += 1;
        }
        within("close", tx.close()).await.expect("close");
        (tally, tx)
    }

    async fn drain<R: LinkRx>(mut rx: R) -> (Tally, R) {
        let mut tally = Tally::default();
        loop {
            match within("a frame", rx.recv()).await {
                Ok(Some(frame)) => tally.add(&frame),
                Ok(None) => break,
                Err(e) => panic!("receive failed after {} frames: {e}", tally.frames),
            }
        }
        (tally, rx)
    }

    let a_sends = tokio::spawn(pump(a_tx, 1));
    let b_sends = tokio::spawn(pump(b_tx, 2));
    let b_gets = tokio::spawn(drain(b_rx));
    let a_gets = tokio::spawn(drain(a_rx));
    let (a_sent, _) = within("a's sender", a_sends).await.expect("a's sender");
    let (b_sent, _) = within("b's sender", b_sends).await.expect("b's sender");
    let (b_got, _) = within("b's receiver", b_gets).await.expect("b's receiver");
    let (a_got, _) = within("a's receiver", a_gets).await.expect("a's receiver");
    assert!(a_sent.bytes >= VOLUME && b_sent.bytes >= VOLUME);
    assert_eq!(a_sent, b_got, "a → b");
    assert_eq!(b_sent, a_got, "b → a");
}

/// A sender whose peer does not read ends up waiting (in `reserve` on the
/// memory link, in `commit` once the socket buffers are full on a stream),
/// and proceeds as soon as the peer reads; every frame arrives intact.
async fn backpressure_waits_then_proceeds<H: Harness>() {
    const MAX: usize = 64 * 1024;
    /// Give up if this much went out without the sender ever waiting.
    const NEVER_WAITED: u64 = (512 << 20) / MAX as u64;
    let (a, b) = H::pair(MAX).await;
    let (mut tx, _a_rx) = a.split();
    let (_b_tx, mut rx) = b.split();

    let mut seq = 0;
    loop {
        match timeout(PROBE, send_numbered(&mut tx, seq, MAX)).await {
            Ok(sent) => sent.expect("send while the peer's buffers fill"),
            Err(_elapsed) => break,
        }
        seq += 1;
        assert!(
            seq < NEVER_WAITED,
            "sent {} MiB to a peer that reads nothing and the sender never waited",
            (seq * MAX as u64) >> 20
        );
    }
    // Frame `cut` was cut short by the probe: it arrives whole or not at all.
    let cut = seq;
    assert!(cut >= 1, "the sender waited before a single frame could go out");

    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        loop {
            match within("a frame after the peer resumed", rx.recv()).await {
                Ok(Some(frame)) => seqs.push(check_numbered(&frame, MAX)),
                Ok(None) => break,
                Err(e) => panic!("receive failed after {} frames: {e}", seqs.len()),
            }
        }
        (seqs, rx)
    });
    within(
        "a send after the peer started reading",
        send_numbered(&mut tx, cut + 1, MAX),
    )
    .await
    .expect("send after the peer started reading");
    within("close", tx.close()).await.expect("close");
    let (seqs, _rx) = within("the reader", reader).await.expect("reader task");

    let mut expected: Vec<u64> = (0..cut).collect();
    if seqs.contains(&cut) {
        expected.push(cut);
    }
    expected.push(cut + 1);
    assert_eq!(
        seqs, expected,
        "frames lost, repeated or reordered around the wait"
    );
}

/// A frame larger than max_frame is refused at `reserve`, and the link stays
/// usable.
async fn oversized_frame_is_refused<H: Harness>() {
    const MAX: usize = 4096;
    let (a, b) = H::pair(MAX).await;
    let (mut tx, _a_rx) = a.split();
    let (_b_tx, mut rx) = b.split();
    for len in [MAX + 1, 10 * MAX, usize::MAX] {
        match within("a refused reservation", tx.reserve(len)).await {
            Err(LinkError::FrameTooLarge { len: got, max }) => {
                assert_eq!((got, max), (len, MAX));
                let message = LinkError::FrameTooLarge { len, max }.to_string();
                assert!(message.contains(&len.to_string()) && message.contains(&MAX.to_string()));
            }
            Err(e) => panic!("reserve({len}) failed with {e}, not FrameTooLarge"),
            Ok(_) => panic!("reserve({len}) succeeded on a link with max_frame {MAX}"),
        }
    }
    let full = pattern(7, MAX);
    within("a send", send(&mut tx, &full))
        .await
        .expect("send max_frame");
    expect_frame(&mut rx, &full).await;
}

/// A permit dropped without commit sends nothing: the next committed frame is
/// the next one received.
async fn dropped_permit_sends_nothing<H: Harness>() {
    let (a, b) = H::pair(1024).await;
    let (mut tx, _a_rx) = a.split();
    let (_b_tx, mut rx) = b.split();
    for len in [10, 0, 1024] {
        let mut permit = within("a reservation", tx.reserve(len)).await.expect("reserve");
        permit.buf().fill(b'X');
        drop(permit);
    }
    within("a send", send(&mut tx, b"hello")).await.expect("send");
    within("a send", send(&mut tx, b"")).await.expect("send");
    within("a send", send(&mut tx, b"world")).await.expect("send");
    expect_frame(&mut rx, b"hello").await;
    expect_frame(&mut rx, b"").await;
    expect_frame(&mut rx, b"world").await;
    // Nothing else is in flight.
    assert!(
        timeout(PROBE, rx.recv()).await.is_err(),
        "a dropped permit's frame arrived"
    );
}

/// `close` lets the peer drain the earlier frames, then `recv` returns
/// `Ok(None)` (and keeps doing so); the other direction still works; sending
/// on the closed half fails.
async fn close_drains_then_ends<H: Harness>() {
    let (a, b) = H::pair(64 * 1024).await;
    let (mut a_tx, mut a_rx) = a.split();
    let (mut b_tx, mut b_rx) = b.split();
    let frames = [pattern(1, 100), pattern(2, 0), pattern(3, 60_000)];
    for frame in &frames {
        within("a send", send(&mut a_tx, frame)).await.expect("send");
    }
    within("close", a_tx.close()).await.expect("close");
    within("a second close", a_tx.close())
        .await
        .expect("closing twice is harmless");
    for frame in &frames {
        expect_frame(&mut b_rx, frame).await;
    }
    expect_end(&mut b_rx).await;
    expect_end(&mut b_rx).await;

    // The other direction is still open.
    within("a reply", send(&mut b_tx, b"reply")).await.expect("reply");
    expect_frame(&mut a_rx, b"reply").await;

    match within("reserve after close", a_tx.reserve(1)).await {
        Err(LinkError::Closed) => {}
        Err(e) => panic!("reserve after close failed with {e}, not Closed"),
        Ok(_) => panic!("reserve after close succeeded"),
    }
}

/// When the peer drops its link, a pending `recv` ends (end of link or a
/// Closed/PeerGone error) and sending fails with Closed/PeerGone, instead of
/// hanging.
async fn peer_dropped_fails_instead_of_hanging<H: Harness>() {
    let (a, b) = H::pair(4096).await;
    let (mut tx, mut rx) = a.split();
    let pending = tokio::spawn(async move {
        let got = rx.recv().await.map(|frame| frame.map(|f| f.to_vec()));
        (got, rx)
    });
    drop(b);
    let (got, _rx) = within("a recv woken by the peer's drop", pending)
        .await
        .expect("recv task");
    match got {
        Ok(None) | Err(LinkError::Closed | LinkError::PeerGone { .. }) => {}
        Ok(Some(frame)) => panic!("a frame of {} bytes came from a dropped peer", frame.len()),
        Err(e) => panic!("recv after the peer dropped failed with {e}, not Closed/PeerGone"),
    }

    // The first writes may still land in kernel buffers; an error must come.
    let frame = pattern(3, 1024);
    let mut attempts = 0;
    let error = loop {
        attempts += 1;
        assert!(
            attempts <= 10_000,
            "10000 frames sent to a dropped peer without an error"
        );
        if let Err(e) = within("a send to a dropped peer", send(&mut tx, &frame)).await {
            break e;
        }
    };
    assert!(
        matches!(error, LinkError::Closed | LinkError::PeerGone { .. }),
        "sending to a dropped peer failed with {error}, not Closed/PeerGone"
    );
}

/// A `recv` cancelled while nothing has arrived loses nothing.
async fn cancelled_recv_loses_nothing<H: Harness>() {
    let (a, b) = H::pair(4096).await;
    let (mut tx, _a_rx) = a.split();
    let (_b_tx, mut rx) = b.split();
    assert!(
        timeout(PROBE, rx.recv()).await.is_err(),
        "a frame came from nowhere"
    );
    within("a send", send(&mut tx, b"after the cancel"))
        .await
        .expect("send");
    expect_frame(&mut rx, b"after the cancel").await;
}

// ---------------------------------------------------------------------------
// Stream-only bodies: the peer is a raw byte stream
// ---------------------------------------------------------------------------

/// Frames on the wire are a 4-byte little-endian length, then the bytes.
async fn wire_format_is_le_length_prefixed<H: RawHarness>() {
    let (link, mut raw) = H::raw_pair(1024).await;
    let (mut tx, mut rx) = link.split();

    within("a send", send(&mut tx, b"abc")).await.expect("send");
    within("a send", send(&mut tx, b"")).await.expect("send");
    let mut wire = [0u8; 11];
    within("raw bytes", raw.read_exact(&mut wire))
        .await
        .expect("read");
    assert_eq!(&wire, b"\x03\0\0\0abc\0\0\0\0");

    let mut hand_made = Vec::new();
    for payload in [&b"hi"[..], b"", &[7u8; 300]] {
        hand_made.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        hand_made.extend_from_slice(payload);
    }
    within("a raw write", raw.write_all(&hand_made))
        .await
        .expect("write");
    expect_frame(&mut rx, b"hi").await;
    expect_frame(&mut rx, b"").await;
    expect_frame(&mut rx, &[7u8; 300]).await;
}

/// A length prefix above max_frame is a `stream.length-in-bounds` violation,
/// reported at once (the body is not awaited, nothing of that size is
/// allocated), and every later `recv` fails the same way.
async fn forged_length_is_a_violation<H: RawHarness>() {
    const MAX: usize = 1024;
    for forged in [MAX as u32 + 1, 1 << 20, u32::MAX] {
        let (link, mut raw) = H::raw_pair(MAX).await;
        let (_tx, mut rx) = link.split();
        // A valid frame first, then the forged prefix with no body after it.
        let mut wire = 2u32.to_le_bytes().to_vec();
        wire.extend_from_slice(b"ok");
        wire.extend_from_slice(&forged.to_le_bytes());
        within("a raw write", raw.write_all(&wire)).await.expect("write");
        expect_frame(&mut rx, b"ok").await;
        for attempt in 0..2 {
            match recv_vec(&mut rx).await {
                Err(LinkError::Violation { rule, detail }) => {
                    assert_eq!(rule, "stream.length-in-bounds");
                    assert!(
                        detail.contains(&forged.to_string()) && detail.contains(&MAX.to_string()),
                        "the violation does not name the numbers: {detail}"
                    );
                }
                Err(e) => panic!("forged length {forged} (attempt {attempt}) gave {e}, not a violation"),
                Ok(Some(frame)) => panic!("forged length {forged} gave a frame of {} bytes", frame.len()),
                Ok(None) => panic!("forged length {forged} gave the end of the link"),
            }
        }
        drop(raw);
    }
}

/// A frame cut off by the end of the stream (a prefix saying 100, then 10
/// bytes) fails with PeerGone saying how much arrived, after the earlier
/// frames; so does a cut-off length prefix.
async fn truncated_frame_is_reported<H: RawHarness>() {
    let (link, mut raw) = H::raw_pair(1024).await;
    let (_tx, mut rx) = link.split();
    let mut wire = 2u32.to_le_bytes().to_vec();
    wire.extend_from_slice(b"ok");
    wire.extend_from_slice(&100u32.to_le_bytes());
    wire.extend_from_slice(&[1; 10]);
    within("a raw write", raw.write_all(&wire)).await.expect("write");
    within("a raw shutdown", raw.shutdown()).await.expect("shutdown");
    expect_frame(&mut rx, b"ok").await;
    for _ in 0..2 {
        match recv_vec(&mut rx).await {
            Err(LinkError::PeerGone { detail }) => {
                assert!(
                    detail.contains("10 of its 100"),
                    "unclear truncation message: {detail}"
                )
            }
            other => panic!("a truncated frame gave {other:?}, not PeerGone"),
        }
    }

    let (link, mut raw) = H::raw_pair(1024).await;
    let (_tx, mut rx) = link.split();
    within("a raw write", raw.write_all(&[5, 0]))
        .await
        .expect("write");
    within("a raw shutdown", raw.shutdown()).await.expect("shutdown");
    match recv_vec(&mut rx).await {
        Err(LinkError::PeerGone { detail }) => {
            assert!(
                detail.contains("2 of its 4"),
                "unclear truncation message: {detail}"
            )
        }
        other => panic!("a truncated prefix gave {other:?}, not PeerGone"),
    }
}

/// A `recv` cancelled in the middle of a frame keeps what it read: the frame
/// arrives whole once the rest comes.
async fn recv_cancelled_mid_frame_resumes<H: RawHarness>() {
    let (link, mut raw) = H::raw_pair(4096).await;
    let (_tx, mut rx) = link.split();
    let payload = pattern(9, 1000);
    let mut wire = 1000u32.to_le_bytes().to_vec();
    wire.extend_from_slice(&payload);
    within("a raw write", raw.write_all(&wire[..2]))
        .await
        .expect("write");
    assert!(
        timeout(PROBE, rx.recv()).await.is_err(),
        "half a prefix made a frame"
    );
    within("a raw write", raw.write_all(&wire[2..504]))
        .await
        .expect("write");
    assert!(
        timeout(PROBE, rx.recv()).await.is_err(),
        "half a frame made a frame"
    );
    within("a raw write", raw.write_all(&wire[504..]))
        .await
        .expect("write");
    expect_frame(&mut rx, &payload).await;
}

/// Random bytes, and plausible frames with lying lengths, never panic the
/// receiver: it yields frames within max_frame and ends with `Ok(None)`, a
/// violation or PeerGone.
async fn garbage_never_panics<H: RawHarness>() {
    for seed in 1..=24u64 {
        let max = [0, 1, 16, 1024, 64 * 1024][seed as usize % 5];
        let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let mut wire = Vec::new();
        while wire.len() < 256 * 1024 {
            if seed % 2 == 0 {
                // Plausible: a length near the limit, followed by up to that
                // many bytes.
                let len = rng.upto(max + 16);
                wire.extend_from_slice(&(len as u32).to_le_bytes());
                let body = if rng.upto(8) == 0 { rng.upto(len) } else { len };
                wire.extend_from_slice(&pattern(rng.next(), body));
            } else {
                wire.extend_from_slice(&pattern(rng.next(), rng.upto(4096)));
            }
        }

        let (link, mut raw) = H::raw_pair(max).await;
        let (tx, mut rx) = link.split();
        let writer = tokio::spawn(async move {
            // The link may stop reading (and drop) mid-way: write errors are
            // expected then.
            let _ = raw.write_all(&wire).await;
            let _ = raw.shutdown().await;
            raw
        });
        let mut frames = 0usize;
        let end = loop {
            match within("a frame of garbage", rx.recv()).await {
                Ok(Some(frame)) => {
                    assert!(
                        frame.len() <= max,
                        "a frame of {} bytes beyond max {max}",
                        frame.len()
                    );
                    frames += 1;
                    assert!(
                        frames <= 256 * 1024 / 4 + 2,
                        "more frames than the garbage could hold"
                    );
                }
                other => break other.map(|_| ()),
            }
        };
        match end {
            Ok(()) | Err(LinkError::Violation { .. } | LinkError::PeerGone { .. }) => {}
            Err(e) => panic!("garbage (seed {seed}) ended with {e}"),
        }
        // Dropping the link unblocks a writer stuck on a full stream.
        drop((tx, rx));
        let _raw = within("the garbage writer", writer).await.expect("writer task");
    }
}

// ---------------------------------------------------------------------------
// Instantiation
// ---------------------------------------------------------------------------

macro_rules! tests_for {
    ($harness:ident: $($body:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $body() {
                let run = super::$body::<super::$harness>();
                if tokio::time::timeout(super::TEST, run).await.is_err() {
                    panic!("{} did not finish within {:?}", stringify!($body), super::TEST);
                }
            }
        )*
    };
}

/// Runs every generic body against each `harness => module`.
macro_rules! conformance {
    ($($harness:ident => $module:ident),* $(,)?) => {
        $(
            mod $module {
                tests_for!($harness:
                    frames_arrive_in_order,
                    large_volumes_both_directions,
                    backpressure_waits_then_proceeds,
                    oversized_frame_is_refused,
                    dropped_permit_sends_nothing,
                    close_drains_then_ends,
                    peer_dropped_fails_instead_of_hanging,
                    cancelled_recv_loses_nothing,
                );
            }
        )*
    };
}

/// Runs every raw-peer body against each stream `harness => module`.
macro_rules! stream_conformance {
    ($($harness:ident => $module:ident),* $(,)?) => {
        $(
            mod $module {
                tests_for!($harness:
                    wire_format_is_le_length_prefixed,
                    forged_length_is_a_violation,
                    truncated_frame_is_reported,
                    recv_cancelled_mid_frame_resumes,
                    garbage_never_panics,
                );
            }
        )*
    };
}

conformance! {
    Memory => memory,
    Unix => unix,
    Tcp => tcp,
    Duplex => duplex,
    Stable => stable,
}

stream_conformance! {
    Unix => unix_stream,
    Tcp => tcp_stream,
    Duplex => duplex_stream,
}

// ---------------------------------------------------------------------------
// Link-specific tests
// ---------------------------------------------------------------------------

/// The memory link's capacity is exactly its number of frames in flight.
#[tokio::test]
async fn memory_capacity_is_exact() {
    const CAPACITY: usize = 4;
    let (a, b) = memory_pair(64, CAPACITY);
    let (mut tx, _a_rx) = a.split();
    let (_b_tx, mut rx) = b.split();
    for i in 0..CAPACITY {
        within("a send within capacity", send(&mut tx, &[i as u8]))
            .await
            .expect("send");
    }
    assert!(
        timeout(PROBE, tx.reserve(1)).await.is_err(),
        "reserve did not wait with {CAPACITY} frames in flight"
    );
    expect_frame(&mut rx, &[0]).await;
    within("a send after one frame was read", send(&mut tx, &[9]))
        .await
        .expect("send");
    for expected in [1, 2, 3, 9] {
        expect_frame(&mut rx, &[expected]).await;
    }
}

/// Dropping only the receiving half of the peer makes `reserve` fail with
/// Closed on the memory link.
#[tokio::test]
async fn memory_reserve_fails_when_peer_receiver_is_gone() {
    let (a, b) = memory_pair(64, 2);
    let (mut tx, _a_rx) = a.split();
    let (_b_tx, b_rx) = b.split();
    drop(b_rx);
    match within("reserve", tx.reserve(1)).await {
        Err(LinkError::Closed) => {}
        Err(e) => panic!("reserve failed with {e}, not Closed"),
        Ok(_) => panic!("reserve succeeded with the peer's receiver gone"),
    }
}

/// `connect_unix` reaches a listener; its error names the path when nothing
/// listens there.
#[tokio::test]
async fn connect_unix_reaches_a_listener() {
    let dir = std::env::temp_dir().join(format!("osmos-link-conformance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("link.sock");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let (accepted, connected) = within("a Unix connection", async {
        tokio::join!(listener.accept(), stream::connect_unix(&path, 64))
    })
    .await;
    let server = StreamLink::unix(accepted.expect("accept").0, 64);
    let client = connected.expect("connect_unix");
    let (mut client_tx, mut client_rx) = client.split();
    let (mut server_tx, mut server_rx) = server.split();
    within("a send", send(&mut client_tx, b"ping"))
        .await
        .expect("send");
    expect_frame(&mut server_rx, b"ping").await;
    within("a send", send(&mut server_tx, b"pong"))
        .await
        .expect("send");
    expect_frame(&mut client_rx, b"pong").await;
    drop(listener);
    std::fs::remove_file(&path).expect("remove socket");

    match within("a failed connect", stream::connect_unix(&path, 64)).await {
        Err(LinkError::Io(e)) => {
            let message = e.to_string();
            assert!(
                message.contains(&path.display().to_string()),
                "error does not name the path: {message}"
            );
        }
        Err(e) => panic!("connecting to nothing failed with {e}, not Io"),
        Ok(_) => panic!("connected to a removed socket"),
    }
    std::fs::remove_dir(&dir).expect("remove temp dir");
}

/// `connect_tcp`'s error names the address when nothing listens there.
#[tokio::test]
async fn connect_tcp_error_names_the_address() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    drop(listener);
    match within("a failed connect", stream::connect_tcp(addr, 64)).await {
        Err(LinkError::Io(e)) => {
            let message = e.to_string();
            assert!(
                message.contains(&addr.to_string()),
                "error does not name the address: {message}"
            );
        }
        Err(e) => panic!("connecting to nothing failed with {e}, not Io"),
        Ok(_) => panic!("connected to a closed port (was it reused?)"),
    }
}

/// A max_frame that does not fit the 4-byte prefix is refused at
/// construction.
#[test]
#[should_panic(expected = "does not fit the 4-byte length prefix")]
fn stream_max_frame_must_fit_the_prefix() {
    let (a, _b) = tokio::io::duplex(64);
    let _link = StreamLink::new(a, u32::MAX as usize + 1);
}
