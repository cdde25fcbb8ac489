//! The shm link's reactor wakes: a receiver that sleeps in the tokio
//! reactor is woken through the segment's wake socket pair, in one process
//! (the socket behaves the same across processes).

use std::time::{Duration, Instant};

use osmos_session::link::shm::ShmLink;
use osmos_shm::{Segment, SegmentConfig};

const BOUND: Duration = Duration::from_secs(30);

/// A receiver asleep in its reactor is woken by a byte on its wake socket
/// for each frame. Far more wakes than the socket's buffer holds bytes (a
/// few hundred) must each reach it: whatever this side reads of the
/// socket, and when, the buffer never fills so that a wake is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_woken_in_its_reactor_thousands_of_times_misses_no_wake() {
    wake_rounds(1500, |_| {}).await;
}

/// The receiver leaves the wake bytes in its descriptor (its epoll reports
/// each new byte, read or not) and drains them only before they could fill
/// the peer's send buffer: some stay unread, never more than the limit
/// (plus one a racing ring may add).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_in_its_reactor_leaves_wake_bytes_unread_up_to_the_limit() {
    let mut limit = None;
    let mut most = 0;
    wake_rounds(400, |cell_seg| {
        let liveness = cell_seg.liveness();
        let fd = liveness.wake_fd().expect("attached with its wake end");
        let limit = *limit.get_or_insert_with(|| osmos_shm::lazy_drain_limit(fd) as i32);
        let mut unread: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through a pointer to a live one.
        let r = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::FIONREAD, &mut unread) };
        assert_eq!(r, 0, "FIONREAD on the wake descriptor");
        assert!(
            unread <= limit + 1,
            "{unread} wake bytes wait unread, past the limit of {limit}"
        );
        most = most.max(unread);
    })
    .await;
    assert!(
        most >= 2,
        "the receiver read every wake byte at once (at most {most} waited)"
    );
}

/// `rounds` frames sent one at a time to a receiver asleep in its reactor,
/// each awaited (5 s at most); `after` looks at the receiving segment
/// after each.
async fn wake_rounds(rounds: u32, mut after: impl FnMut(&Segment)) {
    use osmos_session::link::{Link, LinkRx};
    let host_seg = Segment::create(&SegmentConfig::default(), 1).unwrap();
    let cell_seg = host_seg.attach_peer().unwrap();
    let mut host = host_seg.endpoint().unwrap();
    let bell = host.sender.producer().readable_watcher();
    let (_keep_tx, mut rx) = ShmLink::new(cell_seg.endpoint().unwrap()).split();
    let (got_tx, mut got) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    // A spawned task runs on a worker thread, which never blocks on the
    // futex: it sleeps in the reactor.
    let receiver = tokio::spawn(async move {
        while let Ok(Some(frame)) = rx.recv().await {
            let bytes = frame.to_vec();
            drop(frame);
            if got_tx.send(bytes).await.is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + BOUND;
    for i in 0..rounds {
        // The receiver withdrew its mark when it woke for the last frame:
        // a mark now means it sleeps again.
        while !bell.someone_parked() {
            assert!(Instant::now() < deadline, "the receiver never went back to sleep");
            tokio::task::yield_now().await;
        }
        host.sender.send(&i.to_le_bytes(), Some(deadline)).unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(5), got.recv())
            .await
            .unwrap_or_else(|_| panic!("the receiver asleep in its reactor missed the wake for frame {i}"))
            .expect("the receiver runs");
        assert_eq!(frame, i.to_le_bytes());
        after(&cell_seg);
    }
    receiver.abort();
}

/// Counts the wakes of a hand-polled future.
pub(crate) struct CountWakes(pub(crate) std::sync::atomic::AtomicUsize);

impl std::task::Wake for CountWakes {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A peer's raw sending end, and this side's link split, with the receive
/// side that callers claim.
pub(crate) fn claimable() -> (
    osmos_shm::Endpoint,
    osmos_session::link::shm::ShmTx,
    osmos_session::link::shm::ShmRx,
    std::sync::Arc<dyn osmos_session::link::DirectRx>,
) {
    use osmos_session::link::{Link, LinkRx};
    let host_seg = Segment::create(&SegmentConfig::default(), 1).unwrap();
    let cell_seg = host_seg.attach_peer().unwrap();
    let peer = host_seg.endpoint().unwrap();
    let (tx, rx) = ShmLink::new(cell_seg.endpoint().unwrap()).split();
    let direct = rx.direct().expect("the shm link is received from directly");
    (peer, tx, rx, direct)
}

/// A driver that finds the receive side claimed sleeps until the claim
/// hands the ring back. A claim let go with a frame waiting (one the peer
/// wrote without a wake, the driver's mark being off while the claim held
/// the lock) wakes it, and it receives the frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_let_go_with_a_frame_waiting_wakes_the_driver_behind_it() {
    use osmos_session::link::LinkRx;
    let (mut peer, _tx, mut rx, direct) = claimable();
    let claim = direct.claim().expect("nobody receives yet");
    let recv = rx.recv();
    tokio::pin!(recv);
    let woken = std::sync::Arc::new(CountWakes(Default::default()));
    let waker = std::task::Waker::from(woken.clone());
    let first = recv.as_mut().poll(&mut std::task::Context::from_waker(&waker));
    assert!(
        first.is_pending(),
        "the driver received while a claim held the receive side"
    );
    peer.sender
        .send(b"behind the claim", Some(Instant::now() + BOUND))
        .unwrap();
    drop(claim);
    let frame = tokio::time::timeout(Duration::from_secs(10), recv)
        .await
        .expect("the claim let go with a frame waiting and the driver behind it was never woken")
        .expect("the link works")
        .expect("the link is open");
    assert_eq!(&*frame, b"behind the claim");
}

/// A claim let go with the ring empty wakes nobody: it puts the driver's
/// reactor mark back (the peer sees it), and the peer's next frame wakes
/// the driver through its reactor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_let_go_with_the_ring_empty_wakes_nobody_and_the_next_frame_wakes_the_driver() {
    use osmos_session::link::LinkRx;
    use std::sync::atomic::Ordering;
    let (mut peer, _tx, mut rx, direct) = claimable();
    let bell = peer.sender.producer().readable_watcher();
    let claim = direct.claim().expect("nobody receives yet");
    let recv = rx.recv();
    tokio::pin!(recv);
    let woken = std::sync::Arc::new(CountWakes(Default::default()));
    let waker = std::task::Waker::from(woken.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(
        recv.as_mut().poll(&mut cx).is_pending(),
        "the driver received from an empty ring"
    );
    assert!(
        !bell.someone_parked(),
        "the driver's mark is on while a claim holds the receive side"
    );
    drop(claim);
    assert_eq!(
        woken.0.load(Ordering::SeqCst),
        0,
        "a claim let go with the ring empty woke the driver for nothing"
    );
    assert!(
        bell.someone_parked(),
        "the claim let go without putting the driver's mark back"
    );
    peer.sender
        .send(b"after the claim", Some(Instant::now() + BOUND))
        .unwrap();
    let deadline = Instant::now() + BOUND;
    while woken.0.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the peer's frame never woke the driver"
        );
        tokio::task::yield_now().await;
    }
    match recv.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Ok(Some(frame))) => assert_eq!(&*frame, b"after the claim"),
        std::task::Poll::Ready(_) => panic!("the link ended"),
        std::task::Poll::Pending => panic!("the driver, woken by the peer's frame, did not receive it"),
    }
}
