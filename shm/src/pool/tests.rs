//! Slot pool tests: generations, releases, exhaustion and lying peers.

use super::*;
use crate::layout::Direction;
use crate::test_support::{Pair, pair, small_config, soon};

fn send_slot(w: &mut SlotWriter, len: usize, fill: u8) -> SlotRef {
    let mut g = w.try_alloc(len).unwrap().expect("a free slot");
    g.write(0, &vec![fill; len]).unwrap();
    g.finish(len).unwrap()
}

#[test]
fn slots_round_trip_and_generations_advance() {
    let mut p = pair(&small_config());
    for round in 1..=3u32 {
        let r = send_slot(p.host.sender.slots(), 600, round as u8);
        assert_eq!(r.generation, round, "one slot reused: generation {round}");
        assert_eq!(r, SlotRef::decode(&r.encode()).unwrap());
        let reader = p.cell.receiver_slots();
        let held = reader.open(r).unwrap();
        assert_eq!(held.to_vec(), vec![round as u8; 600]);
        reader.release(held).unwrap();
        assert_eq!(p.host.sender.slots().reclaim().unwrap(), 1);
    }
}

#[test]
fn the_smallest_fitting_class_is_used_first() {
    let mut p = pair(&small_config());
    let w = p.host.sender.slots();
    let a = send_slot(w, 1000, 1);
    let b = send_slot(w, 10, 2);
    let c = send_slot(w, 10, 3);
    assert_eq!(
        (a.index < 2, b.index < 2, c.index),
        (true, true, 2),
        "small class, then the larger"
    );
    assert!(w.try_alloc(1).unwrap().is_none());
    assert!(matches!(
        w.try_alloc(8193).map(|_| ()),
        Err(Error::PayloadTooLarge { len: 8193, max: 8192 })
    ));
}

#[test]
fn the_slot_released_last_is_handed_out_next() {
    let mut p = pair(&small_config());
    let a = send_slot(p.host.sender.slots(), 10, 1);
    let b = send_slot(p.host.sender.slots(), 10, 2);
    assert!(a.index < 2 && b.index < 2, "both small slots are out");
    let reader = p.cell.receiver_slots();
    for r in [a, b] {
        let held = reader.open(r).unwrap();
        reader.release(held).unwrap();
    }
    // Released (not yet reclaimed) small slots come before the larger
    // class's free slot, and the last one released (still warm in the
    // caches) comes first.
    let w = p.host.sender.slots();
    assert_eq!(send_slot(w, 10, 3).index, b.index);
    assert_eq!(send_slot(w, 10, 4).index, a.index);
    assert_eq!(send_slot(w, 10, 5).index, 2, "then the larger class");
}

#[test]
fn exhaustion_waits_and_a_release_wakes_the_owner() {
    let Pair {
        mut host,
        mut cell,
        host_seg,
        cell_seg: _c,
    } = pair(&small_config());
    let released_parked = host_seg.layout().pools[Direction::HostToCell as usize].ctrl + 256 + 128;
    let w = host.sender.slots();
    let refs: Vec<_> = (0..3).map(|i| send_slot(w, 900 + i, i as u8)).collect();
    let err = w.alloc(10, soon(5)).map(|_| ()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                waiting_for: "a free slot",
                ..
            }
        ),
        "{err}"
    );
    let wake = crate::test_support::WakeBound::new();
    let t = std::thread::spawn(move || {
        host.sender.slots().set_wait_strategy(crate::WaitStrategy::PARK);
        host.sender
            .slots()
            .alloc(10, wake.deadline())
            .map(|g| g.capacity())
    });
    crate::test_support::await_word(&host_seg, released_parked, |v| v == 1);
    let held = cell.receiver_slots().open(refs[1]).unwrap();
    cell.receiver_slots().release(held).unwrap();
    assert_eq!(t.join().unwrap().unwrap(), 1024);
    wake.assert_woken();
}

#[test]
fn an_unfinished_grant_returns_its_slot() {
    let mut p = pair(&small_config());
    let w = p.host.sender.slots();
    for _ in 0..10 {
        let g = w.try_alloc(9000 - 1000).unwrap().unwrap();
        drop(g);
    }
    assert_eq!(w.in_flight(), 0);
    assert_eq!(
        send_slot(w, 5000, 0).generation,
        1,
        "generations only count sends"
    );
}

#[test]
fn the_reader_refuses_lying_references() {
    let mut p = pair(&small_config());
    let good = send_slot(p.host.sender.slots(), 100, 1);
    let r = p.cell.receiver_slots();
    let bad = [
        (SlotRef { index: 3, ..good }, Rule::SlotIndexInRange),
        (SlotRef { len: 1025, ..good }, Rule::SlotLengthFitsClass),
        (
            SlotRef {
                generation: 2,
                ..good
            },
            Rule::SlotGenerationNext,
        ),
        (
            SlotRef {
                generation: 0,
                ..good
            },
            Rule::SlotGenerationNext,
        ),
    ];
    for (sref, rule) in bad {
        assert_eq!(r.open(sref).unwrap_err().rule(), Some(rule), "{sref:?}");
    }
    let held = r.open(good).unwrap();
    assert_eq!(r.open(good).unwrap_err().rule(), Some(Rule::SlotNotHeldTwice));
    r.release(held).unwrap();
    assert_eq!(
        r.open(good).unwrap_err().rule(),
        Some(Rule::SlotGenerationNext),
        "a replayed reference"
    );
    let mut raw = good.encode();
    raw[13] = 1;
    assert_eq!(
        SlotRef::decode(&raw).unwrap_err().rule(),
        Some(Rule::SlotRefWellFormed)
    );
    assert_eq!(
        SlotRef::decode(&raw[..15]).unwrap_err().rule(),
        Some(Rule::SlotRefWellFormed)
    );
}

/// Writes a release entry straight into the host pool's queue, as a lying cell would.
fn lie_release(p: &Pair, tail: u64, entry: u64) {
    let pool = &p.cell_seg.layout().pools[Direction::HostToCell as usize];
    // SAFETY: the queue and the control block are inside the segment.
    unsafe {
        p.cell_seg
            .raw_at(pool.queue + (tail as usize % pool.queue_cap) * 8)
            .cast::<u64>()
            .write(entry);
        p.cell_seg.raw_at(pool.ctrl).cast::<u64>().write(tail + 1);
    }
}

#[test]
fn the_owner_refuses_releases_of_slots_not_in_flight() {
    // A slot never sent.
    let mut p = pair(&small_config());
    lie_release(&p, 0, 1u64 << 32);
    let err = p.host.sender.slots().reclaim().unwrap_err();
    assert_eq!(err.rule(), Some(Rule::SlotReleaseInFlight), "{err}");
    // A slot in flight, with the wrong generation.
    let mut p = pair(&small_config());
    let r = send_slot(p.host.sender.slots(), 10, 0);
    lie_release(&p, 0, (u64::from(r.generation) + 1) << 32 | u64::from(r.index));
    assert_eq!(
        p.host.sender.slots().reclaim().unwrap_err().rule(),
        Some(Rule::SlotReleaseInFlight)
    );
    // A release queue tail beyond its capacity.
    let mut p = pair(&small_config());
    lie_release(&p, 100, 0);
    assert_eq!(
        p.host.sender.slots().reclaim().unwrap_err().rule(),
        Some(Rule::ReleaseQueueInRange)
    );
    // The same slot released twice.
    let mut p = pair(&small_config());
    let r = send_slot(p.host.sender.slots(), 10, 0);
    let entry = u64::from(r.generation) << 32 | u64::from(r.index);
    lie_release(&p, 0, entry);
    lie_release(&p, 1, entry);
    assert_eq!(
        p.host.sender.slots().reclaim().unwrap_err().rule(),
        Some(Rule::SlotReleaseInFlight)
    );
}
