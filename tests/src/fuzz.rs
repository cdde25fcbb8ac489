//! The bodies of the fuzz targets, shared by the cargo-fuzz crate in
//! `fuzz/` (nightly, out of the workspace) and the stable test that replays
//! the committed seed corpus (`tests/fuzz.rs`). Each takes arbitrary bytes
//! and panics only on a bug.
//!
//! - [`wire_decode`]: the message decoder a host runs on every frame a cell
//!   sends. What it accepts must re-encode to a message that decodes the
//!   same, and facet-postcard (the reference encoding) must read it the same.
//! - [`stream_framing`]: the stream link's length-prefixed framing, fed the
//!   bytes in arbitrary chunks, against a model of the format.
//! - [`session_frames`]: a host session (serving [`HostDirectory`]) after an
//!   honest handshake, receiving arbitrary frames from its peer while it has
//!   a call and a stream of its own in flight. It must end cleanly (or keep
//!   running) without panicking or hanging.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use osmos_session::link::memory;
use osmos_session::link::stream::StreamLink;
use osmos_session::wire::{self, Message, PROTOCOL_VERSION, Settings};
use osmos_session::{Link, LinkError, LinkRx, LinkTx, SendPermit, SessionBuilder, SessionConfig};

use crate::{HostDirectory, HostDirectoryDispatcher, TestCellClient};

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target: its name (the corpus directory `fuzz/corpus/<name>/`) and body.
pub const TARGETS: &[(&str, Target)] = &[
    ("wire_decode", wire_decode),
    ("stream_framing", stream_framing),
    ("session_frames", session_frames),
];

/// Longest a target may take on one input before it counts as a hang.
const HANG: Duration = Duration::from_secs(10);

thread_local! {
    static RUNTIME: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

/// Runs `f` to completion on this thread's runtime, failing on a hang.
fn block_on<F: Future>(what: &str, f: F) -> F::Output {
    RUNTIME.with(|rt| {
        let mut rt = rt.borrow_mut();
        let rt = rt.get_or_insert_with(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
        });
        rt.block_on(async {
            tokio::time::timeout(HANG, f)
                .await
                .unwrap_or_else(|_| panic!("{what} hung for {HANG:?}"))
        })
    })
}

/// Decodes `data` as a message.
pub fn wire_decode(data: &[u8]) {
    let Ok(m) = wire::decode(data) else { return };
    let bytes = m.to_vec();
    assert_eq!(bytes.len(), m.encoded_len(), "encoded_len of {m:?}");
    let again = wire::decode(&bytes).unwrap_or_else(|e| panic!("{m:?} re-encoded does not decode: {e}"));
    assert_eq!(again, m, "decode(encode(m)) != m");
    let reference: Message<'_> = facet_postcard::from_slice_borrowed(data)
        .unwrap_or_else(|e| panic!("the codec accepted {m:?}, facet-postcard refuses it: {e}"));
    assert_eq!(
        reference, m,
        "the codec and facet-postcard read the frame differently"
    );
}

/// Reads the bytes in chunks whose sizes a seed picks, returning `Pending`
/// now and then, as a socket would.
struct Chunked {
    data: Vec<u8>,
    at: usize,
    seed: u64,
}

impl Chunked {
    fn next(&mut self) -> u64 {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.seed >> 33
    }
}

impl tokio::io::AsyncRead for Chunked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.next().is_multiple_of(4) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let left = this.data.len() - this.at;
        let n = (1 + (this.next() as usize % 300)).min(left).min(buf.remaining());
        buf.put_slice(&this.data[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

/// How the model says a framed stream ends.
#[derive(Debug, PartialEq)]
enum End {
    /// Cleanly, between frames.
    Clean,
    /// Mid-frame: the peer broke off.
    Truncated,
    /// A length above the maximum.
    TooLong,
}

/// `data[0]` seeds the chunking, `data[1]` picks the maximum frame, the rest
/// is the stream.
pub fn stream_framing(data: &[u8]) {
    let [seed, size, stream @ ..] = data else { return };
    let max_frame = 1 + *size as usize * 5;
    // The model: 4-byte little-endian length, then that many bytes.
    let mut frames = Vec::new();
    let mut at = 0;
    let end = loop {
        let rest = &stream[at..];
        if rest.is_empty() {
            break End::Clean;
        }
        let Some(prefix) = rest.get(..4) else {
            break End::Truncated;
        };
        let n = u32::from_le_bytes(prefix.try_into().unwrap()) as usize;
        if n > max_frame {
            break End::TooLong;
        }
        let Some(frame) = rest.get(4..4 + n) else {
            break End::Truncated;
        };
        frames.push(frame.to_vec());
        at += 4 + n;
    };
    let reader = Chunked {
        data: stream.to_vec(),
        at: 0,
        seed: u64::from(*seed),
    };
    let (_tx, mut rx) = StreamLink::from_halves(reader, tokio::io::sink(), max_frame).split();
    block_on("the stream link", async {
        for (i, want) in frames.iter().enumerate() {
            match rx.recv().await {
                Ok(Some(f)) => assert_eq!(f, &want[..], "frame {i}"),
                other => panic!(
                    "frame {i} of {} bytes: got {:?}",
                    want.len(),
                    other.map(|f| f.map(|f| f.len()))
                ),
            }
        }
        let got = match rx.recv().await {
            Ok(None) => End::Clean,
            Err(LinkError::PeerGone { .. }) => End::Truncated,
            Err(LinkError::Violation { rule, .. }) if rule.contains("length") => End::TooLong,
            other => panic!(
                "after {} frames: {:?}",
                frames.len(),
                other.map(|f| f.map(|f| f.len()))
            ),
        };
        assert_eq!(got, end, "how the stream ends");
        // After an error the link keeps failing; after a clean end it stays ended.
        let again = rx.recv().await;
        assert!(
            matches!(
                (&end, &again),
                (End::Clean, Ok(None)) | (End::Truncated | End::TooLong, Err(_))
            ),
            "{end:?}, then {:?}",
            again.map(|f| f.map(|f| f.len()))
        );
    });
}

struct Directory;

impl HostDirectory for Directory {
    async fn lookup(&self, key: String) -> Result<String, String> {
        if key.is_empty() {
            Err("empty key".into())
        } else {
            Ok(key)
        }
    }
}

/// Splits `data` into frames: a 2-byte little-endian length, then up to that
/// many bytes.
fn frames(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [a, b, rest @ ..] = data {
        let n = (u16::from_le_bytes([*a, *b]) as usize).min(rest.len());
        out.push(&rest[..n]);
        data = &rest[n..];
    }
    out
}

/// Feeds the frames in `data` (each a 2-byte little-endian length, then up
/// to that many bytes) to a host session.
pub fn session_frames(data: &[u8]) {
    const MAX_FRAME: usize = 1 << 16;
    let (host_link, peer_link) = memory::pair(MAX_FRAME, 64);
    let (mut tx, mut rx) = peer_link.split();
    block_on("the session", async move {
        let config = SessionConfig {
            name: "fuzzed".into(),
            ..SessionConfig::default()
        };
        let host = tokio::spawn(
            SessionBuilder::new()
                .config(config)
                .serve(HostDirectoryDispatcher::new(Directory))
                .initiate(host_link),
        );
        let hello = rx.recv().await.expect("the host's hello").expect("a frame");
        assert!(matches!(wire::decode(hello), Ok(Message::Hello { .. })));
        let answer = Message::HelloYourself {
            version: PROTOCOL_VERSION,
            settings: Settings::default(),
        }
        .to_vec();
        send(&mut tx, &answer).await.expect("send the answer");
        let conn = host.await.expect("the host task").expect("the handshake");
        // The host's own traffic, for the frames to answer or contradict:
        // a call (request 1) and a stream it receives on.
        let client = TestCellClient::new(conn.clone());
        let calling = tokio::spawn({
            let client = client.clone();
            async move { client.add(1, 2).await }
        });
        let streaming = conn.channel::<u32>().ok().map(|(ctx, mut crx)| {
            let client = client.clone();
            tokio::spawn(async move {
                let _ = client.count(3, ctx).await;
                while let Some(Ok(_)) = crx.recv().await {}
            })
        });
        // Read what the host sends, so it never waits on this peer.
        let reading = tokio::spawn(async move { while let Ok(Some(_)) = rx.recv().await {} });
        for f in frames(data) {
            if send(&mut tx, f).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let _ = tx.close().await;
        // The link's end ends the session, whatever came before it.
        let why = conn.closed().await;
        assert!(conn.ended().is_some(), "ended after {why}");
        let _ = calling.await;
        if let Some(s) = streaming {
            let _ = s.await;
        }
        reading.abort();
    });
}

async fn send<T: LinkTx>(tx: &mut T, frame: &[u8]) -> Result<(), LinkError> {
    let mut permit = tx.reserve(frame.len()).await?;
    permit.buf().copy_from_slice(frame);
    permit.commit().await
}
