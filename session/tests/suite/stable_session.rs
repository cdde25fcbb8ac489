//! Sessions over the stable link (`link::stable`), in one process, behind a
//! relay whose connections the test cuts: calls, a stream and a tunnel in
//! flight across cuts all complete, once, with the right values; and when
//! the conduit cannot resume, every call in flight fails saying so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use osmos_session::link::stable::{
    Accepted, ResumeFailure, StableAcceptor, StableConfig, StableLink, StableStatus, Transport,
};
use osmos_session::{Connection, RetryPolicy, SessionBuilder, Tunnel, TunnelEnd, Tx};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc, watch};

use crate::common;
use common::bounded;

/// The served service.
#[osmos_macros::service]
pub trait Held {
    /// Waits until the test opens the gate, then returns `2x + 1`.
    async fn held(&self, x: u64) -> Result<u64, String>;
    /// Sends `0..n` on `out`, then closes it.
    async fn count(&self, n: u32, out: Tx<u32>) -> Result<u32, String>;
    /// Echoes a tunnel's bytes until the caller shuts its side.
    async fn pipe(&self, end: TunnelEnd) -> Result<u64, String>;
}

struct Served {
    /// Handlers of `held` started.
    started: watch::Sender<usize>,
    gate: watch::Receiver<bool>,
}

impl Held for Arc<Served> {
    async fn held(&self, x: u64) -> Result<u64, String> {
        self.started.send_modify(|n| *n += 1);
        let mut gate = self.gate.clone();
        let _ = gate.wait_for(|open| *open).await;
        Ok(2 * x + 1)
    }
    async fn count(&self, n: u32, out: Tx<u32>) -> Result<u32, String> {
        for i in 0..n {
            out.send(&i).await.map_err(|e| e.to_string())?;
        }
        out.close().await.map_err(|e| e.to_string())?;
        Ok(n)
    }
    async fn pipe(&self, end: TunnelEnd) -> Result<u64, String> {
        let (mut r, mut w) = tokio::io::split(Tunnel::from_end(end));
        let n = tokio::io::copy(&mut r, &mut w).await.map_err(|e| e.to_string())?;
        w.shutdown().await.map_err(|e| e.to_string())?;
        Ok(n)
    }
}

/// A server behind a relay: the server accepts stable conduits and runs a
/// session on each new one; the relay forwards connections to it and can
/// cut them all.
struct Setup {
    /// Where clients connect (the relay).
    addr: std::net::SocketAddr,
    relays: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    sessions: mpsc::Receiver<Connection>,
    started: watch::Receiver<usize>,
    gate: watch::Sender<bool>,
}

async fn setup(config: StableConfig) -> Setup {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    let relays = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn({
        let relays = relays.clone();
        async move {
            while let Ok((client, _)) = front.accept().await {
                let Ok(upstream) = TcpStream::connect(backend_addr).await else {
                    continue;
                };
                let task = tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut ur, mut uw) = upstream.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut cr, &mut uw) => {}
                        _ = tokio::io::copy(&mut ur, &mut cw) => {}
                    }
                });
                relays.lock().await.push(task.abort_handle());
            }
        }
    });
    let (started_tx, started) = watch::channel(0);
    let (gate, gate_rx) = watch::channel(false);
    let served = Arc::new(Served {
        started: started_tx,
        gate: gate_rx,
    });
    let (session_tx, sessions) = mpsc::channel(4);
    let acceptor = StableAcceptor::new(config).unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = backend.accept().await {
            let (acceptor, served, session_tx) = (acceptor.clone(), served.clone(), session_tx.clone());
            tokio::spawn(async move {
                if let Ok(Accepted::New(link)) = acceptor.accept(Transport::tcp(s).unwrap()).await {
                    let conn = SessionBuilder::new()
                        .serve(HeldDispatcher::new(served))
                        .accept(link)
                        .await
                        .unwrap();
                    let _ = session_tx.send(conn).await;
                }
            });
        }
    });
    Setup {
        addr,
        relays,
        sessions,
        started,
        gate,
    }
}

impl Setup {
    /// Cuts every connection through the relay (both sockets closed);
    /// returns how many were open.
    async fn cut(&self) -> usize {
        let mut relays = self.relays.lock().await;
        let open = relays.iter().filter(|r| !r.is_finished()).count();
        for r in relays.drain(..) {
            r.abort();
        }
        open
    }

    /// Waits until `n` `held` handlers have started.
    async fn handlers_started(&mut self, n: usize) {
        bounded(
            "the held calls to reach the server",
            self.started.wait_for(|s| *s >= n),
        )
        .await
        .unwrap();
    }
}

fn config() -> StableConfig {
    StableConfig::default()
        .retry(RetryPolicy {
            max_attempts: 100,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(20),
        })
        .heartbeat(Duration::from_millis(200))
}

#[tokio::test]
async fn calls_a_stream_and_a_tunnel_in_flight_survive_cuts() {
    let mut s = setup(config()).await;
    let link = bounded("the link", StableLink::connect_tcp(s.addr, config()))
        .await
        .unwrap();
    let monitor = link.monitor();
    let conn = bounded("the session", SessionBuilder::new().initiate(link))
        .await
        .unwrap();
    let _server = bounded("the server's session", s.sessions.recv()).await.unwrap();
    let client = HeldClient::new(conn.clone());
    let mut cuts = 0;

    // Calls in flight: their requests are at the server, their answers not yet sent.
    const CALLS: u64 = 200;
    let mut calls = tokio::task::JoinSet::new();
    for x in 0..CALLS {
        let client = client.clone();
        calls.spawn(async move { (x, client.held(x).await) });
    }
    s.handlers_started(CALLS as usize).await;
    // A stream and a tunnel under way.
    const ITEMS: u32 = 5_000;
    let (tx, mut items) = conn.channel::<u32>().unwrap();
    let counting = tokio::spawn({
        let client = client.clone();
        async move { client.count(ITEMS, tx).await }
    });
    const TUNNEL: usize = 512 << 10;
    let data: Vec<u8> = (0..TUNNEL).map(|i| (i * 7 + i / 251) as u8).collect();
    let (tunnel, end) = Tunnel::open(&conn).unwrap();
    let piping = tokio::spawn({
        let client = client.clone();
        async move { client.pipe(end).await }
    });
    let (mut tr, mut tw) = tokio::io::split(tunnel);
    let writing = tokio::spawn({
        let data = data.clone();
        async move {
            for chunk in data.chunks(10_000) {
                tw.write_all(chunk).await.unwrap();
            }
            tw.shutdown().await.unwrap();
        }
    });
    cuts += usize::from(s.cut().await > 0);
    s.gate.send_replace(true);

    // Cut again as the answers, the items and the echo come back.
    let mut answered = 0;
    while let Some(r) = bounded("an answer", calls.join_next()).await {
        let (x, got) = r.unwrap();
        assert_eq!(
            got.unwrap_or_else(|e| panic!("call {x}: {e}")),
            2 * x + 1,
            "call {x}"
        );
        answered += 1;
        if answered == CALLS / 2 {
            cuts += usize::from(s.cut().await > 0);
        }
    }
    assert_eq!(answered, CALLS);
    let mut next = 0;
    while let Some(v) = bounded("an item", items.recv()).await {
        assert_eq!(v.unwrap(), next, "items arrive in order, once");
        next += 1;
        if next % 2_000 == 0 {
            cuts += usize::from(s.cut().await > 0);
        }
    }
    assert_eq!(next, ITEMS);
    assert_eq!(
        bounded("the stream's answer", counting).await.unwrap().unwrap(),
        ITEMS
    );
    let mut echoed = Vec::new();
    let mut buf = vec![0; 16 << 10];
    loop {
        let n = bounded("tunnel bytes", tr.read(&mut buf)).await.unwrap();
        if n == 0 {
            break;
        }
        echoed.extend_from_slice(&buf[..n]);
        if echoed.len() >= TUNNEL / 2 && echoed.len() - n < TUNNEL / 2 {
            cuts += usize::from(s.cut().await > 0);
        }
    }
    assert!(
        echoed == data,
        "the tunnel's bytes came back intact ({} of {TUNNEL})",
        echoed.len()
    );
    bounded("the tunnel writer", writing).await.unwrap();
    assert_eq!(
        bounded("the pipe's answer", piping).await.unwrap().unwrap(),
        TUNNEL as u64
    );
    assert_eq!(
        *s.started.borrow(),
        CALLS as usize,
        "each call ran once at the server"
    );
    assert!(cuts >= 3, "only {cuts} cuts found a connection open");
    // The last cut may come after the last byte that needed the link (the
    // tunnel's rest already on its way): wait for its resume, not race it.
    let counter = monitor.clone();
    let mut watching = monitor.clone();
    bounded(
        "a resume for every cut",
        watching.wait_for(|st| *st == StableStatus::Connected && counter.resumes() >= cuts as u64),
    )
    .await;
    assert!(
        monitor.resumes() >= cuts as u64,
        "{} resumes for {cuts} cuts",
        monitor.resumes()
    );
    assert_eq!(monitor.status(), StableStatus::Connected);
}

#[tokio::test]
async fn when_the_retry_policy_runs_out_every_call_in_flight_fails_naming_why() {
    let server_config = config().resume_timeout(Duration::from_millis(300));
    let mut s = setup(server_config).await;
    let open = Arc::new(AtomicBool::new(true));
    let attempts = Arc::new(AtomicUsize::new(0));
    let addr = s.addr;
    let link = StableLink::connect(
        {
            let (open, attempts) = (open.clone(), attempts.clone());
            move || {
                let (open, attempts) = (open.clone(), attempts.clone());
                async move {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    if !open.load(Ordering::SeqCst) {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionRefused,
                            "the network is down",
                        ));
                    }
                    Transport::tcp(TcpStream::connect(addr).await?)
                }
            }
        },
        config().retry(RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        }),
    );
    let link = bounded("the link", link).await.unwrap();
    let mut monitor = link.monitor();
    let conn = bounded("the session", SessionBuilder::new().initiate(link))
        .await
        .unwrap();
    let server = bounded("the server's session", s.sessions.recv()).await.unwrap();
    let client = HeldClient::new(conn.clone());
    const CALLS: u64 = 20;
    let mut calls = tokio::task::JoinSet::new();
    for x in 0..CALLS {
        let client = client.clone();
        calls.spawn(async move { (x, client.held(x).await) });
    }
    s.handlers_started(CALLS as usize).await;
    open.store(false, Ordering::SeqCst);
    assert_eq!(s.cut().await, 1);
    let mut failed = 0;
    while let Some(r) = bounded("a call's failure", calls.join_next()).await {
        let (x, got) = r.unwrap();
        let e = got.expect_err("no answer can come back");
        let text = e.to_string();
        assert!(text.contains("could not be resumed"), "call {x}: {text}");
        assert!(
            text.contains("after 3 connection attempts") && text.contains("network is down"),
            "call {x}: {text}"
        );
        failed += 1;
    }
    assert_eq!(failed, CALLS);
    let status = bounded(
        "the conduit's failure",
        monitor.wait_for(|s| matches!(s, StableStatus::Failed(_))),
    )
    .await;
    assert!(
        matches!(
            status,
            StableStatus::Failed(ResumeFailure::RetriesExhausted { attempts: 3, .. })
        ),
        "{status:?}"
    );
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1 + 3,
        "the first connect, then three retries"
    );
    // A call made afterwards fails the same way, at once.
    let e = bounded("a later call", client.held(99)).await.unwrap_err();
    assert!(e.to_string().contains("could not be resumed"), "{e}");
    // The server stops waiting after its resume_timeout and ends its side.
    let why = bounded("the server's session to end", server.closed()).await;
    assert!(why.to_string().contains("did not come back"), "{why}");
}
