//! The scribbler's offsets: the hostile tests write the library's control
//! words at offsets that are not public (`hostile/mod.rs` mirrors
//! `RingCtrl`, `PoolCtrl`, `CreditEntry` and `LivenessWords`). This test
//! pins each of them to what the library actually reads and writes there, so
//! a layout change cannot quietly turn the scribbler into a no-op.

mod common;
mod hostile;

use std::time::{Duration, Instant};

use hostile::mem::{credit_entry, frame_header, pool, ring};
use hostile::pair::Pair;
use hostile::*;
use osmos_shm::{Direction, Error, Rule, Side};

/// Pins every word offset this file writes to what the library actually
/// reads and writes there, so the scribbling cannot silently miss.
#[test]
fn hostile_scribbler_offsets_match_the_library() -> TestResult<()> {
    let mut p = Pair::new(7)?;
    let l = p.layout.clone();
    let m = p.mem.clone();
    let live = l.liveness;
    assert_eq!(m.load32(live + LIVE_HOST + LIVE_STATE), 1, "host state: attached");
    assert_eq!(m.load32(live + LIVE_CELL + LIVE_STATE), 1, "cell state: attached");
    assert_eq!(m.load32(live + LIVE_HOST + LIVE_EPOCH), 7);
    assert_eq!(m.load32(live + LIVE_CELL + LIVE_EPOCH), 7);

    // The cell→host ring: tail, doorbell, frame header, head.
    let c2h = ring(&l, Direction::CellToHost);
    let bell = m.load32(c2h.ctrl + RING_READABLE_SEQ);
    p.cell.ep.sender.send(&[], None)?;
    assert_eq!(m.load(c2h.ctrl + RING_TAIL), 8);
    assert_eq!(m.load32(c2h.ctrl + RING_READABLE_SEQ), bell.wrapping_add(1));
    assert_eq!(m.load_le(c2h.data), frame_header(0, KIND_INLINE));
    let msg = p.host.ep.receiver.try_recv()?.expect("the empty frame");
    assert!(msg.is_empty());
    msg.finish()?;
    assert_eq!(m.load(c2h.ctrl + RING_HEAD), 8);

    // A slot message host→cell: its reference frame, then the release in
    // the host's queue and the host's read position after reclaiming it.
    let h2c = ring(&l, Direction::HostToCell);
    p.host.ep.sender.send(&[0xab; 1000], None)?;
    assert_eq!(m.load(h2c.ctrl + RING_TAIL), 24);
    assert_eq!(m.load_le(h2c.data), frame_header(16, KIND_SLOT));
    let reference = m.load_le(h2c.data + 8);
    assert_eq!(reference >> 32, 1, "first generation");
    assert_eq!(m.load_le(h2c.data + 16), 1000, "length, reserved word zero");
    let msg = p.cell.ep.receiver.try_recv()?.expect("the slot message");
    assert_eq!(msg.to_vec(), vec![0xab; 1000]);
    msg.finish()?;
    assert_eq!(m.load(h2c.ctrl + RING_HEAD), 24);
    let hp = pool(&l, Direction::HostToCell);
    assert_eq!(m.load(hp.ctrl + POOL_REL_TAIL), 1);
    assert_eq!(
        m.load_le(hp.queue),
        reference,
        "release entry: generation << 32 | index"
    );
    assert_eq!(p.host.ep.sender.slots().reclaim()?, 1);
    assert_eq!(m.load(hp.ctrl + POOL_REL_HEAD), 1);

    // Credit words of a host-sent channel.
    let e = credit_entry(&l, 2);
    assert_eq!(m.load32(e + CREDIT_GRANTED), INITIAL_CREDIT);
    assert!(p.host.tx_credit[2].try_take(100)?);
    assert_eq!(m.load32(e + CREDIT_SENT), 100);
    p.cell.rx_credit[2].on_received(100)?;
    p.cell.rx_credit[2].grant(50)?;
    assert_eq!(m.load32(e + CREDIT_GRANTED), INITIAL_CREDIT + 50);
    // The sender's parked bit: set while the cell waits for credit on
    // channel 4, seen by the host's grant, which wakes it.
    let e4 = credit_entry(&l, 4);
    let mut cell_tx = p.cell.tx_credit.remove(0);
    let waiter = std::thread::spawn(move || {
        let r = cell_tx.take(INITIAL_CREDIT + 1, Some(Instant::now() + Duration::from_secs(20)));
        r.map(|()| cell_tx.channel())
    });
    let until = Instant::now() + Duration::from_secs(10);
    while m.load32(e4 + CREDIT_SENDER_STATE) & 1 == 0 && Instant::now() < until {
        std::thread::yield_now();
    }
    assert_eq!(
        m.load32(e4 + CREDIT_SENDER_STATE) & 1,
        1,
        "a parked sender sets its bit"
    );
    p.host.rx_credit[0].grant(1)?;
    assert_eq!(waiter.join().expect("the waiting cell sender")?, 4);
    assert_eq!(m.load32(e4 + CREDIT_SENT), INITIAL_CREDIT + 1);
    assert_eq!(
        m.load32(e4 + CREDIT_SENDER_STATE),
        0,
        "parked bit cleared after the wait"
    );

    // Writes through the cell's mapping reach the host's reading paths.
    m.store32(e + CREDIT_RECEIVER_STATE, 1);
    assert!(matches!(
        p.host.tx_credit[2].available(),
        Err(Error::ChannelClosed { channel: 2 })
    ));
    m.store32(e + CREDIT_RECEIVER_STATE, 0);
    m.store32(e + CREDIT_GRANTED, 99);
    assert_eq!(
        p.host.tx_credit[2].available().err().and_then(|e| e.rule()),
        Some(Rule::CreditGrantMonotonic)
    );
    m.store(hp.ctrl + POOL_REL_TAIL, 100);
    assert_eq!(
        p.host.ep.sender.slots().reclaim().err().and_then(|e| e.rule()),
        Some(Rule::ReleaseQueueInRange)
    );
    m.store(c2h.ctrl + RING_TAIL, 12);
    assert_eq!(
        p.host.ep.receiver.try_recv().err().and_then(|e| e.rule()),
        Some(Rule::RingTailInRange)
    );
    m.store32(live + LIVE_CELL + LIVE_STATE, 3);
    assert!(matches!(
        p.host.ep.liveness.check(),
        Err(Error::PeerGone { peer: Side::Cell, .. })
    ));
    m.store32(live + LIVE_CELL + LIVE_STATE, 1);
    // The cell cannot shut the host down by writing the host's state word:
    // a local shutdown is process-private.
    m.store32(live + LIVE_HOST + LIVE_STATE, 3);
    assert!(p.host.ep.liveness.check().is_ok());
    Ok(())
}
