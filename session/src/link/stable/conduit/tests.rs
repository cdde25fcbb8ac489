//! Tests of the conduit's replay buffer: what it keeps, and what an acknowledgement may drop.

use super::*;
use crate::link::stream::PREFIX_LEN;

/// A conduit's shared state with no acceptor behind it.
fn unregistered(cfg: &StableConfig) -> Arc<Shared> {
    Shared::new(
        cfg.clone(),
        [0; 32],
        Side::Acceptor {
            registry: Weak::new(),
        },
        None,
    )
}

#[test]
fn the_replay_buffer_keeps_unacknowledged_frames_within_its_bounds() {
    let cfg = StableConfig {
        replay_bytes: 100,
        replay_frames: 3,
        ..StableConfig::default()
    };
    let sh = unregistered(&cfg);
    let mut w = Writer::new(&cfg, None);
    for _ in 0..3 {
        let b = w.buffer(PREFIX_LEN + wire::NUMBERED_HEADER + 10);
        w.push(wire::DATA, b, &sh);
    }
    assert_eq!(w.window(), (1, 4));
    // As if all three were written.
    w.cursor_seq = w.next_seq;
    assert!(!w.take_room(10), "three frames is the limit");
    w.trim(2);
    assert_eq!(w.window(), (3, 4));
    assert!(w.take_room(31));
    assert!(!w.take_room(100 - 31 + 1));
    w.trim(3);
    assert!(w.take_room(10_000), "an empty buffer takes any frame");
}

#[test]
fn an_ack_past_what_was_written_never_drops_unwritten_frames() {
    let cfg = StableConfig::default();
    let sh = unregistered(&cfg);
    let mut w = Writer::new(&cfg, None);
    for _ in 0..10 {
        let b = w.buffer(PREFIX_LEN + wire::NUMBERED_HEADER);
        w.push(wire::DATA, b, &sh);
    }
    // Nothing was written (the cursor is at #1): a peer that acknowledges
    // #8 lies, and the frames stay to be written.
    w.trim(8);
    assert_eq!(w.window(), (1, 11));
}
