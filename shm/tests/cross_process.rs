//! Two real processes over one sealed segment: the test binary re-executes
//! itself as the cell (see `common::spawn_child`), inheriting only the
//! segment fd.

mod common;

use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    CHILD_ROLE, RING_READABLE_PARKED, RING_WRITABLE_PARKED, Rng, Watch, checksum, inherited_segment_fd,
    pattern, spawn_child,
};
use osmos_shm::{
    Direction, Error, FrameReceiver, FrameSender, Liveness, PeerState, Segment, SegmentConfig, Side,
};

/// Bytes each direction must carry.
const STREAM_BYTES: u64 = 100 << 20;
/// Bound on any single wait; only reached on a bug.
const OP_BOUND: Duration = Duration::from_secs(60);
/// Header of a stream message: index, payload length, payload checksum.
const HDR: usize = 24;

fn deadline() -> Option<Instant> {
    Some(Instant::now() + OP_BOUND)
}

/// Size of message `i` of the stream seeded with `seed`: mostly inline,
/// some in 64 KiB slots, a few in 2 MiB slots.
fn message_len(rng: &mut Rng, max_inline: usize) -> usize {
    match rng.below(100) {
        0..80 => rng.below(max_inline as u64 + 1) as usize,
        80..95 => (max_inline + 1 + rng.below(56 << 10) as usize).max(HDR),
        _ => (64 << 10) + rng.below((2 << 20) - (64 << 10) + 1) as usize,
    }
}

/// Sends messages until `STREAM_BYTES` bytes went out. Returns (messages, in slots).
fn send_stream(tx: &mut FrameSender, seed: u64) -> Result<(u64, u64), Error> {
    let mut rng = Rng::new(seed);
    let (mut bytes, mut index, mut slots) = (0u64, 0u64, 0u64);
    while bytes < STREAM_BYTES {
        let len = message_len(&mut rng, tx.max_inline()).max(HDR);
        tx.send_with(len, deadline(), |buf| {
            let (head, body) = buf.split_at_mut(HDR);
            pattern(seed, index, body);
            head[0..8].copy_from_slice(&index.to_le_bytes());
            head[8..16].copy_from_slice(&(body.len() as u64).to_le_bytes());
            head[16..24].copy_from_slice(&checksum(body).to_le_bytes());
        })?;
        slots += u64::from(len > tx.max_inline());
        bytes += len as u64;
        index += 1;
    }
    Ok((index, slots))
}

/// Receives and checks a stream sent by `send_stream` with the same seed.
fn receive_stream(rx: &mut FrameReceiver, seed: u64, max_inline: usize) -> Result<(u64, u64), Error> {
    let mut rng = Rng::new(seed);
    let (mut bytes, mut index, mut slots) = (0u64, 0u64, 0u64);
    while bytes < STREAM_BYTES {
        let want = message_len(&mut rng, max_inline).max(HDR);
        let m = rx.recv(deadline())?;
        let b = m.to_vec();
        assert_eq!(b.len(), want, "message {index}: length");
        assert_eq!(m.in_slot(), want > max_inline, "message {index}: transport");
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        assert_eq!(word(0), index, "message {index}: order");
        assert_eq!(word(8), (b.len() - HDR) as u64, "message {index}: header length");
        assert_eq!(word(16), checksum(&b[HDR..]), "message {index}: checksum");
        slots += u64::from(m.in_slot());
        bytes += b.len() as u64;
        index += 1;
        m.finish()?;
    }
    Ok((index, slots))
}

const HOST_SEED: u64 = 0x05_0505;
const CELL_SEED: u64 = 0xce11;

/// Watches the child: when it exits, marks the cell dead so that no host
/// waiter outlives it. Returns the exit status.
fn watch(mut child: Child, live: Liveness) -> thread::JoinHandle<std::process::ExitStatus> {
    thread::spawn(move || {
        let status = child.wait().expect("wait for child");
        live.mark_dead(Side::Cell);
        status
    })
}

#[test]
fn cross_process_streams_100mb_each_way_with_checksums() {
    const NAME: &str = "cross_process_streams_100mb_each_way_with_checksums";
    if std::env::var(CHILD_ROLE).as_deref() == Ok("stream-cell") {
        let seg = Segment::attach(inherited_segment_fd()).expect("cell: attach");
        let ep = seg.endpoint().expect("cell: endpoint");
        let (mut tx, mut rx) = (ep.sender, ep.receiver);
        let max_inline = tx.max_inline();
        let sender = thread::spawn(move || send_stream(&mut tx, CELL_SEED));
        receive_stream(&mut rx, HOST_SEED, max_inline).expect("cell: receive");
        sender.join().unwrap().expect("cell: send");
        ep.liveness.publish(PeerState::Closing);
        std::process::exit(0);
    }

    let seg = Segment::create(&SegmentConfig::default(), 1).unwrap();
    let child = spawn_child(NAME, "stream-cell", &seg, &[]);
    let ep = seg.endpoint().unwrap();
    let watcher = watch(child, ep.liveness.clone());
    let (mut tx, mut rx) = (ep.sender, ep.receiver);
    let max_inline = tx.max_inline();
    let start = Instant::now();
    let sender = thread::spawn(move || send_stream(&mut tx, HOST_SEED));
    let (got, got_slots) = receive_stream(&mut rx, CELL_SEED, max_inline).expect("host: receive");
    let (sent, sent_slots) = sender.join().unwrap().expect("host: send");
    let status = watcher.join().unwrap();
    assert!(status.success(), "cell failed: {status}");
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "moved {} MiB each way in {secs:.2}s: host sent {sent} messages ({sent_slots} in slots), received {got} ({got_slots} in slots)",
        STREAM_BYTES >> 20
    );
    for (n, s) in [(sent, sent_slots), (got, got_slots)] {
        assert!(
            s > 100 && n - s > 100,
            "both inline and slot messages were exercised: {n} messages, {s} in slots"
        );
    }
}

#[test]
fn cross_process_killed_cell_wakes_parked_host_waiters() {
    const NAME: &str = "cross_process_killed_cell_wakes_parked_host_waiters";
    if std::env::var(CHILD_ROLE).as_deref() == Ok("idle-cell") {
        let seg = Segment::attach(inherited_segment_fd()).expect("cell: attach");
        let mut ep = seg.endpoint().expect("cell: endpoint");
        // Say hello, then wait for a message that never comes, until killed.
        ep.sender.send(b"attached", None).expect("cell: hello");
        let _ = ep.receiver.recv(None);
        std::process::exit(3);
    }

    let seg = Segment::create(&SegmentConfig::default(), 1).unwrap();
    let mut child = spawn_child(NAME, "idle-cell", &seg, &[]);
    let pid = child.id();
    let mut ep = seg.endpoint().unwrap();
    assert_eq!(ep.receiver.recv(deadline()).unwrap().to_vec(), b"attached");
    let live = ep.liveness.clone();
    // Park a receiver with no deadline: only the death of the cell ends it.
    let (mut rx, mut tx) = (ep.receiver, ep.sender);
    let parked = thread::spawn(move || rx.recv(None).map(|m| m.len()));
    // Fill the host→cell ring (the cell never reads it), then park a sender.
    let filler = thread::spawn(move || {
        let mut sent = 0usize;
        loop {
            match tx.send(&[0u8; 4096], None) {
                Ok(()) => sent += 1,
                Err(e) => return (sent, e),
            }
        }
    });
    let watch = Watch::new(&seg);
    let rings = seg.layout().rings;
    let (to_cell, to_host) = (
        rings[Direction::HostToCell as usize],
        rings[Direction::CellToHost as usize],
    );
    watch.await_word(to_host.ctrl + RING_READABLE_PARKED, "the receiver parks", |v| {
        v == 1
    });
    watch.await_word(to_cell.ctrl + RING_WRITABLE_PARKED, "the sender parks", |v| {
        v == 1
    });
    let killed = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let status = child.wait().unwrap();
    live.mark_dead(Side::Cell);
    let receiver_result = parked.join().unwrap();
    let (sent, sender_err) = filler.join().unwrap();
    let latency = killed.elapsed();
    eprintln!("SIGKILL → parked waiters woken in {latency:?} (sender had sent {sent} frames)");
    assert!(!status.success());
    assert!(
        matches!(receiver_result, Err(Error::PeerGone { peer: Side::Cell, .. })),
        "{receiver_result:?}"
    );
    assert!(
        matches!(sender_err, Error::PeerGone { peer: Side::Cell, .. }),
        "{sender_err}"
    );
}
