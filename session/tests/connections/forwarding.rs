//! Forwarding through a proxy: calls, answers, errors, streams with credit,
//! cancellation and closing, each hop on the link under test.

use super::*;

pub(crate) async fn forward_calls_answers_and_errors<F: Factory>(f: F) {
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
        // Byte items around the size where a receiver keeps an item's bytes
        // apart from its length prefix, relayed through the proxy.
        let (tx, rx) = conn.channel::<Vec<u8>>().unwrap();
        let joining = tokio::spawn({
            let calc = calc.clone();
            async move { calc.concat(rx).await }
        });
        let mut sent = Vec::new();
        for (i, n) in [4095usize, 4096, 4097, 70_000, 0, 65_536, 100]
            .into_iter()
            .enumerate()
        {
            let item: Vec<u8> = (0..n).map(|j| (j * 7 + i) as u8).collect();
            bounded("send", tx.send(&item)).await.unwrap();
            sent.extend_from_slice(&item);
        }
        tx.close().await.unwrap();
        assert_eq!(bounded("concat", joining).await.unwrap().unwrap(), sent);
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

pub(crate) async fn forward_streams_both_ways_with_credit<F: Factory>(f: F) {
    // Small windows on both ends (ten small items; each costs its bytes
    // and 64): items only flow as credit comes back through the proxy.
    let small = Settings {
        initial_credit: 650,
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

pub(crate) async fn forward_resets_an_item_too_large_for_the_next_hop<F: Factory>(f: F) {
    // The server accepts messages of 16 KiB; the client and the proxy take
    // far more. An item of 20 000 bytes reaches the proxy but cannot go on:
    // the server's channel ends with a reset that says why.
    let server = Settings {
        max_payload: 16 << 10,
        ..Settings::default()
    };
    let p = proxied(&f, Settings::default(), Settings::default(), server).await;
    let calc = CalculatorClient::new(p.client.clone());
    let (tx, rx) = p.client.channel::<Vec<u8>>().unwrap();
    let call = tokio::spawn({
        let calc = calc.clone();
        async move { calc.concat(rx).await }
    });
    bounded("send", tx.send(&vec![1u8; 100])).await.unwrap();
    bounded("send", tx.send(&vec![2u8; 20_000])).await.unwrap();
    let err = bounded("concat", call).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("does not fit one message"), "{err}");
    assert_eq!(
        bounded("add", calc.add(2, 3)).await.unwrap(),
        5,
        "the session goes on"
    );
}

pub(crate) async fn forward_cancels_reach_the_target<F: Factory>(f: F) {
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

pub(crate) async fn forward_closing_either_side_closes_the_other<F: Factory>(f: F) {
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

pub(crate) async fn forward_a_target_that_goes_away_fails_calls_with_its_reason<F: Factory>(f: F) {
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
