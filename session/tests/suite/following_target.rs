//! A typed client on a `Target` that follows a source of connections: each
//! call goes to the source's connection of the moment; while the source is
//! replacing its peer a call waits (at most the source's bound and its own
//! timeout) or, with `CallOptions::fail_fast`, fails at once; a peer gone
//! for good closes the call with the source's reason.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::bounded;
use osmos_session::link::memory as mem;
use osmos_session::{
    CallError, CallOptions, Connection, Current, Follow, SessionBuilder, SessionError, Target, Tx,
    Unreachable,
};
use tokio::sync::watch;

/// Says which peer answered.
#[osmos_macros::service]
pub trait Who {
    /// The peer's number.
    async fn who(&self) -> u32;
    /// Sends `n` items on `out`.
    async fn fill(&self, n: u32, out: Tx<u32>) -> Result<(), String>;
}

struct Peer(u32);
impl Who for Peer {
    async fn who(&self) -> u32 {
        self.0
    }
    async fn fill(&self, n: u32, out: Tx<u32>) -> Result<(), String> {
        for i in 0..n {
            out.send(&i).await.map_err(|e| e.to_string())?;
        }
        out.close().await.map_err(|e| e.to_string())
    }
}

/// A session with a peer serving `Who` as `n`: our connection, and the
/// server's (which keeps the session up).
async fn peer(n: u32) -> (Connection, Connection) {
    let (ours, theirs) = mem::pair(common::MAX_FRAME, 64);
    let (server, client) = bounded("handshakes", async {
        tokio::join!(
            SessionBuilder::new()
                .serve(WhoDispatcher::new(Peer(n)))
                .accept(theirs),
            SessionBuilder::new().initiate(ours)
        )
    })
    .await;
    (client.unwrap(), server.unwrap())
}

/// What the test's source holds.
#[derive(Clone, Debug)]
enum Now {
    Running(Connection),
    Replacing,
    Gone(&'static str),
}

/// A source whose state the test sets.
#[derive(Debug)]
struct Source {
    now: watch::Sender<Now>,
    latest: Mutex<Option<Connection>>,
    wait: Duration,
}

impl Source {
    fn new(first: Connection, wait: Duration) -> Arc<Source> {
        Arc::new(Source {
            now: watch::Sender::new(Now::Running(first.clone())),
            latest: Mutex::new(Some(first)),
            wait,
        })
    }

    fn set(&self, now: Now) {
        if let Now::Running(conn) = &now {
            *self.latest.lock().unwrap() = Some(conn.clone());
        }
        self.now.send_replace(now);
    }
}

impl Follow for Source {
    fn current(&self, wait: Duration) -> Current<'_> {
        Box::pin(async move {
            let mut rx = self.now.subscribe();
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                match rx.borrow_and_update().clone() {
                    Now::Running(conn) => return Ok(conn),
                    Now::Gone(why) => return Err(Unreachable::Gone(why.to_string())),
                    Now::Replacing => {}
                }
                if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                    return Err(Unreachable::Replacing(format!("still replacing after {wait:?}")));
                }
            }
        })
    }

    fn latest(&self) -> Option<Connection> {
        self.latest.lock().unwrap().clone()
    }

    fn max_wait(&self) -> Duration {
        self.wait
    }
}

#[tokio::test]
async fn a_following_client_calls_whichever_peer_runs_now() {
    let (first, _s1) = peer(1).await;
    let source = Source::new(first, Duration::from_secs(10));
    let client = WhoClient::from(Target::following(source.clone()));
    assert_eq!(bounded("who", client.who()).await.unwrap(), 1);

    let (second, _s2) = peer(2).await;
    source.set(Now::Running(second.clone()));
    assert_eq!(bounded("who", client.who()).await.unwrap(), 2);
    assert_eq!(client.connection().id(), second.id());
    assert!(client.connection().ended().is_none());

    // While the source replaces its peer a call waits, and completes once
    // a new one runs.
    source.set(Now::Replacing);
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.who().await }
    });
    let (third, _s3) = peer(3).await;
    tokio::task::yield_now().await;
    assert!(!call.is_finished(), "the call waits while the peer is replaced");
    source.set(Now::Running(third));
    assert_eq!(bounded("the waiting call", call).await.unwrap().unwrap(), 3);
}

#[tokio::test]
async fn a_call_fails_fast_or_at_its_deadline_while_the_peer_is_replaced() {
    let (first, _s1) = peer(1).await;
    let source = Source::new(first, Duration::from_secs(30));
    let client = WhoClient::from(Target::following(source.clone()));
    source.set(Now::Replacing);

    let started = Instant::now();
    match bounded(
        "a fail-fast call",
        client.who_with(CallOptions::default().fail_fast()),
    )
    .await
    {
        Err(CallError::Session(SessionError::PeerDied { detail })) => {
            assert!(detail.contains("still replacing"), "{detail}")
        }
        other => panic!("expected PeerDied at once, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "fail_fast waited");

    // The call's own timeout bounds the wait, and the deadline it misses
    // is the whole timeout.
    let timeout = Duration::from_millis(50);
    match bounded(
        "a call with a deadline",
        client.who_with(CallOptions::timeout(timeout)),
    )
    .await
    {
        Err(CallError::DeadlineExceeded { after }) => assert_eq!(after, timeout),
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }

    // The source's own bound, when shorter than the call's timeout.
    let source = Source::new(client.connection(), Duration::from_millis(20));
    let short = WhoClient::from(Target::following(source.clone()));
    source.set(Now::Replacing);
    match bounded("a call past the source's wait", short.who()).await {
        Err(CallError::Session(SessionError::PeerDied { detail })) => {
            assert!(detail.contains("still replacing"), "{detail}")
        }
        other => panic!("expected PeerDied, got {other:?}"),
    }
}

#[tokio::test]
async fn a_peer_gone_for_good_closes_the_call_with_the_sources_reason() {
    let (first, _s1) = peer(1).await;
    let source = Source::new(first, Duration::from_secs(30));
    let client = WhoClient::from(Target::following(source.clone()));
    source.set(Now::Gone("the cell 'who' was stopped by the host"));
    match bounded("a call to a stopped peer", client.who()).await {
        Err(CallError::ConnectionClosed { reason }) => {
            assert_eq!(reason, "the cell 'who' was stopped by the host")
        }
        other => panic!("expected ConnectionClosed, got {other:?}"),
    }
}

#[tokio::test]
async fn a_channel_opened_on_the_previous_peer_is_refused_by_name() {
    let (first, _s1) = peer(1).await;
    let source = Source::new(first, Duration::from_secs(10));
    let client = WhoClient::from(Target::following(source.clone()));
    // A channel on the connection of the moment works.
    let (tx, mut rx) = client.connection().channel::<u32>().unwrap();
    bounded("fill", client.fill(2, tx)).await.unwrap();
    assert_eq!(bounded("item", rx.recv()).await.unwrap().unwrap(), 0);
    // One opened before the peer was replaced is refused, not sent to a
    // peer that knows nothing of it.
    let (stale, _rx) = client.connection().channel::<u32>().unwrap();
    let (second, _s2) = peer(2).await;
    source.set(Now::Running(second));
    match bounded("a call with a stale channel", client.fill(1, stale)).await {
        Err(CallError::Encode { detail }) => assert!(detail.contains("another session"), "{detail}"),
        other => panic!("expected the stale channel refused, got {other:?}"),
    }
    // The client goes on working with channels of the new connection.
    let (tx, mut rx) = client.connection().channel::<u32>().unwrap();
    bounded("fill", client.fill(1, tx)).await.unwrap();
    assert_eq!(bounded("item", rx.recv()).await.unwrap().unwrap(), 0);
}

/// The connection a following target gives while no peer runs
/// (`Connection::ended_with`) has ended with its reason: asking it says
/// so, and a call on it fails with that reason.
#[tokio::test]
async fn a_connection_that_ended_before_it_began_gives_its_reason() {
    let conn = Connection::ended_with(SessionError::PeerDied {
        detail: "no peer runs now".into(),
    });
    match conn.ended() {
        Some(SessionError::PeerDied { detail }) => assert_eq!(detail, "no peer runs now"),
        other => panic!("expected the reason, got {other:?}"),
    }
    match bounded("a call", WhoClient::new(conn).who()).await {
        Err(CallError::Session(SessionError::PeerDied { detail })) => assert_eq!(detail, "no peer runs now"),
        other => panic!("expected the reason, got {other:?}"),
    }
}
