//! Metadata both ways: a handler answers with response metadata, which
//! reaches a typed caller (of the service's client and of a client defined
//! apart with the same method) directly and through a forwarder, within
//! bounds that both sides enforce; and who calls, as a trusted peer says.

use std::sync::{Arc, Mutex};

use osmos_session::control::META_CALLER;
use osmos_session::link::{Link, LinkRx, LinkTx, SendPermit};
use osmos_session::wire::{
    self, Message, MetaEntry, MetaValue, Metadata, Outcome, PROTOCOL_VERSION, Settings,
};
use osmos_session::{
    CallContext, CallError, CallOptions, Connection, Forward, MAX_RESPONSE_METADATA_BYTES,
    MAX_RESPONSE_METADATA_ENTRIES, MetadataError, ResponseMetadata, SessionBuilder, SessionConfig,
    SessionError,
};

use crate::common;
use common::*;

/// Answers with metadata.
#[osmos_macros::service]
pub trait Answers {
    /// Answers with `entries` metadata entries `k0..`, set before the
    /// handler first waits, and `served-by` (the caller's name as the
    /// handler sees it), set after; fails with a service error if `fail`.
    async fn answer(&self, entries: u32, fail: bool) -> Result<u32, String>;
    /// Tries to pass the bounds; returns how each try was refused.
    async fn overflow(&self) -> Result<Vec<String>, String>;
    /// Keeps a copy of its context, to set metadata after it answered.
    async fn keep(&self) -> Result<(), String>;
    /// The caller's name as the handler sees it.
    async fn whoami(&self) -> Result<String, String>;
}

/// The same service defined apart, with one of its methods: its client
/// calls the same method ids.
mod plain {
    /// Answers with metadata.
    #[osmos_macros::service]
    pub trait Answers {
        /// See the attribute's `Answers::answer`.
        async fn answer(&self, entries: u32, fail: bool) -> Result<u32, String>;
    }
}

#[derive(Default)]
struct Answerer {
    kept: Arc<Mutex<Option<CallContext>>>,
}

fn context() -> Result<CallContext, String> {
    CallContext::current().ok_or_else(|| "no context inside a handler".to_string())
}

impl Answers for Answerer {
    async fn answer(&self, entries: u32, fail: bool) -> Result<u32, String> {
        let ctx = context()?;
        for i in 0..entries {
            ctx.set_response_metadata(format!("k{i}"), MetaValue::U64(u64::from(i)))
                .map_err(|e| e.to_string())?;
        }
        // The rest runs in the handler's own task.
        tokio::task::yield_now().await;
        let ctx = context()?;
        ctx.set_response_metadata("served-by", MetaValue::Str(ctx.caller().to_string()))
            .map_err(|e| e.to_string())?;
        if fail {
            Err("refused, as asked".into())
        } else {
            Ok(entries)
        }
    }

    async fn overflow(&self) -> Result<Vec<String>, String> {
        let ctx = context()?;
        let mut refusals = Vec::new();
        let big = MetaValue::Bytes(vec![7; MAX_RESPONSE_METADATA_BYTES]);
        match ctx.set_response_metadata("big", big) {
            Err(e @ MetadataError::TooLarge { .. }) => refusals.push(e.to_string()),
            other => return Err(format!("a value over the byte bound: {other:?}")),
        }
        for i in 0..MAX_RESPONSE_METADATA_ENTRIES {
            ctx.set_response_metadata(format!("k{i}"), MetaValue::U64(i as u64))
                .map_err(|e| format!("entry {i}: {e}"))?;
        }
        // Setting a key again replaces it: still within the bound.
        ctx.set_response_metadata("k0", MetaValue::Str("again".into()))
            .map_err(|e| format!("k0 again: {e}"))?;
        match ctx.set_response_metadata("one-too-many", MetaValue::U64(0)) {
            Err(e @ MetadataError::TooManyEntries { .. }) => refusals.push(e.to_string()),
            other => return Err(format!("an entry over the count bound: {other:?}")),
        }
        Ok(refusals)
    }

    async fn keep(&self) -> Result<(), String> {
        *self.kept.lock().unwrap() = Some(context()?);
        Ok(())
    }

    async fn whoami(&self) -> Result<String, String> {
        Ok(context()?.caller().to_string())
    }
}

impl plain::Answers for Answerer {
    async fn answer(&self, entries: u32, fail: bool) -> Result<u32, String> {
        Answers::answer(self, entries, fail).await
    }
}

fn named(name: &str) -> SessionConfig {
    SessionConfig {
        name: name.into(),
        ..SessionConfig::default()
    }
}

/// A client session calling a server session serving [`Answerer`]: (the
/// server's root connection, the client's, what the server kept).
async fn serve<F: Factory>(f: &F) -> (Connection, Connection, Arc<Mutex<Option<CallContext>>>) {
    let (a, b) = f.pair().await;
    let answerer = Answerer::default();
    let kept = answerer.kept.clone();
    let server = SessionBuilder::new()
        .config(named("the-server"))
        .serve(AnswersDispatcher::new(answerer));
    let (server, client) = bounded("handshake", async {
        tokio::join!(server.accept(b), SessionBuilder::new().initiate(a))
    })
    .await;
    (server.unwrap(), client.unwrap(), kept)
}

/// Checks what `answer(3, ..)` answered with.
fn assert_answered(slot: &ResponseMetadata, served_by: &str) {
    assert!(slot.received());
    let entries = slot.entries();
    assert_eq!(entries.len(), 4, "{entries:?}");
    for i in 0..3u64 {
        assert_eq!(slot.get(&format!("k{i}")), Some(MetaValue::U64(i)));
    }
    assert_eq!(slot.get("served-by"), Some(MetaValue::Str(served_by.into())));
}

/// Calls `answer` with a slot, through both kinds of typed client, and
/// checks the slot; `served_by`: the caller's name as the handler sees it.
async fn a_typed_caller_reads_it(conn: &Connection, served_by: &str) {
    let slot = ResponseMetadata::new();
    let with = || CallOptions::default().with_response_metadata(&slot);
    let client = AnswersClient::new(conn.clone());
    assert_eq!(
        bounded("answer", client.answer_with(with(), 3, false))
            .await
            .unwrap(),
        3
    );
    assert_answered(&slot, served_by);

    // A service error carries its metadata too.
    match bounded("a failing answer", client.answer_with(with(), 3, true)).await {
        Err(CallError::User(e)) => assert_eq!(e, "refused, as asked"),
        other => panic!("expected the service's error, got {other:?}"),
    }
    assert_answered(&slot, served_by);

    // The slot is emptied when a call starts: none from an earlier answer.
    assert_eq!(
        bounded("answer", client.answer_with(with(), 0, false))
            .await
            .unwrap(),
        0
    );
    assert_eq!(slot.entries().len(), 1);
    assert_eq!(slot.get("k0"), None);

    // A client of the service defined apart takes its options the same way.
    let plain = plain::AnswersClient::new(conn.clone());
    assert_eq!(
        bounded("plain answer", plain.answer_with(with(), 3, false))
            .await
            .unwrap(),
        3
    );
    assert_answered(&slot, served_by);

    // Without a slot, the metadata goes nowhere and the call is unchanged.
    assert_eq!(bounded("answer", client.answer(3, false)).await.unwrap(), 3);
}

/// Response metadata reaches typed callers; a handler can set it until it
/// answers, and no further.
async fn response_metadata_reaches_a_typed_caller<F: Factory>(f: F) {
    let (_server, client, kept) = serve(&f).await;
    a_typed_caller_reads_it(&client, "the-server").await;

    let answers = AnswersClient::new(client.clone());
    bounded("keep", answers.keep()).await.unwrap();
    let ctx = kept.lock().unwrap().take().expect("the kept context");
    assert_eq!(
        ctx.set_response_metadata("late", MetaValue::U64(1)),
        Err(MetadataError::Answered)
    );
}

/// Past either bound, a handler's entry is refused with an error that says
/// which bound and how far; what it set before stays and is sent.
async fn the_bounds_are_refused_clearly<F: Factory>(f: F) {
    let (_server, client, _) = serve(&f).await;
    let slot = ResponseMetadata::new();
    let refusals = bounded(
        "overflow",
        AnswersClient::new(client).overflow_with(CallOptions::default().with_response_metadata(&slot)),
    )
    .await
    .unwrap();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    let (bytes, count) = (&refusals[0], &refusals[1]);
    assert!(
        bytes.contains(&format!("{} bytes", MAX_RESPONSE_METADATA_BYTES + 3))
            && bytes.contains(&format!("limit of {MAX_RESPONSE_METADATA_BYTES}")),
        "{bytes}"
    );
    assert!(
        count.contains(&format!("{} entries", MAX_RESPONSE_METADATA_ENTRIES + 1))
            && count.contains(&format!("limit of {MAX_RESPONSE_METADATA_ENTRIES}")),
        "{count}"
    );
    assert_eq!(slot.entries().len(), MAX_RESPONSE_METADATA_ENTRIES);
    assert_eq!(slot.get("k0"), Some(MetaValue::Str("again".into())));
}

/// Client ↔ proxy (a `Forward` on its root connection) ↔ server: the
/// answer's metadata comes back through the proxy unchanged.
async fn forwarding_keeps_response_metadata<F: Factory>(f: F) {
    let (c_link, front_link) = f.pair().await;
    let (back_link, s_link) = f.pair().await;
    let server = SessionBuilder::new()
        .config(named("the-server"))
        .serve(AnswersDispatcher::new(Answerer::default()));
    let (server, back) = bounded("server handshake", async {
        tokio::join!(server.accept(s_link), SessionBuilder::new().initiate(back_link))
    })
    .await;
    let (_server, back) = (server.unwrap(), back.unwrap());
    let front = SessionBuilder::new().serve(Forward::to(back.clone()));
    let (_front, client) = bounded("proxy handshake", async {
        tokio::join!(front.accept(front_link), SessionBuilder::new().initiate(c_link))
    })
    .await;
    a_typed_caller_reads_it(&client.unwrap(), "the-server").await;
}

/// A peer that answers a call with `metadata`: the caller's session ends
/// with the rule `response.metadata-bounded`, and the call fails with it.
async fn refused_on_receipt(metadata: Metadata) -> String {
    let (a, b) = MemoryFactory.pair().await;
    let client = tokio::spawn(SessionBuilder::new().initiate(a));
    let (mut tx, mut rx) = b.split();
    let _hello = bounded("hello", rx.recv()).await.unwrap().unwrap().to_vec();
    let send = |m: &Message<'_>| wire::encode(m).unwrap();
    let reply = send(&Message::HelloYourself {
        version: PROTOCOL_VERSION,
        settings: Settings::default(),
    });
    let mut p = tx.reserve(reply.len()).await.unwrap();
    p.buf().copy_from_slice(&reply);
    p.commit().await.unwrap();
    let client = bounded("client", client).await.unwrap().unwrap();
    let call = tokio::spawn(async move { AnswersClient::new(client).answer(0, false).await });
    let (conn, request) = bounded("the call", async {
        loop {
            let frame = rx.recv().await.unwrap().unwrap().to_vec();
            if let Message::Call { conn, request, .. } = wire::decode(&frame).unwrap() {
                return (conn, request);
            }
        }
    })
    .await;
    let value = wire::encode(&0u32).unwrap();
    let response = send(&Message::Response {
        conn,
        request,
        metadata,
        channels: vec![],
        outcome: Outcome::Ok(&value),
    });
    let mut p = tx.reserve(response.len()).await.unwrap();
    p.buf().copy_from_slice(&response);
    p.commit().await.unwrap();
    match bounded("the refused answer", call).await.unwrap() {
        Err(CallError::Session(SessionError::Violation { rule, detail })) => {
            assert_eq!(rule, "response.metadata-bounded");
            detail
        }
        other => panic!("expected a violation, got {other:?}"),
    }
}

fn entry(key: String, value: MetaValue) -> MetaEntry {
    MetaEntry { key, value }
}

/// Response metadata is the peer's input: past either bound, it ends the
/// session with a rule that says which bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_response_metadata_breaks_a_rule() {
    let many = (0..=MAX_RESPONSE_METADATA_ENTRIES)
        .map(|i| entry(format!("k{i}"), MetaValue::U64(0)))
        .collect();
    let detail = refused_on_receipt(many).await;
    assert!(
        detail.contains(&format!("{} entries", MAX_RESPONSE_METADATA_ENTRIES + 1)),
        "{detail}"
    );
    let large = vec![entry(
        "k".into(),
        MetaValue::Bytes(vec![0; MAX_RESPONSE_METADATA_BYTES]),
    )];
    let detail = refused_on_receipt(large).await;
    assert!(
        detail.contains(&format!("{} bytes", MAX_RESPONSE_METADATA_BYTES + 1)),
        "{detail}"
    );
}

/// A session that trusts its peer to say who calls reports the name the
/// peer opened a connection with; one that does not (the default) ignores
/// it. The root connection reports the session's name either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_is_the_trusted_peers_word() {
    for trust in [true, false] {
        let (a, b) = MemoryFactory.pair().await;
        let dispatcher = AnswersDispatcher::new(Answerer::default());
        let served = dispatcher.clone();
        let mut server = SessionBuilder::new()
            .config(named("the-cell"))
            .serve(dispatcher)
            .accept_connections(Arc::new(move |_: &Metadata| {
                Ok(Some(served.clone() as Arc<dyn osmos_session::Dispatcher>))
            }));
        if trust {
            server = server.trust_peer_caller();
        }
        let (_server, host) = bounded("handshake", async {
            tokio::join!(server.accept(b), SessionBuilder::new().initiate(a))
        })
        .await;
        let host = host.unwrap();
        let claim = vec![entry(META_CALLER.into(), MetaValue::Str("cell-a".into()))];
        let forwarded = bounded("open", host.open(claim, None)).await.unwrap();
        let who = bounded("whoami", AnswersClient::new(forwarded).whoami())
            .await
            .unwrap();
        assert_eq!(
            who,
            if trust { "cell-a" } else { "the-cell" },
            "trusting: {trust}"
        );
        let plain = bounded("open", host.open(vec![], None)).await.unwrap();
        let who = bounded("whoami", AnswersClient::new(plain).whoami())
            .await
            .unwrap();
        assert_eq!(who, "the-cell");
        let who = bounded("whoami", AnswersClient::new(host.clone()).whoami())
            .await
            .unwrap();
        assert_eq!(who, "the-cell");
    }
}

macro_rules! over {
    ($link:ident, $factory:expr) => {
        mod $link {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn response_metadata_reaches_a_typed_caller() {
                super::response_metadata_reaches_a_typed_caller($factory).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_bounds_are_refused_clearly() {
                super::the_bounds_are_refused_clearly($factory).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn forwarding_keeps_response_metadata() {
                super::forwarding_keeps_response_metadata($factory).await;
            }
        }
    };
}

over!(memory, MemoryFactory);
over!(unix, UnixFactory);
over!(shm, ShmFactory);
