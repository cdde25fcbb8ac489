//! Unit tests of the frame ring over a real segment: round trips, wrapping,
//! a full ring, parked ends woken, and a hostile peer's positions and frame
//! headers reported as violations.

use super::*;
use crate::error::{Error, Rule};
use crate::layout::Direction;
use crate::ring::FrameRun;
use crate::sync::atomic::Ordering;
use crate::test_support::{
    Pair, RING_READABLE_PARKED, RING_WRITABLE_PARKED, WakeBound, await_word, bound, pair, small_config, soon,
};

fn bytes(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 7 + j * 13) as u8).collect()
}

fn send(p: &mut FrameProducer, payload: &[u8]) {
    let mut g = p.reserve(payload.len(), bound()).unwrap();
    g.write(0, payload).unwrap();
    g.commit(payload.len()).unwrap();
}

/// Writes a little-endian u64 into the cell's mapping at `off`.
fn poke(pair: &Pair, off: usize, value: u64) {
    // SAFETY: callers pass offsets inside the segment, 8-aligned.
    unsafe {
        pair.cell_seg
            .raw_at(off)
            .cast::<u64>()
            .write_volatile(value.to_le())
    };
}

fn ring_of(pair: &Pair, dir: Direction) -> crate::RingLayout {
    pair.host_seg.layout().rings[dir as usize]
}

#[test]
fn frames_round_trip_in_order() {
    let mut p = pair(&small_config());
    for i in 0..10 {
        send(p.host.sender.producer(), &bytes(i, i * 10));
    }
    for i in 0..10 {
        let m = p.cell.receiver.recv(bound()).unwrap();
        assert!(!m.in_slot());
        assert_eq!(m.to_vec(), bytes(i, i * 10));
        let mut copy = vec![1, 2];
        m.append_to(&mut copy);
        assert_eq!(&copy[2..], &bytes(i, i * 10)[..]);
    }
    assert!(p.cell.receiver.try_recv().unwrap().is_none());
}

#[test]
fn thousands_of_random_sizes_wrap_with_padding() {
    let mut p = pair(&small_config());
    let mut seed = 0x1234_5678u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut sent, mut got, mut bytes_sent) = (0usize, 0usize, 0usize);
    let mut sizes = std::collections::VecDeque::new();
    while got < 20_000 {
        // Produce a burst until the ring is full, then drain part of it.
        loop {
            let len = (next() % 257) as usize;
            match p.host.sender.producer().try_reserve(len).unwrap() {
                Some(mut g) => {
                    g.write(0, &bytes(sent, len)).unwrap();
                    g.commit(len).unwrap();
                    sizes.push_back(len);
                    sent += 1;
                    bytes_sent += len;
                }
                None => break,
            }
            if next() % 5 == 0 {
                break;
            }
        }
        for _ in 0..(next() % 8 + 1) {
            let Some(m) = p.cell.receiver.try_recv().unwrap() else {
                break;
            };
            let len = sizes.pop_front().unwrap();
            assert_eq!(m.to_vec(), bytes(got, len), "frame {got}");
            got += 1;
        }
    }
    assert!(bytes_sent > 4096 * 500, "the ring wrapped hundreds of times");
}

#[test]
fn a_full_ring_reports_none_then_frees_space() {
    let mut p = pair(&small_config());
    let prod = p.host.sender.producer();
    let mut n = 0;
    while let Some(g) = prod.try_reserve(248).unwrap() {
        g.commit(248).unwrap();
        n += 1;
    }
    assert_eq!(n, 4096 / 256, "exactly capacity / frame size frames fit");
    let err = prod.reserve(248, soon(5)).map(|_| ()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                waiting_for: "ring space",
                ..
            }
        ),
        "{err}"
    );
    p.cell.receiver.recv(bound()).unwrap().finish().unwrap();
    assert!(p.host.sender.producer().try_reserve(248).unwrap().is_some());
}

#[test]
fn oversized_frames_and_bad_commits_are_errors() {
    let mut p = pair(&small_config());
    let prod = p.host.sender.producer();
    assert!(matches!(
        prod.try_reserve(257).map(|_| ()),
        Err(Error::FrameTooLarge { len: 257, max: 256 })
    ));
    let mut g = prod.try_reserve(10).unwrap().unwrap();
    assert!(matches!(g.write(5, &[0; 6]), Err(Error::InvalidArgument { .. })));
    assert!(matches!(g.commit(11), Err(Error::InvalidArgument { .. })));
    // Neither the failed commit nor a dropped grant published anything.
    let _abandoned = prod.try_reserve(10).unwrap().unwrap();
    assert!(p.cell.receiver.try_recv().unwrap().is_none());
}

#[test]
fn a_parked_consumer_is_woken_by_a_commit() {
    let Pair {
        host,
        mut cell,
        host_seg,
        cell_seg: _c,
    } = pair(&small_config());
    let ring = host_seg.layout().rings[Direction::HostToCell as usize];
    let mut sender = host.sender;
    for round in 0..20u8 {
        let wake = WakeBound::new();
        let t = std::thread::spawn(move || {
            let r = cell.receiver.recv(wake.deadline()).map(|m| m.to_vec());
            (cell, r)
        });
        await_word(&host_seg, ring.ctrl + RING_READABLE_PARKED, |v| v == 1);
        sender.send(&[round; 9], bound()).unwrap();
        let (c, r) = t.join().unwrap();
        wake.assert_woken();
        assert_eq!(r.unwrap(), [round; 9]);
        cell = c;
    }
}

#[test]
fn a_parked_producer_is_woken_by_a_release() {
    let Pair {
        mut host,
        mut cell,
        host_seg,
        cell_seg: _c,
    } = pair(&small_config());
    let ring = host_seg.layout().rings[Direction::HostToCell as usize];
    while host
        .sender
        .producer()
        .try_reserve(248)
        .unwrap()
        .is_some_and(|g| g.commit(248).is_ok())
    {}
    let wake = WakeBound::new();
    let t = std::thread::spawn(move || {
        host.sender
            .producer()
            .reserve(248, wake.deadline())
            .map(|g| g.commit(248))
    });
    await_word(&host_seg, ring.ctrl + RING_WRITABLE_PARKED, |v| v == 1);
    cell.receiver.recv(bound()).unwrap().finish().unwrap();
    t.join().unwrap().unwrap().unwrap();
    wake.assert_woken();
}

fn host_recv_rule(p: &mut Pair) -> Rule {
    let err = p
        .host
        .receiver
        .try_recv()
        .map(|m| m.map(|m| m.len()))
        .unwrap_err();
    err.rule()
        .unwrap_or_else(|| panic!("expected a violation, got {err}"))
}

#[test]
fn a_tail_out_of_range_is_a_violation() {
    let ring = ring_of(&pair(&small_config()), Direction::CellToHost);
    let mut p = pair(&small_config());
    poke(&p, ring.ctrl + 128, 4096 + 8);
    assert_eq!(host_recv_rule(&mut p), Rule::RingTailInRange);
    let mut p = pair(&small_config());
    poke(&p, ring.ctrl + 128, 12);
    assert_eq!(host_recv_rule(&mut p), Rule::RingTailInRange, "unaligned tail");
    // A tail that moves backwards.
    let mut p = pair(&small_config());
    p.cell.sender.send(&[1; 100], bound()).unwrap();
    p.host.receiver.recv(bound()).unwrap().finish().unwrap();
    poke(&p, ring.ctrl + 128, 8);
    assert_eq!(host_recv_rule(&mut p), Rule::RingTailInRange);
}

#[test]
fn corrupt_frame_headers_are_violations() {
    let ring = ring_of(&pair(&small_config()), Direction::CellToHost);
    let cases = [
        (9u64 << 32 | 8, Rule::FrameKindKnown),
        (1u64 << 32 | 257, Rule::FrameLengthInBounds),
        (1u64 << 32 | 200, Rule::FrameLengthInBounds),
        (3u64 << 32 | 100, Rule::PadToRingEnd),
        (2u64 << 32 | 8, Rule::SlotRefWellFormed),
    ];
    for (header, rule) in cases {
        let mut p = pair(&small_config());
        p.cell.sender.send(&[7; 40], bound()).unwrap();
        poke(&p, ring.data, header);
        assert_eq!(host_recv_rule(&mut p), rule, "header {header:#x}");
    }
    // A frame that would cross the end of the ring: 15 frames of 256
    // bytes leave 256 before the end; a 208-byte frame goes there, then a
    // 112-byte frame after 48 bytes of padding. Claiming 256 payload bytes
    // for the frame at 3840 stays within what was published (368 bytes)
    // but crosses the end.
    let mut p = pair(&small_config());
    for _ in 0..15 {
        p.cell.sender.send(&[1; 248], bound()).unwrap();
        p.host.receiver.recv(bound()).unwrap().finish().unwrap();
    }
    p.cell.sender.send(&[1; 200], bound()).unwrap();
    p.cell.sender.send(&[1; 100], bound()).unwrap();
    poke(&p, ring.data + 15 * 256, 1u64 << 32 | 256);
    assert_eq!(host_recv_rule(&mut p), Rule::FrameContiguous);
}

#[test]
fn a_producer_republishing_padding_cannot_hold_the_consumer() {
    let p = pair(&small_config());
    let ring = ring_of(&p, Direction::CellToHost);
    let cap = ring.bytes as u64;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let Pair {
        mut host,
        cell_seg,
        host_seg,
        cell: _c,
    } = p;
    let scribbler = {
        let stop = stop.clone();
        // SAFETY: inside the segment, 8-aligned; the mapping is kept by the thread.
        let head = unsafe { AtomicU64::from_ptr(cell_seg.raw_at(ring.ctrl).cast()) };
        // SAFETY: inside the segment, 8-aligned; the mapping is kept by the thread.
        let tail = unsafe { AtomicU64::from_ptr(cell_seg.raw_at(ring.ctrl + 128).cast()) };
        // SAFETY: inside the segment, 8-aligned; the mapping is kept by the thread.
        let first = unsafe { AtomicU64::from_ptr(cell_seg.raw_at(ring.data).cast()) };
        std::thread::spawn(move || {
            let _keep = cell_seg;
            // A whole-ring padding frame at offset 0, republished after
            // every lap the consumer makes.
            first.store((cap - 8) | 3 << 32, Ordering::Release);
            while !stop.load(Ordering::Relaxed) {
                tail.store(head.load(Ordering::Acquire) + cap, Ordering::Release);
            }
        })
    };
    // SAFETY: the head word is inside the host's mapping, 8-aligned.
    let head_word = unsafe { AtomicU64::from_ptr(host_seg.raw_at(ring.ctrl).cast()) };
    for _ in 0..20_000 {
        let before = head_word.load(Ordering::Acquire);
        assert!(host.receiver.try_recv().unwrap().is_none());
        let laps = (head_word.load(Ordering::Acquire) - before) / cap;
        assert!(laps <= 2, "one try_recv consumed {laps} laps of padding");
    }
    stop.store(true, Ordering::Relaxed);
    scribbler.join().unwrap();
}

#[test]
fn a_head_out_of_range_is_a_violation() {
    let mut p = pair(&small_config());
    let ring = ring_of(&p, Direction::HostToCell);
    p.host.sender.send(&[1; 100], bound()).unwrap();
    poke(&p, ring.ctrl, 4096 * 3);
    // The producer only looks at the head when it needs space.
    let err = loop {
        match p.host.sender.producer().try_reserve(248) {
            Ok(Some(g)) => g.commit(248).unwrap(),
            Ok(None) => panic!("a corrupt head must not look like a full ring"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.rule(), Some(Rule::RingHeadInRange), "{err}");
}

/// The little-endian u64 at `off` in the host's mapping (a u32 word reads
/// as its low half).
fn read_word(pair: &Pair, off: usize) -> u64 {
    // SAFETY: callers pass 8-aligned offsets inside the segment.
    u64::from_le(unsafe { pair.host_seg.raw_at(off).cast::<u64>().read_volatile() })
}

/// The frames `run` holds, copied out.
fn run_frames(run: &mut FrameRun) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| run.next_frame().map(|r| run.bytes()[r].to_vec())).collect()
}

#[test]
fn a_run_takes_small_inline_frames_in_order_and_frees_their_space_at_once() {
    let mut p = pair(&small_config());
    // Move the ring's positions to 512 bytes before its end, so the run
    // below crosses the padding frame there.
    for _ in 0..14 {
        p.cell.sender.send(&[1; 248], bound()).unwrap();
        p.host.receiver.recv(bound()).unwrap().finish().unwrap();
    }
    // Six 112-byte frames (four before the end, padding, two after it), a
    // slot message, a frame too large for the run, then two more.
    let small: Vec<Vec<u8>> = (0..8).map(|i| bytes(i, 100 - i)).collect();
    for m in &small[..6] {
        p.cell.sender.send(m, bound()).unwrap();
    }
    p.cell.sender.send(&bytes(50, 300), bound()).unwrap();
    p.cell.sender.send(&bytes(51, 200), bound()).unwrap();
    for m in &small[6..] {
        p.cell.sender.send(m, bound()).unwrap();
    }
    let ring = ring_of(&p, Direction::CellToHost);
    let rung = read_word(&p, ring.ctrl + 512) as u32;
    let mut run = FrameRun::new();
    assert_eq!(p.host.receiver.try_recv_run(&mut run, 1 << 20, 150).unwrap(), 6);
    assert_eq!(run_frames(&mut run), small[..6].to_vec());
    assert!(run.is_empty());
    // Their space, the padding's included, went back at once: `head` now
    // points at the slot reference (four frames of 112 bytes from 3584,
    // 64 bytes of padding, two of 104), published with one ring of the
    // writable doorbell.
    assert_eq!(read_word(&p, ring.ctrl), 4096 + 208);
    assert_eq!(read_word(&p, ring.ctrl + 512) as u32, rung.wrapping_add(1));
    // The slot message and the larger frame are left to `recv`.
    assert_eq!(p.host.receiver.try_recv_run(&mut run, 1 << 20, 150).unwrap(), 0);
    let m = p.host.receiver.recv(bound()).unwrap();
    assert!(m.in_slot());
    assert_eq!(m.to_vec(), bytes(50, 300));
    m.finish().unwrap();
    assert_eq!(p.host.receiver.try_recv_run(&mut run, 1 << 20, 150).unwrap(), 0);
    assert_eq!(p.host.receiver.recv(bound()).unwrap().to_vec(), bytes(51, 200));
    // `max_bytes` ends a run, but its first frame is always taken.
    assert_eq!(p.host.receiver.try_recv_run(&mut run, 10, 150).unwrap(), 1);
    assert_eq!(run_frames(&mut run), vec![small[6].clone()]);
    assert_eq!(p.host.receiver.try_recv_run(&mut run, 10, 150).unwrap(), 1);
    assert_eq!(run_frames(&mut run), vec![small[7].clone()]);
    assert!(p.host.receiver.try_recv().unwrap().is_none());
}

#[test]
fn a_run_of_empty_frames_is_bounded_by_the_ring_bytes_it_spans() {
    let mut p = pair(&small_config());
    for _ in 0..100 {
        p.cell.sender.send(&[], bound()).unwrap();
    }
    let mut run = FrameRun::new();
    // Each empty frame is its 8-byte header: 64 bytes of ring hold 8.
    let mut taken = Vec::new();
    loop {
        let n = p.host.receiver.try_recv_run(&mut run, 64, 256).unwrap();
        if n == 0 {
            break;
        }
        assert!(run_frames(&mut run).iter().all(Vec::is_empty));
        taken.push(n);
    }
    assert_eq!(taken.iter().sum::<usize>(), 100);
    assert!(taken.iter().all(|&n| n <= 8), "{taken:?}");
}

#[test]
fn a_broken_frame_ends_a_run_and_is_reported_at_the_head() {
    let ring = ring_of(&pair(&small_config()), Direction::CellToHost);
    let mut p = pair(&small_config());
    for i in 0..3 {
        p.cell.sender.send(&bytes(i, 40), bound()).unwrap();
    }
    // The third frame (48 bytes each) gets an unknown kind.
    poke(&p, ring.data + 2 * 48, 9u64 << 32 | 40);
    let mut run = FrameRun::new();
    assert_eq!(p.host.receiver.try_recv_run(&mut run, 1 << 20, 256).unwrap(), 2);
    assert_eq!(run_frames(&mut run), vec![bytes(0, 40), bytes(1, 40)]);
    assert_eq!(p.host.receiver.try_recv_run(&mut run, 1 << 20, 256).unwrap(), 0);
    assert_eq!(host_recv_rule(&mut p), Rule::FrameKindKnown);
}
