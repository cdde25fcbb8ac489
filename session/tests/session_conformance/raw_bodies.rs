//! The bodies run over every link against a raw peer that lies or stays
//! silent: version mismatch, undecodable and lying frames, request and
//! credit overruns, a peer that never reads, keepalive, and what pending
//! calls see when the session ends.

use super::*;

/// Drives one end of a link by hand.
pub(crate) struct Raw<L: Link> {
    pub(crate) tx: L::Tx,
    pub(crate) rx: L::Rx,
}

impl<L: Link> Raw<L> {
    pub(crate) fn new(link: L) -> Self {
        let (tx, rx) = link.split();
        Raw { tx, rx }
    }

    pub(crate) async fn send_bytes(&mut self, bytes: &[u8]) {
        let mut p = self.tx.reserve(bytes.len()).await.unwrap();
        p.buf().copy_from_slice(bytes);
        p.commit().await.unwrap();
    }

    pub(crate) async fn send(&mut self, m: &Message<'_>) {
        self.send_bytes(&wire::encode(m).unwrap()).await;
    }

    /// The next message's kind and encoded bytes (None at end of link).
    pub(crate) async fn recv(&mut self) -> Option<Vec<u8>> {
        match bounded("raw recv", self.rx.recv()).await {
            Ok(Some(f)) => Some(f.to_vec()),
            _ => None,
        }
    }

    /// Reads until a message matching `pred` arrives.
    pub(crate) async fn recv_until(&mut self, pred: impl Fn(&Message<'_>) -> bool) -> Option<Vec<u8>> {
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
pub(crate) async fn raw_against_server<F: Factory>(
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

/// A real session (initiator, serving nothing) against a raw acceptor
/// over a memory link, after the handshake.
pub(crate) async fn raw_against_client() -> (Raw<mem::MemoryLink>, Connection) {
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
    (raw, client.unwrap())
}

pub(crate) async fn expect_violation<L: Link>(raw: &mut Raw<L>, server: &Connection, rule: &str) {
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

pub(crate) async fn version_mismatch_names_both_versions<F: Factory>(f: F) {
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

pub(crate) async fn undecodable_frames_end_the_session<F: Factory>(f: F) {
    let (mut raw, server, _) = raw_against_server(&f, Settings::default(), None).await;
    raw.send_bytes(&[0xff, 0xff, 0xff]).await;
    expect_violation(&mut raw, &server, "frame.decodable").await;
}

pub(crate) async fn lying_frames_are_violations<F: Factory>(f: F) {
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
        // Batches: each message in one is held to the rules as if alone.
        ("frame.batch-flat", vec![enc(Message::Batch { messages: &[] })]),
        (
            "frame.batch-flat",
            vec![enc(Message::Batch {
                messages: &batch_of(&[enc(Message::Batch {
                    messages: &batch_of(&[enc(Message::Ping { nonce: 1 })]),
                })]),
            })],
        ),
        (
            "frame.decodable",
            vec![enc(Message::Batch {
                messages: &[&batch_of(&[enc(Message::Ping { nonce: 1 })])[..], &[9, 1]].concat(),
            })],
        ),
        (
            "frame.decodable",
            vec![enc(Message::Batch {
                messages: &batch_of(&[vec![0xff, 0xff, 0xff]]),
            })],
        ),
        (
            "handshake.once",
            vec![enc(Message::Batch {
                messages: &batch_of(&[enc(Message::Hello {
                    version: PROTOCOL_VERSION,
                    settings: Settings::default(),
                })]),
            })],
        ),
        (
            "channel.known",
            vec![enc(Message::Batch {
                messages: &batch_of(&[
                    enc(Message::Ping { nonce: 1 }),
                    enc(Message::Item {
                        channel: 5,
                        payload: &[1],
                    }),
                ]),
            })],
        ),
        // Items in a row are queued together, yet the first broken rule is
        // still the one named: the unknown channel, not the cut item after.
        (
            "channel.known",
            vec![enc(Message::Batch {
                messages: &batch_of(&[
                    enc(Message::Item {
                        channel: 5,
                        payload: &[1],
                    }),
                    {
                        let mut cut = enc(Message::Item {
                            channel: 5,
                            payload: &[1, 2],
                        });
                        cut.pop();
                        cut
                    },
                ]),
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

/// Two calls in one `Batch` frame are served as if each had come alone.
pub(crate) async fn a_batch_is_handled_like_its_messages_alone<F: Factory>(f: F) {
    let (mut raw, server, _) = raw_against_server(&f, Settings::default(), None).await;
    let add = osmos_session::method_id("Calculator", "add");
    let enc = |m: Message<'_>| wire::encode(&m).unwrap();
    let (one, two) = (
        wire::encode(&(1u32, 2u32)).unwrap(),
        wire::encode(&(40u32, 2u32)).unwrap(),
    );
    let call = |request: u64, args: &[u8]| {
        enc(Message::Call {
            conn: 0,
            request,
            method: add,
            deadline_us: 0,
            metadata: vec![],
            channels: vec![],
            args,
        })
    };
    raw.send(&Message::Batch {
        messages: &batch_of(&[call(1, &one), call(3, &two)]),
    })
    .await;
    let mut sums = std::collections::BTreeMap::new();
    while sums.len() < 2 {
        let bytes = raw
            .recv_until(|m| matches!(m, Message::Response { .. }))
            .await
            .expect("an answer");
        let Message::Response {
            request,
            outcome: Outcome::Ok(value),
            ..
        } = wire::decode(&bytes).unwrap()
        else {
            panic!("expected a successful answer")
        };
        sums.insert(request, value.to_vec());
    }
    let expected = [
        (1, wire::encode(&3u32).unwrap()),
        (3, wire::encode(&42u32).unwrap()),
    ];
    assert_eq!(sums, expected.into_iter().collect());
    assert!(server.ended().is_none(), "the session goes on");
}

pub(crate) async fn too_many_concurrent_requests_is_a_violation<F: Factory>(f: F) {
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

/// The encoded arguments of `Calculator::sum`: its `Rx<u64>` is position 0
/// of the call's channel list.
pub(crate) fn sum_args() -> Vec<u8> {
    wire::encode(&(0u64,)).unwrap()
}

/// A raw `Calculator::sum` call (`args` from [`sum_args`]) handing the
/// server the receiving end of `channel`, one of the raw peer's (odd) ids.
pub(crate) fn sum_call(request: u64, channel: u64, args: &[u8]) -> Message<'_> {
    Message::Call {
        conn: 0,
        request,
        method: osmos_session::method_id("Calculator", "sum"),
        deadline_us: 0,
        metadata: vec![],
        channels: vec![channel],
        args,
    }
}

pub(crate) async fn credit_overrun_and_data_after_close_are_violations<F: Factory>(f: F) {
    // The raw peer calls `sum` passing its own Rx... it must create the
    // channel with its parity (odd) and list it in the call.
    // An item costs its bytes and 64: one of 16 bytes fits, 17 do not.
    let server_settings = Settings {
        initial_credit: 16 + 64,
        ..Settings::default()
    };
    let args = sum_args();
    let call = |request| sum_call(request, 1, &args);
    let (mut raw, server, _) = raw_against_server(&f, server_settings.clone(), None).await;
    raw.send(&call(1)).await;
    raw.send(&Message::Item {
        channel: 1,
        payload: &[0; 17],
    })
    .await;
    expect_violation(&mut raw, &server, "credit.no-overrun").await;

    // Two items in one batch, each within the window but not both: the
    // second overruns, though the two are queued together.
    let (mut raw, server, _) = raw_against_server(&f, server_settings.clone(), None).await;
    raw.send(&call(1)).await;
    let item = wire::encode(&Message::Item {
        channel: 1,
        payload: &[0; 8],
    })
    .unwrap();
    raw.send(&Message::Batch {
        messages: &batch_of(&[item.clone(), item]),
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

/// Items of two streams that arrive interleaved each reach their own
/// receiver, and a late item for a channel the server already forgot is
/// dropped quietly, even right after items for that same channel (whoever
/// receives keeps the last item's channel at hand).
pub(crate) async fn interleaved_items_reach_their_channels_and_late_ones_are_dropped<F: Factory>(f: F) {
    let args = sum_args();
    let call = |request, channel| sum_call(request, channel, &args);
    let (mut raw, server, _) = raw_against_server(&f, Settings::default(), None).await;
    let item = |channel: u64, v: u64| (channel, wire::encode(&v).unwrap());
    let mut sums = std::collections::HashMap::new();
    for round in 0..2u64 {
        // Requests and channels of the peer's (odd) parity.
        let (a, b) = (4 * round + 1, 4 * round + 3);
        raw.send(&call(a, a)).await;
        raw.send(&call(b, b)).await;
        for (channel, payload) in [
            item(a, 1),
            item(b, 10),
            item(a, 2),
            item(b, 20),
            item(b, 30),
            item(a, 4),
        ] {
            raw.send(&Message::Item {
                channel,
                payload: &payload,
            })
            .await;
        }
        raw.send(&Message::Close { channel: b }).await;
        raw.send(&Message::Close { channel: a }).await;
        for _ in 0..2 {
            let bytes = raw
                .recv_until(|m| matches!(m, Message::Response { .. } | Message::ProtocolError { .. }))
                .await
                .expect("an answer");
            match wire::decode(&bytes).unwrap() {
                Message::Response { request, outcome, .. } => {
                    let Outcome::Ok(v) = outcome else {
                        panic!("request {request} failed: {outcome:?}")
                    };
                    sums.insert(request, v.to_vec());
                }
                other => panic!("{other:?}"),
            }
        }
        // Each handler dropped its receiver (the channel's last end here)
        // before it answered: both channels are retired now. One more
        // item for the channel of the last item is dropped quietly.
        let (channel, payload) = item(a, 8);
        raw.send(&Message::Item {
            channel,
            payload: &payload,
        })
        .await;
    }
    let want: std::collections::HashMap<u64, Vec<u8>> = [(1, 7u64), (3, 60), (5, 7), (7, 60)]
        .into_iter()
        .map(|(request, sum)| (request, wire::encode(&sum).unwrap()))
        .collect();
    assert_eq!(sums, want);
    assert!(server.ended().is_none(), "{:?}", server.ended());
}

/// Items that share a `Batch` frame reach their channels as if each had
/// come alone: runs of one channel's items (one longer than the session
/// queues at once), runs broken by the other channel's, and each channel's
/// `Close` behind its items in the same batch.
pub(crate) async fn items_in_one_batch_reach_their_channels_in_order<F: Factory>(f: F) {
    let args = sum_args();
    let (mut raw, server, _) = raw_against_server(&f, Settings::default(), None).await;
    let (a, b) = (1u64, 3u64);
    raw.send(&sum_call(a, a, &args)).await;
    raw.send(&sum_call(b, b, &args)).await;
    let item = |channel: u64, v: u64| {
        wire::encode(&Message::Item {
            channel,
            payload: &wire::encode(&v).unwrap(),
        })
        .unwrap()
    };
    let mut messages = vec![item(a, 1), item(a, 2), item(b, 10), item(a, 4)];
    messages.extend((0..40).map(|_| item(b, 100)));
    messages.push(item(a, 8));
    messages.push(wire::encode(&Message::Close { channel: a }).unwrap());
    messages.push(item(b, 20));
    messages.push(wire::encode(&Message::Close { channel: b }).unwrap());
    raw.send(&Message::Batch {
        messages: &batch_of(&messages),
    })
    .await;
    let mut sums = std::collections::HashMap::new();
    while sums.len() < 2 {
        let bytes = raw
            .recv_until(|m| matches!(m, Message::Response { .. } | Message::ProtocolError { .. }))
            .await
            .expect("an answer");
        match wire::decode(&bytes).unwrap() {
            Message::Response {
                request,
                outcome: Outcome::Ok(v),
                ..
            } => {
                sums.insert(request, v.to_vec());
            }
            other => panic!("{other:?}"),
        }
    }
    let want: std::collections::HashMap<u64, Vec<u8>> = [(a, 15u64), (b, 4030)]
        .into_iter()
        .map(|(request, sum)| (request, wire::encode(&sum).unwrap()))
        .collect();
    assert_eq!(sums, want);
    assert!(server.ended().is_none(), "{:?}", server.ended());
}

pub(crate) async fn a_peer_that_never_reads_its_answers_is_cut_off<F: Factory>(f: F) {
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

pub(crate) async fn a_silent_peer_times_out<F: Factory>(f: F) {
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

pub(crate) async fn keepalive_keeps_an_idle_session_up<F: Factory>(f: F) {
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

pub(crate) async fn a_violation_fails_pending_calls_with_the_rule<F: Factory>(f: F) {
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

pub(crate) async fn a_dropped_link_fails_pending_calls<F: Factory>(f: F) {
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

/// A peer that says goodbye and closes its end at once: a send that finds
/// the end closed before this side has read the goodbye must not make the
/// session end with a link detail. The race is repeated, since either side
/// of it may win on one try.
pub(crate) async fn a_goodbye_wins_over_a_send_that_finds_the_link_closed<F: Factory>(f: F) {
    for _ in 0..20 {
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
        raw.send(&Message::Goodbye {
            reason: "maintenance".into(),
        })
        .await;
        drop(raw);
        let calc = CalculatorClient::new(client.clone());
        let goodbye = SessionError::Goodbye {
            reason: "maintenance".into(),
        };
        for i in 0..4u32 {
            let err = bounded("call", calc.add(i, i)).await.unwrap_err();
            assert_eq!(err, CallError::Session(goodbye.clone()));
        }
        assert_eq!(bounded("closed", client.closed()).await, goodbye);
    }
}
