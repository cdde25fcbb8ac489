//! The session conformance suite: the same test bodies run over every link
//! (`memory::*`, `unix::*`, `tcp::*`, `shm::*`). Each body gets a fresh connected link
//! pair from the link's factory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use facet::Facet;
use osmos_session::link::stream::StreamLink;
use osmos_session::link::{Link, LinkRx, LinkTx, SendPermit, memory as mem};
use osmos_session::wire::{self, Message, Outcome, PROTOCOL_VERSION, Settings};
use osmos_session::{
    CallError, CallOptions, Connection, Rx, SessionBuilder, SessionConfig, SessionError, Tx,
};
use tokio::sync::{Notify, oneshot};

mod common;
use common::*;

// ---------------------------------------------------------------- services

#[derive(Facet, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
/// The calculator's error.
pub enum CalcError {
    /// The sum does not fit a u32.
    Overflow {
        /// Left operand.
        a: u32,
        /// Right operand.
        b: u32,
    },
}

/// The test service.
#[osmos_macros::service]
pub trait Calculator {
    /// Adds, failing on overflow.
    async fn add(&self, a: u32, b: u32) -> Result<u32, CalcError>;
    /// Echoes bytes.
    async fn echo(&self, data: Vec<u8>) -> Result<Vec<u8>, CalcError>;
    /// Waits until released (or forever); reports its drop.
    async fn block(&self, tag: u32) -> Result<u32, CalcError>;
    /// Sends `0..count` on `out`, then closes it.
    async fn count(&self, count: u32, out: Tx<u32>) -> Result<u32, CalcError>;
    /// Sums everything received on `input`.
    async fn sum(&self, input: Rx<u64>) -> Result<u64, CalcError>;
    /// Returns a new channel on which it sends `0..count`.
    async fn numbers(&self, count: u32) -> Result<Rx<u32>, CalcError>;
    /// Panics, at once or after waiting once.
    async fn explode(&self, after_waiting: bool) -> Result<u32, CalcError>;
}

/// A second service, served by the initiator.
#[osmos_macros::service]
pub trait Greeter {
    /// Greets.
    async fn greet(&self, name: String) -> Result<String, String>;
}

#[derive(Default)]
struct Calc {
    running: AtomicUsize,
    max_running: AtomicUsize,
    release: Notify,
    dropped: std::sync::Mutex<Vec<oneshot::Sender<u32>>>,
    conn: std::sync::OnceLock<Connection>,
}

/// Reports (through `Calc::dropped`) when a blocked handler is dropped.
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
    async fn add(&self, a: u32, b: u32) -> Result<u32, CalcError> {
        a.checked_add(b).ok_or(CalcError::Overflow { a, b })
    }
    async fn echo(&self, data: Vec<u8>) -> Result<Vec<u8>, CalcError> {
        Ok(data)
    }
    async fn block(&self, tag: u32) -> Result<u32, CalcError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        let _report = DropReport(self, tag);
        self.release.notified().await;
        Ok(tag)
    }
    async fn count(&self, count: u32, out: Tx<u32>) -> Result<u32, CalcError> {
        for i in 0..count {
            out.send(&i).await.unwrap();
        }
        out.close().await.unwrap();
        Ok(count)
    }
    async fn sum(&self, mut input: Rx<u64>) -> Result<u64, CalcError> {
        let mut total = 0;
        while let Some(v) = input.recv().await {
            total += v.unwrap();
        }
        Ok(total)
    }
    async fn numbers(&self, count: u32) -> Result<Rx<u32>, CalcError> {
        let conn = self.conn.get().expect("the server's connection").clone();
        let (tx, rx) = conn.channel::<u32>().unwrap();
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
    async fn explode(&self, after_waiting: bool) -> Result<u32, CalcError> {
        if after_waiting {
            tokio::task::yield_now().await;
        }
        panic!("the handler explodes (after waiting: {after_waiting})")
    }
}

struct Greet;
impl Greeter for Greet {
    async fn greet(&self, name: String) -> Result<String, String> {
        if name.is_empty() {
            Err("no name".into())
        } else {
            Ok(format!("hello, {name}"))
        }
    }
}

fn config(settings: Settings) -> SessionConfig {
    SessionConfig {
        settings,
        ..SessionConfig::default()
    }
}

/// A session pair: the initiator serves Greeter, the acceptor serves Calculator.
struct Pair {
    client: Connection,
    server: Connection,
    calc: Arc<Calc>,
}

async fn pair_with<F: Factory>(f: &F, client_settings: Settings, server_settings: Settings) -> Pair {
    let (a, b) = f.pair().await;
    let calc = Arc::new(Calc::default());
    let server = SessionBuilder::new()
        .config(config(server_settings))
        .serve(CalculatorDispatcher::new(calc.clone()))
        .accept_connections(Arc::new({
            let calc = calc.clone();
            move |meta: &wire::Metadata| {
                if meta.iter().any(|m| m.key == "refuse") {
                    Err("refused by policy".to_string())
                } else {
                    Ok(Some(
                        CalculatorDispatcher::new(calc.clone()) as Arc<dyn osmos_session::Dispatcher>
                    ))
                }
            }
        }));
    let client = SessionBuilder::new()
        .config(config(client_settings))
        .serve(GreeterDispatcher::new(Greet));
    let (server, client) = bounded("handshake", async {
        tokio::join!(server.accept(b), client.initiate(a))
    })
    .await;
    let (server, client) = (server.unwrap(), client.unwrap());
    calc.conn.set(server.clone()).unwrap();
    Pair { client, server, calc }
}

async fn pair<F: Factory>(f: &F) -> Pair {
    pair_with(f, Settings::default(), Settings::default()).await
}

/// Starts a `block` call and returns once its handler is running.
async fn start_blocked_call(
    p: &Pair,
    calc: &CalculatorClient,
) -> tokio::task::JoinHandle<Result<u32, CallError<CalcError>>> {
    let blocked = tokio::spawn({
        let calc = calc.clone();
        async move { calc.block(1).await }
    });
    bounded("handler", async {
        while p.calc.running.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    blocked
}

// ---------------------------------------------------------------- bodies

async fn calls_return_values<F: Factory>(f: F) {
    let p = pair(&f).await;
    let calc = CalculatorClient::new(p.client.clone());
    assert_eq!(bounded("add", calc.add(2, 3)).await.unwrap(), 5);
    let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    assert_eq!(bounded("echo", calc.echo(data.clone())).await.unwrap(), data);
    for i in 0..200 {
        assert_eq!(calc.add(i, i).await.unwrap(), 2 * i);
    }
}

async fn a_panicking_handler_fails_only_its_call<F: Factory>(f: F) {
    let p = pair(&f).await;
    let calc = CalculatorClient::new(p.client.clone());
    for after_waiting in [false, true] {
        match bounded("explode", calc.explode(after_waiting)).await {
            Err(CallError::Internal { detail }) => assert!(detail.contains("panicked"), "{detail}"),
            other => panic!("expected an internal error, got {other:?}"),
        }
        assert_eq!(calc.add(1, 2).await.unwrap(), 3, "the session keeps serving");
    }
    assert!(p.client.ended().is_none());
}

async fn user_errors_are_distinct_from_protocol_errors<F: Factory>(f: F) {
    let p = pair(&f).await;
    let calc = CalculatorClient::new(p.client.clone());
    let err = bounded("add", calc.add(u32::MAX, 1)).await.unwrap_err();
    assert_eq!(err, CallError::User(CalcError::Overflow { a: u32::MAX, b: 1 }));
    // The session is still fine.
    assert_eq!(calc.add(1, 1).await.unwrap(), 2);
}

async fn unknown_methods_and_invalid_payloads<F: Factory>(f: F) {
    let p = pair(&f).await;
    let r: Result<u32, CallError<String>> =
        bounded("call", p.client.call(0x1234, &(1u32,), CallOptions::default())).await;
    assert_eq!(
        r.unwrap_err(),
        CallError::UnknownMethod {
            method: 0x1234,
            name: None
        }
    );
    let add = osmos_session::method_id("Calculator", "add");
    let r: Result<u32, CallError<String>> = bounded(
        "call",
        p.client
            .call(add, &(String::from("not numbers"),), CallOptions::default()),
    )
    .await;
    assert!(matches!(r.unwrap_err(), CallError::InvalidPayload { .. }));
    assert_eq!(
        CalculatorClient::new(p.client.clone()).add(1, 2).await.unwrap(),
        3
    );
}

async fn both_peers_serve_and_call<F: Factory>(f: F) {
    let p = pair(&f).await;
    let greeter = GreeterClient::new(p.server.clone());
    let calc = CalculatorClient::new(p.client.clone());
    let (g, c) = bounded("calls", async {
        tokio::join!(greeter.greet("cell".into()), calc.add(40, 2))
    })
    .await;
    assert_eq!((g.unwrap(), c.unwrap()), ("hello, cell".to_string(), 42));
    assert_eq!(
        greeter.greet(String::new()).await.unwrap_err(),
        CallError::User("no name".to_string())
    );
}

async fn dropping_a_call_cancels_the_handler<F: Factory>(f: F) {
    let p = pair(&f).await;
    let (tx, rx) = oneshot::channel();
    p.calc.dropped.lock().unwrap().push(tx);
    let calc = CalculatorClient::new(p.client.clone());
    {
        let call = calc.block(7);
        tokio::pin!(call);
        // Let the call reach the handler, then drop it.
        while p.calc.running.load(Ordering::SeqCst) == 0 {
            tokio::select! {
                _ = &mut call => panic!("the blocked call returned"),
                _ = tokio::task::yield_now() => {}
            }
        }
    }
    assert_eq!(bounded("the handler to be aborted", rx).await.unwrap(), 7);
    assert_eq!(calc.add(1, 1).await.unwrap(), 2, "the session survives a cancel");
}

async fn deadlines_fail_and_cancel<F: Factory>(f: F) {
    let p = pair(&f).await;
    let (tx, rx) = oneshot::channel();
    p.calc.dropped.lock().unwrap().push(tx);
    let block = osmos_session::method_id("Calculator", "block");
    let r: Result<u32, CallError<CalcError>> = bounded(
        "call",
        p.client
            .call(block, &(9u32,), CallOptions::timeout(Duration::from_millis(50))),
    )
    .await;
    assert_eq!(
        r.unwrap_err(),
        CallError::DeadlineExceeded {
            after: Duration::from_millis(50)
        }
    );
    assert_eq!(bounded("the handler to be aborted", rx).await.unwrap(), 9);
}

async fn excess_calls_wait_for_the_limit<F: Factory>(f: F) {
    let server = Settings {
        max_concurrent_requests: 2,
        ..Settings::default()
    };
    let p = pair_with(&f, Settings::default(), server).await;
    let calc = CalculatorClient::new(p.client.clone());
    let calls: Vec<_> = (0..6)
        .map(|i| {
            tokio::spawn({
                let calc = calc.clone();
                async move { calc.block(i).await }
            })
        })
        .collect();
    // The limit is reached (two handlers run) and nothing fails...
    bounded("two running handlers", async {
        while p.calc.running.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        calls.iter().all(|c| !c.is_finished()),
        "excess calls wait; none fails"
    );
    // ...then release handlers one at a time until all six calls are done.
    bounded("all calls", async {
        while !calls.iter().all(|c| c.is_finished()) {
            if p.calc.running.load(Ordering::SeqCst) > 0 {
                assert!(
                    p.calc.max_running.load(Ordering::SeqCst) <= 2,
                    "at most 2 calls run at once"
                );
                p.calc.release.notify_one();
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let mut tags = Vec::new();
    for c in calls {
        tags.push(bounded("call", c).await.unwrap().unwrap());
    }
    tags.sort();
    assert_eq!(tags, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(p.calc.max_running.load(Ordering::SeqCst), 2);
}

async fn streams_from_callee_to_caller<F: Factory>(f: F) {
    let p = pair(&f).await;
    let calc = CalculatorClient::new(p.client.clone());
    let (tx, mut rx) = p.client.channel::<u32>().unwrap();
    let call = tokio::spawn(async move { calc.count(1000, tx).await });
    let mut got = Vec::new();
    while let Some(v) = bounded("items", rx.recv()).await {
        got.push(v.unwrap());
    }
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
    assert_eq!(bounded("call", call).await.unwrap().unwrap(), 1000);
}

async fn streams_from_caller_to_callee<F: Factory>(f: F) {
    let p = pair(&f).await;
    let calc = CalculatorClient::new(p.client.clone());
    let (tx, rx) = p.client.channel::<u64>().unwrap();
    let call = tokio::spawn(async move { calc.sum(rx).await });
    for i in 1..=1000u64 {
        bounded("send", tx.send(&i)).await.unwrap();
    }
    tx.close().await.unwrap();
    assert_eq!(bounded("sum", call).await.unwrap().unwrap(), 500_500);
}

async fn channels_can_be_returned<F: Factory>(f: F) {
    let p = pair(&f).await;
    let calc = CalculatorClient::new(p.client.clone());
    let mut rx = bounded("numbers", calc.numbers(500)).await.unwrap();
    let mut n = 0;
    while let Some(v) = bounded("items", rx.recv()).await {
        assert_eq!(v.unwrap(), n);
        n += 1;
    }
    assert_eq!(n, 500);
}

async fn credit_exhaustion_stalls_and_resumes<F: Factory>(f: F) {
    // The client receives with a window of 64 bytes: 1-byte items (u32 < 128
    // encodes in one byte), so the server stalls after 64 unread items.
    let client = Settings {
        initial_credit: 64,
        ..Settings::default()
    };
    let p = pair_with(&f, client, Settings::default()).await;
    let calc = CalculatorClient::new(p.client.clone());
    let (tx, mut rx) = p.client.channel::<u32>().unwrap();
    let call = tokio::spawn(async move { calc.count(100, tx).await });
    // Items up to the window arrive; the rest wait for credit.
    for i in 0..64 {
        assert_eq!(bounded("items", rx.recv()).await.unwrap().unwrap(), i % 128);
    }
    let mut n = 64;
    while let Some(v) = bounded("items", rx.recv()).await {
        assert_eq!(v.unwrap(), n);
        n += 1;
    }
    assert_eq!(n, 100);
    assert_eq!(bounded("call", call).await.unwrap().unwrap(), 100);
}

async fn a_slow_receiver_stalls_only_its_channel<F: Factory>(f: F) {
    let client = Settings {
        initial_credit: 32,
        ..Settings::default()
    };
    let p = pair_with(&f, client, Settings::default()).await;
    let calc = CalculatorClient::new(p.client.clone());
    let (slow_tx, _slow_rx) = p.client.channel::<u32>().unwrap();
    let (fast_tx, mut fast_rx) = p.client.channel::<u32>().unwrap();
    let stalled = tokio::spawn({
        let calc = calc.clone();
        async move { calc.count(1000, slow_tx).await }
    });
    let flowing = tokio::spawn({
        let calc = calc.clone();
        async move { calc.count(1000, fast_tx).await }
    });
    let mut n = 0;
    while let Some(v) = bounded("fast items", fast_rx.recv()).await {
        assert_eq!(v.unwrap(), n);
        n += 1;
    }
    assert_eq!(n, 1000);
    assert_eq!(bounded("fast call", flowing).await.unwrap().unwrap(), 1000);
    assert!(
        !stalled.is_finished(),
        "the unread channel's sender waits for credit"
    );
    assert_eq!(calc.add(1, 2).await.unwrap(), 3, "calls still flow");
}

async fn channels_are_reused_beyond_the_table_size<F: Factory>(f: F) {
    // 300 channels one after another: more than the 128 table entries each
    // side has on the shm link, so entries are reused once both sides closed.
    let p = pair(&f).await;
    let calc = CalculatorClient::new(p.client.clone());
    for round in 0..300u32 {
        let (tx, mut rx) = p.client.channel::<u32>().unwrap();
        let call = tokio::spawn({
            let calc = calc.clone();
            async move { calc.count(3, tx).await }
        });
        for i in 0..3 {
            assert_eq!(
                bounded("item", rx.recv()).await.unwrap().unwrap(),
                i,
                "round {round}"
            );
        }
        assert!(bounded("end", rx.recv()).await.is_none());
        bounded("call", call).await.unwrap().unwrap();
        drop(rx);
    }
}

async fn virtual_connections_open_reject_and_close<F: Factory>(f: F) {
    let p = pair(&f).await;
    let meta = vec![wire::MetaEntry {
        key: "service".into(),
        value: wire::MetaValue::Str("calc".into()),
    }];
    let vconn = bounded("open", p.client.open(meta, None)).await.unwrap();
    assert_ne!(vconn.id(), 0);
    let calc = CalculatorClient::new(vconn.clone());
    assert_eq!(calc.add(20, 22).await.unwrap(), 42);
    let refuse = vec![wire::MetaEntry {
        key: "refuse".into(),
        value: wire::MetaValue::U64(1),
    }];
    let err = bounded("open", p.client.open(refuse, None)).await.unwrap_err();
    assert_eq!(err, CallError::User("refused by policy".to_string()));
    // A call in flight on a closed connection fails; the root is unaffected.
    let blocked = start_blocked_call(&p, &calc).await;
    vconn.close("done").await;
    let err = bounded("blocked call", blocked).await.unwrap().unwrap_err();
    assert!(matches!(err, CallError::ConnectionClosed { .. }), "{err:?}");
    assert!(matches!(
        calc.add(1, 1).await.unwrap_err(),
        CallError::ConnectionClosed { .. }
    ));
    assert_eq!(
        CalculatorClient::new(p.client.clone()).add(1, 1).await.unwrap(),
        2
    );
}

async fn goodbye_fails_pending_calls_with_the_reason<F: Factory>(f: F) {
    let p = pair(&f).await;
    let calc = CalculatorClient::new(p.client.clone());
    let blocked = start_blocked_call(&p, &calc).await;
    p.server.goodbye("maintenance").await;
    let err = bounded("blocked call", blocked).await.unwrap().unwrap_err();
    assert_eq!(
        err,
        CallError::Session(SessionError::Goodbye {
            reason: "maintenance".into()
        })
    );
    assert_eq!(
        bounded("closed", p.client.closed()).await,
        SessionError::Goodbye {
            reason: "maintenance".into()
        }
    );
    assert!(matches!(calc.add(1, 1).await.unwrap_err(), CallError::Session(_)));
}

// ------------------------------------------------ raw peers (lying, silent)

/// Drives one end of a link by hand.
struct Raw<L: Link> {
    tx: L::Tx,
    rx: L::Rx,
}

impl<L: Link> Raw<L> {
    fn new(link: L) -> Self {
        let (tx, rx) = link.split();
        Raw { tx, rx }
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        let mut p = self.tx.reserve(bytes.len()).await.unwrap();
        p.buf().copy_from_slice(bytes);
        p.commit().await.unwrap();
    }

    async fn send(&mut self, m: &Message<'_>) {
        self.send_bytes(&wire::encode(m).unwrap()).await;
    }

    /// The next message's kind and encoded bytes (None at end of link).
    async fn recv(&mut self) -> Option<Vec<u8>> {
        match bounded("raw recv", self.rx.recv()).await {
            Ok(Some(f)) => Some(f.to_vec()),
            _ => None,
        }
    }

    /// Reads until a message matching `pred` arrives.
    async fn recv_until(&mut self, pred: impl Fn(&Message<'_>) -> bool) -> Option<Vec<u8>> {
        while let Some(bytes) = self.recv().await {
            if pred(&wire::decode(&bytes).unwrap()) {
                return Some(bytes);
            }
        }
        None
    }
}

/// A real session (acceptor, serving Calculator) against a raw initiator
/// that has done the handshake.
async fn raw_against_server<F: Factory>(
    f: &F,
    server_settings: Settings,
    keepalive: Option<Duration>,
) -> (Raw<F::L>, Connection, Arc<Calc>) {
    let (a, b) = f.pair().await;
    let calc = Arc::new(Calc::default());
    let mut cfg = config(server_settings);
    if let Some(k) = keepalive {
        cfg.keepalive_interval = k;
        cfg.keepalive_timeout = k * 3;
    }
    let server = tokio::spawn(
        SessionBuilder::new()
            .config(cfg)
            .serve(CalculatorDispatcher::new(calc.clone()))
            .accept(b),
    );
    let mut raw = Raw::new(a);
    raw.send(&Message::Hello {
        version: PROTOCOL_VERSION,
        settings: Settings::default(),
    })
    .await;
    let hello = raw.recv().await.unwrap();
    assert!(matches!(
        wire::decode(&hello).unwrap(),
        Message::HelloYourself {
            version: PROTOCOL_VERSION,
            ..
        }
    ));
    let server = bounded("server", server).await.unwrap().unwrap();
    (raw, server, calc)
}

async fn expect_violation<L: Link>(raw: &mut Raw<L>, server: &Connection, rule: &str) {
    let bytes = raw
        .recv_until(|m| matches!(m, Message::ProtocolError { .. }))
        .await
        .expect("a ProtocolError");
    let Message::ProtocolError { rule: got, detail } = wire::decode(&bytes).unwrap() else {
        unreachable!()
    };
    assert_eq!(got, rule, "{detail}");
    match bounded("session end", server.closed()).await {
        SessionError::Violation { rule: r, .. } => assert_eq!(r, rule),
        e => panic!("expected a violation of {rule}, got {e}"),
    }
    assert!(
        raw.recv_until(|_| false).await.is_none(),
        "the server closes the link after a violation"
    );
}

async fn version_mismatch_names_both_versions<F: Factory>(f: F) {
    let (a, b) = f.pair().await;
    let server = tokio::spawn(SessionBuilder::new().accept(b));
    let mut raw = Raw::new(a);
    raw.send(&Message::Hello {
        version: PROTOCOL_VERSION + 41,
        settings: Settings::default(),
    })
    .await;
    let err = bounded("server", server).await.unwrap().unwrap_err();
    assert_eq!(
        err,
        SessionError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: PROTOCOL_VERSION + 41
        }
    );
    assert!(
        err.to_string()
            .contains(&format!("speaks {}", PROTOCOL_VERSION + 41))
    );
    let bye = raw.recv().await.expect("a goodbye");
    let Message::Goodbye { reason } = wire::decode(&bye).unwrap() else {
        panic!("expected a goodbye")
    };
    assert!(reason.contains("version mismatch"), "{reason}");
}

async fn undecodable_frames_end_the_session<F: Factory>(f: F) {
    let (mut raw, server, _) = raw_against_server(&f, Settings::default(), None).await;
    raw.send_bytes(&[0xff, 0xff, 0xff]).await;
    expect_violation(&mut raw, &server, "frame.decodable").await;
}

async fn lying_frames_are_violations<F: Factory>(f: F) {
    let add = osmos_session::method_id("Calculator", "add");
    let args = wire::encode(&(1u32, 2u32)).unwrap();
    let block = osmos_session::method_id("Calculator", "block");
    let block_args = wire::encode(&(5u32,)).unwrap();
    type Case = (&'static str, Vec<Vec<u8>>);
    let enc = |m: Message<'_>| wire::encode(&m).unwrap();
    let cases: Vec<Case> = vec![
        (
            "conn.known",
            vec![enc(Message::Call {
                conn: 77,
                request: 1,
                method: add,
                deadline_us: 0,
                metadata: vec![],
                channels: vec![],
                args: &args,
            })],
        ),
        (
            "id.parity",
            vec![enc(Message::Call {
                conn: 0,
                request: 2,
                method: add,
                deadline_us: 0,
                metadata: vec![],
                channels: vec![],
                args: &args,
            })],
        ),
        (
            "request.unique",
            vec![
                enc(Message::Call {
                    conn: 0,
                    request: 1,
                    method: block,
                    deadline_us: 0,
                    metadata: vec![],
                    channels: vec![],
                    args: &block_args,
                }),
                enc(Message::Call {
                    conn: 0,
                    request: 1,
                    method: block,
                    deadline_us: 0,
                    metadata: vec![],
                    channels: vec![],
                    args: &block_args,
                }),
            ],
        ),
        (
            "response.known-request",
            vec![enc(Message::Response {
                conn: 0,
                request: 9,
                metadata: vec![],
                channels: vec![],
                outcome: Outcome::Cancelled,
            })],
        ),
        (
            "channel.known",
            vec![enc(Message::Item {
                channel: 5,
                payload: &[1],
            })],
        ),
        (
            "handshake.once",
            vec![enc(Message::Hello {
                version: PROTOCOL_VERSION,
                settings: Settings::default(),
            })],
        ),
        (
            "conn.known",
            vec![enc(Message::ConnectionAccept {
                conn: 3,
                metadata: vec![],
            })],
        ),
    ];
    for (rule, frames) in cases {
        let (mut raw, server, _) = raw_against_server(&f, Settings::default(), None).await;
        for frame in &frames {
            raw.send_bytes(frame).await;
        }
        expect_violation(&mut raw, &server, rule).await;
    }
}

async fn too_many_concurrent_requests_is_a_violation<F: Factory>(f: F) {
    let server_settings = Settings {
        max_concurrent_requests: 2,
        ..Settings::default()
    };
    let (mut raw, server, _) = raw_against_server(&f, server_settings, None).await;
    let block = osmos_session::method_id("Calculator", "block");
    let args = wire::encode(&(5u32,)).unwrap();
    for request in [1u64, 3, 5] {
        raw.send(&Message::Call {
            conn: 0,
            request,
            method: block,
            deadline_us: 0,
            metadata: vec![],
            channels: vec![],
            args: &args,
        })
        .await;
    }
    expect_violation(&mut raw, &server, "request.limit").await;
}

async fn credit_overrun_and_data_after_close_are_violations<F: Factory>(f: F) {
    // The raw peer calls `sum` passing its own Rx... it must create the
    // channel with its parity (odd) and list it in the call.
    let server_settings = Settings {
        initial_credit: 16,
        ..Settings::default()
    };
    let sum = osmos_session::method_id("Calculator", "sum");
    let args = wire::encode(&(0u64,)).unwrap(); // an Rx<u64> is its position in `channels`
    let call = |request| Message::Call {
        conn: 0,
        request,
        method: sum,
        deadline_us: 0,
        metadata: vec![],
        channels: vec![1],
        args: &args,
    };
    let (mut raw, server, _) = raw_against_server(&f, server_settings.clone(), None).await;
    raw.send(&call(1)).await;
    raw.send(&Message::Item {
        channel: 1,
        payload: &[0; 17],
    })
    .await;
    expect_violation(&mut raw, &server, "credit.no-overrun").await;

    let (mut raw, server, _) = raw_against_server(&f, server_settings, None).await;
    raw.send(&call(1)).await;
    raw.send(&Message::Item {
        channel: 1,
        payload: &[7],
    })
    .await;
    raw.send(&Message::Close { channel: 1 }).await;
    raw.send(&Message::Item {
        channel: 1,
        payload: &[7],
    })
    .await;
    // The handler may finish (and retire the channel) before the late item
    // arrives; either the rule or a normal response is fine only if the item
    // came after the channel was gone. Here it arrives in order behind Close.
    let bytes = raw
        .recv_until(|m| matches!(m, Message::ProtocolError { .. } | Message::Response { .. }))
        .await
        .unwrap();
    match wire::decode(&bytes).unwrap() {
        Message::ProtocolError { rule, .. } => assert_eq!(rule, "channel.no-data-after-close"),
        Message::Response { outcome, .. } => {
            // The handler consumed 7 and returned; the channel was retired.
            assert_eq!(outcome, Outcome::Ok(&wire::encode(&7u64).unwrap()));
            assert!(server.ended().is_none());
        }
        _ => unreachable!(),
    }
}

async fn a_peer_that_never_reads_its_answers_is_cut_off<F: Factory>(f: F) {
    let (mut raw, server, _) = raw_against_server(&f, Settings::default(), None).await;
    // Ping forever without reading a single pong (a socket buffers
    // megabytes of pongs before the server's queue starts to grow).
    let flood = tokio::spawn(async move {
        for nonce in 0..u64::MAX {
            let bytes = wire::encode(&Message::Ping { nonce }).unwrap();
            let mut p = match raw.tx.reserve(bytes.len()).await {
                Ok(p) => p,
                Err(_) => return nonce,
            };
            p.buf().copy_from_slice(&bytes);
            if p.commit().await.is_err() {
                return nonce;
            }
        }
        u64::MAX
    });
    match bounded("the cut-off", server.closed()).await {
        SessionError::Violation { rule, .. } => assert_eq!(rule, "peer.reads-its-answers"),
        e => panic!("expected peer.reads-its-answers, got {e}"),
    }
    if F::RELEASES_A_BLOCKED_PEER {
        let sent = bounded("the flood to stop", flood).await.unwrap();
        assert!(sent > 65_536 && sent < u64::MAX, "cut off after {sent} pings");
    } else {
        flood.abort();
    }
}

async fn a_silent_peer_times_out<F: Factory>(f: F) {
    let (mut raw, server, _) =
        raw_against_server(&f, Settings::default(), Some(Duration::from_millis(100))).await;
    // Read (so the server's writes never block) but never answer a ping.
    let reader = tokio::spawn(async move { while raw.recv().await.is_some() {} });
    match bounded("keepalive", server.closed()).await {
        SessionError::KeepaliveTimeout { silent_for } => assert!(silent_for >= Duration::from_millis(300)),
        e => panic!("expected a keepalive timeout, got {e}"),
    }
    bounded("reader", reader).await.unwrap();
}

async fn keepalive_keeps_an_idle_session_up<F: Factory>(f: F) {
    let (a, b) = f.pair().await;
    let cfg = SessionConfig {
        // A timeout generous enough that a loaded 2-CPU machine, which can
        // leave a thread unscheduled for tens of milliseconds, does not trip it.
        keepalive_interval: Duration::from_millis(50),
        keepalive_timeout: Duration::from_millis(400),
        ..SessionConfig::default()
    };
    let calc = Arc::new(Calc::default());
    let (server, client) = tokio::join!(
        SessionBuilder::new()
            .config(cfg.clone())
            .serve(CalculatorDispatcher::new(calc))
            .accept(b),
        SessionBuilder::new().config(cfg).initiate(a)
    );
    let (server, client) = (server.unwrap(), client.unwrap());
    // Idle for several timeouts, waiting on real time passing.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    assert!(
        server.ended().is_none() && client.ended().is_none(),
        "pings kept both sides alive"
    );
    assert_eq!(CalculatorClient::new(client).add(1, 2).await.unwrap(), 3);
}

async fn a_violation_fails_pending_calls_with_the_rule<F: Factory>(f: F) {
    let (a, b) = f.pair().await;
    let client = tokio::spawn(SessionBuilder::new().initiate(a));
    let mut raw = Raw::new(b);
    raw.recv().await.unwrap();
    raw.send(&Message::HelloYourself {
        version: PROTOCOL_VERSION,
        settings: Settings::default(),
    })
    .await;
    let client = bounded("client", client).await.unwrap().unwrap();
    let calc = CalculatorClient::new(client.clone());
    let calls: Vec<_> = (0..3u32)
        .map(|i| {
            let calc = calc.clone();
            tokio::spawn(async move { calc.add(i, i).await })
        })
        .collect();
    for _ in 0..3 {
        raw.recv_until(|m| matches!(m, Message::Call { .. }))
            .await
            .unwrap();
    }
    // Answer a request that was never made.
    raw.send(&Message::Response {
        conn: 0,
        request: 1000,
        metadata: vec![],
        channels: vec![],
        outcome: Outcome::Cancelled,
    })
    .await;
    for c in calls {
        match bounded("call", c).await.unwrap().unwrap_err() {
            CallError::Session(SessionError::Violation { rule, .. }) => {
                assert_eq!(rule, "response.known-request")
            }
            e => panic!("expected the violation, got {e:?}"),
        }
    }
    let bytes = raw
        .recv_until(|m| matches!(m, Message::ProtocolError { .. }))
        .await
        .unwrap();
    assert!(
        matches!(wire::decode(&bytes).unwrap(), Message::ProtocolError { rule, .. } if rule == "response.known-request")
    );
}

async fn a_dropped_link_fails_pending_calls<F: Factory>(f: F) {
    let (a, b) = f.pair().await;
    let client = tokio::spawn(SessionBuilder::new().initiate(a));
    let mut raw = Raw::new(b);
    let hello = raw.recv().await.unwrap();
    assert!(matches!(wire::decode(&hello).unwrap(), Message::Hello { .. }));
    raw.send(&Message::HelloYourself {
        version: PROTOCOL_VERSION,
        settings: Settings::default(),
    })
    .await;
    let client = bounded("client", client).await.unwrap().unwrap();
    let calc = CalculatorClient::new(client.clone());
    let call = tokio::spawn(async move { calc.add(1, 2).await });
    raw.recv_until(|m| matches!(m, Message::Call { .. }))
        .await
        .unwrap();
    drop(raw);
    let err = bounded("call", call).await.unwrap().unwrap_err();
    assert!(
        matches!(err, CallError::Session(SessionError::Link { .. })),
        "{err:?}"
    );
}

macro_rules! conformance {
    ($link:ident, $factory:expr $(, $extra:ident)*) => {
        mod $link {
            use super::*;
            conformance!(@tests $factory; $($extra,)*
                calls_return_values,
                a_panicking_handler_fails_only_its_call,
                user_errors_are_distinct_from_protocol_errors,
                unknown_methods_and_invalid_payloads,
                both_peers_serve_and_call,
                dropping_a_call_cancels_the_handler,
                deadlines_fail_and_cancel,
                excess_calls_wait_for_the_limit,
                streams_from_callee_to_caller,
                streams_from_caller_to_callee,
                channels_can_be_returned,
                credit_exhaustion_stalls_and_resumes,
                a_slow_receiver_stalls_only_its_channel,
                virtual_connections_open_reject_and_close,
                channels_are_reused_beyond_the_table_size,
                goodbye_fails_pending_calls_with_the_reason,
                version_mismatch_names_both_versions,
                undecodable_frames_end_the_session,
                lying_frames_are_violations,
                too_many_concurrent_requests_is_a_violation,
                credit_overrun_and_data_after_close_are_violations,
                a_silent_peer_times_out,
                keepalive_keeps_an_idle_session_up,
                a_dropped_link_fails_pending_calls,
                a_violation_fails_pending_calls_with_the_rule,
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

// A flooding peer that never reads is cut off by the answer-queue limit on
// every link but loopback TCP: there, the flooder's own receive buffer fills
// with unread answers (one tiny segment each), the kernel prunes it, the ACKs
// riding on those segments are lost, and its sends back off for seconds, so
// the flood stalls before the server's queue can fill. TCP's own flow
// control then holds the flooder, which is the outcome the limit exists for.
conformance!(
    memory,
    MemoryFactory,
    a_peer_that_never_reads_its_answers_is_cut_off
);
conformance!(unix, UnixFactory, a_peer_that_never_reads_its_answers_is_cut_off);
conformance!(tcp, TcpFactory);
conformance!(shm, ShmFactory, a_peer_that_never_reads_its_answers_is_cut_off);

// ------------------------------------------------------------ shm only

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shm_channel_table_exhaustion_is_an_error() {
    let p = pair(&ShmFactory).await;
    // The default segment has 256 entries: 128 per side.
    let held: Vec<_> = (0..128).map(|_| p.client.channel::<u32>().unwrap()).collect();
    let err = p.client.channel::<u32>().unwrap_err();
    assert!(
        matches!(err, osmos_session::ChannelError::Exhausted { max: 128 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("max_channels"), "{err}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shm_grant_credit_messages_are_a_violation() {
    let (mut raw, server, _) = raw_against_server(&ShmFactory, Settings::default(), None).await;
    // The raw peer hands the server an Rx (channel 1, the peer's parity) for
    // `sum`, so the server only receives on it, then grants credit by
    // message, which the table mode forbids. (Handing the server a Tx instead
    // would let its first send find the table entry the raw peer never set
    // up, a different violation that could win the race.)
    let sum = osmos_session::method_id("Calculator", "sum");
    let args = wire::encode(&(0u64,)).unwrap();
    raw.send(&Message::Call {
        conn: 0,
        request: 1,
        method: sum,
        deadline_us: 0,
        metadata: vec![],
        channels: vec![1],
        args: &args,
    })
    .await;
    raw.send(&Message::GrantCredit {
        channel: 1,
        bytes: 100,
    })
    .await;
    expect_violation(&mut raw, &server, "credit.mode").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shm_two_live_channels_on_one_table_entry_is_a_violation() {
    let (mut raw, server, _) = raw_against_server(&ShmFactory, Settings::default(), None).await;
    // Channels 1 and 257 map to the same table entry (128 entries per side).
    let sum = osmos_session::method_id("Calculator", "sum");
    for (request, channel) in [(1u64, 1u64), (3, 257)] {
        let args = wire::encode(&(0u64,)).unwrap();
        raw.send(&Message::Call {
            conn: 0,
            request,
            method: sum,
            deadline_us: 0,
            metadata: vec![],
            channels: vec![channel],
            args: &args,
        })
        .await;
    }
    expect_violation(&mut raw, &server, "channel.table-index-free").await;
}

/// A peer that breaks the stream link's framing (a length prefix past the
/// limit) ends the session with a violation naming the link's rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_frame_length_is_a_violation_of_the_link_rule() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut raw, theirs) = tokio::net::UnixStream::pair().unwrap();
    let server = tokio::spawn(
        SessionBuilder::new()
            .serve(CalculatorDispatcher::new(Arc::new(Calc::default())))
            .accept(StreamLink::unix(theirs, 1 << 20)),
    );
    let hello = wire::encode(&Message::Hello {
        version: PROTOCOL_VERSION,
        settings: Settings::default(),
    })
    .unwrap();
    raw.write_all(&(hello.len() as u32).to_le_bytes()).await.unwrap();
    raw.write_all(&hello).await.unwrap();
    let mut len = [0u8; 4];
    raw.read_exact(&mut len).await.unwrap();
    let mut answer = vec![0; u32::from_le_bytes(len) as usize];
    raw.read_exact(&mut answer).await.unwrap();
    assert!(matches!(
        wire::decode(&answer).unwrap(),
        Message::HelloYourself { .. }
    ));
    let server = bounded("the handshake", server).await.unwrap().unwrap();
    raw.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    match bounded("the session's end", server.closed()).await {
        SessionError::Violation { rule, detail } => {
            assert_eq!(rule, "stream.length-in-bounds", "{detail}");
        }
        e => panic!("expected a violation of stream.length-in-bounds, got {e}"),
    }
    // The peer is told which rule it broke.
    raw.read_exact(&mut len).await.unwrap();
    let mut told = vec![0; u32::from_le_bytes(len) as usize];
    raw.read_exact(&mut told).await.unwrap();
    match wire::decode(&told).unwrap() {
        Message::ProtocolError { rule, .. } => assert_eq!(rule, "stream.length-in-bounds"),
        m => panic!("expected a ProtocolError, got {m:?}"),
    }
}

/// An `open` whose future is dropped before the answer arrives: when the
/// peer accepts, the session closes the connection nobody will use and
/// tells the peer, instead of keeping it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_open_is_closed_when_the_peer_accepts() {
    let (ours, theirs) = mem::pair(MAX_FRAME, 64);
    let mut raw = Raw::new(theirs);
    let (client, ()) = tokio::join!(SessionBuilder::new().initiate(ours), async {
        raw.recv_until(|m| matches!(m, Message::Hello { .. }))
            .await
            .unwrap();
        raw.send(&Message::HelloYourself {
            version: PROTOCOL_VERSION,
            settings: Settings::default(),
        })
        .await;
    });
    let client = client.unwrap();
    let mut open = Box::pin(client.open(vec![], None));
    let frame = tokio::select! {
        r = &mut open => panic!("open returned before any answer: {r:?}"),
        f = raw.recv_until(|m| matches!(m, Message::ConnectionOpen { .. })) => f.unwrap(),
    };
    let Message::ConnectionOpen { conn, .. } = wire::decode(&frame).unwrap() else {
        unreachable!()
    };
    drop(open);
    raw.send(&Message::ConnectionAccept {
        conn,
        metadata: vec![],
    })
    .await;
    let frame = raw
        .recv_until(|m| matches!(m, Message::ConnectionClose { .. }))
        .await
        .expect("a ConnectionClose for the abandoned connection");
    match wire::decode(&frame).unwrap() {
        Message::ConnectionClose { conn: closed, reason } => {
            assert_eq!(closed, conn);
            assert!(reason.contains("stopped waiting"), "{reason}");
        }
        _ => unreachable!(),
    }
    assert!(client.ended().is_none(), "the session itself goes on");
}
