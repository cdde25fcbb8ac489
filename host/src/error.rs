//! Host errors, and how a cell ended.

use std::fmt;
use std::path::PathBuf;

use osmos_session::SessionError;

/// How a cell process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitInfo {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
}

impl ExitInfo {
    /// Whether it exited with status 0.
    pub fn success(self) -> bool {
        self == ExitInfo::Exited(0)
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGSYS => "SIGSYS",
        libc::SIGINT => "SIGINT",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        _ => "a signal",
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitInfo::Exited(code) => write!(f, "exited with status {code}"),
            ExitInfo::Signaled(sig) => write!(f, "was killed by signal {sig} ({})", signal_name(*sig)),
        }
    }
}

/// Everything that can go wrong hosting a cell.
#[derive(Debug)]
#[non_exhaustive]
pub enum HostError {
    /// The cell binary is missing or not a file.
    ProgramNotFound {
        /// The path given.
        program: PathBuf,
        /// Why it could not be used.
        source: std::io::Error,
    },
    /// The binary's sha256 differs from the expected one; nothing was executed.
    ChecksumMismatch {
        /// The binary.
        program: PathBuf,
        /// The expected digest (hex).
        expected: String,
        /// The binary's digest (hex).
        actual: String,
    },
    /// The sandbox could not be prepared (e.g. a required kernel feature is missing).
    Sandbox(crate::sandbox::SandboxError),
    /// The shared memory segment could not be created.
    Segment(osmos_shm::Error),
    /// A system call failed while spawning.
    Spawn {
        /// What was being done.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The cell started but did not complete the handshake.
    Handshake {
        /// The cell's name.
        name: String,
        /// What the session reported.
        error: SessionError,
        /// How the process ended, if it did.
        exit: Option<ExitInfo>,
        /// The last lines the cell wrote to stderr.
        stderr_tail: String,
    },
    /// The cell is not running now.
    NotRunning {
        /// The cell's name.
        name: String,
        /// Its state.
        state: String,
    },
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::ProgramNotFound { program, source } => write!(
                f,
                "cell binary {} cannot be used: {source}; build it, or fix the path",
                program.display()
            ),
            HostError::ChecksumMismatch {
                program,
                expected,
                actual,
            } => write!(
                f,
                "cell binary {} has sha256 {actual}, expected {expected}; it was not executed (rebuilt or tampered with?)",
                program.display()
            ),
            HostError::Sandbox(e) => write!(f, "cannot sandbox the cell: {e}"),
            HostError::Segment(e) => write!(f, "cannot create the cell's shared memory segment: {e}"),
            HostError::Spawn { op, source } => write!(f, "spawning the cell failed in {op}: {source}"),
            HostError::Handshake {
                name,
                error,
                exit,
                stderr_tail,
            } => {
                write!(f, "cell '{name}' did not start: {error}")?;
                if let Some(exit) = exit {
                    write!(f, "; the process {exit}")?;
                }
                if !stderr_tail.is_empty() {
                    write!(f, "; its last stderr lines:\n{stderr_tail}")?;
                }
                Ok(())
            }
            HostError::NotRunning { name, state } => write!(f, "cell '{name}' is not running ({state})"),
        }
    }
}

impl std::error::Error for HostError {}
