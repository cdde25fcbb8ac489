//! The services the suite serves (a calculator with streams, cancellation
//! and concurrency probes; a greeter), and the factories of connected
//! client/server session pairs.

use super::*;

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
    /// Sends one item of each of `sizes` bytes on `out` (byte `i` of an
    /// item is `i as u8`), then closes it.
    async fn chunks(&self, sizes: Vec<u32>, out: Tx<Vec<u8>>) -> Result<u32, CalcError>;
    /// Receives numbered strings (numbered in order) and returns them
    /// joined by `|`.
    async fn join(&self, input: Rx<(u32, String)>) -> Result<String, CalcError>;
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
    /// Returns its arguments tagged (`tag + 1`), or, for tag 0, fails with
    /// a text as long as `data`.
    async fn stamp(&self, tag: u64, data: Vec<u8>) -> Result<(u64, Vec<u8>), String>;
    /// Returns its numbers reversed.
    async fn reverse(&self, numbers: Vec<u16>) -> Result<Vec<u16>, String>;
}

#[derive(Default)]
pub(crate) struct Calc {
    pub(crate) running: AtomicUsize,
    pub(crate) max_running: AtomicUsize,
    pub(crate) release: Notify,
    pub(crate) dropped: std::sync::Mutex<Vec<oneshot::Sender<u32>>>,
    pub(crate) conn: std::sync::OnceLock<Connection>,
}

/// Reports (through `Calc::dropped`) when a blocked handler is dropped.
pub(crate) struct DropReport<'a>(&'a Calc, u32);
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
    async fn chunks(&self, sizes: Vec<u32>, out: Tx<Vec<u8>>) -> Result<u32, CalcError> {
        for &size in &sizes {
            let item: Vec<u8> = (0..size).map(|i| i as u8).collect();
            out.send(&item).await.unwrap();
        }
        out.close().await.unwrap();
        Ok(sizes.len() as u32)
    }
    async fn join(&self, mut input: Rx<(u32, String)>) -> Result<String, CalcError> {
        let mut parts = Vec::new();
        while let Some(item) = input.recv().await {
            let (i, s) = item.unwrap();
            assert_eq!(i as usize, parts.len(), "items arrive in order");
            parts.push(s);
        }
        Ok(parts.join("|"))
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

pub(crate) struct Greet;
impl Greeter for Greet {
    async fn greet(&self, name: String) -> Result<String, String> {
        if name.is_empty() {
            Err("no name".into())
        } else {
            Ok(format!("hello, {name}"))
        }
    }
    async fn stamp(&self, tag: u64, data: Vec<u8>) -> Result<(u64, Vec<u8>), String> {
        match tag {
            0 => Err("e".repeat(data.len())),
            t => Ok((t + 1, data)),
        }
    }
    async fn reverse(&self, mut numbers: Vec<u16>) -> Result<Vec<u16>, String> {
        numbers.reverse();
        Ok(numbers)
    }
}

pub(crate) fn config(settings: Settings) -> SessionConfig {
    SessionConfig {
        settings,
        ..SessionConfig::default()
    }
}

/// A session pair: the initiator serves Greeter, the acceptor serves Calculator.
pub(crate) struct Pair {
    pub(crate) client: Connection,
    pub(crate) server: Connection,
    pub(crate) calc: Arc<Calc>,
}

pub(crate) async fn pair_with<F: Factory>(
    f: &F,
    client_settings: Settings,
    server_settings: Settings,
) -> Pair {
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

pub(crate) async fn pair<F: Factory>(f: &F) -> Pair {
    pair_with(f, Settings::default(), Settings::default()).await
}

/// Starts a `block` call and returns once its handler is running.
pub(crate) async fn start_blocked_call(
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
