//! Tests that count what the calling thread does (its sleeps), in a binary
//! of their own: cargo runs test binaries one after another, so no other
//! test's threads share the CPUs while these measure. (In the suite, under
//! the other tests' load, the peer's answer came too late for the caller's
//! bounded look often enough to fail it.)

#[path = "../common/mod.rs"]
mod common;
#[path = "../suite/raw_peer.rs"]
mod raw_peer;

use std::time::{Duration, Instant};

use common::bounded;
use osmos_session::CallOptions;
use raw_peer::*;

/// A caller that had to wake its peer (asleep on another CPU) keeps its
/// CPU for the answer, looking for it and yielding between looks, instead
/// of sleeping until the peer, once awake, wakes it in turn: the calling
/// thread does not sleep for such calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_woke_its_peer_waits_for_the_answer_awake() {
    let Some((mine, theirs)) = two_cpus() else {
        eprintln!("skipped: this needs two CPUs");
        return;
    };
    /// The argument that tells the peer to stop.
    const LAST: u32 = u32::MAX;
    const CALLS: u64 = 300;
    pin_this_thread(mine);
    let (conn, peer) = start(move |mut raw| {
        pin_this_thread(theirs);
        loop {
            let (request, x) = expect_call(&mut raw);
            raw.answer(request, x.wrapping_add(1));
            if x == LAST {
                return;
            }
        }
    })
    .await;
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let before = this_thread_slept();
        for i in 0..CALLS as u32 {
            // Long enough for the peer to stop spinning for a call and go
            // to sleep. Busy: a sleep here would count.
            let gap = Instant::now() + Duration::from_micros(300);
            while Instant::now() < gap {
                std::hint::spin_loop();
            }
            let got = bounded("a call", next(&conn, i, CallOptions::default())).await;
            assert_eq!(got.unwrap(), i + 1);
        }
        let slept = this_thread_slept() - before;
        rounds.push(slept);
        if slept < CALLS / 4 {
            break;
        }
    }
    let got = bounded("the last call", next(&conn, LAST, CallOptions::default())).await;
    assert_eq!(got.unwrap(), 0);
    join(peer).await;
    assert!(
        *rounds.last().expect("a round") < CALLS / 4,
        "the calling thread slept {rounds:?} times in rounds of {CALLS} calls to a sleeping peer"
    );
}
