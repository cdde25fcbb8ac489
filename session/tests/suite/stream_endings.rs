//! How a stream ends when its other side does not end it cleanly, over every
//! link: a handler that panics mid-stream resets its channel (with the panic
//! message) instead of closing it, and a receiver whose peer went away gets
//! one error and then `None`, so `while let Some(item) = rx.recv().await`
//! always ends.

use std::time::Duration;

use osmos_session::{CallError, Connection, SessionBuilder, SessionError, Tx};

use crate::common;
use common::*;

/// Streams numbers, badly.
#[osmos_macros::service]
pub trait Streamer {
    /// Sends `count` numbers, then panics with a message.
    async fn count_then_panic(&self, count: u32, out: Tx<u32>) -> Result<u32, String>;
    /// Sends numbers until the receiver or the session goes.
    async fn forever(&self, out: Tx<u32>) -> Result<u32, String>;
}

struct Bad;
impl Streamer for Bad {
    async fn count_then_panic(&self, count: u32, out: Tx<u32>) -> Result<u32, String> {
        for i in 0..count {
            out.send(&i).await.unwrap();
        }
        panic!("disk on fire after {count} items");
    }
    async fn forever(&self, out: Tx<u32>) -> Result<u32, String> {
        let mut i = 0;
        while out.send(&i).await.is_ok() {
            i += 1;
            tokio::task::yield_now().await;
        }
        Ok(i)
    }
}

async fn connect<F: Factory>(f: &F) -> (Connection, Connection) {
    let (a, b) = f.pair().await;
    let server = SessionBuilder::new().serve(StreamerDispatcher::new(Bad));
    let (server, client) = bounded("handshake", async {
        tokio::join!(server.accept(b), SessionBuilder::new().initiate(a))
    })
    .await;
    (server.unwrap(), client.unwrap())
}

/// A handler that panics mid-stream: the caller sees the items sent before,
/// then a reset naming the panic, then the end; the call fails with the
/// panic's message; the session goes on.
async fn a_panic_mid_stream_resets_the_channel<F: Factory>(f: F) {
    let (_server, client) = connect(&f).await;
    let streamer = StreamerClient::new(client.clone());
    let (tx, mut rx) = client.channel::<u32>().unwrap();
    let call = tokio::spawn({
        let streamer = streamer.clone();
        async move { streamer.count_then_panic(3, tx).await }
    });
    let mut items = Vec::new();
    let mut errors = Vec::new();
    bounded("the stream's end", async {
        while let Some(item) = rx.recv().await {
            match item {
                Ok(i) => items.push(i),
                Err(e) => errors.push(e.to_string()),
            }
        }
    })
    .await;
    assert_eq!(
        items,
        (0..items.len() as u32).collect::<Vec<_>>(),
        "items in order"
    );
    assert_eq!(errors.len(), 1, "exactly one error, then the end: {errors:?}");
    assert!(errors[0].contains("disk on fire after 3 items"), "{}", errors[0]);
    match bounded("the call", call).await.unwrap() {
        Err(CallError::Internal { detail }) => {
            assert!(
                detail.contains("panicked: disk on fire after 3 items"),
                "{detail}"
            )
        }
        other => panic!("expected the handler's panic, got {other:?}"),
    }
    // The session keeps serving.
    let (tx, mut rx) = client.channel::<u32>().unwrap();
    let call = tokio::spawn(async move { streamer.count_then_panic(0, tx).await });
    assert!(matches!(
        bounded("the second stream", rx.recv()).await,
        Some(Err(_))
    ));
    assert!(bounded("the end", rx.recv()).await.is_none());
    assert!(bounded("the second call", call).await.unwrap().is_err());
    assert!(client.ended().is_none());
}

/// The serving side goes away mid-stream: the receiver gets the items that
/// arrived, one error, then `None` on every later call.
async fn a_receiver_ends_once_its_peer_is_gone<F: Factory>(f: F) {
    let (server, client) = connect(&f).await;
    let streamer = StreamerClient::new(client.clone());
    let (tx, mut rx) = client.channel::<u32>().unwrap();
    let _call = tokio::spawn(async move { streamer.forever(tx).await });
    for expected in 0..10u32 {
        assert_eq!(bounded("an item", rx.recv()).await.unwrap().unwrap(), expected);
    }
    server.terminate(SessionError::Closed {
        reason: "the server went away".into(),
    });
    let mut errors = 0;
    bounded("the stream's end", async {
        while let Some(item) = rx.recv().await {
            if item.is_err() {
                errors += 1;
            }
        }
    })
    .await;
    assert!(errors <= 1, "{errors} errors: the receiver kept failing");
    for _ in 0..3 {
        assert!(bounded("a recv after the end", rx.recv()).await.is_none());
    }
    // The client's session learns of the end too.
    let _ = tokio::time::timeout(Duration::from_secs(20), client.closed()).await;
}

macro_rules! endings {
    ($link:ident, $factory:expr) => {
        mod $link {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_panic_mid_stream_resets_the_channel() {
                super::a_panic_mid_stream_resets_the_channel($factory).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_receiver_ends_once_its_peer_is_gone() {
                super::a_receiver_ends_once_its_peer_is_gone($factory).await;
            }
        }
    };
}

endings!(memory, MemoryFactory);
endings!(unix, UnixFactory);
endings!(tcp, TcpFactory);
endings!(shm, ShmFactory);
