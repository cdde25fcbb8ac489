//! A session over the stable link whose connection breaks and cannot be
//! resumed: calls in flight fail with an error that says why (the peer
//! restarted; the peer gave up waiting and ended the session).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use osmos_session::link::stable::{Accepted, StableAcceptor, StableConfig, StableLink, Transport};
use osmos_session::{CallError, RetryPolicy, SessionBuilder, SessionError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

const BOUND: Duration = Duration::from_secs(20);

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The served service.
#[osmos_macros::service]
pub trait Slow {
    /// Never returns.
    async fn hang(&self) -> Result<(), String>;
    /// Answers at once.
    async fn ping(&self) -> Result<u32, String>;
}

struct Served {
    hanging: Arc<AtomicUsize>,
}

impl Slow for Served {
    async fn hang(&self) -> Result<(), String> {
        self.hanging.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
    async fn ping(&self) -> Result<u32, String> {
        Ok(7)
    }
}

/// A server "process": its own runtime, listener, acceptor and sessions.
/// Shutting the runtime down is the process dying: nothing runs after it.
struct Server {
    rt: tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
}

fn server(config: StableConfig, hanging: Arc<AtomicUsize>) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("address");
    rt.spawn(async move {
        let listener = TcpListener::from_std(listener).expect("a listener");
        let acceptor = StableAcceptor::new(config).expect("an acceptor");
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, hanging) = (acceptor.clone(), hanging.clone());
            tokio::spawn(async move {
                if let Ok(Accepted::New(link)) = acceptor.accept(Transport::tcp(s).expect("nodelay")).await
                    && let Ok(conn) = SessionBuilder::new()
                        .serve(SlowDispatcher::new(Served { hanging }))
                        .accept(link)
                        .await
                {
                    conn.closed().await;
                }
            });
        }
    });
    Server { rt, addr }
}

/// A relay in front of whichever server is current; `cut` closes its connections.
struct Relay {
    addr: std::net::SocketAddr,
    /// Where connections go; `None` turns them away (counted in `refused`).
    upstream: Arc<Mutex<Option<std::net::SocketAddr>>>,
    refused: Arc<AtomicUsize>,
    live: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Relay {
    async fn start(upstream: std::net::SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let upstream = Arc::new(Mutex::new(Some(upstream)));
        let refused = Arc::new(AtomicUsize::new(0));
        let live = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up, tasks, turned_away) = (upstream.clone(), live.clone(), refused.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut a, _)) = listener.accept().await else {
                    return;
                };
                let Some(target) = *up.lock().await else {
                    drop(a);
                    turned_away.fetch_add(1, Ordering::SeqCst);
                    continue;
                };
                let task = tokio::spawn(async move {
                    if let Ok(mut b) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    }
                });
                tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        Relay {
            addr,
            upstream,
            refused,
            live,
        }
    }

    fn cut(&self) {
        for t in self.live.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

fn patient() -> StableConfig {
    StableConfig::default().retry(RetryPolicy {
        max_attempts: 100,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
    })
}

/// A `hang` call, once the server runs it.
async fn hang_in_flight(
    client: &SlowClient,
    hanging: &AtomicUsize,
) -> tokio::task::JoinHandle<Result<(), CallError<String>>> {
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.hang().await }
    });
    bounded("the call to arrive", async {
        while hanging.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    call
}

/// The reason a failed call gives.
fn reason(e: CallError<String>) -> String {
    match e {
        CallError::Session(SessionError::Link { detail }) => detail,
        other => panic!("expected the session's link error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_when_the_peer_restarts_fails_saying_so() {
    let hanging = Arc::new(AtomicUsize::new(0));
    let first = server(patient(), hanging.clone());
    let relay = Relay::start(first.addr).await;
    let link = StableLink::connect_tcp(relay.addr, patient())
        .await
        .expect("connect");
    let conn = SessionBuilder::new().initiate(link).await.expect("handshake");
    let client = SlowClient::new(conn);
    assert_eq!(bounded("ping", client.ping()).await.expect("ping"), 7);
    let in_flight = hang_in_flight(&client, &hanging).await;
    // The server process dies; a new one takes its address.
    first.rt.shutdown_background();
    let second = server(patient(), hanging.clone());
    *relay.upstream.lock().await = Some(second.addr);
    relay.cut();
    let e = bounded("the call to fail", in_flight).await.unwrap().unwrap_err();
    let why = reason(e);
    assert!(why.contains("restarted"), "{why}");
    second.rt.shutdown_background();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_fails_when_the_peer_gave_up_waiting_for_the_resume() {
    let hanging = Arc::new(AtomicUsize::new(0));
    // The server waits 100 ms for a resume; the client retries after 1 s.
    let srv = server(
        patient().resume_timeout(Duration::from_millis(100)),
        hanging.clone(),
    );
    let relay = Relay::start(srv.addr).await;
    let slow_retry = StableConfig::default().retry(RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(1),
    });
    let link = StableLink::connect_tcp(relay.addr, slow_retry)
        .await
        .expect("connect");
    let conn = SessionBuilder::new().initiate(link).await.expect("handshake");
    let client = SlowClient::new(conn);
    let in_flight = hang_in_flight(&client, &hanging).await;
    // Turn the first reconnect away so the client waits its backoff, while
    // the server's resume wait runs out.
    *relay.upstream.lock().await = None;
    relay.cut();
    bounded("the first reconnect", async {
        while relay.refused.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    *relay.upstream.lock().await = Some(srv.addr);
    let e = bounded("the call to fail", in_flight).await.unwrap().unwrap_err();
    let why = reason(e);
    assert!(why.contains("ended this session"), "{why}");
    srv.rt.shutdown_background();
}
