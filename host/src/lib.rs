//! # osmos-host: spawn sandboxed cells and talk to them over shared memory
//!
//! How the pieces fit:
//!
//! - [`CellBuilder`] (`cell.rs`) describes a cell: its binary, arguments,
//!   name, environment allow-list, [`SandboxPolicy`], [`RestartPolicy`],
//!   segment configuration, optional sha256 of the binary, and services the
//!   host exposes to it. [`CellBuilder::spawn`] returns a [`CellHandle`]:
//!   typed clients, pid, state, stats, kill, graceful shutdown.
//! - [`Discovery`] (`discovery.rs`): every cell binary in a directory,
//!   optionally checked against a `sha256sum` manifest; each found binary
//!   gives a [`CellBuilder`] pinned to the digest seen.
//! - [`FollowingClient`] (`following.rs`): a client that follows a cell
//!   across restarts (each call reaches the incarnation running when it is
//!   made; a call made while the cell restarts waits for it).
//! - `spawn.rs` starts one incarnation: a fresh sealed segment, a control
//!   socket, a cleared environment, the segment and socket at fds 3 and 4
//!   (see [`osmos_session::control`]), `PR_SET_PDEATHSIG`, the sandbox, exec,
//!   a pidfd, log forwarding, and the handshake.
//! - [`sandbox`] prepares the sandbox in the parent and applies it in the
//!   child between fork and exec.
//! - A supervisor task per cell (`cell/supervisor.rs`) waits on its pidfd:
//!   it publishes the cell's next state, then a dying cell fails its
//!   calls and streams at once with an error saying how it died
//!   ([`osmos_session::SessionError::PeerDied`]), and is restarted as its
//!   policy says.
//!
//! - [`RemoteCellBuilder`] (`remote.rs`) attaches to a cell on another
//!   machine over mutual TLS and a session that survives broken
//!   connections; the [`RemoteCell`] handle speaks like a [`CellHandle`].
//! - [`Routes`] (`routes.rs`): which cell may reach which other cell; the
//!   host forwards the virtual connections it allows
//!   ([`osmos_session::Forward`]).
//!
//! Cell stdout and stderr lines, and the tracing events the cell SDK
//! forwards, reach this process's `tracing` under target `osmos::cell`
//! ([`CELL_TARGET`]) with a `cell` field naming the cell: read in bounded
//! chunks, lines capped, bytes converted lossily, everything the cell
//! supplied escaped, and rate-limited per cell ([`LogLimits`]); the control
//! socket that carries the records is read as hostile input. See `logs.rs`,
//! `output.rs` and `records.rs`.

mod cell;
mod discovery;
mod error;
pub mod following;
mod logs;
mod output;
mod records;
mod remote;
mod routes;
pub mod sandbox;
mod spawn;

pub use cell::{CellBuilder, CellHandle, CellState, CellStats, RestartPolicy, SESSION_END_GRACE};
pub use discovery::{Discovery, DiscoveryError, Found, Refused, Scan};
pub use error::{ExitInfo, HostError, signal_name};
pub use following::{CellSource, FollowingClient};
pub use logs::{CELL_TARGET, LogLimits, LogStats};
pub use remote::{RemoteAddr, RemoteCell, RemoteCellBuilder};
pub use routes::{MAX_FORWARDED_PER_CELL, Routes};
pub use sandbox::{SandboxPolicy, SandboxReport};
