//! What a handler knows about its call ([`CallContext`]) and how deadlines
//! travel: the caller's timeout (or its session's default) goes on the wire,
//! the handler sees it, and the callee cancels the handler when it passes,
//! even if the caller never says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use osmos_session::link::{Link, LinkRx, LinkTx, SendPermit};
use osmos_session::wire::{self, Message, MetaValue, Outcome, PROTOCOL_VERSION, Settings};
use osmos_session::{CallContext, CallError, CallOptions, Connection, SessionBuilder, SessionConfig};

use crate::common;
use common::*;

/// Tells a handler's view of its call.
#[osmos_macros::service]
pub trait Inspect {
    /// The metadata entry `key` (as a string), the deadline's remaining
    /// milliseconds and the caller's name.
    async fn look(&self, key: String) -> Result<(Option<String>, Option<u64>, String), String>;
    /// Never answers; notes when it is dropped (cancelled).
    async fn hang(&self) -> Result<u32, String>;
    /// Streams `count` chunks of `size` bytes through a channel it makes.
    async fn chunks(&self, count: u32, size: u32) -> Result<osmos_session::Rx<Vec<u8>>, String>;
}

#[derive(Default)]
struct Inspector {
    hang_dropped: Arc<AtomicBool>,
}

struct SetOnDrop(Arc<AtomicBool>);
impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Inspect for Inspector {
    async fn look(&self, key: String) -> Result<(Option<String>, Option<u64>, String), String> {
        // Wait once, so the rest runs in the handler's own task.
        tokio::task::yield_now().await;
        let ctx = CallContext::current().ok_or("no context inside a handler")?;
        let value = match ctx.get(&key) {
            Some(MetaValue::Str(s)) => Some(s.clone()),
            Some(other) => Some(format!("{other:?}")),
            None => None,
        };
        let left = ctx.remaining().map(|d| d.as_millis() as u64);
        Ok((value, left, ctx.caller().to_string()))
    }
    async fn hang(&self) -> Result<u32, String> {
        let _note = SetOnDrop(self.hang_dropped.clone());
        std::future::pending::<()>().await;
        Ok(0)
    }
    async fn chunks(&self, count: u32, size: u32) -> Result<osmos_session::Rx<Vec<u8>>, String> {
        let ctx = CallContext::current().ok_or("no context")?;
        let (tx, rx) = ctx.connection().channel::<Vec<u8>>().map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            for i in 0..count {
                if tx.send(&vec![i as u8; size as usize]).await.is_err() {
                    return;
                }
            }
            let _ = tx.close().await;
        });
        Ok(rx)
    }
}

async fn serve<F: Factory>(f: &F, client_config: SessionConfig) -> (Connection, Connection, Arc<AtomicBool>) {
    let (a, b) = f.pair().await;
    let inspector = Inspector::default();
    let dropped = inspector.hang_dropped.clone();
    let server = SessionBuilder::new()
        .config(SessionConfig {
            name: "the-server".into(),
            ..SessionConfig::default()
        })
        .serve(InspectDispatcher::new(inspector));
    let (server, client) = bounded("handshake", async {
        tokio::join!(
            server.accept(b),
            SessionBuilder::new().config(client_config).initiate(a)
        )
    })
    .await;
    (server.unwrap(), client.unwrap(), dropped)
}

/// A handler sees the call's metadata, the deadline the caller set (or its
/// session's default), and who calls; outside a handler there is no context.
async fn a_handler_sees_its_call<F: Factory>(f: F) {
    let (_server, client, _) = serve(&f, SessionConfig::default()).await;
    let inspect = InspectClient::new(client.clone());
    assert!(CallContext::current().is_none());
    let options =
        CallOptions::timeout(Duration::from_secs(7)).with_metadata("tenant", MetaValue::Str("blue".into()));
    let (value, left, caller) = bounded("look", inspect.look_with(options, "tenant".into()))
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some("blue"));
    let left = left.expect("a deadline");
    assert!((6_000..=7_000).contains(&left), "{left} ms left of 7 s");
    assert_eq!(caller, "the-server", "the name the serving side gave the session");
    // No options: the session's default deadline (60 s).
    let (value, left, _) = bounded("look", inspect.look("tenant".into())).await.unwrap();
    assert_eq!(value, None);
    assert!((59_000..=60_000).contains(&left.unwrap()), "{left:?}");
    // No deadline at all.
    let (_, left, _) = bounded("look", inspect.look_with(CallOptions::no_deadline(), "x".into()))
        .await
        .unwrap();
    assert_eq!(left, None);
}

/// A call that outlives its session's default deadline fails with
/// `DeadlineExceeded`, and the handler is cancelled.
async fn the_session_default_deadline_applies<F: Factory>(f: F) {
    let config = SessionConfig {
        call_timeout: Some(Duration::from_millis(200)),
        ..SessionConfig::default()
    };
    let (_server, client, dropped) = serve(&f, config).await;
    let inspect = InspectClient::new(client);
    match bounded("hang", inspect.hang()).await {
        Err(CallError::DeadlineExceeded { after }) => assert_eq!(after, Duration::from_millis(200)),
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    bounded("the handler's cancellation", async {
        while !dropped.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// The callee enforces the deadline itself: a caller that sends a call
/// with a deadline and never cancels it gets `Cancelled` once the deadline
/// passes, and the handler is dropped.
async fn the_callee_cancels_at_the_deadline<F: Factory>(f: F) {
    let (a, b) = f.pair().await;
    let inspector = Inspector::default();
    let dropped = inspector.hang_dropped.clone();
    let server = tokio::spawn(
        SessionBuilder::new()
            .serve(InspectDispatcher::new(inspector))
            .accept(b),
    );
    let (mut tx, mut rx) = a.split();
    let send = |m: Message<'_>| wire::encode(&m).unwrap();
    let hello = send(Message::Hello {
        version: PROTOCOL_VERSION,
        settings: Settings::default(),
    });
    let mut p = tx.reserve(hello.len()).await.unwrap();
    p.buf().copy_from_slice(&hello);
    p.commit().await.unwrap();
    let _ = bounded("hello", rx.recv()).await.unwrap().unwrap();
    let _server = bounded("server", server).await.unwrap().unwrap();
    let args = wire::encode(&()).unwrap();
    let call = send(Message::Call {
        conn: 0,
        request: 1,
        method: osmos_session::method_id("Inspect", "hang"),
        deadline_us: 100_000,
        metadata: vec![],
        channels: vec![],
        args: &args,
    });
    let mut p = tx.reserve(call.len()).await.unwrap();
    p.buf().copy_from_slice(&call);
    p.commit().await.unwrap();
    let outcome = bounded("the response", async {
        loop {
            let frame = rx.recv().await.unwrap().unwrap().to_vec();
            if let Message::Response {
                request: 1, outcome, ..
            } = wire::decode(&frame).unwrap()
            {
                return format!("{outcome:?}");
            }
        }
    })
    .await;
    assert_eq!(outcome, format!("{:?}", Outcome::Cancelled));
    assert!(dropped.load(Ordering::SeqCst), "the handler was not cancelled");
}

/// A handler that makes its stream and returns the receiver: the caller may
/// await the call first and read afterwards, far past the credit window,
/// without a deadlock.
async fn a_returned_stream_cannot_deadlock<F: Factory>(f: F) {
    let (_server, client, _) = serve(&f, SessionConfig::default()).await;
    let inspect = InspectClient::new(client);
    // 100 MiB, 25 times the default credit window.
    let mut rx = bounded("the call", inspect.chunks(1600, 64 << 10)).await.unwrap();
    let mut got = 0u32;
    bounded("the stream", async {
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk.unwrap();
            assert_eq!(chunk, vec![got as u8; 64 << 10]);
            got += 1;
        }
    })
    .await;
    assert_eq!(got, 1600);
}

/// A peer that ignores deadlines: the caller's session fails a call that
/// outlives its default deadline by itself and cancels it on the peer.
async fn the_caller_enforces_the_default_deadline<F: Factory>(f: F) {
    let (a, b) = f.pair().await;
    let config = SessionConfig {
        call_timeout: Some(Duration::from_millis(200)),
        ..SessionConfig::default()
    };
    let client = tokio::spawn(SessionBuilder::new().config(config).initiate(a));
    let (mut tx, mut rx) = b.split();
    let _hello = bounded("hello", rx.recv()).await.unwrap().unwrap().to_vec();
    let reply = wire::encode(&Message::HelloYourself {
        version: PROTOCOL_VERSION,
        settings: Settings::default(),
    })
    .unwrap();
    let mut p = tx.reserve(reply.len()).await.unwrap();
    p.buf().copy_from_slice(&reply);
    p.commit().await.unwrap();
    let client = bounded("client", client).await.unwrap().unwrap();
    let inspect = InspectClient::new(client);
    let started = std::time::Instant::now();
    match bounded("the call", inspect.hang()).await {
        Err(CallError::DeadlineExceeded { after }) => assert_eq!(after, Duration::from_millis(200)),
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(200));
    // The peer saw the call, then its cancellation.
    let (mut saw_call, mut saw_cancel) = (false, false);
    bounded("the cancel", async {
        while !saw_cancel {
            let frame = rx.recv().await.unwrap().unwrap().to_vec();
            match wire::decode(&frame).unwrap() {
                Message::Call { deadline_us, .. } => {
                    assert_eq!(deadline_us, 200_000);
                    saw_call = true;
                }
                Message::Cancel { .. } => saw_cancel = true,
                _ => {}
            }
        }
    })
    .await;
    assert!(saw_call);
}

macro_rules! context {
    ($link:ident, $factory:expr) => {
        mod $link {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_handler_sees_its_call() {
                super::a_handler_sees_its_call($factory).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_session_default_deadline_applies() {
                super::the_session_default_deadline_applies($factory).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_returned_stream_cannot_deadlock() {
                super::a_returned_stream_cannot_deadlock($factory).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_caller_enforces_the_default_deadline() {
                super::the_caller_enforces_the_default_deadline($factory).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_callee_cancels_at_the_deadline() {
                super::the_callee_cancels_at_the_deadline($factory).await;
            }
        }
    };
}

context!(memory, MemoryFactory);
context!(unix, UnixFactory);
context!(shm, ShmFactory);
