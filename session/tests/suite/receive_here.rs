//! Over shm, a caller waiting for its answer receives on its own thread
//! (`Runtime::block_on`, as `#[tokio::main]` runs `main`): everything that
//! arrives before its answer is handled as the driver would handle it, a
//! frame that breaks a rule ends the session as it would from the driver,
//! and a caller that stops waiting leaves receiving to the driver.
//!
//! The peer is a raw one on a thread of its own (`raw_peer`), so each test
//! decides what arrives while the session's caller waits. The test that
//! counts the calling thread's sleeps runs in the `alone` binary.

use crate::common;
use crate::raw_peer::*;

use std::time::Duration;

use common::bounded;
use osmos_session::wire::{self, Message, Outcome};
use osmos_session::{CallError, CallOptions, SessionError, method_id};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_arrives_before_the_answer_is_handled_by_the_waiting_caller() {
    let (conn, peer) = start(|mut raw| {
        let (request, x) = expect_call(&mut raw);
        // Before the answer: a Ping and a call of our own.
        raw.send(&Message::Ping { nonce: 99 });
        raw.call_double(1, 21);
        raw.answer(request, x + 1);
        let (mut pong, mut doubled) = (None, None);
        while pong.is_none() || doubled.is_none() {
            let Some(bytes) = raw.next() else { break };
            match wire::decode(&bytes).unwrap() {
                Message::Pong { nonce } => pong = Some(nonce),
                Message::Response {
                    request: 1,
                    outcome: Outcome::Ok(p),
                    ..
                } => doubled = Some(facet_postcard::from_slice::<u32>(p).unwrap()),
                _ => {}
            }
        }
        (pong, doubled)
    })
    .await;
    let got = bounded("the answer", next(&conn, 41, CallOptions::default())).await;
    assert_eq!(got.unwrap(), 42);
    let (pong, doubled) = join(peer).await;
    assert_eq!(pong, Some(99), "the Ping that came before the answer got no Pong");
    assert_eq!(
        doubled,
        Some(42),
        "the call that came before the answer was not answered"
    );
    assert!(conn.ended().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_frame_before_the_answer_ends_the_session_with_its_rule() {
    let (conn, peer) = start(|mut raw| {
        expect_call(&mut raw);
        raw.sender.send(&[0xff; 9], None).unwrap();
        // The session tells us which rule we broke.
        while let Some(bytes) = raw.next() {
            if let Ok(Message::ProtocolError { rule, .. }) = wire::decode(&bytes) {
                return Some(rule);
            }
        }
        None
    })
    .await;
    let got = bounded("the failed call", next(&conn, 1, CallOptions::default())).await;
    let err = got.expect_err("a call whose peer broke a rule");
    assert!(err.to_string().contains("frame.decodable"), "{err}");
    match bounded("the session's end", conn.closed()).await {
        SessionError::Violation { rule, .. } => assert_eq!(rule, "frame.decodable"),
        e => panic!("expected a violation of frame.decodable, got {e}"),
    }
    let told = join(peer).await;
    assert_eq!(told.as_deref(), Some("frame.decodable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_stops_waiting_leaves_receiving_to_the_driver() {
    let (doubled_tx, doubled_rx) = tokio::sync::oneshot::channel();
    let (conn, peer) = start(move |mut raw| {
        // The first call is never answered; once the session cancels it, we
        // call the session: only its driver can receive that now.
        let (first, _) = expect_call(&mut raw);
        let mut doubled_tx = Some(doubled_tx);
        while let Some(bytes) = raw.next() {
            match wire::decode(&bytes).unwrap() {
                Message::Cancel { request, .. } if request == first => raw.call_double(3, 21),
                Message::Response {
                    request: 3,
                    outcome: Outcome::Ok(p),
                    ..
                } => {
                    let v = facet_postcard::from_slice::<u32>(p).unwrap();
                    if let Some(tx) = doubled_tx.take() {
                        let _ = tx.send(v);
                    }
                }
                Message::Call { request, args, .. } => {
                    let (x,): (u32,) = facet_postcard::from_slice(args).unwrap();
                    raw.answer(request, x + 1);
                    return true;
                }
                _ => {}
            }
        }
        false
    })
    .await;
    let first = next(&conn, 1, CallOptions::timeout(Duration::from_millis(30))).await;
    assert!(
        matches!(first, Err(CallError::DeadlineExceeded { .. })),
        "{first:?}"
    );
    // Nobody waits for an answer now: the driver serves the peer's call.
    assert_eq!(bounded("the peer's call answered", doubled_rx).await.unwrap(), 42);
    let second = bounded("the second call", next(&conn, 1, CallOptions::default())).await;
    assert_eq!(second.unwrap(), 2);
    let answered = join(peer).await;
    assert!(answered);
}

/// Items that come while a call waits for its answer reach a receiver that
/// shares the call's task (joined with it) before the answer does, when the
/// peer runs on another CPU: the waiting caller lets the task's other work
/// run once it has queued items, so the stream is consumed while the peer
/// sends it, not found whole in the queue when the answer comes.
///
/// Counted over rounds: a round whose frames all reach the driver instead
/// (another test's threads may hold this CPU when the call goes out) has
/// the items and the answer handled together either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_joined_with_its_call_gets_items_before_the_answer() {
    let Some((mine, theirs)) = two_cpus() else {
        eprintln!("skipped: this needs two CPUs");
        return;
    };
    const ITEMS: u32 = 50;
    const ROUNDS: usize = 10;
    pin_this_thread(mine);
    let (conn, peer) = start(move |mut raw| {
        pin_this_thread(theirs);
        // Where this side runs is recorded when it waits; it may not wait
        // again before the items go (the call may be there already).
        raw.liveness.where_peer_runs();
        for _ in 0..ROUNDS {
            let (request, channel) = expect_stream_call(&mut raw);
            for i in 0..ITEMS {
                raw.send(&Message::Item {
                    channel,
                    payload: &wire::encode(&i).unwrap(),
                });
            }
            raw.send(&Message::Close { channel });
            raw.answer(request, ITEMS);
        }
    })
    .await;
    let mut early = 0;
    for _ in 0..ROUNDS {
        let (tx, mut rx) = conn.channel::<u32>().unwrap();
        let answered = std::cell::Cell::new(false);
        let call = async {
            let r = conn
                .call::<(osmos_session::Tx<u32>,), u32, String>(
                    method_id("Peer", "fill"),
                    &(tx,),
                    CallOptions::default(),
                )
                .await;
            answered.set(true);
            r
        };
        let receive = async {
            let (mut first_before_answer, mut got) = (None, Vec::new());
            while let Some(item) = rx.recv().await {
                first_before_answer.get_or_insert(!answered.get());
                got.push(item.unwrap());
            }
            (first_before_answer, got)
        };
        let (r, (first_before_answer, got)) =
            bounded("the call and its stream", async { tokio::join!(call, receive) }).await;
        assert_eq!(r.unwrap(), ITEMS);
        assert_eq!(got, (0..ITEMS).collect::<Vec<_>>());
        if first_before_answer == Some(true) {
            early += 1;
        }
    }
    join(peer).await;
    assert!(
        early * 2 > ROUNDS,
        "the receiver got its first item before the answer in only {early} of {ROUNDS} rounds"
    );
    assert!(conn.ended().is_none(), "{:?}", conn.ended());
}

/// A stream's receiver that stops receiving with items left (it may have
/// lent the receive side, see `RxClaim::lend`) holds up no one: a call of
/// its task gets its answer, the peer's own call is served while nobody
/// receives, and the items, the rest of them included, all arrive in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_stops_with_items_left_holds_up_no_one() {
    const ITEMS: u32 = 300;
    let (served_tx, served_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (conn, peer) = start(move |mut raw| {
        let (request, channel) = expect_stream_call(&mut raw);
        raw.answer(request, ITEMS);
        // The items come once the receiver waits for them (it then takes
        // them itself, and lends the receive side with items left).
        go_rx.recv().unwrap();
        for i in 0..ITEMS {
            raw.send(&Message::Item {
                channel,
                payload: &wire::encode(&i).unwrap(),
            });
        }
        // The receiver's task calls while it holds items back.
        let (request, x) = expect_call(&mut raw);
        raw.answer(request, x + 1);
        // Our own call, which only whoever receives can serve.
        raw.call_double(7, 21);
        let mut served_tx = Some(served_tx);
        while let Some(bytes) = raw.next() {
            if let Message::Response {
                request: 7,
                outcome: Outcome::Ok(p),
                ..
            } = wire::decode(&bytes).unwrap()
            {
                if let Some(tx) = served_tx.take() {
                    let _ = tx.send(facet_postcard::from_slice::<u32>(p).unwrap());
                }
                break;
            }
        }
        raw.send(&Message::Close { channel });
    })
    .await;
    let (tx, mut rx) = conn.channel::<u32>().unwrap();
    let args = (tx,);
    let filled = conn.call::<(osmos_session::Tx<u32>,), u32, String>(
        method_id("Peer", "fill"),
        &args,
        CallOptions::default(),
    );
    assert_eq!(bounded("the stream's call", filled).await.unwrap(), ITEMS);
    go_tx.send(()).unwrap();
    let mut got = vec![bounded("the first item", rx.recv()).await.unwrap().unwrap()];
    let answered = bounded(
        "a call while the receiver holds items back",
        next(&conn, 5, CallOptions::default()),
    )
    .await;
    assert_eq!(answered.unwrap(), 6);
    assert_eq!(
        bounded("the peer's call served while nobody receives", served_rx)
            .await
            .unwrap(),
        42
    );
    while let Some(item) = bounded("the rest of the stream", rx.recv()).await {
        got.push(item.unwrap());
    }
    assert_eq!(got, (0..ITEMS).collect::<Vec<_>>());
    join(peer).await;
    assert!(conn.ended().is_none(), "{:?}", conn.ended());
}
