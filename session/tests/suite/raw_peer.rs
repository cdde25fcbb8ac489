//! A raw peer on a thread of its own across an shm segment from a session,
//! so that a test decides what arrives while the session's caller waits;
//! and the CPU placement helpers the tests that measure waits use. Shared
//! by the suite and the `alone` binary.
#![allow(dead_code)]

use crate::common;

use std::time::{Duration, Instant};

use common::bounded;
use osmos_session::link::shm::ShmLink;
use osmos_session::wire::{self, Message, Outcome, PROTOCOL_VERSION, Settings};
use osmos_session::{CallError, CallOptions, Connection, SessionBuilder, SessionConfig, method_id};
use osmos_shm::{Endpoint, FrameReceiver, FrameSender, Segment, SegmentConfig};

/// What the session under test serves to the raw peer.
#[osmos_macros::service]
pub trait Side {
    /// `2 * x`.
    async fn double(&self, x: u32) -> u32;
}

pub(crate) struct Impl;
impl Side for Impl {
    async fn double(&self, x: u32) -> u32 {
        2 * x
    }
}

/// The raw peer's ends of the segment.
pub(crate) struct Raw {
    pub(crate) sender: FrameSender,
    pub(crate) receiver: FrameReceiver,
    pub(crate) liveness: osmos_shm::Liveness,
}

impl Raw {
    pub(crate) fn send(&mut self, m: &Message<'_>) {
        self.sender.send(&wire::encode(m).unwrap(), None).unwrap();
    }

    /// The next message, decoded from a copy; `None` after 20 s.
    pub(crate) fn next(&mut self) -> Option<Vec<u8>> {
        let until = Instant::now() + common::BOUND;
        loop {
            match self
                .receiver
                .recv(Some(Instant::now() + Duration::from_millis(50)))
            {
                Ok(m) => {
                    let bytes = m.to_vec();
                    drop(m);
                    return Some(bytes);
                }
                Err(osmos_shm::Error::Timeout { .. }) if Instant::now() < until => continue,
                Err(_) => return None,
            }
        }
    }

    /// Runs the handshake as the initiator.
    pub(crate) fn hello(&mut self) {
        self.send(&Message::Hello {
            version: PROTOCOL_VERSION,
            settings: Settings::default(),
        });
        let answer = self.next().expect("the session's HelloYourself");
        assert!(matches!(
            wire::decode(&answer).unwrap(),
            Message::HelloYourself { .. }
        ));
    }

    /// Calls `Side.double(x)` on the session as request `request`.
    pub(crate) fn call_double(&mut self, request: u64, x: u32) {
        let args = wire::encode(&(x,)).unwrap();
        self.send(&Message::Call {
            conn: 0,
            request,
            method: method_id("Side", "double"),
            deadline_us: 0,
            metadata: vec![],
            channels: vec![],
            args: &args,
        });
    }

    /// Answers `request` with `value`.
    pub(crate) fn answer(&mut self, request: u64, value: u32) {
        let payload = wire::encode(&value).unwrap();
        self.send(&Message::Response {
            conn: 0,
            request,
            metadata: vec![],
            channels: vec![],
            outcome: Outcome::Ok(&payload),
        });
    }
}

/// A segment, the session accepting on the host side (serving `Side`), and
/// the raw peer's ends, handed to `peer` on a thread of its own.
pub(crate) async fn start<T: Send + 'static>(
    peer: impl FnOnce(Raw) -> T + Send + 'static,
) -> (Connection, std::thread::JoinHandle<T>) {
    let host = Segment::create(&SegmentConfig::default(), 1).unwrap();
    let cell = host.attach_peer().unwrap();
    let Endpoint {
        sender,
        receiver,
        liveness,
        ..
    } = cell.endpoint().unwrap();
    let peer = std::thread::spawn(move || {
        let _cell = cell;
        let mut raw = Raw {
            sender,
            receiver,
            liveness,
        };
        raw.hello();
        peer(raw)
    });
    // No periodic work in the driver within a test's bound: a frame it
    // receives is one it was woken for.
    let quiet = SessionConfig {
        keepalive_interval: Duration::from_secs(60),
        keepalive_timeout: Duration::from_secs(120),
        call_timeout: None,
        ..SessionConfig::default()
    };
    let conn = bounded(
        "the handshake",
        SessionBuilder::new()
            .config(quiet)
            .serve(SideDispatcher::new(Impl))
            .accept(ShmLink::new(host.endpoint().unwrap())),
    )
    .await
    .unwrap();
    // The segment's mapping lives as long as the endpoints; the handle can go.
    drop(host);
    (conn, peer)
}

/// What the raw peer's thread returned, once it has (within the bound).
pub(crate) async fn join<T: Send + 'static>(peer: std::thread::JoinHandle<T>) -> T {
    bounded(
        "the peer",
        tokio::task::spawn_blocking(move || peer.join().unwrap()),
    )
    .await
    .unwrap()
}

/// `Peer.next(x)` on the raw peer.
pub(crate) async fn next(conn: &Connection, x: u32, options: CallOptions) -> Result<u32, CallError<String>> {
    conn.call::<(u32,), u32, String>(method_id("Peer", "next"), &(x,), options)
        .await
}

/// The session's next call, its request id and argument.
pub(crate) fn expect_call(raw: &mut Raw) -> (u64, u32) {
    loop {
        let bytes = raw.next().expect("the session's call");
        if let Message::Call { request, args, .. } = wire::decode(&bytes).unwrap() {
            let (x,): (u32,) = facet_postcard::from_slice(args).unwrap();
            return (request, x);
        }
    }
}

/// The session's next call that passes a channel: its request id and the
/// first channel.
pub(crate) fn expect_stream_call(raw: &mut Raw) -> (u64, u64) {
    loop {
        let bytes = raw.next().expect("the session's call");
        if let Message::Call {
            request, channels, ..
        } = wire::decode(&bytes).unwrap()
        {
            return (request, channels[0]);
        }
    }
}

/// The first two CPUs this thread may run on, if it may run on two.
pub(crate) fn two_cpus() -> Option<(usize, usize)> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set, and the call gets
    // its exact size.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let r = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        assert_eq!(r, 0, "sched_getaffinity: {}", std::io::Error::last_os_error());
        set
    };
    // SAFETY: CPU_ISSET reads a bit of the set, each index below its size.
    let mut allowed = (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) });
    Some((allowed.next()?, allowed.next()?))
}

/// Pins the calling thread to `cpu`.
pub(crate) fn pin_this_thread(cpu: usize) {
    // SAFETY: an all-zero cpu_set_t is a valid empty set, CPU_SET writes one
    // bit of it within its size, and the call gets its exact size.
    unsafe {
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        let r = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one);
        assert_eq!(r, 0, "sched_setaffinity: {}", std::io::Error::last_os_error());
    }
}

/// How many times the calling thread has gone to sleep.
pub(crate) fn this_thread_slept() -> u64 {
    std::fs::read_to_string("/proc/thread-self/status")
        .expect("this thread's status")
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches in /proc/thread-self/status")
}
