//! Both sides of a segment, each through its own mapping (plus a third for
//! the test to scribble through as the cell), with honest traffic both ways
//! and the bookkeeping that checks what arrives.

use std::collections::VecDeque;
use std::time::Instant;

use osmos_shm::{CreditReceiver, CreditSender, Endpoint, Error, Layout, Segment};

use super::mem::CellMem;
use super::*;
use crate::common::{Rng, checksum, pattern};

pub struct HostSide {
    pub ep: Endpoint,
    /// Channels 0..4.
    pub tx_credit: Vec<CreditSender>,
    /// Channels 4..8.
    pub rx_credit: Vec<CreditReceiver>,
}

pub struct CellSide {
    pub ep: Endpoint,
    /// Channels 4..8.
    pub tx_credit: Vec<CreditSender>,
    /// Channels 0..4.
    pub rx_credit: Vec<CreditReceiver>,
}

/// A host and a cell on one segment, each through its own mapping, plus a
/// third mapping for the test to scribble through as the cell.
pub struct Pair {
    pub _host_seg: Segment,
    pub _cell_seg: Segment,
    pub host: HostSide,
    pub cell: CellSide,
    pub mem: CellMem,
    pub layout: Layout,
    /// (len, checksum) of every message the cell sent that the host has not received.
    pub expected: VecDeque<(usize, u64)>,
    pub seed: u64,
    pub sent: u64,
}

impl Pair {
    pub fn new(seed: u64) -> TestResult<Pair> {
        let host_seg = Segment::create(&config(), seed as u32)?;
        let cell_seg = Segment::attach(host_seg.fd().try_clone_to_owned()?)?;
        let mem = CellMem::map(&cell_seg)?;
        let layout = host_seg.layout().clone();
        assert_eq!(cell_seg.layout(), &layout);
        let host = host_seg.endpoint()?;
        let cell = cell_seg.endpoint()?;
        // The host allocates channel ids, so it resets the entries.
        for ch in 0..CHANNELS {
            host.credit.reset(ch, INITIAL_CREDIT)?;
        }
        let host_tx = 0..HOST_TX_CHANNELS;
        let cell_tx = HOST_TX_CHANNELS..CHANNELS;
        let host = HostSide {
            tx_credit: host_tx
                .clone()
                .map(|ch| host.credit.sender(ch, INITIAL_CREDIT))
                .collect::<Result<_, _>>()?,
            rx_credit: cell_tx
                .clone()
                .map(|ch| host.credit.receiver(ch, INITIAL_CREDIT))
                .collect::<Result<_, _>>()?,
            ep: host,
        };
        let cell = CellSide {
            tx_credit: cell_tx
                .map(|ch| cell.credit.sender(ch, INITIAL_CREDIT))
                .collect::<Result<_, _>>()?,
            rx_credit: host_tx
                .map(|ch| cell.credit.receiver(ch, INITIAL_CREDIT))
                .collect::<Result<_, _>>()?,
            ep: cell,
        };
        Ok(Pair {
            _host_seg: host_seg,
            _cell_seg: cell_seg,
            host,
            cell,
            mem,
            layout,
            expected: VecDeque::new(),
            seed,
            sent: 0,
        })
    }
}

/// The channel (index into the cell's senders / the host's receivers) a cell
/// message is accounted to: its first byte is `5 + i`, or anything else for none.
pub fn cell_tag(msg: &[u8]) -> Option<usize> {
    match msg.first() {
        Some(&t @ 5..=8) => Some(usize::from(t - 5)),
        _ => None,
    }
}

/// Same for host messages: `1 + i` for host channel `i`.
pub fn host_tag(msg: &[u8]) -> Option<usize> {
    match msg.first() {
        Some(&t @ 1..=4) => Some(usize::from(t - 1)),
        _ => None,
    }
}

pub fn message_len(rng: &mut Rng, max_inline: u64, max_slot: u64) -> usize {
    if rng.below(10) < 7 {
        rng.below(max_inline + 1) as usize
    } else {
        (max_inline + 1 + rng.below(max_slot - max_inline)) as usize
    }
}

/// A send that may find the ring full or every slot in flight, and nothing worse.
pub fn honest<T>(what: &str, r: Result<T, Error>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(Error::Timeout { .. }) => None,
        Err(e) => panic!("honest {what} failed: {e}"),
    }
}

pub fn cell_send(p: &mut Pair, rng: &mut Rng) {
    let len = message_len(rng, 256, 8192);
    let mut buf = vec![0u8; len];
    pattern(p.seed, p.sent, &mut buf);
    p.sent += 1;
    if len > 0 {
        buf[0] = 0;
        let ch = rng.below(u64::from(CHANNELS - HOST_TX_CHANNELS)) as usize;
        if rng.below(2) == 0
            && p.cell.tx_credit[ch]
                .try_take(len as u32)
                .unwrap_or_else(|e| panic!("honest credit take failed: {e}"))
        {
            buf[0] = 5 + ch as u8;
        }
    }
    if honest("cell send", p.cell.ep.sender.send(&buf, Some(Instant::now()))).is_some() {
        p.expected.push_back((len, checksum(&buf)));
    }
}

pub fn host_recv_honest(p: &mut Pair, max: u64) {
    for _ in 0..max {
        let msg = match p.host.ep.receiver.try_recv() {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => panic!("honest host receive failed: {e}"),
        };
        let v = msg.to_vec();
        let (len, sum) = p
            .expected
            .pop_front()
            .expect("the host received a message the cell never sent");
        assert_eq!((v.len(), checksum(&v)), (len, sum), "honest message corrupted");
        let mut copy = Vec::new();
        msg.append_to(&mut copy);
        assert_eq!(copy, v);
        if let Some(ch) = cell_tag(&v) {
            let rx = &mut p.host.rx_credit[ch];
            rx.on_received(len as u32)
                .unwrap_or_else(|e| panic!("honest credit overrun: {e}"));
            rx.grant(len as u32)
                .unwrap_or_else(|e| panic!("honest grant failed: {e}"));
        }
        msg.finish()
            .unwrap_or_else(|e| panic!("honest host release failed: {e}"));
    }
}

pub fn host_send_honest(p: &mut Pair, rng: &mut Rng) {
    let len = message_len(rng, 256, 8192);
    let mut buf = vec![0u8; len];
    rng.fill(&mut buf);
    if len > 0 {
        buf[0] = 0;
        let ch = rng.below(u64::from(HOST_TX_CHANNELS)) as usize;
        if rng.below(2) == 0
            && p.host.tx_credit[ch]
                .try_take(len as u32)
                .unwrap_or_else(|e| panic!("honest credit take failed: {e}"))
        {
            buf[0] = 1 + ch as u8;
        }
    }
    honest("host send", p.host.ep.sender.send(&buf, Some(Instant::now())));
}

pub fn cell_recv_honest(p: &mut Pair, max: u64) {
    for _ in 0..max {
        let msg = match p.cell.ep.receiver.try_recv() {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => panic!("honest cell receive failed: {e}"),
        };
        let v = msg.to_vec();
        if let Some(ch) = host_tag(&v) {
            let rx = &mut p.cell.rx_credit[ch];
            rx.on_received(v.len() as u32)
                .unwrap_or_else(|e| panic!("honest credit overrun: {e}"));
            rx.grant(v.len() as u32)
                .unwrap_or_else(|e| panic!("honest grant failed: {e}"));
        }
        msg.finish()
            .unwrap_or_else(|e| panic!("honest cell release failed: {e}"));
    }
}

/// A few rounds of honest traffic both ways, leaving messages in the cell's
/// ring for the host, releases in the host's queue, slots in flight both ways
/// and credit moved on every kind of channel.
pub fn honest_traffic(p: &mut Pair, rng: &mut Rng) {
    for _ in 0..2 + rng.below(4) {
        for _ in 0..rng.below(4) {
            cell_send(p, rng);
        }
        host_recv_honest(p, rng.below(4));
        for _ in 0..rng.below(4) {
            host_send_honest(p, rng);
        }
        cell_recv_honest(p, rng.below(4));
        if rng.below(3) == 0 {
            honest("host reclaim", p.host.ep.sender.slots().reclaim());
        }
        if rng.below(3) == 0 {
            honest("cell reclaim", p.cell.ep.sender.slots().reclaim());
        }
    }
    for _ in 0..1 + rng.below(4) {
        cell_send(p, rng);
    }
}
