//! The conformance bodies run against every link: order, volume both ways,
//! backpressure, oversized frames, dropped permits, close, a dropped peer and
//! a cancelled `recv`.

use osmos_session::link::{CreditMode, Link, LinkError, LinkRx, LinkTx, SendPermit};
use tokio::time::timeout;

use crate::harness::Harness;
use crate::helpers::{
    Rng, Tally, check_numbered, expect_end, expect_frame, fill, pattern, send, send_numbered,
};
use crate::{PROBE, within};

/// Frames of many sizes (0, 1, 4095, 64 KiB, max_frame, …) arrive intact and
/// in order, while the sender runs concurrently with the receiver.
pub async fn frames_arrive_in_order<H: Harness>() {
    const MAX: usize = 256 * 1024;
    let (a, b) = H::pair(MAX).await;
    assert_eq!(a.max_frame(), MAX);
    assert!(matches!(a.credit_mode(), CreditMode::Messages));
    let (mut tx, _a_rx) = a.split();
    let (_b_tx, mut rx) = b.split();
    let sizes = [0, 1, 4095, 4096, 65536, MAX, 0, 7, MAX - 1, 1, 100, MAX, 3];

    let writer = tokio::spawn(async move {
        for (i, &len) in sizes.iter().enumerate() {
            let mut permit = tx.reserve(len).await.expect("reserve");
            fill(i as u64, permit.buf());
            permit.commit().await.expect("commit");
        }
        tx
    });
    for (i, &len) in sizes.iter().enumerate() {
        expect_frame(&mut rx, &pattern(i as u64, len)).await;
    }
    let _tx = within("the writer", writer).await.expect("writer task");
}

/// 20 MiB each way, both directions at once, frames of random sizes up to
/// max_frame, checked by count, bytes and checksum; the senders then close
/// and the receivers see the end.
pub async fn large_volumes_both_directions<H: Harness>() {
    const MAX: usize = 64 * 1024;
    const VOLUME: u64 = 20 << 20;
    let (a, b) = H::pair(MAX).await;
    let (a_tx, a_rx) = a.split();
    let (b_tx, b_rx) = b.split();

    async fn pump<T: LinkTx>(mut tx: T, seed: u64) -> (Tally, T) {
        let mut rng = Rng(seed);
        let mut tally = Tally::default();
        let mut seq = seed << 32;
        while tally.bytes < VOLUME {
            let len = rng.upto(MAX);
            let mut permit = within("a reservation", tx.reserve(len)).await.expect("reserve");
            fill(seq, permit.buf());
            tally.add(permit.buf());
            within("a commit", permit.commit()).await.expect("commit");
            seq += 1;
        }
        within("close", tx.close()).await.expect("close");
        (tally, tx)
    }

    async fn drain<R: LinkRx>(mut rx: R) -> (Tally, R) {
        let mut tally = Tally::default();
        loop {
            match within("a frame", rx.recv()).await {
                Ok(Some(frame)) => tally.add(&frame),
                Ok(None) => break,
                Err(e) => panic!("receive failed after {} frames: {e}", tally.frames),
            }
        }
        (tally, rx)
    }

    let a_sends = tokio::spawn(pump(a_tx, 1));
    let b_sends = tokio::spawn(pump(b_tx, 2));
    let b_gets = tokio::spawn(drain(b_rx));
    let a_gets = tokio::spawn(drain(a_rx));
    let (a_sent, _) = within("a's sender", a_sends).await.expect("a's sender");
    let (b_sent, _) = within("b's sender", b_sends).await.expect("b's sender");
    let (b_got, _) = within("b's receiver", b_gets).await.expect("b's receiver");
    let (a_got, _) = within("a's receiver", a_gets).await.expect("a's receiver");
    assert!(a_sent.bytes >= VOLUME && b_sent.bytes >= VOLUME);
    assert_eq!(a_sent, b_got, "a → b");
    assert_eq!(b_sent, a_got, "b → a");
}

/// A sender whose peer does not read ends up waiting (in `reserve` on the
/// memory link, in `commit` once the socket buffers are full on a stream),
/// and proceeds as soon as the peer reads; every frame arrives intact.
pub async fn backpressure_waits_then_proceeds<H: Harness>() {
    const MAX: usize = 64 * 1024;
    /// Give up if this much went out without the sender ever waiting.
    const NEVER_WAITED: u64 = (512 << 20) / MAX as u64;
    let (a, b) = H::pair(MAX).await;
    let (mut tx, _a_rx) = a.split();
    let (_b_tx, mut rx) = b.split();

    let mut seq = 0;
    loop {
        match timeout(PROBE, send_numbered(&mut tx, seq, MAX)).await {
            Ok(sent) => sent.expect("send while the peer's buffers fill"),
            Err(_elapsed) => break,
        }
        seq += 1;
        assert!(
            seq < NEVER_WAITED,
            "sent {} MiB to a peer that reads nothing and the sender never waited",
            (seq * MAX as u64) >> 20
        );
    }
    // Frame `cut` was cut short by the probe: it arrives whole or not at all.
    let cut = seq;
    assert!(cut >= 1, "the sender waited before a single frame could go out");

    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        loop {
            match within("a frame after the peer resumed", rx.recv()).await {
                Ok(Some(frame)) => seqs.push(check_numbered(&frame, MAX)),
                Ok(None) => break,
                Err(e) => panic!("receive failed after {} frames: {e}", seqs.len()),
            }
        }
        (seqs, rx)
    });
    within(
        "a send after the peer started reading",
        send_numbered(&mut tx, cut + 1, MAX),
    )
    .await
    .expect("send after the peer started reading");
    within("close", tx.close()).await.expect("close");
    let (seqs, _rx) = within("the reader", reader).await.expect("reader task");

    let mut expected: Vec<u64> = (0..cut).collect();
    if seqs.contains(&cut) {
        expected.push(cut);
    }
    expected.push(cut + 1);
    assert_eq!(
        seqs, expected,
        "frames lost, repeated or reordered around the wait"
    );
}

/// A frame larger than max_frame is refused at `reserve`, and the link stays
/// usable.
pub async fn oversized_frame_is_refused<H: Harness>() {
    const MAX: usize = 4096;
    let (a, b) = H::pair(MAX).await;
    let (mut tx, _a_rx) = a.split();
    let (_b_tx, mut rx) = b.split();
    for len in [MAX + 1, 10 * MAX, usize::MAX] {
        match within("a refused reservation", tx.reserve(len)).await {
            Err(LinkError::FrameTooLarge { len: got, max }) => {
                assert_eq!((got, max), (len, MAX));
                let message = LinkError::FrameTooLarge { len, max }.to_string();
                assert!(message.contains(&len.to_string()) && message.contains(&MAX.to_string()));
            }
            Err(e) => panic!("reserve({len}) failed with {e}, not FrameTooLarge"),
            Ok(_) => panic!("reserve({len}) succeeded on a link with max_frame {MAX}"),
        }
    }
    let full = pattern(7, MAX);
    within("a send", send(&mut tx, &full))
        .await
        .expect("send max_frame");
    expect_frame(&mut rx, &full).await;
}

/// A permit dropped without commit sends nothing: the next committed frame is
/// the next one received.
pub async fn dropped_permit_sends_nothing<H: Harness>() {
    let (a, b) = H::pair(1024).await;
    let (mut tx, _a_rx) = a.split();
    let (_b_tx, mut rx) = b.split();
    for len in [10, 0, 1024] {
        let mut permit = within("a reservation", tx.reserve(len)).await.expect("reserve");
        permit.buf().fill(b'X');
        drop(permit);
    }
    within("a send", send(&mut tx, b"hello")).await.expect("send");
    within("a send", send(&mut tx, b"")).await.expect("send");
    within("a send", send(&mut tx, b"world")).await.expect("send");
    expect_frame(&mut rx, b"hello").await;
    expect_frame(&mut rx, b"").await;
    expect_frame(&mut rx, b"world").await;
    // Nothing else is in flight.
    assert!(
        timeout(PROBE, rx.recv()).await.is_err(),
        "a dropped permit's frame arrived"
    );
}

/// `close` lets the peer drain the earlier frames, then `recv` returns
/// `Ok(None)` (and keeps doing so); the other direction still works; sending
/// on the closed half fails.
pub async fn close_drains_then_ends<H: Harness>() {
    let (a, b) = H::pair(64 * 1024).await;
    let (mut a_tx, mut a_rx) = a.split();
    let (mut b_tx, mut b_rx) = b.split();
    let frames = [pattern(1, 100), pattern(2, 0), pattern(3, 60_000)];
    for frame in &frames {
        within("a send", send(&mut a_tx, frame)).await.expect("send");
    }
    within("close", a_tx.close()).await.expect("close");
    within("a second close", a_tx.close())
        .await
        .expect("closing twice is harmless");
    for frame in &frames {
        expect_frame(&mut b_rx, frame).await;
    }
    expect_end(&mut b_rx).await;
    expect_end(&mut b_rx).await;

    // The other direction is still open.
    within("a reply", send(&mut b_tx, b"reply")).await.expect("reply");
    expect_frame(&mut a_rx, b"reply").await;

    match within("reserve after close", a_tx.reserve(1)).await {
        Err(LinkError::Closed) => {}
        Err(e) => panic!("reserve after close failed with {e}, not Closed"),
        Ok(_) => panic!("reserve after close succeeded"),
    }
}

/// When the peer drops its link, a pending `recv` ends (end of link or a
/// Closed/PeerGone error) and sending fails with Closed/PeerGone, instead of
/// hanging.
pub async fn peer_dropped_fails_instead_of_hanging<H: Harness>() {
    let (a, b) = H::pair(4096).await;
    let (mut tx, mut rx) = a.split();
    let pending = tokio::spawn(async move {
        let got = rx.recv().await.map(|frame| frame.map(|f| f.to_vec()));
        (got, rx)
    });
    drop(b);
    let (got, _rx) = within("a recv woken by the peer's drop", pending)
        .await
        .expect("recv task");
    match got {
        Ok(None) | Err(LinkError::Closed | LinkError::PeerGone { .. }) => {}
        Ok(Some(frame)) => panic!("a frame of {} bytes came from a dropped peer", frame.len()),
        Err(e) => panic!("recv after the peer dropped failed with {e}, not Closed/PeerGone"),
    }

    // The first writes may still land in kernel buffers; an error must come.
    let frame = pattern(3, 1024);
    let mut attempts = 0;
    let error = loop {
        attempts += 1;
        assert!(
            attempts <= 10_000,
            "10000 frames sent to a dropped peer without an error"
        );
        if let Err(e) = within("a send to a dropped peer", send(&mut tx, &frame)).await {
            break e;
        }
    };
    assert!(
        matches!(error, LinkError::Closed | LinkError::PeerGone { .. }),
        "sending to a dropped peer failed with {error}, not Closed/PeerGone"
    );
}

/// A `recv` cancelled while nothing has arrived loses nothing.
pub async fn cancelled_recv_loses_nothing<H: Harness>() {
    let (a, b) = H::pair(4096).await;
    let (mut tx, _a_rx) = a.split();
    let (_b_tx, mut rx) = b.split();
    assert!(
        timeout(PROBE, rx.recv()).await.is_err(),
        "a frame came from nowhere"
    );
    within("a send", send(&mut tx, b"after the cancel"))
        .await
        .expect("send");
    expect_frame(&mut rx, b"after the cancel").await;
}
