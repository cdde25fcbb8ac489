//! The rules that keep a peer from growing our memory or stalling our sends
//! without bound, each over every link where it applies: a real session
//! (the acceptor) against a raw initiator that misbehaves.

use std::time::Duration;

use osmos_session::link::{Link, LinkRx, LinkTx, SendPermit};
use osmos_session::wire::{self, Message, PROTOCOL_VERSION, Settings};
use osmos_session::{CallOptions, Connection, SessionBuilder, SessionConfig, SessionError};

use crate::common;
use common::*;

/// What the server serves.
#[osmos_macros::service]
pub trait Echo {
    /// Echoes bytes.
    async fn echo(&self, data: Vec<u8>) -> Result<Vec<u8>, String>;
}

struct Echoer;
impl Echo for Echoer {
    async fn echo(&self, data: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(data)
    }
}

/// A link half pair used by hand.
struct Raw<L: Link> {
    tx: L::Tx,
    rx: L::Rx,
}

impl<L: Link> Raw<L> {
    async fn send(&mut self, m: &Message<'_>) -> bool {
        let bytes = wire::encode(m).unwrap();
        let Ok(mut p) = self.tx.reserve(bytes.len()).await else {
            return false;
        };
        p.buf().copy_from_slice(&bytes);
        p.commit().await.is_ok()
    }
}

/// A server (keepalive `k`, timeout `3k`, at most `max_requests` calls in
/// flight) against a raw initiator that has done the handshake.
async fn raw_against_server<F: Factory>(f: &F, k: Duration, max_requests: u32) -> (Raw<F::L>, Connection) {
    let (a, b) = f.pair().await;
    let cfg = SessionConfig {
        keepalive_interval: k,
        keepalive_timeout: k * 3,
        settings: Settings {
            max_concurrent_requests: max_requests,
            ..Settings::default()
        },
        ..SessionConfig::default()
    };
    let server = tokio::spawn(
        SessionBuilder::new()
            .config(cfg)
            .serve(EchoDispatcher::new(Echoer))
            .accept(b),
    );
    let (tx, rx) = a.split();
    let mut raw = Raw::<F::L> { tx, rx };
    assert!(
        raw.send(&Message::Hello {
            version: PROTOCOL_VERSION,
            settings: Settings::default(),
        })
        .await
    );
    let hello = bounded("hello", raw.rx.recv()).await.unwrap().unwrap().to_vec();
    assert!(matches!(
        wire::decode(&hello).unwrap(),
        Message::HelloYourself { .. }
    ));
    let server = bounded("server", server).await.unwrap().unwrap();
    (raw, server)
}

/// A peer that never reads but keeps sending Pongs nobody asked for (and
/// Pongs with guessed nonces) does not keep the session alive.
async fn unsolicited_pongs_do_not_keep_a_session_up<F: Factory>(f: F) {
    let (mut raw, server) = raw_against_server(&f, Duration::from_millis(100), 64).await;
    let flood = tokio::spawn(async move {
        for nonce in 0..u64::MAX {
            if !raw.send(&Message::Pong { nonce }).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    match bounded("the keepalive", server.closed()).await {
        SessionError::KeepaliveTimeout { silent_for } => {
            assert!(silent_for >= Duration::from_millis(300), "{silent_for:?}")
        }
        e => panic!("expected a keepalive timeout, got {e}"),
    }
    flood.abort();
}

/// A peer that sends calls and never reads the answers runs into the request
/// limit: an unsent answer keeps its call counted until it is written, and
/// no task or buffer grows per call.
async fn a_peer_that_calls_and_never_reads_hits_the_request_limit<F: Factory>(f: F) {
    let (mut raw, server) = raw_against_server(&f, Duration::from_secs(5), 64).await;
    let echo = osmos_session::method_id("Echo", "echo");
    let args = wire::encode(&(vec![7u8; 32 << 10],)).unwrap();
    let flood = tokio::spawn(async move {
        for request in (1..u64::MAX).step_by(2) {
            let call = Message::Call {
                conn: 0,
                request,
                method: echo,
                deadline_us: 0,
                metadata: vec![],
                channels: vec![],
                args: &args,
            };
            if !raw.send(&call).await {
                return request;
            }
        }
        u64::MAX
    });
    match bounded("the cut-off", server.closed()).await {
        SessionError::Violation { rule, .. } => assert_eq!(rule, "request.limit"),
        e => panic!("expected request.limit, got {e}"),
    }
    flood.abort();
}

/// A peer that reads nothing while we must send to it is cut off after the
/// keepalive timeout with its own rule, and our waiting calls fail with it.
async fn a_peer_that_never_drains_its_link_is_cut_off<F: Factory>(f: F) {
    let (raw, server) = raw_against_server(&f, Duration::from_millis(100), 64).await;
    // Calls to the raw peer, large enough to fill any link's buffers.
    let mut calls = Vec::new();
    for _ in 0..256 {
        let server = server.clone();
        calls.push(tokio::spawn(async move {
            server
                .call::<_, Vec<u8>, String>(1, &(vec![1u8; 64 << 10],), CallOptions::default())
                .await
        }));
    }
    // Over shm these calls travel in slots, and a peer that reads nothing
    // also holds on to those: whichever stall comes first names the rule.
    let rule = match bounded("the cut-off", server.closed()).await {
        SessionError::Violation { rule, .. } => {
            assert!(
                ["peer.drains-its-link", "peer.releases-its-slots"].contains(&rule),
                "{rule}"
            );
            rule
        }
        e => panic!("expected peer.drains-its-link, got {e}"),
    };
    for c in calls {
        let err = bounded("a call", c).await.unwrap().unwrap_err();
        assert!(err.to_string().contains(rule), "{err}");
    }
    drop(raw);
}

macro_rules! rules {
    ($link:ident, $factory:expr $(, $name:ident)*) => {
        mod $link {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($factory).await;
                }
            )*
        }
    };
}

rules!(
    memory,
    MemoryFactory,
    unsolicited_pongs_do_not_keep_a_session_up,
    a_peer_that_calls_and_never_reads_hits_the_request_limit,
    a_peer_that_never_drains_its_link_is_cut_off
);
rules!(
    unix,
    UnixFactory,
    unsolicited_pongs_do_not_keep_a_session_up,
    a_peer_that_calls_and_never_reads_hits_the_request_limit,
    a_peer_that_never_drains_its_link_is_cut_off
);
// Loopback TCP: a flooder that does not read stalls on its own full receive
// buffer long before the server's request limit is reached.
rules!(
    tcp,
    TcpFactory,
    unsolicited_pongs_do_not_keep_a_session_up,
    a_peer_that_never_drains_its_link_is_cut_off
);
rules!(
    shm,
    ShmFactory,
    unsolicited_pongs_do_not_keep_a_session_up,
    a_peer_that_calls_and_never_reads_hits_the_request_limit,
    a_peer_that_never_drains_its_link_is_cut_off
);

/// Over shm, a peer that rings our wake descriptor without publishing frames
/// is cut off (`link.empty-wakes`) instead of costing us a CPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shm_a_doorbell_storm_is_cut_off() {
    use osmos_session::link::shm::ShmLink;
    use osmos_shm::{Segment, SegmentConfig};
    let host = Segment::create(&SegmentConfig::default(), 1).unwrap();
    let cell = host.attach_peer().unwrap();
    let storm_fd = cell.liveness().wake_fd().unwrap().try_clone_to_owned().unwrap();
    let (a, b) = (
        ShmLink::new(cell.endpoint().unwrap()),
        ShmLink::new(host.endpoint().unwrap()),
    );
    let server = tokio::spawn(SessionBuilder::new().serve(EchoDispatcher::new(Echoer)).accept(b));
    let (tx, rx) = a.split();
    let mut raw = Raw::<ShmLink> { tx, rx };
    assert!(
        raw.send(&Message::Hello {
            version: PROTOCOL_VERSION,
            settings: Settings::default(),
        })
        .await
    );
    let server = bounded("server", server).await.unwrap().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let storm = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 50_000_000 {
                // SAFETY: a one-byte buffer that lives across the call, on
                // an fd this thread owns.
                unsafe {
                    libc::send(
                        std::os::fd::AsRawFd::as_raw_fd(&storm_fd),
                        [1u8].as_ptr().cast(),
                        1,
                        libc::MSG_DONTWAIT,
                    )
                };
                sent += 1;
                std::thread::yield_now();
            }
        })
    };
    match bounded("the cut-off", server.closed()).await {
        SessionError::Violation { rule, .. } => assert_eq!(rule, "link.empty-wakes"),
        e => panic!("expected link.empty-wakes, got {e}"),
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    storm.join().unwrap();
    drop(raw);
}

/// Over shm, a peer that reads every frame but never gives our slots back
/// stalls only the large frames that need one: small calls made meanwhile
/// go out and complete (the slot wait does not hold the send lock), and
/// after the keepalive timeout the session ends with its own rule,
/// failing the large calls with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shm_a_peer_that_hoards_our_slots_stalls_only_large_frames() {
    use osmos_session::link::shm::ShmLink;
    use osmos_session::wire::Outcome;
    use osmos_shm::{Endpoint, Segment, SegmentConfig};
    let host = Segment::create(&SegmentConfig::default(), 1).unwrap();
    let cell = host.attach_peer().unwrap();
    let Endpoint {
        mut sender,
        mut receiver,
        liveness: cell_liveness,
        ..
    } = cell.endpoint().unwrap();
    let max_inline = sender.max_inline();
    // The hoarder: answers the handshake, Pings and small calls; keeps
    // every slot it is sent (and never answers those calls).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_hoarding = stop.clone();
    let hoarder = std::thread::spawn(move || {
        let mut hoarded = 0usize;
        loop {
            let m = match receiver.recv(Some(std::time::Instant::now() + Duration::from_millis(100))) {
                Ok(m) => m,
                Err(osmos_shm::Error::Timeout { .. })
                    if !stop_hoarding.load(std::sync::atomic::Ordering::Relaxed) =>
                {
                    continue;
                }
                Err(e) => {
                    eprintln!("hoarder: {e}");
                    return hoarded;
                }
            };
            let bytes = m.to_vec();
            if m.in_slot() {
                std::mem::forget(m);
                hoarded += 1;
                continue;
            }
            drop(m);
            let reply = match wire::decode(&bytes).unwrap() {
                Message::Hello { .. } => Message::HelloYourself {
                    version: PROTOCOL_VERSION,
                    settings: Settings::default(),
                },
                Message::Ping { nonce } => Message::Pong { nonce },
                Message::Call {
                    conn, request, args, ..
                } => {
                    let (echoed,) = osmos_session::decode_args::<(Vec<u8>,)>(args).unwrap();
                    let body = wire::encode(&echoed).unwrap();
                    let frame = wire::encode(&Message::Response {
                        conn,
                        request,
                        metadata: vec![],
                        channels: vec![],
                        outcome: Outcome::Ok(&body),
                    })
                    .unwrap();
                    if sender.send(&frame, None).is_err() {
                        return hoarded;
                    }
                    continue;
                }
                _ => continue,
            };
            if sender.send(&wire::encode(&reply).unwrap(), None).is_err() {
                return hoarded;
            }
        }
    });
    let k = Duration::from_millis(300);
    let cfg = SessionConfig {
        keepalive_interval: k,
        keepalive_timeout: k * 10,
        ..SessionConfig::default()
    };
    let client = bounded(
        "the handshake",
        SessionBuilder::new()
            .config(cfg)
            .initiate(ShmLink::new(host.endpoint().unwrap())),
    )
    .await
    .unwrap();
    let echo = EchoClient::new(client.clone());
    // Large calls until the pool runs dry: each travels in a slot the
    // hoarder keeps, so the later ones wait for a slot.
    let large: Vec<_> = (0..512)
        .map(|_| {
            let echo = echo.clone();
            tokio::spawn(async move { echo.echo(vec![9u8; max_inline * 4]).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Small calls go out beside the waiting large ones and complete.
    for i in 0..5u8 {
        let got = bounded("a small call behind a slot wait", echo.echo(vec![i; 8]))
            .await
            .unwrap();
        assert_eq!(got, vec![i; 8]);
    }
    assert!(
        client.ended().is_none(),
        "the session ended early: {:?}",
        client.ended()
    );
    match bounded("the cut-off", client.closed()).await {
        SessionError::Violation { rule, .. } => assert_eq!(rule, "peer.releases-its-slots"),
        e => panic!("expected peer.releases-its-slots, got {e}"),
    }
    let mut failed = 0;
    for c in large {
        if let Err(e) = bounded("a large call", c).await.unwrap() {
            assert!(e.to_string().contains("peer.releases-its-slots"), "{e}");
            failed += 1;
        }
    }
    assert!(failed > 0, "no large call waited for a slot");
    drop(client);
    drop(host);
    // The host's ended session marked its side dead, for good (a half
    // closing after that must not bring it back).
    let host_side = osmos_shm::Side::Host;
    let dead = bounded("the host side marked dead", async {
        while cell_liveness.state(host_side) != osmos_shm::PeerState::Dead {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    dead.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        bounded(
            "the hoarder",
            tokio::task::spawn_blocking(move || hoarder.join().unwrap())
        )
        .await
        .unwrap()
            > 0
    );
}
