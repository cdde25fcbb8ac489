//! What the `hostile-cell` binary does, shared with the tests that judge
//! the host's answer.
//!
//! A hostile cell completes the handshake honestly, then misbehaves in one
//! of the ways a [`Hostility`] names: it writes seeded random bytes over a
//! region of its own segment while it keeps talking, or it sends traffic that
//! looks valid but lies. Each lie breaks one rule the host enforces, so the
//! host must end the session with an error naming that rule
//! ([`Hostility::expected`]). After a lie (a stalled reader excepted), the
//! cell reads on and exits with status 0 the moment the host lets go of the
//! link, as a cell whose session ended would: the host must kill it for the
//! lie before that (before it tells the cell anything), or it sees a cell
//! that stopped on its own. Or it sends well-formed messages and keeps
//! rewriting their strings and payloads while the host reads them
//! ([`Hostility::FlipBytes`]): the host must copy each frame out once and
//! decode the copy, so it only ever sees valid values or a named violation.

use std::ops::Range;

use osmos_session::method_id;
use osmos_shm::{Direction, Layout};

/// The service a byte-flipping cell calls on its host
/// ([`Hostility::FlipBytes`]); the host serves it by hand to see the
/// metadata and the argument bytes as the session hands them over.
pub const FLIP_SERVICE: &str = "HostileFlip";
/// The method a byte-flipping cell calls: its arguments are a
/// `(String, Vec<u8>)`, its metadata a string, bytes and a number, and the
/// host answers the number of argument bytes (`u64`).
pub const FLIP_METHOD: u64 = method_id(FLIP_SERVICE, "take");

/// A region of the segment a scribbling cell writes over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// The header (magic, version, sizes, offsets).
    Header,
    /// Both sides' liveness words.
    Liveness,
    /// The control block of the ring the cell writes (its tail, the host's head, doorbells).
    CellRingCtrl,
    /// The frames of the ring the cell writes.
    CellRingData,
    /// The control block of the ring the host writes.
    HostRingCtrl,
    /// The frames of the ring the host writes.
    HostRingData,
    /// The cell's slot pool: control block, release queue and slots.
    CellPool,
    /// The host's slot pool.
    HostPool,
    /// The channel credit table.
    Credit,
    /// Anywhere in the segment.
    Anywhere,
}

impl Region {
    /// Every region, in a fixed order.
    pub const ALL: [Region; 10] = [
        Region::CellRingCtrl,
        Region::CellPool,
        Region::Credit,
        Region::Liveness,
        Region::CellRingData,
        Region::HostRingCtrl,
        Region::HostRingData,
        Region::HostPool,
        Region::Header,
        Region::Anywhere,
    ];

    /// The region's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Region::Header => "header",
            Region::Liveness => "liveness",
            Region::CellRingCtrl => "cell-ring-ctrl",
            Region::CellRingData => "cell-ring-data",
            Region::HostRingCtrl => "host-ring-ctrl",
            Region::HostRingData => "host-ring-data",
            Region::CellPool => "cell-pool",
            Region::HostPool => "host-pool",
            Region::Credit => "credit",
            Region::Anywhere => "anywhere",
        }
    }

    /// The byte ranges of the region in a segment of layout `l`.
    #[allow(clippy::single_range_in_vec_init)]
    pub fn ranges(self, l: &Layout) -> Vec<Range<usize>> {
        let ring = |d: Direction| l.rings[d as usize];
        let pool = |d: Direction| {
            let p = &l.pools[d as usize];
            let mut v = vec![p.ctrl..p.queue + p.queue_cap * 8];
            v.extend(p.classes.iter().map(|c| c.offset..c.offset + c.size * c.count));
            v
        };
        match self {
            Region::Header => vec![0..l.liveness.min(256)],
            Region::Liveness => vec![l.liveness..l.liveness + 256],
            Region::CellRingCtrl => {
                let r = ring(Direction::CellToHost);
                vec![r.ctrl..r.data]
            }
            Region::CellRingData => {
                let r = ring(Direction::CellToHost);
                vec![r.data..r.data + r.bytes]
            }
            Region::HostRingCtrl => {
                let r = ring(Direction::HostToCell);
                vec![r.ctrl..r.data]
            }
            Region::HostRingData => {
                let r = ring(Direction::HostToCell);
                vec![r.data..r.data + r.bytes]
            }
            Region::CellPool => pool(Direction::CellToHost),
            Region::HostPool => pool(Direction::HostToCell),
            Region::Credit => {
                vec![l.channels..l.total.min(l.channels + l.config.max_channels as usize * 256)]
            }
            Region::Anywhere => vec![0..l.total],
        }
    }
}

/// How a hostile cell misbehaves once the handshake is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hostility {
    /// Writes seeded random bytes and plausible values over a region of its
    /// segment, in bursts, while it keeps answering calls and pinging.
    Scribble(Region),
    /// A ring frame whose header gives a length above the ring's maximum.
    OversizedFrame,
    /// A slot reference whose length exceeds its slot's class.
    OversizedSlot,
    /// A message whose encoded byte-string length runs far past the frame.
    OversizedPrefix,
    /// A slot reference replayed after the host released the slot.
    StaleGeneration,
    /// Items sent on a channel past the credit the host granted.
    CreditOverrun,
    /// A response to a call the host never made.
    UnknownRequest,
    /// An item on a channel that was never opened.
    UnknownChannel,
    /// A call on a connection that was never opened.
    UnknownConnection,
    /// A call whose request id has the host's parity.
    WrongParity,
    /// Pings without ever reading the pongs.
    PingFlood,
    /// The same flood packed into `Batch` frames, a hundred pings a frame:
    /// each costs the host an answer all the same.
    BatchedPingFlood,
    /// A `Batch` frame inside a `Batch` frame.
    NestedBatch,
    /// Never reads and never sends again.
    StalledReader,
    /// Sends well-formed calls ([`FLIP_METHOD`]) whose metadata and
    /// arguments carry strings and bytes, answers the host's
    /// `TestCell.echo` calls with bytes or error strings, inline and in
    /// slots, and from a second thread keeps rewriting the strings and
    /// payloads of the frames it sends (from just before their commit until
    /// their memory is reused) with random bytes, invalid UTF-8 among them,
    /// while the host reads them. Ends with a `Goodbye` or `ProtocolError`
    /// whose strings it rewrites too.
    FlipBytes,
}

/// What the host must conclude about a hostile cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The session ends with an error naming one of these rules.
    Rule(&'static [&'static str]),
    /// The session ends because the cell went silent.
    KeepaliveTimeout,
    /// Random damage: the session may end in any way, or the damage may go
    /// unnoticed; the host must stay whole either way.
    Anything,
}

impl Hostility {
    /// Every lie (scribbles excluded), in a fixed order.
    pub const LIES: [Hostility; 13] = [
        Hostility::OversizedFrame,
        Hostility::OversizedSlot,
        Hostility::OversizedPrefix,
        Hostility::StaleGeneration,
        Hostility::CreditOverrun,
        Hostility::UnknownRequest,
        Hostility::UnknownChannel,
        Hostility::UnknownConnection,
        Hostility::WrongParity,
        Hostility::PingFlood,
        Hostility::BatchedPingFlood,
        Hostility::NestedBatch,
        Hostility::StalledReader,
    ];

    /// The name on the command line (`scribble:<region>` for scribbles).
    /// [`FlipBytes`](Self::FlipBytes) is `flip-bytes`.
    pub fn name(self) -> String {
        match self {
            Hostility::Scribble(r) => format!("scribble:{}", r.name()),
            Hostility::OversizedFrame => "oversized-frame".into(),
            Hostility::OversizedSlot => "oversized-slot".into(),
            Hostility::OversizedPrefix => "oversized-prefix".into(),
            Hostility::StaleGeneration => "stale-generation".into(),
            Hostility::CreditOverrun => "credit-overrun".into(),
            Hostility::UnknownRequest => "unknown-request".into(),
            Hostility::UnknownChannel => "unknown-channel".into(),
            Hostility::UnknownConnection => "unknown-connection".into(),
            Hostility::WrongParity => "wrong-parity".into(),
            Hostility::PingFlood => "ping-flood".into(),
            Hostility::BatchedPingFlood => "batched-ping-flood".into(),
            Hostility::NestedBatch => "nested-batch".into(),
            Hostility::StalledReader => "stalled-reader".into(),
            Hostility::FlipBytes => "flip-bytes".into(),
        }
    }

    /// Parses [`name`](Self::name)'s output.
    pub fn parse(s: &str) -> Option<Hostility> {
        if let Some(r) = s.strip_prefix("scribble:") {
            return Region::ALL
                .into_iter()
                .find(|x| x.name() == r)
                .map(Hostility::Scribble);
        }
        Self::LIES
            .into_iter()
            .chain([Hostility::FlipBytes])
            .find(|h| h.name() == s)
    }

    /// How the host must answer.
    pub fn expected(self) -> Expect {
        match self {
            Hostility::Scribble(_) | Hostility::FlipBytes => Expect::Anything,
            Hostility::OversizedFrame => Expect::Rule(&["frame.length-in-bounds"]),
            Hostility::OversizedSlot => Expect::Rule(&["slot.length-fits-class"]),
            Hostility::OversizedPrefix => Expect::Rule(&["frame.decodable"]),
            Hostility::StaleGeneration => Expect::Rule(&["slot.generation-next", "slot.not-held-twice"]),
            Hostility::CreditOverrun => Expect::Rule(&["credit.no-overrun"]),
            Hostility::UnknownRequest => Expect::Rule(&["response.known-request"]),
            Hostility::UnknownChannel => Expect::Rule(&["channel.known"]),
            Hostility::UnknownConnection => Expect::Rule(&["conn.known"]),
            Hostility::WrongParity => Expect::Rule(&["id.parity"]),
            Hostility::PingFlood | Hostility::BatchedPingFlood => Expect::Rule(&["peer.reads-its-answers"]),
            Hostility::NestedBatch => Expect::Rule(&["frame.batch-flat"]),
            Hostility::StalledReader => Expect::KeepaliveTimeout,
        }
    }
}
