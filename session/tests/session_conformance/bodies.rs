//! The bodies run over every link between two real sessions: calls, user
//! and protocol errors, cancellation, deadlines, the concurrency limit,
//! streams both ways with credit, virtual connections and goodbye.

use super::*;

pub(crate) async fn calls_return_values<F: Factory>(f: F) {
    let p = pair(&f).await;
    let calc = CalculatorClient::new(p.client.clone());
    assert_eq!(bounded("add", calc.add(2, 3)).await.unwrap(), 5);
    let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    assert_eq!(bounded("echo", calc.echo(data.clone())).await.unwrap(), data);
    // Around the size where payloads are written straight into the frame.
    for len in [0, 4094, 4095, 4096, 4097] {
        let data = vec![len as u8; len];
        assert_eq!(bounded("echo", calc.echo(data.clone())).await.unwrap(), data);
    }
    for i in 0..200 {
        assert_eq!(calc.add(i, i).await.unwrap(), 2 * i);
    }
}

pub(crate) async fn a_panicking_handler_fails_only_its_call<F: Factory>(f: F) {
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

pub(crate) async fn user_errors_are_distinct_from_protocol_errors<F: Factory>(f: F) {
    let p = pair(&f).await;
    let calc = CalculatorClient::new(p.client.clone());
    let err = bounded("add", calc.add(u32::MAX, 1)).await.unwrap_err();
    assert_eq!(err, CallError::User(CalcError::Overflow { a: u32::MAX, b: 1 }));
    // The session is still fine.
    assert_eq!(calc.add(1, 1).await.unwrap(), 2);
}

pub(crate) async fn unknown_methods_and_invalid_payloads<F: Factory>(f: F) {
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

pub(crate) async fn both_peers_serve_and_call<F: Factory>(f: F) {
    let p = pair(&f).await;
    let greeter = GreeterClient::new(p.server.clone());
    let calc = CalculatorClient::new(p.client.clone());
    let (g, c) = bounded("calls", async {
        tokio::join!(greeter.greet("cell".into()), calc.add(40, 2))
    })
    .await;
    assert_eq!((g.unwrap(), c.unwrap()), ("hello, cell".to_string(), 42));
    // Long strings travel both ways, as arguments and as results.
    for len in [4095, 4096, 70_000] {
        let name: String = "ωcell".chars().cycle().take(len).collect();
        assert_eq!(
            bounded("greet", greeter.greet(name.clone())).await.unwrap(),
            format!("hello, {name}")
        );
    }
    assert_eq!(
        greeter.greet(String::new()).await.unwrap_err(),
        CallError::User("no name".to_string())
    );
}

/// Values whose encoding ends with a large byte string: links that copy
/// those bytes out on their own (shm) must give the values the whole
/// encoding gives, whatever the types around them.
pub(crate) async fn large_trailing_bytes_decode_exactly<F: Factory>(f: F) {
    let p = pair(&f).await;
    let greeter = GreeterClient::new(p.server.clone());
    for len in [0usize, 2047, 2048, 4095, 4096, 70_000, 131_000, 140_000] {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        // Arguments and result that are tuples ending in bytes.
        assert_eq!(
            bounded(
                "stamp",
                greeter.stamp(u64::from(u32::MAX) + len as u64, data.clone())
            )
            .await
            .unwrap(),
            (u64::from(u32::MAX) + len as u64 + 1, data.clone()),
            "len {len}"
        );
        // A user error that is a long text.
        assert_eq!(
            bounded("stamp", greeter.stamp(0, data.clone()))
                .await
                .unwrap_err(),
            CallError::User("e".repeat(len)),
            "len {len}"
        );
        // Numbers below 128 encode one byte each after their count: the
        // encoding looks like a byte string, and is not one.
        let numbers: Vec<u16> = (0..len).map(|i| (i % 128) as u16).collect();
        let mut reversed = numbers.clone();
        reversed.reverse();
        assert_eq!(
            bounded("reverse", greeter.reverse(numbers)).await.unwrap(),
            reversed,
            "len {len}"
        );
    }
    assert!(p.client.ended().is_none() && p.server.ended().is_none());
}

pub(crate) async fn dropping_a_call_cancels_the_handler<F: Factory>(f: F) {
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

pub(crate) async fn deadlines_fail_and_cancel<F: Factory>(f: F) {
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

pub(crate) async fn excess_calls_wait_for_the_limit<F: Factory>(f: F) {
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

pub(crate) async fn streams_from_callee_to_caller<F: Factory>(f: F) {
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

pub(crate) async fn streams_from_caller_to_callee<F: Factory>(f: F) {
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

pub(crate) async fn large_items_stream_both_ways<F: Factory>(f: F) {
    let p = pair(&f).await;
    let calc = CalculatorClient::new(p.client.clone());
    // Around the size where items are written straight into the frame.
    let sizes = vec![0, 1, 4095, 4096, 4097, 60_000, 3];
    let (tx, mut rx) = p.client.channel::<Vec<u8>>().unwrap();
    let call = tokio::spawn({
        let (calc, sizes) = (calc.clone(), sizes.clone());
        async move { calc.chunks(sizes, tx).await }
    });
    for &size in &sizes {
        let item = bounded("item", rx.recv()).await.unwrap().unwrap();
        assert_eq!(item, (0..size).map(|i| i as u8).collect::<Vec<_>>());
    }
    assert!(bounded("end", rx.recv()).await.is_none());
    assert_eq!(bounded("call", call).await.unwrap().unwrap(), sizes.len() as u32);

    let parts: Vec<String> = [0, 5, 4096, 50_000]
        .iter()
        .map(|&n| "ωx".chars().cycle().take(n).collect())
        .collect();
    // Items that end in a large string (the receiver keeps its bytes apart).
    let (tx, rx) = p.client.channel::<(u32, String)>().unwrap();
    let call = tokio::spawn(async move { calc.join(rx).await });
    for (i, part) in parts.iter().enumerate() {
        bounded("send", tx.send(&(i as u32, part.clone()))).await.unwrap();
    }
    tx.close().await.unwrap();
    assert_eq!(bounded("join", call).await.unwrap().unwrap(), parts.join("|"));
}

pub(crate) async fn an_item_larger_than_a_message_is_refused_up_front<F: Factory>(f: F) {
    // The server accepts messages of 16 KiB and grants 20 000 bytes of
    // credit: an item of 17 000 bytes fits the window but no message.
    let server = Settings {
        max_payload: 16 << 10,
        initial_credit: 20_000,
        ..Settings::default()
    };
    let p = pair_with(&f, Settings::default(), server).await;
    let calc = CalculatorClient::new(p.client.clone());
    let (tx, rx) = p.client.channel::<(u32, String)>().unwrap();
    let call = tokio::spawn({
        let calc = calc.clone();
        async move { calc.join(rx).await }
    });
    let big = "x".repeat(17_000);
    match bounded("send", tx.send(&(0, big))).await {
        Err(osmos_session::ChannelError::Encode { detail }) => {
            assert!(detail.contains("does not fit one message"), "{detail}")
        }
        other => panic!("an item larger than a message: {other:?}"),
    }
    // Nothing was sent and no credit was taken: items adding up to more
    // than the window less the refused item still flow, and the session
    // goes on.
    let part = "y".repeat(4000);
    for i in 0..8u32 {
        bounded("send", tx.send(&(i, part.clone()))).await.unwrap();
    }
    tx.close().await.unwrap();
    let joined = bounded("join", call).await.unwrap().unwrap();
    assert_eq!(joined, vec![part; 8].join("|"));
    assert_eq!(calc.add(1, 2).await.unwrap(), 3);
}

pub(crate) async fn channels_can_be_returned<F: Factory>(f: F) {
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

pub(crate) async fn credit_exhaustion_stalls_and_resumes<F: Factory>(f: F) {
    // The client receives with a window of 64 items of one byte (u32 < 128
    // encodes in one byte; an item costs its bytes and 64), so the server
    // stalls after 64 unread items.
    let client = Settings {
        initial_credit: 64 * 65,
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

pub(crate) async fn a_slow_receiver_stalls_only_its_channel<F: Factory>(f: F) {
    // 32 one-byte items (each costs its byte and 64).
    let client = Settings {
        initial_credit: 32 * 65,
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

pub(crate) async fn channels_are_reused_beyond_the_table_size<F: Factory>(f: F) {
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

pub(crate) async fn virtual_connections_open_reject_and_close<F: Factory>(f: F) {
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

pub(crate) async fn goodbye_fails_pending_calls_with_the_reason<F: Factory>(f: F) {
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
