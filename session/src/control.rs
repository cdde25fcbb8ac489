//! The host ↔ cell bootstrap contract, shared by `osmos-host` and
//! `osmos-plugin-sdk`.
//!
//! A host starts a cell with exactly these file descriptors open:
//! - [`SEGMENT_FD`]: the sealed shared memory segment (an `osmos-shm` memfd);
//! - [`CONTROL_FD`]: one end of a `SOCK_SEQPACKET` Unix socket pair, on which
//!   the cell sends [`LogRecord`]s (one per packet) for the host's tracing;
//! - [`WAKE_FD`]: the cell's end of the segment's wake socket pair (see
//!   `osmos_shm::WakePair`), through which each side wakes the other's
//!   async waiters;
//! - stdin (`/dev/null`), stdout and stderr (pipes the host reads line by line);
//!
//! and a cleared environment holding only the host's allow-list plus
//! [`ENV_CELL_NAME`], [`ENV_PROTOCOL`], [`ENV_SEGMENT_FD`], [`ENV_CONTROL_FD`]
//! and [`ENV_WAKE_FD`]. The cell attaches to the segment and runs the session
//! over it as the acceptor; the host is the initiator.

use facet::Facet;

/// The fd number of the shared memory segment in a cell.
pub const SEGMENT_FD: i32 = 3;
/// The fd number of the control socket in a cell.
pub const CONTROL_FD: i32 = 4;
/// The fd number of the cell's end of the segment's wake pair.
pub const WAKE_FD: i32 = 5;
/// The cell's name, as the host knows it.
pub const ENV_CELL_NAME: &str = "OSMOS_CELL_NAME";
/// The session protocol version the host speaks.
pub const ENV_PROTOCOL: &str = "OSMOS_PROTOCOL_VERSION";
/// The segment's fd number (always [`SEGMENT_FD`]; stated for clarity).
pub const ENV_SEGMENT_FD: &str = "OSMOS_SEGMENT_FD";
/// The control socket's fd number (always [`CONTROL_FD`]).
pub const ENV_CONTROL_FD: &str = "OSMOS_CONTROL_FD";
/// The wake descriptor's fd number (always [`WAKE_FD`]).
pub const ENV_WAKE_FD: &str = "OSMOS_WAKE_FD";

/// The lowest level of the cell's tracing events forwarded to the host
/// (`error`, `warn`, `info`, `debug`, `trace` or `off`; `info` when unset).
/// Optional: the host sets it for a cell that should forward more or less.
pub const ENV_LOG: &str = "OSMOS_LOG";

/// Metadata key of a virtual connection a cell opens to the host to reach
/// another cell: its value (a string) names the cell. The host forwards the
/// connection there if its routes allow it.
pub const META_CELL: &str = "osmos.cell";

/// Metadata key of a virtual connection the host opens to a cell on behalf
/// of another cell: its value (a string) names the cell that opened it, and
/// calls on the connection report it as their
/// [`CallContext::caller`](crate::CallContext::caller). Only the host sets
/// it: the host drops any a cell sends, and only a session that trusts its
/// peer ([`SessionBuilder::trust_peer_caller`](crate::SessionBuilder::trust_peer_caller),
/// as a cell trusts its host) believes it.
pub const META_CALLER: &str = "osmos.caller";

/// Largest control packet a host reads; longer records are cut by the sender.
pub const MAX_LOG_RECORD: usize = 16 << 10;

/// One tracing event of a cell, forwarded to the host.
#[derive(Facet, Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// 1 error, 2 warn, 3 info, 4 debug, 5 trace.
    pub level: u8,
    /// The event's target (usually its module path).
    pub target: String,
    /// The message and fields, formatted.
    pub message: String,
}

/// Where a remote cell listens, when it is started by hand to serve a host
/// over the network: `tcp:HOST:PORT` (or just `HOST:PORT`) or
/// `unix:/path/to/socket`. Also given as `--listen ADDR`.
pub const ENV_LISTEN: &str = "OSMOS_LISTEN";

/// The directory of a remote cell's credentials (its identity and the host's
/// pinned certificate, as `osmos_session::tls::CellCredentials::write_dir`
/// writes them). Also given as `--credentials DIR`.
pub const ENV_CREDENTIALS: &str = "OSMOS_CREDENTIALS";

/// Where a remote cell sends its tracing events: the host serves it on a
/// remote cell's session (a local cell uses its control socket).
#[osmos_macros::service]
pub trait CellLogs {
    /// A batch of the cell's events, oldest first (at most
    /// [`MAX_LOG_BATCH`] records of at most [`MAX_LOG_RECORD`] bytes).
    async fn records(&self, batch: Vec<LogRecord>) -> Result<(), String>;
}

/// Most records a remote cell sends in one [`CellLogs::records`] call.
pub const MAX_LOG_BATCH: usize = 64;
