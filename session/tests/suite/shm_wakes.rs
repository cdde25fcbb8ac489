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
    for i in 0..1500u32 {
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
    }
    receiver.abort();
}
