//! The host's reading paths: a driver that makes every library call the host
//! has (receiving, sending inline and through slots, reclaiming, credit,
//! liveness, the frame- and slot-level calls), and a tally of the outcomes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hint::black_box;
use std::time::{Duration, Instant};

use osmos_shm::{Error, PeerState, Side};

use super::pair::{HostSide, cell_tag};
use super::scribble::Expect;
use crate::common::{Rng, checksum};

/// Outcomes of every library call the host made.
#[derive(Default)]
pub struct Tally {
    pub calls: u64,
    pub oks: u64,
    /// Messages received and read.
    pub messages: u64,
    pub errors: BTreeMap<&'static str, u64>,
    pub rules: BTreeMap<&'static str, u64>,
    /// Rules and error kinds seen since last cleared (one iteration).
    pub seen_rules: BTreeSet<&'static str>,
    pub seen_errors: BTreeSet<&'static str>,
    /// The first violation since last cleared, for failure messages.
    pub first_violation: Option<String>,
}

impl Tally {
    pub fn record<T>(&mut self, r: &Result<T, Error>) {
        self.calls += 1;
        match r {
            Ok(_) => self.oks += 1,
            Err(e) => {
                let kind = error_kind(e);
                *self.errors.entry(kind).or_default() += 1;
                self.seen_errors.insert(kind);
                assert_eq!(
                    e.rule().is_some(),
                    kind == "Violation",
                    "rule() disagrees with {e:?}"
                );
                if let Some(rule) = e.rule() {
                    *self.rules.entry(rule.name()).or_default() += 1;
                    self.seen_rules.insert(rule.name());
                    self.first_violation.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }

    pub fn saw(&self, e: Expect) -> bool {
        match e {
            Expect::Rule(r) => self.seen_rules.contains(r.name()),
            Expect::Error(k) => self.seen_errors.contains(k),
        }
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "  {} library calls: {} Ok, {} messages read\n",
            self.calls, self.oks, self.messages
        );
        for (k, n) in &self.errors {
            s += &format!("  Err({k}): {n}\n");
        }
        for (k, n) in &self.rules {
            s += &format!("    rule {k}: {n}\n");
        }
        s
    }
}

pub fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Io { .. } => "Io",
        Error::InvalidConfig { .. } => "InvalidConfig",
        Error::BadSegment { .. } => "BadSegment",
        Error::VersionMismatch { .. } => "VersionMismatch",
        Error::Violation(_) => "Violation",
        Error::FrameTooLarge { .. } => "FrameTooLarge",
        Error::PayloadTooLarge { .. } => "PayloadTooLarge",
        Error::PeerGone { .. } => "PeerGone",
        Error::Shutdown => "Shutdown",
        Error::Timeout { .. } => "Timeout",
        Error::ChannelClosed { .. } => "ChannelClosed",
        Error::InvalidArgument { .. } => "InvalidArgument",
        _ => "other",
    }
}

/// Mostly an already-passed deadline (the whole wait path runs, then times
/// out); now and then a real 2 ms wait.
pub fn deadline(rng: &mut Rng) -> Option<Instant> {
    if rng.below(32) == 0 {
        Some(Instant::now() + Duration::from_millis(2))
    } else {
        Some(Instant::now())
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Op {
    Recv,
    SendInline,
    SendSlot,
    Reclaim,
    CreditSend,
    CreditGrant,
    Liveness,
    Frames,
}

pub const PHASE_ONE: [Op; 7] = [
    Op::Recv,
    Op::SendInline,
    Op::SendSlot,
    Op::Reclaim,
    Op::CreditSend,
    Op::Liveness,
    Op::Frames,
];

pub struct Driver<'a> {
    pub h: &'a mut HostSide,
    pub rng: &'a mut Rng,
    pub t: &'a mut Tally,
    /// Honest messages still to arrive, checked in order (iterations without lies).
    pub expected: Option<&'a mut VecDeque<(usize, u64)>>,
    /// No one writes the segment while the host reads it.
    pub exclusive: bool,
    /// Receive attempts per `Op::Recv`.
    pub recv_budget: u32,
}

impl Driver<'_> {
    pub fn run(&mut self, op: Op) {
        match op {
            Op::Recv => self.recv(),
            Op::SendInline => self.send(128, 256, 48),
            Op::SendSlot => self.send(257, 8192, 8),
            Op::Reclaim => {
                let r = self.h.ep.sender.slots().reclaim();
                self.t.record(&r);
                black_box(self.h.ep.sender.slots().in_flight());
            }
            Op::CreditSend => self.credit_send(),
            Op::CreditGrant => {
                for rx in &mut self.h.rx_credit {
                    let r = rx.grant(self.rng.below(513) as u32);
                    self.t.record(&r);
                    black_box(rx.outstanding());
                }
            }
            Op::Liveness => {
                let live = &self.h.ep.liveness;
                let r = live.check();
                self.t.record(&r);
                let states = [live.state(Side::Cell), live.state(Side::Host)];
                black_box(states.map(|s| matches!(s, PeerState::Unknown(_))));
                black_box((live.epoch(Side::Cell), live.epoch(Side::Host)));
            }
            Op::Frames => self.frames(),
        }
    }

    /// Receives until the ring is empty or keeps failing, reading every message.
    fn recv(&mut self) {
        let mut failures = 0;
        for _ in 0..self.recv_budget {
            let r = if self.rng.below(8) == 0 {
                let d = deadline(self.rng);
                self.h.ep.receiver.recv(d).map(Some)
            } else {
                self.h.ep.receiver.try_recv()
            };
            self.t.record(&r);
            let msg = match r {
                Ok(Some(m)) => m,
                Ok(None) | Err(Error::Timeout { .. } | Error::PeerGone { .. } | Error::Shutdown) => break,
                Err(_) => {
                    // Keep going: later calls must not panic either.
                    failures += 1;
                    if failures == 3 {
                        break;
                    }
                    continue;
                }
            };
            self.t.messages += 1;
            let v = msg.to_vec();
            assert_eq!(v.len(), msg.len(), "to_vec() and len() disagree");
            if self.exclusive {
                let mut appended = vec![7u8];
                msg.append_to(&mut appended);
                assert_eq!(
                    &appended[1..],
                    &v[..],
                    "append_to() and to_vec() disagree with no writer running"
                );
            }
            if let Some(expected) = self.expected.as_deref_mut() {
                let (len, sum) = expected
                    .pop_front()
                    .expect("the host received a message the cell never sent");
                assert_eq!((v.len(), checksum(&v)), (len, sum), "honest message corrupted");
            }
            if let Some(ch) = cell_tag(&v) {
                let r = self.h.rx_credit[ch].on_received(v.len() as u32);
                self.t.record(&r);
            }
            let r = msg.finish();
            self.t.record(&r);
        }
    }

    /// Sends until something fails (the ring fills, the slots run out, or a
    /// lie in the head or release queue is caught).
    fn send(&mut self, min: u64, max: u64, count: u32) {
        let mut buf = vec![0u8; max as usize];
        for _ in 0..count {
            let len = (min + self.rng.below(max - min + 1)) as usize;
            self.rng.fill(&mut buf[..len]);
            buf[0] = 0;
            let d = deadline(self.rng);
            let r = self.h.ep.sender.send(&buf[..len], d);
            self.t.record(&r);
            if r.is_err() {
                break;
            }
        }
    }

    fn credit_send(&mut self) {
        for tx in &mut self.h.tx_credit {
            let r = tx.available();
            self.t.record(&r);
            let r = tx.try_take(self.rng.below(513) as u32);
            self.t.record(&r);
            if self.rng.below(4) == 0 {
                let n = self.rng.below(2049) as u32;
                let d = deadline(self.rng);
                let r = tx.take(n, d);
                self.t.record(&r);
            }
        }
    }

    /// The frame- and slot-level sending calls.
    fn frames(&mut self) {
        let mut buf = [0u8; 256];
        let len = self.rng.below(self.h.ep.sender.max_inline() as u64 + 1) as usize;
        let r = self.h.ep.sender.producer().try_reserve(len);
        self.t.record(&r);
        if let Ok(Some(mut grant)) = r {
            let w = grant.write(0, &buf[..len]);
            self.t.record(&w);
            let c = grant.commit(len);
            self.t.record(&c);
        }
        let len = 1 + self.rng.below(8192) as usize;
        let r = self.h.ep.sender.slots().try_alloc(len);
        self.t.record(&r);
        if let Ok(Some(mut grant)) = r {
            buf[0] = 0;
            let w = grant.write(len - 1, &buf[..1]);
            self.t.record(&w);
            // Dropped unfinished: the slot goes back to the free list.
        }
    }
}

pub fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i as u64 + 1) as usize);
    }
}
