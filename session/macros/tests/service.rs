//! `#[osmos::service]` end to end, in a crate that depends on `osmos` only
//! (no direct `facet` or `osmos-session`): calls over an in-memory session,
//! borrowed arguments, infallible methods, `Result` and `Result` aliases,
//! user errors, call options and `describe()`.
//!
//! `missing_docs` is denied: the generated public items must carry docs.
#![deny(missing_docs)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use osmos::{CallError, CallOptions, Connection, Dispatcher, Facet, SessionBuilder, Tx};

/// Bound on every wait; only reached when something hangs.
const BOUND: Duration = Duration::from_secs(20);

/// Why a number did not parse.
#[derive(Debug, Clone, PartialEq, Facet)]
#[facet(crate = osmos::facet)]
pub struct ParseError {
    /// The input.
    pub input: String,
    /// Where it went wrong.
    pub at: u32,
}

/// A fieldless enum: facet needs its `repr`.
#[derive(Debug, Clone, Copy, PartialEq, Facet)]
#[facet(crate = osmos::facet)]
#[repr(u8)]
pub enum Case {
    /// Upper case.
    Upper,
    /// Lower case.
    Lower,
}

/// An enum with data.
#[derive(Debug, Clone, PartialEq, Facet)]
#[facet(crate = osmos::facet)]
#[repr(u8)]
pub enum Shape {
    /// A circle.
    Circle {
        /// Its radius.
        r: u32,
    },
    /// A rectangle.
    Rect(u32, u32),
}

/// This crate's error.
#[derive(Debug, Clone, PartialEq, Facet)]
#[facet(crate = osmos::facet)]
pub struct MyError {
    /// What happened.
    pub what: String,
}

/// A `Result` alias, as crates often define.
pub type MyResult<T> = Result<T, MyError>;

/// Text utilities.
#[osmos::service]
pub trait Text {
    /// Upper-cases.
    async fn upper(&self, s: &str) -> String;
    /// Parses a decimal number.
    async fn parse(&self, s: String) -> Result<u32, ParseError>;
    /// Reads a named blob, through an alias.
    async fn read(&self, path: String) -> MyResult<Vec<u8>>;
    /// Sums.
    async fn sum(&self, xs: &[u32]) -> u64;
    /// Changes case.
    async fn case(&self, s: &str, case: Case) -> String;
    /// The area of a shape.
    async fn area(&self, shape: &Shape) -> u64;
    /// Returns nothing.
    async fn touch(&self);
    /// Waits for `ms` milliseconds.
    async fn sleep(&self, ms: u64) -> ();
    /// Streams `n` numbers.
    async fn count(&self, n: u32, out: Tx<u32>) -> MyResult<()>;
    // The client method gets a generated doc; the trait method is the
    // author's to document.
    #[allow(missing_docs)]
    async fn undocumented(&self) -> bool;
}

struct Impl {
    touched: std::sync::atomic::AtomicU32,
}

impl Text for Impl {
    async fn upper(&self, s: &str) -> String {
        s.to_uppercase()
    }
    async fn parse(&self, s: String) -> Result<u32, ParseError> {
        match s.bytes().position(|b| !b.is_ascii_digit()) {
            Some(at) => Err(ParseError {
                input: s.clone(),
                at: at as u32,
            }),
            None => s.parse().map_err(|_| ParseError { input: s, at: 0 }),
        }
    }
    async fn read(&self, path: String) -> MyResult<Vec<u8>> {
        match path.as_str() {
            "hello" => Ok(b"hello, world".to_vec()),
            _ => Err(MyError {
                what: format!("no blob named {path:?}"),
            }),
        }
    }
    async fn sum(&self, xs: &[u32]) -> u64 {
        xs.iter().map(|&x| u64::from(x)).sum()
    }
    async fn case(&self, s: &str, case: Case) -> String {
        match case {
            Case::Upper => s.to_uppercase(),
            Case::Lower => s.to_lowercase(),
        }
    }
    async fn area(&self, shape: &Shape) -> u64 {
        match *shape {
            Shape::Circle { r } => 3 * u64::from(r) * u64::from(r),
            Shape::Rect(w, h) => u64::from(w) * u64::from(h),
        }
    }
    async fn touch(&self) {
        self.touched.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    async fn sleep(&self, ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    async fn count(&self, n: u32, out: Tx<u32>) -> MyResult<()> {
        let failed = |e: osmos::ChannelError| MyError { what: e.to_string() };
        for i in 0..n {
            out.send(&i).await.map_err(failed)?;
        }
        out.close().await.map_err(failed)
    }
    async fn undocumented(&self) -> bool {
        true
    }
}

/// A client connection to a fresh server serving `dispatcher` over an
/// in-memory link. The server's connection lives until the session ends.
async fn connect(dispatcher: Arc<dyn Dispatcher>) -> Connection {
    let (ours, theirs) = osmos::link::memory::pair(1 << 20, 64);
    let handshakes = async {
        tokio::join!(
            SessionBuilder::new().serve(dispatcher).accept(theirs),
            SessionBuilder::new().initiate(ours)
        )
    };
    let (server, client) = tokio::time::timeout(BOUND, handshakes)
        .await
        .expect("handshake timed out");
    let server = server.expect("server handshake");
    tokio::spawn(async move { server.closed().await });
    client.expect("client handshake")
}

async fn text_client() -> TextClient {
    let dispatcher = TextDispatcher::new(Impl {
        touched: Default::default(),
    });
    TextClient::new(connect(dispatcher).await)
}

#[tokio::test]
async fn infallible_methods_return_their_value() {
    let c = text_client().await;
    let upper: Result<String, CallError<Infallible>> = c.upper("osmos").await;
    assert_eq!(upper.unwrap(), "OSMOS");
    assert!(c.undocumented().await.unwrap());
    let sum = c.sum(&[1, 2, u32::MAX]).await.unwrap();
    assert_eq!(sum, 3 + u64::from(u32::MAX));
    assert_eq!(c.sum(&[]).await.unwrap(), 0);
}

#[tokio::test]
async fn results_carry_the_services_error_apart_from_call_failures() {
    let c = text_client().await;
    assert_eq!(c.parse("1234".into()).await.unwrap(), 1234);
    match c.parse("12x4".into()).await {
        Err(CallError::User(e)) => assert_eq!(
            e,
            ParseError {
                input: "12x4".into(),
                at: 2
            }
        ),
        other => panic!("expected the service's error, got {other:?}"),
    }
}

#[tokio::test]
async fn result_aliases_resolve_to_their_value_and_error_types() {
    let c = text_client().await;
    let blob: Result<Vec<u8>, CallError<MyError>> = c.read("hello".into()).await;
    assert_eq!(blob.unwrap(), b"hello, world");
    match c.read("nope".into()).await {
        Err(CallError::User(MyError { what })) => assert_eq!(what, "no blob named \"nope\""),
        other => panic!("expected the service's error, got {other:?}"),
    }
}

#[tokio::test]
async fn enums_and_borrowed_structs_cross_the_link() {
    let c = text_client().await;
    assert_eq!(c.case("MiXed", Case::Lower).await.unwrap(), "mixed");
    assert_eq!(c.case("MiXed", Case::Upper).await.unwrap(), "MIXED");
    assert_eq!(c.area(&Shape::Rect(3, 4)).await.unwrap(), 12);
    assert_eq!(c.area(&Shape::Circle { r: 2 }).await.unwrap(), 12);
}

#[tokio::test]
async fn unit_methods_run_once_per_call() {
    let touched = Arc::new(Impl {
        touched: Default::default(),
    });
    // A dispatcher over a shared implementation, to look at it afterwards.
    struct Shared(Arc<Impl>);
    impl Text for Shared {
        async fn upper(&self, s: &str) -> String {
            self.0.upper(s).await
        }
        async fn parse(&self, s: String) -> Result<u32, ParseError> {
            self.0.parse(s).await
        }
        async fn read(&self, path: String) -> MyResult<Vec<u8>> {
            self.0.read(path).await
        }
        async fn sum(&self, xs: &[u32]) -> u64 {
            self.0.sum(xs).await
        }
        async fn case(&self, s: &str, case: Case) -> String {
            self.0.case(s, case).await
        }
        async fn area(&self, shape: &Shape) -> u64 {
            self.0.area(shape).await
        }
        async fn touch(&self) {
            self.0.touch().await
        }
        async fn sleep(&self, ms: u64) {
            self.0.sleep(ms).await
        }
        async fn count(&self, n: u32, out: Tx<u32>) -> MyResult<()> {
            self.0.count(n, out).await
        }
        async fn undocumented(&self) -> bool {
            self.0.undocumented().await
        }
    }
    let c = TextClient::new(connect(TextDispatcher::new(Shared(touched.clone()))).await);
    let unit: Result<(), CallError<Infallible>> = c.touch().await;
    unit.unwrap();
    c.touch().await.unwrap();
    assert_eq!(touched.touched.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[tokio::test]
async fn with_variants_take_call_options() {
    let c = text_client().await;
    let short = CallOptions {
        timeout: Some(Duration::from_millis(50)),
        ..CallOptions::default()
    };
    match c.sleep_with(short, 10_000).await {
        Err(CallError::DeadlineExceeded { after }) => assert_eq!(after, Duration::from_millis(50)),
        other => panic!("expected the deadline to pass, got {other:?}"),
    }
    let long = CallOptions {
        timeout: Some(BOUND),
        ..CallOptions::default()
    };
    assert_eq!(c.upper_with(long, "ok").await.unwrap(), "OK");
}

#[tokio::test]
async fn channels_pass_as_arguments() {
    let c = text_client().await;
    let (tx, mut rx) = c.connection().channel::<u32>().unwrap();
    let call = tokio::spawn({
        let c = c.clone();
        async move { c.count(5, tx).await }
    });
    let mut got = Vec::new();
    while let Some(item) = tokio::time::timeout(BOUND, rx.recv()).await.expect("stream hung") {
        got.push(item.unwrap());
    }
    assert_eq!(got, [0, 1, 2, 3, 4]);
    call.await.unwrap().unwrap();
}

#[test]
fn the_dispatcher_describes_its_methods_with_stable_ids() {
    let d = TextDispatcher::new(Impl {
        touched: Default::default(),
    });
    let info = d.describe().expect("a generated dispatcher describes itself");
    assert_eq!(info.name, "Text");
    let names: Vec<&str> = info.methods.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "upper",
            "parse",
            "read",
            "sum",
            "case",
            "area",
            "touch",
            "sleep",
            "count",
            "undocumented"
        ]
    );
    for (name, id) in info.methods {
        assert_eq!(*id, osmos::method_id("Text", name));
    }
}

#[tokio::test]
async fn an_unknown_method_is_reported_as_such() {
    let c = text_client().await;
    let r: Result<u32, CallError<Infallible>> = c
        .connection()
        .call(osmos::method_id("Text", "missing"), &(), CallOptions::default())
        .await;
    assert!(matches!(r, Err(CallError::UnknownMethod { .. })), "{r:?}");
}
