//! The raw Unix-socket floor peers speak their protocols: every mode of
//! `osmos-bench --floor-child uds`, answered correctly and shut down
//! cleanly. No timing.

use std::path::Path;

use osmos_benches::floor::uds::{self, UdsPeer};

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_osmos-bench"))
}

#[test]
fn every_peer_mode_answers_and_exits() {
    let mut peer = UdsPeer::start(exe(), "pingpong").expect("start the pingpong peer");
    for x in [0u64, 41, u64::MAX] {
        assert_eq!(peer.add(x).expect("add"), x.wrapping_add(1));
    }
    peer.finish().expect("the pingpong peer exits cleanly");

    let mut peer = UdsPeer::start(exe(), "echo").expect("start the echo peer");
    for (_, size) in uds::ECHOES {
        let msg = uds::framed(size);
        let mut back = vec![0u8; size];
        assert_eq!(peer.echo(&msg, &mut back).expect("echo"), size);
        assert_eq!(back[..], msg[4..]);
    }
    peer.finish().expect("the echo peer exits cleanly");

    let mut peer = UdsPeer::start(exe(), "count").expect("start the count peer");
    assert_eq!(peer.count(uds::SMALL_ITEMS).expect("count"), uds::SMALL_ITEMS);
    assert_eq!(peer.count(0).expect("an empty count"), 0);
    peer.finish().expect("the count peer exits cleanly");

    let mut peer = UdsPeer::start(exe(), "stream").expect("start the stream peer");
    let mut buf = vec![0u8; uds::CHUNK];
    assert_eq!(peer.stream(16, &mut buf).expect("stream"), 16 * uds::CHUNK);
    assert!(buf.iter().all(|&b| b == 0x5a));
    peer.finish().expect("the stream peer exits cleanly");
}

#[test]
fn a_dead_peer_is_an_error_not_a_hang() {
    let mut peer = UdsPeer::start(exe(), "no-such-mode").expect("start a peer");
    assert!(peer.add(1).is_err());
    assert!(peer.finish().is_err());
}
