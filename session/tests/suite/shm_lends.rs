//! The shm link's lent receive side (`RxClaim::lend`): a stream's receiver
//! that lends the receive lock between batches keeps the driver's mark off
//! (the peer's frames wake nobody), yet whoever claims next gets the lock,
//! a lend nobody takes back returns to the driver, and ending a lend hands
//! the ring back at once. With the peer on the lender's CPU a lend is an
//! ordinary let-go.
//!
//! Each test pins its thread and records the raw peer as running on the
//! other CPU (or the same one), as the peer's own waits would; on a
//! machine with one CPU they are skipped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use osmos_session::link::LinkRx;

use super::raw_peer::{pin_this_thread, two_cpus};
use super::shm_wakes::{CountWakes, claimable};

const BOUND: Duration = Duration::from_secs(30);

/// Pins this thread to one CPU and records `peer` as running on the other
/// one (`same`: on this one); `None` with a single CPU.
fn place_peer(peer: &osmos_shm::Endpoint, same: bool) -> Option<()> {
    let Some((mine, theirs)) = two_cpus() else {
        eprintln!("skipped: this needs two CPUs");
        return None;
    };
    pin_this_thread(mine);
    let live = peer.liveness.clone();
    let cpu = if same { mine } else { theirs };
    std::thread::spawn(move || {
        pin_this_thread(cpu);
        live.where_peer_runs();
    })
    .join()
    .unwrap();
    Some(())
}

/// Polls the driver's pending `recv` once with a waker that counts its
/// wakes, which it returns with the count; the driver must wait (`what`
/// holds the receive side).
fn driver_waits<F: std::future::Future>(recv: std::pin::Pin<&mut F>, what: &str) -> (Arc<CountWakes>, Waker) {
    let woken = Arc::new(CountWakes(Default::default()));
    let waker = Waker::from(woken.clone());
    assert!(
        recv.poll(&mut Context::from_waker(&waker)).is_pending(),
        "the driver received while {what}"
    );
    (woken, waker)
}

/// A lent receive side goes to whoever claims next, and its frames with
/// it: the peer's frame written while it was lent is the claimant's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lent_receive_side_goes_to_whoever_claims_next() {
    let (mut peer, _tx, _rx, direct) = claimable();
    let Some(()) = place_peer(&peer, false) else {
        return;
    };
    let claim = direct.claim().expect("nobody receives yet");
    assert!(
        direct.claim().is_none(),
        "a second claim was granted while the first held the receive side"
    );
    claim.lend();
    let bell = peer.sender.producer().readable_watcher();
    assert!(
        !bell.someone_parked(),
        "a lend put a mark on the bell: the peer's frames would wake a receiver"
    );
    peer.sender
        .send(b"while lent", Some(Instant::now() + BOUND))
        .unwrap();
    let mut next = direct
        .claim()
        .expect("the lent receive side was refused to the next claim");
    match next.next() {
        osmos_session::link::Here::Frame(frame, _) => assert_eq!(frame, b"while lent"),
        other => panic!("the claim that took the lent side found {other:?}"),
    }
    assert!(direct.claim().is_none(), "the lent side went to two claims");
}

/// A lend that nobody takes back returns to the driver: the driver, asleep
/// behind the claim before it was lent (so only the lend can tell it to
/// watch), takes the lock back and receives the frame the peer wrote
/// meanwhile, although nothing rang for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lend_nobody_takes_back_returns_to_the_driver() {
    let (mut peer, _tx, mut rx, direct) = claimable();
    let Some(()) = place_peer(&peer, false) else {
        return;
    };
    let claim = direct.claim().expect("nobody receives yet");
    let recv = rx.recv();
    tokio::pin!(recv);
    driver_waits(recv.as_mut(), "a claim held the receive side");
    claim.lend();
    peer.sender
        .send(b"nobody came back", Some(Instant::now() + BOUND))
        .unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(10), recv)
        .await
        .expect("a lend nobody took back kept the driver from the peer's frame")
        .expect("the link works")
        .expect("the link is open");
    assert_eq!(&*frame, b"nobody came back");
}

/// Ending a lend hands the ring back as a claim let go does: with a frame
/// waiting, the driver behind it is woken then and there (not when it next
/// looks at the lends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_lend_wakes_the_driver_for_a_waiting_frame_at_once() {
    let (mut peer, _tx, mut rx, direct) = claimable();
    let Some(()) = place_peer(&peer, false) else {
        return;
    };
    direct.claim().expect("nobody receives yet").lend();
    let recv = rx.recv();
    tokio::pin!(recv);
    let (woken, waker) = driver_waits(recv.as_mut(), "the receive side was lent");
    let mut cx = Context::from_waker(&waker);
    peer.sender
        .send(b"handed back", Some(Instant::now() + BOUND))
        .unwrap();
    let before = woken.0.load(Ordering::SeqCst);
    direct.end_lend();
    assert!(
        woken.0.load(Ordering::SeqCst) > before,
        "ending the lend with a frame waiting did not wake the driver"
    );
    let deadline = Instant::now() + BOUND;
    loop {
        match recv.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(Some(frame))) => {
                assert_eq!(&*frame, b"handed back");
                break;
            }
            Poll::Ready(other) => panic!("the link ended: {:?}", other.err()),
            Poll::Pending => {
                assert!(
                    Instant::now() < deadline,
                    "the woken driver never received the frame"
                );
                tokio::task::yield_now().await;
            }
        }
    }
}

/// With the peer on the lender's CPU there is nothing to spare (the peer
/// cannot send while the lender runs): a lend lets the claim go as usual,
/// and the driver behind it has its mark back, so the peer's next frame
/// wakes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lend_with_the_peer_on_this_cpu_lets_go_as_usual() {
    let (mut peer, _tx, mut rx, direct) = claimable();
    let Some(()) = place_peer(&peer, true) else { return };
    let bell = peer.sender.producer().readable_watcher();
    let claim = direct.claim().expect("nobody receives yet");
    let recv = rx.recv();
    tokio::pin!(recv);
    driver_waits(recv.as_mut(), "a claim held the receive side");
    claim.lend();
    assert!(
        bell.someone_parked(),
        "a lend with the peer on this CPU kept the driver's mark off"
    );
    assert!(
        direct.claim().is_some(),
        "the receive side let go is not free to claim"
    );
}
