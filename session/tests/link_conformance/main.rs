//! One conformance suite for every [`Link`] implementation.
//!
//! Each test body is generic over a [`Harness`] that makes a connected
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
//!
//! The harnesses are in `harness.rs`, the helpers the bodies share in
//! `helpers.rs`, the bodies run against every link in `bodies.rs` and the
//! raw-peer bodies in `raw_bodies.rs`; this file instantiates them and holds
//! the link-specific tests.

mod bodies;
mod harness;
mod helpers;
mod raw_bodies;

use std::future::Future;
use std::time::Duration;

use bodies::{
    backpressure_waits_then_proceeds, cancelled_recv_loses_nothing, close_drains_then_ends,
    dropped_permit_sends_nothing, frames_arrive_in_order, large_volumes_both_directions,
    oversized_frame_is_refused, peer_dropped_fails_instead_of_hanging,
};
use harness::{Duplex, Memory, Stable, Tcp, Unix};
use helpers::{expect_frame, send};
use osmos_session::link::memory::pair as memory_pair;
use osmos_session::link::stream::{self, StreamLink};
use osmos_session::link::{Link, LinkError, LinkTx};
use raw_bodies::{
    forged_length_is_a_violation, garbage_never_panics, recv_cancelled_mid_frame_resumes,
    truncated_frame_is_reported, wire_format_is_le_length_prefixed,
};
use tokio::net::TcpListener;
use tokio::time::timeout;

/// Bound on any wait that should end.
const WAIT: Duration = Duration::from_secs(10);

/// How long a wait that should block is watched before concluding it blocks.
const PROBE: Duration = Duration::from_millis(100);

/// Bound on a whole test.
const TEST: Duration = Duration::from_secs(60);

/// Awaits `fut`, failing the test if it takes longer than [`WAIT`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
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
