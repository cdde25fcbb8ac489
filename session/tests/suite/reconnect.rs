//! The reconnecting client over the stream links (Unix and TCP): a peer
//! that goes away and comes back, calls in flight at the break, calls made
//! during the outage, and a policy that runs out.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use osmos_session::link::stream::StreamLink;
use osmos_session::{
    CallError, Connection, ReconnectError, ReconnectState, Reconnecting, RetryPolicy, SessionBuilder,
};
use tokio::sync::Mutex;

const BOUND: Duration = Duration::from_secs(20);
const MAX_FRAME: usize = 1 << 20;

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The served service.
#[osmos_macros::service]
pub trait Counter {
    /// Which server incarnation answers.
    async fn incarnation(&self) -> Result<u32, String>;
    /// Never returns.
    async fn hang(&self) -> Result<(), String>;
}

struct Served {
    incarnation: u32,
    hanging: Arc<AtomicUsize>,
}

impl Counter for Served {
    async fn incarnation(&self) -> Result<u32, String> {
        Ok(self.incarnation)
    }
    async fn hang(&self) -> Result<(), String> {
        self.hanging.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
}

/// Where the server listens.
#[derive(Clone)]
enum Addr {
    Unix(std::path::PathBuf),
    Tcp(std::net::SocketAddr),
}

/// A server incarnation: accepts connections until stopped, keeping each
/// session (so they can be cut).
struct Server {
    accepting: tokio::task::JoinHandle<()>,
    sessions: Arc<Mutex<Vec<Connection>>>,
}

impl Server {
    async fn start(addr: &Addr, incarnation: u32, hanging: Arc<AtomicUsize>) -> Server {
        let sessions: Arc<Mutex<Vec<Connection>>> = Arc::default();
        let builder = SessionBuilder::new().serve(CounterDispatcher::new(Served { incarnation, hanging }));
        let accepting = match addr.clone() {
            Addr::Unix(path) => {
                let _ = std::fs::remove_file(&path);
                let listener = tokio::net::UnixListener::bind(&path).unwrap();
                let sessions = sessions.clone();
                tokio::spawn(async move {
                    while let Ok((s, _)) = listener.accept().await {
                        if let Ok(c) = builder.clone().accept(StreamLink::unix(s, MAX_FRAME)).await {
                            sessions.lock().await.push(c);
                        }
                    }
                })
            }
            Addr::Tcp(a) => {
                let listener = tokio::net::TcpListener::bind(a).await.unwrap();
                let sessions = sessions.clone();
                tokio::spawn(async move {
                    while let Ok((s, _)) = listener.accept().await {
                        if let Ok(c) = builder
                            .clone()
                            .accept(StreamLink::tcp(s, MAX_FRAME).unwrap())
                            .await
                        {
                            sessions.lock().await.push(c);
                        }
                    }
                })
            }
        };
        Server { accepting, sessions }
    }

    /// Goes away: stops listening and drops every session's link.
    async fn stop(self) {
        self.accepting.abort();
        let _ = self.accepting.await;
        for c in self.sessions.lock().await.drain(..) {
            c.terminate(osmos_session::SessionError::Closed {
                reason: "the server went away".into(),
            });
        }
    }
}

fn client(addr: &Addr, policy: RetryPolicy) -> Reconnecting {
    match addr {
        Addr::Unix(p) => Reconnecting::unix(p.clone(), MAX_FRAME, SessionBuilder::new(), policy),
        Addr::Tcp(a) => Reconnecting::tcp(a.to_string(), MAX_FRAME, SessionBuilder::new(), policy),
    }
}

async fn reconnect_survives_the_peer_going_away(addr: Addr) {
    let hanging = Arc::new(AtomicUsize::new(0));
    let server = Server::start(&addr, 1, hanging.clone()).await;
    let policy = RetryPolicy {
        max_attempts: 10_000,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
    };
    let rc = client(&addr, policy);
    let c: CounterClient = bounded("connect", rc.client()).await.unwrap();
    assert_eq!(c.incarnation().await.unwrap(), 1);
    // A call in flight when the peer goes away fails, clearly.
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { c.hang().await }
    });
    bounded("the call to reach the server", async {
        while hanging.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    server.stop().await;
    let err = bounded("the in-flight call", in_flight)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, CallError::Session(_)), "{err:?}");
    assert!(
        err.to_string().contains("link") || err.to_string().contains("peer"),
        "{err}"
    );
    // A new call waits through the outage...
    bounded(
        "the client to notice",
        rc.wait_for(|s| matches!(s, ReconnectState::Connecting { attempt, .. } if *attempt >= 2)),
    )
    .await;
    let waiting = tokio::spawn({
        let rc = rc.clone();
        async move { rc.client::<CounterClient>().await.unwrap().incarnation().await }
    });
    assert!(!waiting.is_finished());
    // ...and completes against the server's next incarnation.
    let server = Server::start(&addr, 2, hanging.clone()).await;
    assert_eq!(bounded("the waiting call", waiting).await.unwrap().unwrap(), 2);
    assert_eq!(rc.connects(), 2);
    let c: CounterClient = rc.client().await.unwrap();
    assert_eq!(c.incarnation().await.unwrap(), 2);
    rc.close("done").await;
    assert!(matches!(
        rc.connection().await,
        Err(ReconnectError::Closed { .. })
    ));
    server.stop().await;
}

async fn reconnect_gives_up_when_the_policy_is_exhausted(addr: Addr) {
    let hanging = Arc::new(AtomicUsize::new(0));
    let server = Server::start(&addr, 1, hanging).await;
    let policy = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
    };
    let rc = client(&addr, policy);
    let c: CounterClient = bounded("connect", rc.client()).await.unwrap();
    assert_eq!(c.incarnation().await.unwrap(), 1);
    server.stop().await;
    bounded(
        "the client to notice",
        rc.wait_for(|s| !matches!(s, ReconnectState::Connected(_))),
    )
    .await;
    let err = bounded("the policy to run out", rc.connection())
        .await
        .unwrap_err();
    match &err {
        ReconnectError::GaveUp { attempts, last_error } => {
            assert_eq!(*attempts, 3);
            assert!(last_error.contains("could not connect"), "{last_error}");
        }
        e => panic!("expected GaveUp, got {e:?}"),
    }
    assert!(err.to_string().contains("after 3 attempts"), "{err}");
    // Calls through the client fail with it too.
    let r: Result<u32, CallError<String>> = rc
        .call(
            osmos_session::method_id("Counter", "incarnation"),
            &(),
            Default::default(),
        )
        .await;
    assert!(r.unwrap_err().to_string().contains("retry policy is exhausted"));
}

/// A Unix socket path for one test, removed when the test ends (passed or
/// not): the listener leaves its socket file behind.
struct SocketFile(std::path::PathBuf);

impl SocketFile {
    fn new(tag: &str) -> SocketFile {
        SocketFile(std::env::temp_dir().join(format!("osmos-reconnect-{tag}-{}.sock", std::process::id())))
    }

    fn addr(&self) -> Addr {
        Addr::Unix(self.0.clone())
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn tcp_addr() -> Addr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    Addr::Tcp(l.local_addr().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_reconnect_survives_the_peer_going_away() {
    let socket = SocketFile::new("survives");
    reconnect_survives_the_peer_going_away(socket.addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_reconnect_survives_the_peer_going_away() {
    reconnect_survives_the_peer_going_away(tcp_addr().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_reconnect_gives_up_when_the_policy_is_exhausted() {
    let socket = SocketFile::new("gives-up");
    reconnect_gives_up_when_the_policy_is_exhausted(socket.addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_reconnect_gives_up_when_the_policy_is_exhausted() {
    reconnect_gives_up_when_the_policy_is_exhausted(tcp_addr().await).await;
}
