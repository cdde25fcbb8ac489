//! Several services per connection (routing), liveness by handles,
//! forwarding through a proxy, and byte tunnels — each body run over every
//! link (`memory::*`, `unix::*`, `tcp::*`, `shm::*`). Forwarding bodies build
//! client ↔ proxy ↔ server with both hops on the link under test.
//!
//! This file holds the services, the session set-ups and the per-link
//! instances; the bodies are in `routing.rs`, `forwarding.rs` and
//! `tunnels.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use osmos_session::wire::{self, MetaEntry, MetaValue, Metadata, Settings};
use osmos_session::{
    CallError, CallOptions, Connection, Dispatch, Dispatcher, Forward, Router, Rx, SessionBuilder,
    SessionConfig, SessionError, Tunnel, TunnelEnd, Tx,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, oneshot};

#[path = "../common/mod.rs"]
mod common;
mod forwarding;
mod routing;
mod tunnels;

use common::*;
use forwarding::*;
use routing::*;
use tunnels::*;

// ---------------------------------------------------------------- services

/// The test service.
#[osmos_macros::service]
pub trait Calculator {
    /// Adds, failing on overflow.
    async fn add(&self, a: u32, b: u32) -> Result<u32, String>;
    /// Echoes bytes.
    async fn echo(&self, data: Vec<u8>) -> Result<Vec<u8>, String>;
    /// Waits forever; reports its drop.
    async fn block(&self, tag: u32) -> Result<u32, String>;
    /// Sends `0..count` on `out`, then closes it.
    async fn count(&self, count: u32, out: Tx<u32>) -> Result<u32, String>;
    /// Sums everything received on `input`.
    async fn sum(&self, input: Rx<u64>) -> Result<u64, String>;
    /// Returns a new channel on which it sends `0..count`.
    async fn numbers(&self, count: u32) -> Result<Rx<u32>, String>;
    /// Joins the byte items received on `input`, in order.
    async fn concat(&self, input: Rx<Vec<u8>>) -> Result<Vec<u8>, String>;
    /// Counts the items received on `input`.
    async fn tally(&self, input: Rx<u32>) -> Result<u64, String>;
    /// Echoes a tunnel's bytes back until the caller shuts its side; returns the count.
    async fn pipe(&self, end: TunnelEnd) -> Result<u64, String>;
    /// Keeps a tunnel without reading it (until `drain`).
    async fn hold(&self, end: TunnelEnd) -> Result<(), String>;
    /// Reads the held tunnel to its end; returns the bytes read.
    async fn drain(&self) -> Result<u64, String>;
}

/// A second service.
#[osmos_macros::service]
pub trait Greeter {
    /// Greets.
    async fn greet(&self, name: String) -> Result<String, String>;
}

#[derive(Default)]
struct Calc {
    running: AtomicUsize,
    dropped: Mutex<Vec<oneshot::Sender<u32>>>,
    conn: std::sync::OnceLock<Connection>,
    held: tokio::sync::Mutex<Option<Tunnel>>,
}

struct DropReport<'a>(&'a Calc, u32);
impl Drop for DropReport<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
        if let Some(tx) = self.0.dropped.lock().unwrap().pop() {
            let _ = tx.send(self.1);
        }
    }
}

impl Calculator for Arc<Calc> {
    async fn add(&self, a: u32, b: u32) -> Result<u32, String> {
        a.checked_add(b).ok_or_else(|| format!("{a} + {b} overflows"))
    }
    async fn echo(&self, data: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(data)
    }
    async fn block(&self, tag: u32) -> Result<u32, String> {
        self.running.fetch_add(1, Ordering::SeqCst);
        let _report = DropReport(self, tag);
        std::future::pending().await
    }
    async fn count(&self, count: u32, out: Tx<u32>) -> Result<u32, String> {
        for i in 0..count {
            out.send(&i).await.map_err(|e| e.to_string())?;
        }
        out.close().await.map_err(|e| e.to_string())?;
        Ok(count)
    }
    async fn sum(&self, mut input: Rx<u64>) -> Result<u64, String> {
        let mut total = 0;
        while let Some(v) = input.recv().await {
            total += v.map_err(|e| e.to_string())?;
        }
        Ok(total)
    }
    async fn numbers(&self, count: u32) -> Result<Rx<u32>, String> {
        let conn = self.conn.get().expect("the server's connection").clone();
        let (tx, rx) = conn.channel::<u32>().map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            for i in 0..count {
                if tx.send(&i).await.is_err() {
                    return;
                }
            }
            let _ = tx.close().await;
        });
        Ok(rx)
    }
    async fn tally(&self, mut input: Rx<u32>) -> Result<u64, String> {
        let mut n = 0;
        while let Some(v) = input.recv().await {
            v.map_err(|e| e.to_string())?;
            n += 1;
        }
        Ok(n)
    }
    async fn concat(&self, mut input: Rx<Vec<u8>>) -> Result<Vec<u8>, String> {
        let mut all = Vec::new();
        while let Some(item) = input.recv().await {
            all.extend_from_slice(&item.map_err(|e| e.to_string())?);
        }
        Ok(all)
    }
    async fn pipe(&self, end: TunnelEnd) -> Result<u64, String> {
        let (mut r, mut w) = tokio::io::split(Tunnel::from_end(end));
        let n = tokio::io::copy(&mut r, &mut w).await.map_err(|e| e.to_string())?;
        w.shutdown().await.map_err(|e| e.to_string())?;
        Ok(n)
    }
    async fn hold(&self, end: TunnelEnd) -> Result<(), String> {
        *self.held.lock().await = Some(Tunnel::from_end(end));
        Ok(())
    }
    async fn drain(&self) -> Result<u64, String> {
        let mut t = self.held.lock().await.take().ok_or("nothing held")?;
        let mut sink = Vec::new();
        t.read_to_end(&mut sink).await.map_err(|e| e.to_string())?;
        t.shutdown().await.map_err(|e| e.to_string())?;
        Ok(sink.len() as u64)
    }
}

struct Greet;
impl Greeter for Greet {
    async fn greet(&self, name: String) -> Result<String, String> {
        Ok(format!("hello, {name}"))
    }
}

/// Serves the calculator, and hands each connection it is accepted for to
/// the test (to watch it close).
struct Tracked {
    inner: Arc<dyn Dispatcher>,
    accepted: Arc<Accepted>,
}

#[derive(Default)]
struct Accepted {
    conns: Mutex<Vec<Connection>>,
    arrived: Notify,
}

impl Accepted {
    async fn next(&self) -> Connection {
        loop {
            let arrived = self.arrived.notified();
            if let Some(c) = self.conns.lock().unwrap().pop() {
                return c;
            }
            arrived.await;
        }
    }
}

impl Dispatcher for Tracked {
    fn dispatch(&self, method: u64, metadata: &Metadata, args: &[u8]) -> Dispatch {
        self.inner.dispatch(method, metadata, args)
    }
    fn connection_accepted(&self, conn: &Connection) {
        self.accepted.conns.lock().unwrap().push(conn.clone());
        self.accepted.arrived.notify_one();
    }
}

fn meta(key: &str, value: &str) -> Metadata {
    vec![MetaEntry {
        key: key.into(),
        value: MetaValue::Str(value.into()),
    }]
}

fn config(settings: Settings) -> SessionConfig {
    SessionConfig {
        settings,
        ..SessionConfig::default()
    }
}

/// The server side: serves the calculator on the root and on every virtual
/// connection it accepts (tracked), except those asking for `refuse`.
fn server_builder(calc: &Arc<Calc>, accepted: &Arc<Accepted>, settings: Settings) -> SessionBuilder {
    let calc = calc.clone();
    let accepted = accepted.clone();
    SessionBuilder::new()
        .config(config(settings))
        .serve(CalculatorDispatcher::new(calc.clone()))
        .accept_connections(Arc::new(move |m: &Metadata| {
            if m.iter().any(|e| e.key == "refuse") {
                return Err("refused by the server".to_string());
            }
            Ok(Some(Arc::new(Tracked {
                inner: CalculatorDispatcher::new(calc.clone()),
                accepted: accepted.clone(),
            }) as Arc<dyn Dispatcher>))
        }))
}

struct Direct {
    client: Connection,
    server: Connection,
    calc: Arc<Calc>,
    accepted: Arc<Accepted>,
}

async fn direct<F: Factory>(f: &F) -> Direct {
    let (a, b) = f.pair().await;
    let calc = Arc::new(Calc::default());
    let accepted = Arc::new(Accepted::default());
    let server = server_builder(&calc, &accepted, Settings::default());
    let (server, client) = bounded("handshake", async {
        tokio::join!(server.accept(b), SessionBuilder::new().initiate(a))
    })
    .await;
    let server = server.unwrap();
    calc.conn.set(server.clone()).unwrap();
    Direct {
        client: client.unwrap(),
        server,
        calc,
        accepted,
    }
}

/// client ↔ proxy ↔ server.
struct Proxied {
    _front: Connection,
    client: Connection,
    server: Connection,
    proxy_back: Connection,
    calc: Arc<Calc>,
    accepted: Arc<Accepted>,
}

/// `proxy`: the settings of both of the proxy's sessions.
async fn proxied<F: Factory>(f: &F, client: Settings, proxy: Settings, server: Settings) -> Proxied {
    let (c_link, front_link) = f.pair().await;
    let (back_link, s_link) = f.pair().await;
    let calc = Arc::new(Calc::default());
    let accepted = Arc::new(Accepted::default());
    let server = server_builder(&calc, &accepted, server);
    let (server, proxy_back) = bounded("server handshake", async {
        tokio::join!(
            server.accept(s_link),
            SessionBuilder::new()
                .config(config(proxy.clone()))
                .initiate(back_link)
        )
    })
    .await;
    let (server, proxy_back) = (server.unwrap(), proxy_back.unwrap());
    calc.conn.set(server.clone()).unwrap();
    // The proxy's policy: a virtual connection may reach the server's
    // calculator (through a connection opened for it), nothing else.
    let front = SessionBuilder::new()
        .config(config(proxy))
        .serve(Forward::to(proxy_back.clone()))
        .accept_connections(Arc::new({
            let back = proxy_back.clone();
            move |m: &Metadata| {
                let target = m.iter().find(|e| e.key == "target").map(|e| &e.value);
                match target {
                    Some(MetaValue::Str(t)) if t == "calc" || t == "refuse" => {
                        let onward = if t == "refuse" {
                            meta("refuse", "")
                        } else {
                            meta("service", "calc")
                        };
                        Ok(Some(Forward::open_on(back.clone(), onward) as Arc<dyn Dispatcher>))
                    }
                    other => Err(format!("the proxy does not let this client reach {other:?}")),
                }
            }
        }));
    let (front, client) = bounded("proxy handshake", async {
        tokio::join!(
            front.accept(front_link),
            SessionBuilder::new().config(config(client)).initiate(c_link)
        )
    })
    .await;
    // The forwarder keeps the back session up; the front one lives while
    // its handle does.
    Proxied {
        _front: front.unwrap(),
        client: client.unwrap(),
        server,
        proxy_back,
        calc,
        accepted,
    }
}

async fn wait_running(calc: &Calc, n: usize) {
    bounded("handlers to run", async {
        while calc.running.load(Ordering::SeqCst) < n {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// A receiver takes the items queued behind the one it waited for in one
/// go: they arrive in order, and a receiver still holding some refuses to
/// be handed on (they would be lost) with an error that says so.
async fn channel_a_receiver_holding_items_read_ahead_is_not_handed_on<F: Factory>(f: F) {
    let d = direct(&f).await;
    let calc = CalculatorClient::new(d.client.clone());
    let (tx, mut rx) = d.client.channel::<u32>().unwrap();
    assert_eq!(bounded("count", calc.count(10, tx)).await.unwrap(), 10);
    // The answer came after the ten items: all of them wait here now.
    assert_eq!(bounded("an item", rx.recv()).await.unwrap().unwrap(), 0);
    let err = bounded("tally", calc.tally(rx)).await.unwrap_err().to_string();
    assert!(err.contains("9 received items not yet read"), "{err}");
    // Read to the end, they all come, in order.
    let (tx, mut rx) = d.client.channel::<u32>().unwrap();
    assert_eq!(bounded("count", calc.count(300, tx)).await.unwrap(), 300);
    let mut got = Vec::new();
    while let Some(item) = bounded("an item", rx.recv()).await {
        got.push(item.unwrap());
    }
    assert_eq!(got, (0..300).collect::<Vec<u32>>());
}

/// Streams whose call runs in a task of its own, round after round: the
/// items reach this task while the call's answer reaches the other, so
/// the receive side passes between the two and the driver all the time.
/// Every round ends within a few seconds, never waiting for a keepalive
/// tick to find frames nobody was woken for.
async fn channel_streams_with_the_call_spawned_lose_no_wake<F: Factory>(f: F) {
    let d = direct(&f).await;
    let calc = CalculatorClient::new(d.client.clone());
    for round in 0..1000 {
        let (tx, mut rx) = d.client.channel::<u32>().unwrap();
        let c = calc.clone();
        let call = tokio::spawn(async move { c.count(1000, tx).await });
        let items = async {
            let mut n = 0u32;
            while let Some(item) = rx.recv().await {
                assert_eq!(item.unwrap(), n, "round {round}");
                n += 1;
            }
            n
        };
        let n = tokio::time::timeout(Duration::from_secs(3), items)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the stream stalled"));
        assert_eq!(n, 1000, "round {round}");
        let answer = tokio::time::timeout(Duration::from_secs(3), call)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the call's answer stalled"));
        assert_eq!(answer.unwrap().unwrap(), 1000);
    }
}

macro_rules! suite {
    ($link:ident, $factory:expr) => {
        mod $link {
            use super::*;
            suite!(@tests $factory;
                routing_serves_several_services_on_one_connection,
                liveness_dropping_the_last_virtual_handle_closes_it,
                liveness_the_root_closes_when_its_handles_and_connections_are_gone,
                liveness_both_sides_closing_at_once_is_not_a_violation,
                liveness_a_handle_held_by_a_closing_connection_is_released,
                forward_calls_answers_and_errors,
                forward_streams_both_ways_with_credit,
                forward_resets_an_item_too_large_for_the_next_hop,
                forward_cancels_reach_the_target,
                forward_closing_either_side_closes_the_other,
                forward_a_target_that_goes_away_fails_calls_with_its_reason,
                tunnel_direct,
                tunnel_forwarded,
                channel_a_receiver_holding_items_read_ahead_is_not_handed_on,
                channel_streams_with_the_call_spawned_lose_no_wake,
            );
        }
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($factory).await;
            }
        )*
    };
}

suite!(memory, MemoryFactory);
suite!(unix, UnixFactory);
suite!(tcp, TcpFactory);
suite!(shm, ShmFactory);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_channels_over_shm_need_equal_initial_credit() {
    let small = Settings {
        initial_credit: 1024,
        ..Settings::default()
    };
    let p = proxied(&ShmFactory, small, Settings::default(), Settings::default()).await;
    let calc = CalculatorClient::new(p.client.clone());
    assert_eq!(
        calc.add(1, 2).await.unwrap(),
        3,
        "calls without channels are fine"
    );
    let (tx, _rx) = p.client.channel::<u32>().unwrap();
    let err = bounded("count", calc.count(3, tx)).await.unwrap_err();
    assert!(err.to_string().contains("same initial_credit"), "{err}");
    let _ = wire::PROTOCOL_VERSION;
}
