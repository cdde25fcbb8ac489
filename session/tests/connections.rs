//! Several services per connection (routing), liveness by handles,
//! forwarding through a proxy, and byte tunnels — each body run over every
//! link (`memory::*`, `unix::*`, `tcp::*`, `shm::*`). Forwarding bodies build
//! client ↔ proxy ↔ server with both hops on the link under test.

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

mod common;
use common::*;

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

// ---------------------------------------------------------------- routing

async fn routing_serves_several_services_on_one_connection<F: Factory>(f: F) {
    let (a, b) = f.pair().await;
    let calc = Arc::new(Calc::default());
    let router = Router::builder()
        .route(CalculatorDispatcher::new(calc.clone()))
        .route(GreeterDispatcher::new(Greet))
        .build()
        .unwrap();
    let (server, client) = bounded("handshake", async {
        tokio::join!(
            SessionBuilder::new().serve(router.clone()).accept(b),
            SessionBuilder::new().initiate(a)
        )
    })
    .await;
    let (_server, client) = (server.unwrap(), client.unwrap());
    let (calc_client, greeter) = (
        CalculatorClient::new(client.clone()),
        GreeterClient::new(client.clone()),
    );
    let (sum, hello) = bounded("calls", async {
        tokio::join!(calc_client.add(40, 2), greeter.greet("router".into()))
    })
    .await;
    assert_eq!(sum.unwrap(), 42);
    assert_eq!(hello.unwrap(), "hello, router");
    // A method no route serves gets the protocol's answer, not a hang.
    let r: Result<u32, CallError<String>> = bounded(
        "unknown method",
        client.call(
            osmos_session::method_id("Nobody", "home"),
            &(),
            CallOptions::default(),
        ),
    )
    .await;
    assert_eq!(
        r.unwrap_err(),
        CallError::UnknownMethod {
            method: osmos_session::method_id("Nobody", "home"),
            name: None
        }
    );
    assert_eq!(router.methods().count(), 10);
    // The same router serves virtual connections too.
    let (c, d) = f.pair().await;
    let (server, client) = bounded("handshake", async {
        tokio::join!(
            SessionBuilder::new()
                .accept_connections(Arc::new(move |_: &Metadata| Ok(Some(
                    router.clone() as Arc<dyn Dispatcher>
                ))))
                .accept(d),
            SessionBuilder::new().initiate(c)
        )
    })
    .await;
    let (_server, client) = (server.unwrap(), client.unwrap());
    let v = bounded("open", client.open(vec![], None)).await.unwrap();
    assert_eq!(
        GreeterClient::new(v.clone()).greet("v".into()).await.unwrap(),
        "hello, v"
    );
    assert_eq!(CalculatorClient::new(v).add(1, 2).await.unwrap(), 3);
}

#[test]
fn routing_refuses_two_services_with_the_same_method_ids() {
    let calc = Arc::new(Calc::default());
    let err = Router::builder()
        .route(CalculatorDispatcher::new(calc.clone()))
        .route(GreeterDispatcher::new(Greet))
        .route(CalculatorDispatcher::new(calc))
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("Calculator.add and Calculator.add"),
        "{err}"
    );
}

// ---------------------------------------------------------------- liveness

async fn liveness_dropping_the_last_virtual_handle_closes_it<F: Factory>(f: F) {
    let p = direct(&f).await;
    let v = bounded("open", p.client.open(meta("service", "calc"), None))
        .await
        .unwrap();
    let served = bounded("acceptance", p.accepted.next()).await;
    let copy = v.clone();
    drop(v);
    assert_eq!(
        CalculatorClient::new(copy.clone()).add(1, 1).await.unwrap(),
        2,
        "a clone keeps the connection open"
    );
    let closing = tokio::spawn(async move { served.connection_closed().await });
    drop(copy);
    let why = bounded("the server to see the close", closing).await.unwrap();
    assert!(why.contains("last handle"), "{why}");
    assert_eq!(
        CalculatorClient::new(p.client.clone()).add(2, 2).await.unwrap(),
        4,
        "the root is unaffected"
    );
}

async fn liveness_the_root_closes_when_its_handles_and_connections_are_gone<F: Factory>(f: F) {
    let p = direct(&f).await;
    let v = bounded("open", p.client.open(meta("service", "calc"), None))
        .await
        .unwrap();
    drop(p.client);
    // The virtual connection keeps the session up...
    assert_eq!(CalculatorClient::new(v.clone()).add(3, 4).await.unwrap(), 7);
    assert!(p.server.ended().is_none());
    // ...until it goes too: the peer is told.
    drop(v);
    let why = bounded("the session to end", p.server.closed()).await;
    match why {
        SessionError::Goodbye { reason } => assert!(reason.contains("every handle"), "{reason}"),
        e => panic!("expected a goodbye, got {e:?}"),
    }
    drop(p.calc);
}

async fn liveness_both_sides_closing_at_once_is_not_a_violation<F: Factory>(f: F) {
    let p = direct(&f).await;
    for round in 0..50 {
        let v = bounded("open", p.client.open(meta("service", "calc"), None))
            .await
            .unwrap();
        let served = bounded("acceptance", p.accepted.next()).await;
        let calc = CalculatorClient::new(v.clone());
        let blocked = tokio::spawn({
            let calc = calc.clone();
            async move { calc.block(round).await }
        });
        wait_running(&p.calc, 1).await;
        // Each side closes (one by dropping its last handle) before it
        // hears of the other's close; the call in flight may cross them.
        drop((v, calc));
        served.close("the server closes too").await;
        assert!(bounded("the blocked call", blocked).await.unwrap().is_err());
        wait_running_at_most(&p.calc, 0).await;
        assert_eq!(
            CalculatorClient::new(p.client.clone())
                .add(round, 1)
                .await
                .unwrap(),
            round + 1,
            "round {round}: the session survives"
        );
        assert!(p.server.ended().is_none() && p.client.ended().is_none());
    }
}

/// Serves nothing; holds a connection handle.
struct Holding(#[allow(dead_code)] Connection);
impl Dispatcher for Holding {
    fn dispatch(&self, _: u64, _: &Metadata, _: &[u8]) -> Dispatch {
        Dispatch::UnknownMethod
    }
}

async fn liveness_a_handle_held_by_a_closing_connection_is_released<F: Factory>(f: F) {
    let p = direct(&f).await;
    // The last root handle lives in the dispatcher of a virtual connection:
    // closing that connection releases it, and so ends the session.
    let holder: Arc<dyn Dispatcher> = Arc::new(Holding(p.client.clone()));
    let v = bounded("open", p.client.open(meta("service", "calc"), Some(holder)))
        .await
        .unwrap();
    drop(p.client);
    assert_eq!(CalculatorClient::new(v.clone()).add(1, 1).await.unwrap(), 2);
    bounded("close", v.close("done")).await;
    let why = bounded("the session to end", p.server.closed()).await;
    assert!(why.to_string().contains("every handle"), "{why}");
}

async fn wait_running_at_most(calc: &Calc, n: usize) {
    bounded("handlers to stop", async {
        while calc.running.load(Ordering::SeqCst) > n {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

// ---------------------------------------------------------------- forward

async fn forward_calls_answers_and_errors<F: Factory>(f: F) {
    let p = proxied(&f, Settings::default(), Settings::default(), Settings::default()).await;
    for conn in [
        p.client.clone(),
        bounded("open", p.client.open(meta("target", "calc"), None))
            .await
            .unwrap(),
    ] {
        let calc = CalculatorClient::new(conn.clone());
        assert_eq!(bounded("add", calc.add(2, 3)).await.unwrap(), 5);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(bounded("echo", calc.echo(data.clone())).await.unwrap(), data);
        assert_eq!(
            bounded("overflow", calc.add(u32::MAX, 1)).await.unwrap_err(),
            CallError::User(format!("{} + 1 overflows", u32::MAX)),
            "user errors pass through untouched"
        );
        let nobody = osmos_session::method_id("Nobody", "home");
        let r: Result<u32, CallError<String>> =
            bounded("unknown", conn.call(nobody, &(), CallOptions::default())).await;
        assert_eq!(
            r.unwrap_err(),
            CallError::UnknownMethod {
                method: nobody,
                name: None
            }
        );
        let add = osmos_session::method_id("Calculator", "add");
        let r: Result<u32, CallError<String>> = bounded(
            "invalid",
            conn.call(add, &("nope".to_string(),), CallOptions::default()),
        )
        .await;
        assert!(matches!(r, Err(CallError::InvalidPayload { .. })), "{r:?}");
    }
    // The proxy's policy refuses what it does not allow, with its reason.
    let err = bounded("open", p.client.open(meta("target", "secrets"), None))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("does not let this client reach"),
        "{err}"
    );
}

async fn forward_streams_both_ways_with_credit<F: Factory>(f: F) {
    // Small windows on both ends: items only flow as credit comes back
    // through the proxy.
    let small = Settings {
        initial_credit: 64,
        ..Settings::default()
    };
    let p = proxied(&f, small.clone(), small.clone(), small).await;
    let v = bounded("open", p.client.open(meta("target", "calc"), None))
        .await
        .unwrap();
    for conn in [p.client.clone(), v] {
        let calc = CalculatorClient::new(conn.clone());
        // Server → client, on a channel passed in the call.
        let (tx, mut rx) = conn.channel::<u32>().unwrap();
        let counting = tokio::spawn({
            let calc = calc.clone();
            async move { calc.count(2000, tx).await }
        });
        let mut n = 0;
        while let Some(v) = bounded("items", rx.recv()).await {
            assert_eq!(v.unwrap(), n);
            n += 1;
        }
        assert_eq!(n, 2000);
        assert_eq!(bounded("count", counting).await.unwrap().unwrap(), 2000);
        // Client → server.
        let (tx, rx) = conn.channel::<u64>().unwrap();
        let summing = tokio::spawn({
            let calc = calc.clone();
            async move { calc.sum(rx).await }
        });
        for i in 1..=2000u64 {
            bounded("send", tx.send(&i)).await.unwrap();
        }
        tx.close().await.unwrap();
        assert_eq!(bounded("sum", summing).await.unwrap().unwrap(), 2001 * 1000);
        // A channel in the answer.
        let mut rx = bounded("numbers", calc.numbers(500)).await.unwrap();
        let mut n = 0;
        while let Some(v) = bounded("items", rx.recv()).await {
            assert_eq!(v.unwrap(), n);
            n += 1;
        }
        assert_eq!(n, 500);
    }
}

async fn forward_cancels_reach_the_target<F: Factory>(f: F) {
    let p = proxied(&f, Settings::default(), Settings::default(), Settings::default()).await;
    let (tx, rx) = oneshot::channel();
    p.calc.dropped.lock().unwrap().push(tx);
    let block = osmos_session::method_id("Calculator", "block");
    let r: Result<u32, CallError<String>> = bounded(
        "call",
        p.client
            .call(block, &(9u32,), CallOptions::timeout(Duration::from_millis(100))),
    )
    .await;
    assert!(matches!(r, Err(CallError::DeadlineExceeded { .. })), "{r:?}");
    assert_eq!(
        bounded("the server's handler to be dropped", rx).await.unwrap(),
        9
    );
    assert_eq!(
        CalculatorClient::new(p.client.clone()).add(1, 1).await.unwrap(),
        2
    );
}

async fn forward_closing_either_side_closes_the_other<F: Factory>(f: F) {
    let p = proxied(&f, Settings::default(), Settings::default(), Settings::default()).await;
    // The client closes: the server's side of the forwarded connection closes.
    let v = bounded("open", p.client.open(meta("target", "calc"), None))
        .await
        .unwrap();
    assert_eq!(CalculatorClient::new(v.clone()).add(1, 2).await.unwrap(), 3);
    let served = bounded("acceptance", p.accepted.next()).await;
    v.close("the client is done").await;
    let why = bounded("the server's side to close", served.connection_closed()).await;
    assert!(why.contains("the client is done"), "{why}");
    // The server closes: the client's connection closes, and its call in
    // flight fails with the reason.
    let v = bounded("open", p.client.open(meta("target", "calc"), None))
        .await
        .unwrap();
    let calc = CalculatorClient::new(v.clone());
    assert_eq!(calc.add(2, 2).await.unwrap(), 4);
    let served = bounded("acceptance", p.accepted.next()).await;
    let blocked = tokio::spawn({
        let calc = calc.clone();
        async move { calc.block(1).await }
    });
    wait_running(&p.calc, 1).await;
    served.close("the server is done").await;
    let err = bounded("the blocked call", blocked).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("the server is done"), "{err}");
    let why = bounded("the client's side to close", v.connection_closed()).await;
    assert!(why.contains("the server is done"), "{why}");
    // A refusal by the server closes the forwarded connection with its reason.
    let v = bounded("open", p.client.open(meta("target", "refuse"), None))
        .await
        .unwrap();
    let why = bounded("the refusal", v.connection_closed()).await;
    assert!(why.contains("refused by the server"), "{why}");
    assert_eq!(
        CalculatorClient::new(p.client.clone()).add(5, 5).await.unwrap(),
        10
    );
}

async fn forward_a_target_that_goes_away_fails_calls_with_its_reason<F: Factory>(f: F) {
    let p = proxied(&f, Settings::default(), Settings::default(), Settings::default()).await;
    let v = bounded("open", p.client.open(meta("target", "calc"), None))
        .await
        .unwrap();
    let calc = CalculatorClient::new(v.clone());
    let root = CalculatorClient::new(p.client.clone());
    let blocked = tokio::spawn({
        let calc = calc.clone();
        async move { calc.block(1).await }
    });
    let (tx, mut rx) = p.client.channel::<u32>().unwrap();
    let streaming = tokio::spawn({
        let root = root.clone();
        async move { root.count(u32::MAX, tx).await }
    });
    assert_eq!(bounded("first item", rx.recv()).await.unwrap().unwrap(), 0);
    wait_running(&p.calc, 1).await;
    p.server.goodbye("the server is going away for maintenance").await;
    let err = bounded("the blocked call", blocked).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("maintenance"), "{err}");
    let err = bounded("the streaming call", streaming)
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("maintenance"), "{err}");
    let mut stream_error = None;
    while let Some(item) = bounded("the stream to end", rx.recv()).await {
        if let Err(e) = item {
            stream_error = Some(e);
            break;
        }
    }
    let e = stream_error.expect("the stream ends with an error, not a clean end");
    assert!(e.to_string().contains("maintenance"), "{e}");
    assert!(p.proxy_back.ended().is_some());
}

// ---------------------------------------------------------------- tunnels

async fn tunnel_carries_bytes_both_ways_with_half_close(client: Connection) {
    let calc = CalculatorClient::new(client.clone());
    let (tunnel, end) = Tunnel::open(&client).unwrap();
    let piping = tokio::spawn({
        let calc = calc.clone();
        async move { calc.pipe(end).await }
    });
    let data: Vec<u8> = (0..(3u32 << 20) + 17).map(|i| (i % 253) as u8).collect();
    let (mut r, mut w) = tokio::io::split(tunnel);
    let writing = tokio::spawn({
        let data = data.clone();
        async move {
            w.write_all(&data).await.unwrap();
            // Half-close: the server sees the end, and still answers.
            w.shutdown().await.unwrap();
            w
        }
    });
    let mut back = Vec::new();
    bounded("the echo", r.read_to_end(&mut back)).await.unwrap();
    assert!(
        back == data,
        "the bytes come back in order ({} of {})",
        back.len(),
        data.len()
    );
    assert_eq!(bounded("pipe", piping).await.unwrap().unwrap(), data.len() as u64);
    drop(bounded("writer", writing).await.unwrap());
}

async fn tunnel_backpressure_stalls_only_the_unread_tunnel(client: Connection) {
    let calc = CalculatorClient::new(client.clone());
    let (mut held, end) = Tunnel::open(&client).unwrap();
    bounded("hold", calc.hold(end)).await.unwrap();
    let total = 8 * held.chunk_size().max(256 << 10);
    let data = vec![7u8; total];
    let stalled = tokio::spawn(async move {
        held.write_all(&data).await.unwrap();
        held.shutdown().await.unwrap();
        held
    });
    // Another tunnel flows meanwhile.
    tunnel_carries_bytes_both_ways_with_half_close(client.clone()).await;
    assert!(
        !stalled.is_finished(),
        "the writer of the unread tunnel waits for credit"
    );
    // Reading releases it.
    assert_eq!(bounded("drain", calc.drain()).await.unwrap(), total as u64);
    let mut held = bounded("the stalled writer", stalled).await.unwrap();
    let mut rest = Vec::new();
    bounded("the server's end", held.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty());
}

async fn tunnel_a_dropped_end_is_an_error_not_an_end(client: Connection) {
    let calc = CalculatorClient::new(client.clone());
    let (mut tunnel, end) = Tunnel::open(&client).unwrap();
    bounded("hold", calc.hold(end)).await.unwrap();
    tunnel.write_all(b"some bytes").await.unwrap();
    tunnel.flush().await.unwrap();
    // The holder drops its end (without shutting it down).
    drop(calc.connection().clone());
    let (mut other, end) = Tunnel::open(&client).unwrap();
    bounded("hold", calc.hold(end)).await.unwrap(); // replaces (drops) the first
    let mut buf = Vec::new();
    let err = bounded("read", tunnel.read_to_end(&mut buf)).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err}");
    assert!(err.to_string().contains("dropped"), "{err}");
    // Writing into a tunnel whose reader is gone fails too.
    let mut failed = None;
    for _ in 0..64 {
        if let Err(e) = tunnel.write_all(&[0; 4096]).await.and(tunnel.flush().await) {
            failed = Some(e);
            break;
        }
    }
    let e = failed.expect("writes fail once the reader is gone");
    assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    other.shutdown().await.unwrap();
    assert_eq!(bounded("drain", calc.drain()).await.unwrap(), 0);
}

async fn tunnel_direct<F: Factory>(f: F) {
    let p = direct(&f).await;
    tunnel_carries_bytes_both_ways_with_half_close(p.client.clone()).await;
    tunnel_backpressure_stalls_only_the_unread_tunnel(p.client.clone()).await;
    tunnel_a_dropped_end_is_an_error_not_an_end(p.client.clone()).await;
    drop(p.server);
}

async fn tunnel_forwarded<F: Factory>(f: F) {
    let p = proxied(&f, Settings::default(), Settings::default(), Settings::default()).await;
    let v = bounded("open", p.client.open(meta("target", "calc"), None))
        .await
        .unwrap();
    tunnel_carries_bytes_both_ways_with_half_close(v.clone()).await;
    tunnel_backpressure_stalls_only_the_unread_tunnel(v.clone()).await;
    tunnel_a_dropped_end_is_an_error_not_an_end(v).await;
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
                forward_cancels_reach_the_target,
                forward_closing_either_side_closes_the_other,
                forward_a_target_that_goes_away_fails_calls_with_its_reason,
                tunnel_direct,
                tunnel_forwarded,
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
