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
    /// A remote cell's session ended: its process runs elsewhere, so how
    /// (or whether) it exited is not known here.
    Detached,
}

impl ExitInfo {
    /// Whether it exited with status 0.
    pub fn success(self) -> bool {
        self == ExitInfo::Exited(0)
    }
}

/// The name of signal `sig` and what it usually means, e.g. `SIGXCPU` and
/// "CPU time limit exceeded"; real-time signals are `SIGRTMIN+n` (counted
/// from the C library's `SIGRTMIN`, as `kill -l` does).
pub fn signal_name(sig: i32) -> (std::borrow::Cow<'static, str>, &'static str) {
    let (name, meaning) = match sig {
        libc::SIGHUP => ("SIGHUP", "hangup"),
        libc::SIGINT => ("SIGINT", "interrupt"),
        libc::SIGQUIT => ("SIGQUIT", "quit"),
        libc::SIGILL => ("SIGILL", "illegal instruction"),
        libc::SIGTRAP => ("SIGTRAP", "trace or breakpoint trap"),
        libc::SIGABRT => ("SIGABRT", "aborted"),
        libc::SIGBUS => ("SIGBUS", "bus error: bad memory access"),
        libc::SIGFPE => ("SIGFPE", "arithmetic exception"),
        libc::SIGKILL => ("SIGKILL", "killed"),
        libc::SIGUSR1 => ("SIGUSR1", "user-defined signal 1"),
        libc::SIGSEGV => ("SIGSEGV", "segmentation fault: invalid memory reference"),
        libc::SIGUSR2 => ("SIGUSR2", "user-defined signal 2"),
        libc::SIGPIPE => ("SIGPIPE", "broken pipe: wrote to a pipe or socket nobody reads"),
        libc::SIGALRM => ("SIGALRM", "timer alarm"),
        libc::SIGTERM => ("SIGTERM", "terminated"),
        libc::SIGSTKFLT => ("SIGSTKFLT", "stack fault"),
        libc::SIGCHLD => ("SIGCHLD", "child status changed"),
        libc::SIGCONT => ("SIGCONT", "continued"),
        libc::SIGSTOP => ("SIGSTOP", "stopped"),
        libc::SIGTSTP => ("SIGTSTP", "stopped at the terminal"),
        libc::SIGTTIN => ("SIGTTIN", "background read from the terminal"),
        libc::SIGTTOU => ("SIGTTOU", "background write to the terminal"),
        libc::SIGURG => ("SIGURG", "urgent socket data"),
        libc::SIGXCPU => ("SIGXCPU", "CPU time limit exceeded (RLIMIT_CPU)"),
        libc::SIGXFSZ => ("SIGXFSZ", "file size limit exceeded (RLIMIT_FSIZE)"),
        libc::SIGVTALRM => ("SIGVTALRM", "virtual timer alarm"),
        libc::SIGPROF => ("SIGPROF", "profiling timer alarm"),
        libc::SIGWINCH => ("SIGWINCH", "window size changed"),
        libc::SIGIO => ("SIGIO", "I/O possible"),
        libc::SIGPWR => ("SIGPWR", "power failure"),
        libc::SIGSYS => ("SIGSYS", "bad system call (denied by the seccomp filter?)"),
        _ => {
            let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
            return if (min..=max).contains(&sig) {
                (format!("SIGRTMIN+{}", sig - min).into(), "real-time signal")
            } else if (32..min).contains(&sig) {
                // The kernel's first real-time signals, kept by the C library.
                (
                    format!("SIGRTMIN-{}", min - sig).into(),
                    "real-time signal reserved by the C library",
                )
            } else {
                (format!("signal {sig}").into(), "not a signal Linux defines")
            };
        }
    };
    (name.into(), meaning)
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitInfo::Exited(code) => write!(f, "exited with status {code}"),
            ExitInfo::Detached => f.write_str("was detached (a remote cell; its exit is not seen here)"),
            ExitInfo::Signaled(sig) => {
                let (name, meaning) = signal_name(*sig);
                write!(f, "was killed by signal {sig} ({name}: {meaning})")
            }
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
        /// The last lines the cell wrote to stderr (at most 10 lines and
        /// 4 KiB, escaped).
        stderr_tail: String,
    },
    /// The restart policy gave up on the cell: it will not run again.
    GaveUp {
        /// The cell's name.
        name: String,
        /// Why, with how the last incarnation ended.
        reason: String,
    },
    /// The cell stopped for good: shut down by the host (or its last handle
    /// dropped), or it exited with no restart due.
    Stopped {
        /// The cell's name.
        name: String,
        /// How its last incarnation ended.
        exit: ExitInfo,
        /// Whether the host shut it down.
        shut_down: bool,
    },
    /// A restarting cell was not running again within the wait of a
    /// [`FollowingClient`](crate::FollowingClient).
    StillRestarting {
        /// The cell's name.
        name: String,
        /// How long the call waited.
        waited: std::time::Duration,
        /// The cell's state when the wait ended.
        state: String,
    },
    /// The cell is not running now.
    NotRunning {
        /// The cell's name.
        name: String,
        /// Its state.
        state: String,
    },
    /// A remote cell could not be attached: unreachable, refused our
    /// credentials, or presented the wrong certificate.
    Attach {
        /// The cell's name.
        name: String,
        /// Where it was sought.
        address: String,
        /// What went wrong.
        detail: String,
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
            HostError::GaveUp { name, reason } => write!(
                f,
                "cell '{name}' was given up on and will not run again: {reason}; read its last stderr lines (CellHandle::stderr_tail), fix it, and spawn it again"
            ),
            HostError::Stopped {
                name,
                exit,
                shut_down: true,
            } => write!(
                f,
                "cell '{name}' was shut down by the host (it {exit}); spawn it again to call it"
            ),
            HostError::Stopped {
                name,
                exit,
                shut_down: false,
            } => write!(
                f,
                "cell '{name}' stopped for good (it {exit}, and its restart policy restarts only failures, under RestartPolicy::OnFailure); spawn it again to call it"
            ),
            HostError::StillRestarting { name, waited, state } => write!(
                f,
                "cell '{name}' was not running again within {waited:?} (it is {state}); call again later, or wait longer with FollowingClient::wait_at_most"
            ),
            HostError::Attach {
                name,
                address,
                detail,
            } => write!(f, "cannot attach remote cell '{name}' at {address}: {detail}"),
            HostError::NotRunning { name, state } => write!(
                f,
                "cell '{name}' is not running ({state}); a restarting cell runs again soon (wait with CellHandle::wait_for, or call through a FollowingClient, which waits), a stopped or failed one must be spawned again"
            ),
        }
    }
}

impl std::error::Error for HostError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signal_has_its_name() {
        for sig in 1..=libc::SIGRTMAX() {
            let (name, _) = signal_name(sig);
            assert!(name.starts_with("SIG"), "signal {sig} is named {name}");
        }
        assert_eq!(signal_name(libc::SIGXCPU).0, "SIGXCPU");
        assert_eq!(signal_name(libc::SIGXFSZ).0, "SIGXFSZ");
        assert_eq!(signal_name(libc::SIGSYS).0, "SIGSYS");
        assert_eq!(signal_name(libc::SIGRTMIN() + 3).0, "SIGRTMIN+3");
        assert_eq!(
            ExitInfo::Signaled(libc::SIGXCPU).to_string(),
            "was killed by signal 24 (SIGXCPU: CPU time limit exceeded (RLIMIT_CPU))"
        );
        assert_eq!(signal_name(99).0, "signal 99");
    }
}
