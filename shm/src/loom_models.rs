//! Loom models of every lock-free structure in the crate.
//!
//! Run with:
//! `RUSTFLAGS="--cfg osmos_loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p osmos-shm --release --lib loom`
//!
//! Each model is small and deterministic. Shared bytes are loom cells, so a
//! frame or slot byte read without a happens-before edge to its write fails
//! the model as a causality violation; the futex is a condvar stand-in, so a
//! lost wakeup fails it as a deadlock.

use std::sync::Arc;

use loom::thread;

use crate::credit::{CreditEntry, CreditTable};
use crate::doorbell::{Doorbell, WaitCtx, WaitStrategy};
use crate::error::Error;
use crate::layout::ClassLayout;
use crate::liveness::{Liveness, Side};
use crate::pinned::Pinned;
use crate::pool::{self, PoolCtrl, PoolMem};
use crate::ring::{self, FrameConsumer, FrameProducer, RingCtrl, RingMem};
use crate::sync::SharedBytes;
use crate::sync::atomic::{AtomicU32, Ordering};

/// A ring of `cap` bytes with `max_payload`-byte frames, parking at once.
fn model_ring(
    cap: usize,
    max_payload: u32,
    host: &Liveness,
    cell: &Liveness,
) -> (FrameProducer, FrameConsumer) {
    let mem = RingMem {
        ctrl: Pinned::from_arc(Arc::new(RingCtrl::default())),
        data: SharedBytes::new_model(cap),
    };
    let (mut p, mut c) = ring::split(mem, max_payload, host.clone(), cell.clone());
    p.set_wait_strategy(WaitStrategy::PARK);
    c.set_wait_strategy(WaitStrategy::PARK);
    (p, c)
}

/// A thread that sends frames of these payload sizes, in order, waiting
/// for room as it must.
fn produce(mut p: FrameProducer, sizes: [usize; 3]) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for (i, &n) in sizes.iter().enumerate() {
            let mut g = p.reserve(n, None).unwrap();
            g.write(0, &payload(i, n)).unwrap();
            g.commit(n).unwrap();
        }
    })
}

fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j) as u8).collect()
}

/// Producer sends frames of 24, 8 and 16 payload bytes (32, 16 and 24 ring
/// bytes) through a 64-byte ring: the third frame does not fit in the 16
/// bytes before the end, so the producer pads, wraps, and reuses the space
/// of the first frame, which it must wait (park) for in some interleavings.
#[test]
fn loom_ring_produce_consume_with_wrap() {
    loom::model(|| {
        let (host, cell) = Liveness::new_model();
        let (p, mut c) = model_ring(64, 24, &host, &cell);
        let sizes = [24usize, 8, 16];
        let t = produce(p, sizes);
        for (i, &n) in sizes.iter().enumerate() {
            let v = c.peek(None).unwrap();
            assert_eq!(v.len(), n);
            assert_eq!(v.to_vec(), payload(i, n));
            v.release();
        }
        t.join().unwrap();
    });
}

/// The same frames taken in runs (`take_run`): the consumer copies out
/// whatever is published in one go and gives the space back with one head,
/// waiting with `peek` (parking) when the ring is empty. Every run's bytes
/// must be visible through the producer's publication, and the producer,
/// parked for space, must be woken by a run's release.
#[test]
fn loom_ring_frames_taken_in_runs() {
    loom::model(|| {
        let (host, cell) = Liveness::new_model();
        let (p, mut c) = model_ring(64, 24, &host, &cell);
        let sizes = [24usize, 8, 16];
        let t = produce(p, sizes);
        let mut run = ring::FrameRun::new();
        let mut got = Vec::new();
        while got.len() < sizes.len() {
            if c.take_run(&mut run, 1024, 24).unwrap() == 0 {
                // Wait for a frame, and leave it for the next run.
                drop(c.peek(None).unwrap());
                continue;
            }
            while let Some(r) = run.next_frame() {
                got.push(run.bytes()[r].to_vec());
            }
        }
        for (i, &n) in sizes.iter().enumerate() {
            assert_eq!(got[i], payload(i, n));
        }
        t.join().unwrap();
    });
}

/// The owner sends two payloads through a pool of one slot: the second
/// allocation must wait for (and see) the receiver's release; the payload
/// bytes must be visible to the receiver through the ring's publication.
#[test]
fn loom_slot_alloc_release() {
    loom::model(|| {
        let (host, cell) = Liveness::new_model();
        let (mut p, mut c) = model_ring(64, 24, &host, &cell);
        let mem = PoolMem {
            ctrl: Pinned::from_arc(Arc::new(PoolCtrl::default())),
            queue: SharedBytes::new_model(8),
            slots: SharedBytes::new_model(64),
            classes: vec![ClassLayout {
                offset: 0,
                size: 64,
                count: 1,
                first_index: 0,
            }],
        };
        let (mut w, mut r) = pool::split(mem, host.clone());
        w.set_wait_strategy(WaitStrategy::PARK);
        let t = thread::spawn(move || {
            for i in 0..2 {
                let mut s = w.alloc(4, None).unwrap();
                s.write(0, &payload(i, 4)).unwrap();
                let sref = s.finish(4).unwrap();
                let mut g = p.reserve(16, None).unwrap();
                g.write(0, &sref.encode()).unwrap();
                g.commit(16).unwrap();
            }
        });
        for i in 0..2 {
            let v = c.peek(None).unwrap();
            let sref = crate::pool::SlotRef::decode(&v.to_vec()).unwrap();
            v.release();
            let held = r.open(sref).unwrap();
            assert_eq!(sref.generation, i as u32 + 1);
            assert_eq!(held.to_vec(), payload(i, 4));
            r.release(held).unwrap();
        }
        t.join().unwrap();
    });
}

fn model_table(host: &Liveness) -> CreditTable {
    let table = Pinned::from_arc(Arc::new([CreditEntry::default()]));
    CreditTable::new(table.project(|entries| &entries[..]), host.clone())
}

/// A sender with 2 bytes of credit takes 2 + 2 + 2 bytes while the receiver
/// grants 2 bytes twice: the sender must park and be woken each time.
#[test]
fn loom_credit_grant_consume_park() {
    loom::model(|| {
        let (host, _cell) = Liveness::new_model();
        let table = model_table(&host);
        table.reset(0, 2).unwrap();
        let mut tx = table.sender(0, 2).unwrap();
        tx.set_wait_strategy(WaitStrategy::PARK);
        let mut rx = table.receiver(0, 2).unwrap();
        let t = thread::spawn(move || {
            for _ in 0..3 {
                tx.take(2, None).unwrap();
            }
        });
        for _ in 0..2 {
            rx.on_received(2).unwrap();
            rx.grant(2).unwrap();
        }
        t.join().unwrap();
        rx.on_received(2).unwrap();
        assert!(rx.on_received(1).is_err(), "overrun must be caught");
    });
}

/// A close from the receiver wakes a sender parked for credit.
#[test]
fn loom_credit_close_wakes_sender() {
    loom::model(|| {
        let (host, _cell) = Liveness::new_model();
        let table = model_table(&host);
        table.reset(0, 0).unwrap();
        let mut tx = table.sender(0, 0).unwrap();
        tx.set_wait_strategy(WaitStrategy::PARK);
        let mut rx = table.receiver(0, 0).unwrap();
        let t = thread::spawn(move || tx.take(1, None));
        rx.close();
        assert!(matches!(
            t.join().unwrap(),
            Err(Error::ChannelClosed { channel: 0 })
        ));
    });
}

/// The bare doorbell: a waiter parks until a flag is set and the bell rung.
#[test]
fn loom_doorbell_no_lost_wakeup() {
    loom::model(|| {
        let (host, cell) = Liveness::new_model();
        let bell = Arc::new(Doorbell::default());
        let flag = Arc::new(AtomicU32::new(0));
        let (b2, f2, h2) = (bell.clone(), flag.clone(), host.clone());
        let t = thread::spawn(move || {
            // ORDERING: Release pairs with the waiter's Acquire check.
            f2.store(1, Ordering::Release);
            b2.ring(&h2);
        });
        let ctx = WaitCtx {
            liveness: &cell,
            strategy: WaitStrategy::PARK,
            deadline: None,
            what: "flag",
        };
        let v = bell
            .wait_until(&ctx, || Ok((flag.load(Ordering::Acquire) == 1).then_some(7)))
            .unwrap();
        assert_eq!(v, 7);
        t.join().unwrap();
        drop(host);
    });
}

/// A consumer parked on an empty ring wakes with `PeerGone` when the
/// producer's side is marked dead; a producer parked on a full ring too.
#[test]
fn loom_death_wakes_sleepers() {
    loom::model(|| {
        let (host, cell) = Liveness::new_model();
        let (mut p, mut c) = model_ring(64, 24, &host, &cell);
        // Fill the ring so that the producer has to park.
        for _ in 0..2 {
            p.reserve(24, None).unwrap().commit(24).unwrap();
        }
        let producer = thread::spawn(move || p.reserve(24, None).map(|_| ()));
        let supervisor = {
            let cell = cell.clone();
            thread::spawn(move || cell.mark_dead(Side::Cell))
        };
        assert!(matches!(
            producer.join().unwrap(),
            Err(Error::PeerGone { peer: Side::Cell, .. })
        ));
        supervisor.join().unwrap();
        // The consumer side's own state is dead now: a wait reports shutdown
        // once the frames already published are drained.
        for _ in 0..2 {
            c.peek(None).unwrap().release();
        }
        assert!(matches!(c.peek(None), Err(Error::Shutdown)));
    });
}

/// How an async waiter sleeps in a model: until its side's wake counter moves
/// past `seen` (a reactor reports any wake that lands after it registered).
fn model_reactor_sleep(wakes: &AtomicU32, seen: u32) {
    use crate::futex::Futex;
    crate::sync::PlatformFutex::wait_any(&[(wakes, seen)], None);
}

/// The reactor doorbell: an async waiter arms, re-checks and sleeps on its
/// wake counter; the ringer publishes and rings. A lost wakeup deadlocks.
#[test]
fn loom_reactor_doorbell_no_lost_wakeup() {
    loom::model(|| {
        let (host, cell) = Liveness::new_model();
        let bell = Arc::new(Doorbell::default());
        let flag = Arc::new(AtomicU32::new(0));
        let (b2, f2) = (bell.clone(), flag.clone());
        let t = thread::spawn(move || {
            // ORDERING: Release pairs with the waiter's Acquire check.
            f2.store(1, Ordering::Release);
            b2.ring(&host);
        });
        let watcher = crate::BellWatcher::new(Pinned::from_arc(bell), cell.clone());
        let wakes = cell.model_wakes();
        // ORDERING (all loads below): Acquire pairs with the ringer's Release.
        loop {
            let seen = wakes.load(Ordering::SeqCst);
            if flag.load(Ordering::Acquire) == 1 {
                break;
            }
            watcher.arm_reactor();
            if flag.load(Ordering::Acquire) == 1 {
                watcher.disarm_reactor();
                break;
            }
            model_reactor_sleep(&wakes, seen);
            watcher.disarm_reactor();
        }
        t.join().unwrap();
    });
}

/// An async credit sender arms, re-tries and sleeps; a grant wakes it.
#[test]
fn loom_reactor_credit_grant_wakes_sender() {
    loom::model(|| {
        let (host, cell) = Liveness::new_model();
        let table = model_table(&host);
        table.reset(0, 0).unwrap();
        let mut tx = table.sender(0, 0).unwrap();
        let mut rx = table.receiver(0, 0).unwrap();
        let t = thread::spawn(move || {
            rx.on_received(0).unwrap();
            rx.grant(3).unwrap();
        });
        let wakes = cell.model_wakes();
        loop {
            let seen = wakes.load(Ordering::SeqCst);
            if tx.try_take(3).unwrap() {
                break;
            }
            tx.arm_reactor();
            if tx.try_take(3).unwrap() {
                tx.disarm_reactor();
                break;
            }
            model_reactor_sleep(&wakes, seen);
            tx.disarm_reactor();
        }
        t.join().unwrap();
    });
}
