//! Over shm, answers that wait for a free slot do not hold up the frames
//! queued behind them: a peer that keeps every slot we send it (so our
//! large answers wait in the outbox) still gets its Pongs and the answers
//! to its small calls (answered at once, or refused as unknown from the
//! outbox), and after the keepalive timeout the session ends with
//! `peer.releases-its-slots`.

use crate::common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::bounded;
use osmos_session::link::shm::ShmLink;
use osmos_session::wire::{self, Message, Outcome, PROTOCOL_VERSION, Settings};
use osmos_session::{SessionBuilder, SessionConfig, SessionError, method_id};
use osmos_shm::{Endpoint, Segment, SegmentConfig};

/// What the server serves: large answers to small calls, and small ones.
#[osmos_macros::service]
pub trait Bulk {
    /// `n` bytes.
    async fn fill(&self, n: u32) -> Vec<u8>;
    /// `x + 1`.
    async fn next(&self, x: u32) -> u32;
}

struct Impl;
impl Bulk for Impl {
    async fn fill(&self, n: u32) -> Vec<u8> {
        vec![7; n as usize]
    }
    async fn next(&self, x: u32) -> u32 {
        x + 1
    }
}

/// Large answers asked for: more than the segment has slots.
const LARGE: u64 = 48;
/// Small calls made once the slots are all kept.
const SMALL: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_answers_go_ahead_of_large_ones_waiting_for_a_slot() {
    let host = Segment::create(&SegmentConfig::default(), 1).unwrap();
    let cell = host.attach_peer().unwrap();
    let Endpoint {
        mut sender,
        mut receiver,
        ..
    } = cell.endpoint().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // The peer: calls `fill` LARGE times and keeps every slot its answers
    // come in, then calls `next` SMALL times; answers Pings. Returns the
    // requests answered, and how many slots it kept.
    let peer = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let send = |sender: &mut osmos_shm::FrameSender, m: &Message<'_>| {
                sender.send(&wire::encode(m).unwrap(), None)
            };
            let call = |request: u64, method: &str, x: u32| {
                let args = wire::encode(&(x,)).unwrap();
                wire::encode(&Message::Call {
                    conn: 0,
                    request,
                    method: method_id("Bulk", method),
                    metadata: vec![],
                    channels: vec![],
                    deadline_us: 0,
                    args: &args,
                })
                .unwrap()
            };
            send(
                &mut sender,
                &Message::Hello {
                    version: PROTOCOL_VERSION,
                    settings: Settings::default(),
                },
            )
            .unwrap();
            let mut answered = BTreeSet::new();
            let mut ponged = BTreeSet::new();
            let mut kept = 0usize;
            let mut asked_small = false;
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                let m = match receiver.recv(Some(Instant::now() + Duration::from_millis(50))) {
                    Ok(m) => m,
                    Err(osmos_shm::Error::Timeout { .. }) => continue,
                    Err(_) => break,
                };
                let bytes = m.to_vec();
                if m.in_slot() {
                    std::mem::forget(m);
                    kept += 1;
                } else {
                    drop(m);
                }
                match wire::decode(&bytes).unwrap() {
                    Message::HelloYourself { .. } => {
                        for r in 1..=LARGE {
                            sender.send(&call(2 * r - 1, "fill", 32 << 10), None).unwrap();
                        }
                    }
                    Message::Ping { nonce } => {
                        let _ = send(&mut sender, &Message::Pong { nonce });
                    }
                    Message::Pong { nonce } => {
                        ponged.insert(nonce);
                    }
                    Message::Response { request, outcome, .. } => {
                        let expected = if request > 2000 {
                            matches!(outcome, Outcome::UnknownMethod)
                        } else {
                            matches!(outcome, Outcome::Ok(_))
                        };
                        assert!(expected, "request {request}: {outcome:?}");
                        answered.insert(request);
                    }
                    _ => {}
                }
                // Every slot is kept and answers wait for one: the small
                // calls now.
                if !asked_small && kept >= 32 {
                    asked_small = true;
                    for r in 1..=SMALL {
                        sender.send(&call(1001 + 2 * r, "next", r as u32), None).unwrap();
                        sender.send(&call(2001 + 2 * r, "missing", 0), None).unwrap();
                        send(&mut sender, &Message::Ping { nonce: 7_000 + r }).unwrap();
                    }
                }
            }
            (answered, ponged, kept)
        }
    });
    let k = Duration::from_millis(500);
    let cfg = SessionConfig {
        keepalive_interval: k,
        keepalive_timeout: k * 6,
        ..SessionConfig::default()
    };
    let server = bounded(
        "the handshake",
        SessionBuilder::new()
            .config(cfg)
            .serve(BulkDispatcher::new(Impl))
            .accept(ShmLink::new(host.endpoint().unwrap())),
    )
    .await
    .unwrap();
    let end = bounded("the cut-off", server.closed()).await;
    stop.store(true, Ordering::Relaxed);
    let (answered, ponged, kept) = bounded(
        "the peer",
        tokio::task::spawn_blocking(move || peer.join().unwrap()),
    )
    .await
    .unwrap();
    // Request ids are odd: the initiator's parity.
    let small: Vec<u64> = (1..=SMALL).flat_map(|r| [1001 + 2 * r, 2001 + 2 * r]).collect();
    let pings: Vec<u64> = (1..=SMALL).map(|r| 7_000 + r).collect();
    assert!(
        pings.iter().all(|n| ponged.contains(n)),
        "Pongs stuck behind large answers waiting for a slot: got {ponged:?}; the session ended: {end}"
    );
    assert!(
        small.iter().all(|r| answered.contains(r)),
        "small answers stuck behind large ones waiting for a slot: answered {answered:?} ({kept} slots kept); the session ended: {end}"
    );
    let large = answered.iter().filter(|r| **r < 2 * LARGE).count() as u64;
    assert!(
        large < LARGE,
        "no large answer waited for a slot ({kept} slots kept)"
    );
    match end {
        SessionError::Violation { rule, .. } => assert_eq!(rule, "peer.releases-its-slots"),
        e => panic!("expected peer.releases-its-slots, got {e}"),
    }
}
