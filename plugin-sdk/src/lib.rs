//! # osmos-plugin-sdk: the cell side of osmos
//!
//! A cell is any binary whose `main` hands a service to this crate (here
//! defined with `#[osmos_macros::service]`; a crate that depends on `osmos`
//! writes `#[osmos::service]`):
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! /// What this cell serves.
//! #[osmos_macros::service]
//! pub trait Greeter {
//!     /// Greets.
//!     async fn greet(&self, name: String) -> Result<String, String>;
//! }
//!
//! struct Hello;
//! impl Greeter for Hello {
//!     async fn greet(&self, name: String) -> Result<String, String> {
//!         Ok(format!("hello, {name}"))
//!     }
//! }
//!
//! fn main() {
//!     osmos_plugin_sdk::run("greeter: says hello", || GreeterDispatcher::new(Hello));
//! }
//! ```
//!
//! ## Entry points
//!
//! | from | call | serves on | ends with |
//! |---|---|---|---|
//! | `fn main` | [`run`] / [`run_with`] | a runtime it starts ([`ENV_WORKER_THREADS`]) | `exit` |
//! | `#[tokio::main] async fn main` (multi-thread) | [`run`] / [`run_with`] | that runtime, through `block_in_place` | `exit` |
//! | any `async fn` (any runtime flavor) | [`serve`] / [`serve_with`] `.await` | the caller's runtime | `Result`; [`CellError::exit_code`] |
//!
//! Started by hand with `--listen ADDR --credentials DIR` (or
//! [`ENV_LISTEN`](osmos_session::control::ENV_LISTEN) and
//! [`ENV_CREDENTIALS`](osmos_session::control::ENV_CREDENTIALS)), every
//! entry point serves hosts over the network instead: mutual TLS with
//! pinned certificates, then a session that survives broken connections
//! (see [`remote`]).
//!
//! [`run`] inside a current-thread runtime (`#[tokio::main(flavor =
//! "current_thread")]`) cannot serve without stopping that runtime: it
//! says so (stderr, and the host's log) and exits with [`EXIT_FAILED`];
//! use [`serve`] there. Every entry point reads the bootstrap, prints
//! [`usage`] and fails with [`EXIT_NOT_LAUNCHED_BY_HOST`] when the binary
//! is run by hand, and forwards the cell's tracing events to the host
//! ([`forward_logs`]) before the cell starts.
//!
//! Underneath: [`Bootstrap::from_env`] reads what the host passed (the
//! segment at fd 3, the control socket at fd 4, the wake descriptor at fd 5,
//! `OSMOS_*` variables; see [`osmos_session::control`]); [`Cell::start`]
//! attaches to the segment, validates it and runs the handshake as the
//! acceptor; [`Cell::serve`] serves until the host says goodbye.
//! [`Cell::connection`] lets the cell call services the host exposes, and
//! [`connect_to_cell`] those of another cell the host lets it reach (the
//! host forwards the connection, and tells the other cell who calls: its
//! handlers see this cell's name as
//! [`CallContext::caller`](osmos_session::CallContext::caller)). A program that starts a [`Cell`] itself
//! calls [`forward_logs`] to keep its logs.
//!
//! ## Defaults and environment
//!
//! Set by the host for its cell (`CellBuilder::env`):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `OSMOS_LOG` ([`ENV_LOG`]) | `info` | lowest level of the cell's tracing events forwarded to the host (`error`, `warn`, `info`, `debug`, `trace`, `off`); a cell's `debug!` lines are dropped in the cell unless the host sets `debug` (`CellBuilder::log_level`) |
//! | `OSMOS_WORKER_THREADS` ([`ENV_WORKER_THREADS`]) | `1` | threads of the runtime [`run`] starts: `1` serves on the main thread alone (a current-thread runtime: a frame is handled where it is received), `N > 1` a multi-thread runtime of `N` workers (at most 256); ignored on the program's own runtime |
//! | `OSMOS_LISTEN`, `OSMOS_CREDENTIALS` | unset | remote mode, when a cell is started by hand (same as `--listen`, `--credentials`; see [`remote`]) |
//! | `OSMOS_CELL_NAME`, `OSMOS_PROTOCOL_VERSION`, `OSMOS_SEGMENT_FD`, `OSMOS_CONTROL_FD`, `OSMOS_WAKE_FD` | set by every host | the bootstrap ([`Bootstrap::from_env`]); without them the binary was run by hand |
//!
//! The cell's session uses [`SessionConfig::default`]: the handshake must
//! complete within **10 s**; a ping goes out after **5 s** without sending,
//! and the session ends ([`SessionError::KeepaliveTimeout`]) after **20 s**
//! without hearing from the host. Exit codes: 0 after the host's goodbye,
//! [`EXIT_FAILED`] (1) when the session fails, [`EXIT_NOT_LAUNCHED_BY_HOST`]
//! (2) when run by hand.

use std::fmt;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use osmos_session::control::{
    CONTROL_FD, ENV_CELL_NAME, ENV_CONTROL_FD, ENV_PROTOCOL, ENV_SEGMENT_FD, ENV_WAKE_FD, META_CELL,
    SEGMENT_FD, WAKE_FD,
};
use osmos_session::link::shm::ShmLink;
use osmos_session::wire::PROTOCOL_VERSION;
use osmos_session::wire::{MetaEntry, MetaValue};
use osmos_session::{CallError, Connection, Dispatcher, SessionBuilder, SessionConfig, SessionError};
use osmos_shm::Segment;

mod entry;
mod logging;
pub mod remote;

pub use entry::{ENV_WORKER_THREADS, run, run_with, serve, serve_with, usage};
pub use logging::{ENV_LOG, forward_logs};

/// Exit code of a cell run by hand (no host).
pub const EXIT_NOT_LAUNCHED_BY_HOST: i32 = 2;
/// Exit code of a cell whose session failed.
pub const EXIT_FAILED: i32 = 1;

/// Why a cell could not start or serve.
#[derive(Debug)]
#[non_exhaustive]
pub enum CellError {
    /// The process was not started by an osmos host (run by hand?).
    NotLaunchedByHost {
        /// What is missing.
        missing: String,
    },
    /// The host speaks another protocol version.
    ProtocolMismatch {
        /// The version this cell speaks.
        ours: u32,
        /// What the host announced.
        host: String,
    },
    /// The inherited segment is unusable.
    Segment(osmos_shm::Error),
    /// The session failed.
    Session(SessionError),
    /// Remote mode (see [`remote`]) could not start: a bad listen address,
    /// missing or bad credentials, a port in use.
    Remote {
        /// What went wrong and what to do.
        detail: String,
    },
}

impl fmt::Display for CellError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CellError::NotLaunchedByHost { missing } => {
                write!(
                    f,
                    "not started by an osmos host ({missing}); start this cell from a host program"
                )
            }
            CellError::ProtocolMismatch { ours, host } => write!(
                f,
                "protocol version mismatch: this cell speaks {ours}, the host speaks {host}; rebuild the cell against the host's osmos release"
            ),
            CellError::Segment(e) => write!(f, "cannot use the segment the host passed: {e}"),
            CellError::Session(e) => write!(f, "{e}"),
            CellError::Remote { detail } => write!(f, "cannot serve remotely: {detail}"),
        }
    }
}

impl CellError {
    /// The code a cell exits with for this error, as [`run`] does:
    /// [`EXIT_NOT_LAUNCHED_BY_HOST`] when run by hand, [`EXIT_FAILED`]
    /// otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            CellError::NotLaunchedByHost { .. } => EXIT_NOT_LAUNCHED_BY_HOST,
            _ => EXIT_FAILED,
        }
    }
}

impl std::error::Error for CellError {}

/// What the host passed to this process.
#[derive(Debug)]
pub struct Bootstrap {
    /// The cell's name.
    pub name: String,
    /// The shared memory segment.
    pub segment: OwnedFd,
    /// The control socket, for forwarding logs.
    pub control: Option<OwnedFd>,
    /// The cell's end of the segment's wake pair.
    pub wake: OwnedFd,
}

fn fd_is_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only inspects the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

impl Bootstrap {
    /// Reads the bootstrap from the environment and the inherited fds. Each
    /// call takes ownership of the fds, so call it once.
    pub fn from_env() -> Result<Bootstrap, CellError> {
        let name = std::env::var(ENV_CELL_NAME).map_err(|_| CellError::NotLaunchedByHost {
            missing: format!("{ENV_CELL_NAME} is not set"),
        })?;
        let protocol = std::env::var(ENV_PROTOCOL).map_err(|_| CellError::NotLaunchedByHost {
            missing: format!("{ENV_PROTOCOL} is not set"),
        })?;
        if protocol.parse::<u32>().ok() != Some(PROTOCOL_VERSION) {
            return Err(CellError::ProtocolMismatch {
                ours: PROTOCOL_VERSION,
                host: protocol,
            });
        }
        for (var, fd) in [
            (ENV_SEGMENT_FD, SEGMENT_FD),
            (ENV_CONTROL_FD, CONTROL_FD),
            (ENV_WAKE_FD, WAKE_FD),
        ] {
            if std::env::var(var).ok().and_then(|v| v.parse::<i32>().ok()) != Some(fd) {
                return Err(CellError::NotLaunchedByHost {
                    missing: format!("{var} is not {fd}"),
                });
            }
        }
        if !fd_is_open(SEGMENT_FD) {
            return Err(CellError::NotLaunchedByHost {
                missing: format!("fd {SEGMENT_FD} (the segment) is not open"),
            });
        }
        // SAFETY: fd 3 is open (checked) and was passed to us by the host for
        // this purpose; nothing else in the process owns it.
        let segment = unsafe { OwnedFd::from_raw_fd(SEGMENT_FD) };
        // SAFETY: as above, for the control socket at fd 4 when it is open.
        let control = fd_is_open(CONTROL_FD).then(|| unsafe { OwnedFd::from_raw_fd(CONTROL_FD) });
        if !fd_is_open(WAKE_FD) {
            return Err(CellError::NotLaunchedByHost {
                missing: format!("fd {WAKE_FD} (the wake descriptor) is not open"),
            });
        }
        // SAFETY: as above, for the wake descriptor at fd 5 (open, checked).
        let wake = unsafe { OwnedFd::from_raw_fd(WAKE_FD) };
        Ok(Bootstrap {
            name,
            segment,
            control,
            wake,
        })
    }
}

/// A running cell: attached, handshaken, serving.
pub struct Cell {
    name: String,
    conn: Connection,
}

impl fmt::Debug for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cell").field("name", &self.name).finish()
    }
}

impl Cell {
    /// Attaches to the host's segment and runs the handshake, serving
    /// `dispatcher` on the root connection.
    pub async fn start(bootstrap: Bootstrap, dispatcher: Arc<dyn Dispatcher>) -> Result<Cell, CellError> {
        let segment =
            Segment::attach_with_wake(bootstrap.segment, bootstrap.wake).map_err(CellError::Segment)?;
        let endpoint = segment.endpoint().map_err(CellError::Segment)?;
        let config = SessionConfig {
            name: bootstrap.name.clone(),
            ..SessionConfig::default()
        };
        // The host may open virtual connections to the cell (e.g. another
        // cell's, forwarded): they are served like the root one, and the
        // host's word on who calls on them is believed.
        let served = dispatcher.clone();
        let conn = SessionBuilder::new()
            .config(config)
            .serve(dispatcher)
            .trust_peer_caller()
            .accept_connections(Arc::new(move |_: &osmos_session::wire::Metadata| {
                Ok(Some(served.clone()))
            }))
            .accept(ShmLink::new(endpoint))
            .await
            .map_err(CellError::Session)?;
        tracing::debug!(cell = %bootstrap.name, "attached and serving");
        Ok(Cell {
            name: bootstrap.name,
            conn,
        })
    }

    /// The cell's name, as the host knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The connection to the host: make clients on it to call the host's services.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Serves until the session ends: `Ok` when the host said goodbye (a
    /// clean shutdown), the reason otherwise.
    pub async fn serve(self) -> Result<(), CellError> {
        match self.conn.closed().await {
            SessionError::Goodbye { .. } | SessionError::Closed { .. } => Ok(()),
            e => Err(CellError::Session(e)),
        }
    }
}

/// Opens a connection to the cell named `cell`, through the host (`host` is
/// [`Cell::connection`]): make a client of the other cell's service on it.
/// Fails with the host's reason if it does not allow this cell to reach
/// that one, or if that cell is not running. Dropping the last handle on the
/// connection closes it.
pub async fn connect_to_cell(host: &Connection, cell: &str) -> Result<Connection, CallError<String>> {
    let metadata = vec![MetaEntry {
        key: META_CELL.to_string(),
        value: MetaValue::Str(cell.to_string()),
    }];
    host.open(metadata, None).await
}
