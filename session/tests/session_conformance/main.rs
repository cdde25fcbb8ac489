//! The session conformance suite: the same test bodies run over every link
//! (`memory::*`, `unix::*`, `tcp::*`, `shm::*`). Each body gets a fresh connected link
//! pair from the link's factory.
//!
//! The services and session pairs are in `services.rs`, the bodies between
//! two real sessions in `bodies.rs`, those against a raw, lying peer in
//! `raw_bodies.rs`; this file instantiates them per link and holds the
//! shm-only tests.

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

mod bodies;
#[path = "../common/mod.rs"]
mod common;
mod gathering;
mod raw_bodies;
mod services;

use bodies::*;
use common::*;
use gathering::batch_of;
use raw_bodies::*;
use services::*;

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
                large_trailing_bytes_decode_exactly,
                dropping_a_call_cancels_the_handler,
                deadlines_fail_and_cancel,
                excess_calls_wait_for_the_limit,
                streams_from_callee_to_caller,
                streams_from_caller_to_callee,
                large_items_stream_both_ways,
                an_item_larger_than_a_message_is_refused_up_front,
                channels_can_be_returned,
                credit_exhaustion_stalls_and_resumes,
                a_slow_receiver_stalls_only_its_channel,
                virtual_connections_open_reject_and_close,
                channels_are_reused_beyond_the_table_size,
                goodbye_fails_pending_calls_with_the_reason,
                version_mismatch_names_both_versions,
                undecodable_frames_end_the_session,
                lying_frames_are_violations,
                a_batch_is_handled_like_its_messages_alone,
                too_many_concurrent_requests_is_a_violation,
                credit_overrun_and_data_after_close_are_violations,
                interleaved_items_reach_their_channels_and_late_ones_are_dropped,
                items_in_one_batch_reach_their_channels_in_order,
                a_silent_peer_times_out,
                keepalive_keeps_an_idle_session_up,
                a_dropped_link_fails_pending_calls,
                a_violation_fails_pending_calls_with_the_rule,
                a_goodbye_wins_over_a_send_that_finds_the_link_closed,
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
    let args = sum_args();
    raw.send(&sum_call(1, 1, &args)).await;
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
    let args = sum_args();
    for (request, channel) in [(1u64, 1u64), (3, 257)] {
        raw.send(&sum_call(request, channel, &args)).await;
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
    let (mut raw, client) = raw_against_client().await;
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
