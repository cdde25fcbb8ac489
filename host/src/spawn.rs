//! Starting one incarnation of a cell: the process, its fds, its session.
//!
//! Steps, in order:
//! 1. Open the binary (and check its sha256, when one is expected): it is
//!    executed through `/proc/self/fd/N`, so the bytes checked are the bytes
//!    run, and a cell running under its own uid need not reach its path.
//! 2. Prepare the sandbox in the parent ([`crate::sandbox::prepare`]): every
//!    allocation happens here, never after fork.
//! 3. Create the segment and a `SOCK_SEQPACKET` control socket pair.
//! 4. Fork on the spawner thread (see below), and in the child, with
//!    async-signal-safe system calls only: move the segment and control
//!    socket to fds 3 and 4, mark every other fd close-on-exec, apply the
//!    sandbox (which sets `PR_SET_PDEATHSIG(SIGKILL)`, always on for a
//!    host's cells), exec. The environment is cleared except the allow-list and
//!    the `OSMOS_*` variables.
//! 5. Open a pidfd for the child, start forwarding its stdout, stderr and
//!    control-socket log records to tracing, and run the handshake — raced
//!    against the child's exit, so a cell that dies at start fails fast with
//!    how it died and its last stderr lines. The session's
//!    [`on_peer_fault`](SessionBuilder::on_peer_fault) hook kills the cell
//!    (SIGKILL through the pidfd) and records why, the moment the session
//!    decides to end through the cell's fault: before the cell is told or
//!    the host lets go of the link, so that the cell cannot see its session
//!    end and exit on its own first (see `cell.rs`).
//!
//! All forks happen on one process-lifetime thread: `PR_SET_PDEATHSIG`
//! fires when the *thread* that forked exits, and tokio retires idle
//! blocking threads.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc as std_mpsc};

use osmos_session::control::{
    CONTROL_FD, ENV_CELL_NAME, ENV_CONTROL_FD, ENV_PROTOCOL, ENV_SEGMENT_FD, ENV_WAKE_FD, SEGMENT_FD, WAKE_FD,
};
use osmos_session::link::shm::ShmLink;
use osmos_session::wire::PROTOCOL_VERSION;
use osmos_session::{
    Connection, ConnectionAcceptor, Dispatcher, SessionBuilder, SessionConfig, SessionError,
};
use osmos_shm::{Liveness, Segment, SegmentConfig};
use sha2::Digest;
use tokio::io::unix::AsyncFd;

use crate::error::{ExitInfo, HostError};
use crate::logs::LogGate;
use crate::output::{self, StderrTail, Stream};
use crate::records;
use crate::sandbox::{self, SandboxPolicy};

/// Everything needed to start an incarnation of a cell (the builder fills
/// it; the supervisor keeps it to start the cell again).
#[derive(Clone)]
pub(crate) struct CellConfig {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub name: String,
    pub env_allow: Vec<String>,
    pub env_set: Vec<(String, String)>,
    pub sandbox: SandboxPolicy,
    pub segment: SegmentConfig,
    pub session: SessionConfig,
    pub sha256: Option<String>,
    pub serve: Option<Arc<dyn Dispatcher>>,
    pub acceptor: Option<ConnectionAcceptor>,
}

/// A running incarnation of a cell.
pub(crate) struct Incarnation {
    pub pid: u32,
    pub conn: Connection,
    pub pidfd: Arc<Pidfd>,
    /// Why the session ended through the cell's fault, set by the session's
    /// `on_peer_fault` hook as it kills the cell: the supervisor may see the
    /// process exit before the session has recorded that end.
    pub condemned: Arc<OnceLock<SessionError>>,
    pub liveness: Liveness,
    pub report: sandbox::SandboxReport,
    pub stderr_tail: Arc<StderrTail>,
    /// The cell's uid, gid and cgroup, reserved until the incarnation is dropped.
    pub _sandbox_lease: Arc<sandbox::SandboxLease>,
}

/// A start that failed, with what the incarnation left behind.
pub(crate) struct StartFailure {
    /// The error to report.
    pub error: HostError,
    /// Its stderr, when it got as far as running.
    pub stderr_tail: Option<Arc<StderrTail>>,
}

impl From<HostError> for StartFailure {
    fn from(error: HostError) -> Self {
        StartFailure {
            error,
            stderr_tail: None,
        }
    }
}

type SpawnJob = Box<dyn FnOnce() + Send>;

/// The process-lifetime thread every fork happens on.
fn spawner() -> &'static Mutex<std_mpsc::Sender<SpawnJob>> {
    static SPAWNER: OnceLock<Mutex<std_mpsc::Sender<SpawnJob>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = std_mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("osmos-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("start the osmos spawner thread");
        Mutex::new(tx)
    })
}

/// Runs `cmd.spawn()` on the spawner thread.
async fn spawn_on_spawner(mut cmd: Command) -> std::io::Result<std::process::Child> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: SpawnJob = Box::new(move || {
        let _ = tx.send(cmd.spawn());
    });
    spawner()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .map_err(|_| std::io::Error::other("the osmos spawner thread is gone"))?;
    rx.await
        .map_err(|_| std::io::Error::other("the osmos spawner thread dropped the request"))?
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of everything `reader` yields, as lowercase hex.
pub(crate) fn sha256_of(reader: &mut impl Read) -> std::io::Result<String> {
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Opens the binary and checks its digest; returns the open file.
fn open_checked(program: &Path, expected: Option<&str>) -> Result<Option<std::fs::File>, HostError> {
    let not_found = |source| HostError::ProgramNotFound {
        program: program.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(program).map_err(not_found)?;
    if !meta.is_file() {
        return Err(not_found(std::io::Error::other("not a regular file")));
    }
    // Opened here and executed by descriptor even without a checksum: a
    // cell running under its own uid may not be able to reach the path.
    let mut file = std::fs::File::open(program).map_err(not_found)?;
    if let Some(expected) = expected {
        let actual = sha256_of(&mut file).map_err(not_found)?;
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(HostError::ChecksumMismatch {
                program: program.to_path_buf(),
                expected: expected.to_ascii_lowercase(),
                actual,
            });
        }
    }
    // The child puts its stdio at 0-2 and the bootstrap fds at 3 and 4
    // before it execs `/proc/self/fd/N`: N must be none of them, or the
    // exec would run whatever landed there (a memfd: EACCES).
    let high = rustix::io::fcntl_dupfd_cloexec(&file, EXEC_FD_FLOOR).map_err(|e| not_found(e.into()))?;
    Ok(Some(std::fs::File::from(high)))
}

/// The lowest fd the checked binary is executed from (above stdio and the
/// bootstrap fds the child sets up before exec).
const EXEC_FD_FLOOR: i32 = 10;

fn socketpair() -> Result<(OwnedFd, OwnedFd), HostError> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(HostError::Spawn {
            op: "socketpair",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: the kernel returned two new fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Registers an owned fd with the runtime's reactor for readability.
fn async_fd(fd: OwnedFd) -> Option<AsyncFd<OwnedFd>> {
    // SAFETY: `fd` is an owned, open descriptor; the AsyncFd owns it, so it
    // stays open and refers to the same file for the AsyncFd's lifetime.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
}

/// A cell process's pidfd, with its exit registered with the runtime's
/// reactor once, when the process is started: every wait for the exit
/// shares that one registration, so waiting opens no fd of its own (the
/// host's fd count is the same from the moment `start` returns).
pub(crate) struct Pidfd {
    fd: OwnedFd,
    /// A duplicate of `fd`, registered for readability (a pidfd polls
    /// readable once its process has exited); `None` where the reactor
    /// refused it, and a wait then goes straight to a blocking `waitid`.
    exited: Option<AsyncFd<OwnedFd>>,
}

impl Pidfd {
    /// Takes `fd`, a pidfd, and registers its exit with the reactor.
    fn new(fd: OwnedFd) -> Pidfd {
        let exited = fd.try_clone().ok().and_then(async_fd);
        Pidfd { fd, exited }
    }
}

impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Waits (asynchronously) for the process behind `pidfd` to exit and reaps it.
pub(crate) async fn wait_exit(pidfd: &Pidfd) -> ExitInfo {
    if let Some(afd) = &pidfd.exited {
        // Readiness is kept, so every other waiter sees it too.
        let _ = afd.readable().await.map(|mut g| g.retain_ready());
    }
    loop {
        // Raw `waitid` rather than rustix's: that one reports a reap whose
        // `si_pid` reads 0 as "nothing yet", and the exit would be lost.
        // SAFETY: an all-zero siginfo_t is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `pidfd` is an open pidfd and `info` a live siginfo_t.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_fd().as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            )
        };
        if r == 0 {
            // SAFETY: waitid filled a SIGCHLD siginfo, whose status field
            // this reads.
            let status = unsafe { info.si_status() };
            return match info.si_code {
                libc::CLD_EXITED => ExitInfo::Exited(status),
                libc::CLD_KILLED | libc::CLD_DUMPED => ExitInfo::Signaled(status),
                _ => exit_from_pidfd_info(pidfd).unwrap_or(ExitInfo::Exited(-1)),
            };
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            // ECHILD: other code in this process reaped the cell (a
            // `waitpid(-1)` somewhere, say). The pidfd still knows how it
            // ended on kernels that keep exit information (Linux 6.15+).
            _ => return exit_from_pidfd_info(pidfd).unwrap_or(ExitInfo::Exited(-1)),
        }
    }
}

/// How the process behind `pidfd` ended, read with `PIDFD_GET_INFO` (works
/// after the process was reaped); `None` where the kernel cannot tell.
fn exit_from_pidfd_info(pidfd: &impl AsFd) -> Option<ExitInfo> {
    /// `struct pidfd_info`, first version (64 bytes).
    #[repr(C)]
    #[derive(Default)]
    struct PidfdInfo {
        mask: u64,
        cgroupid: u64,
        ids: [u32; 11],
        exit_code: i32,
    }
    const PIDFD_INFO_EXIT: u64 = 1 << 3;
    // _IOWR(PIDFS_IOCTL_MAGIC = 0xFF, 11, 64 bytes)
    const PIDFD_GET_INFO: libc::c_ulong = (3 << 30) | (64 << 16) | (0xFF << 8) | 11;
    const _: () = assert!(std::mem::size_of::<PidfdInfo>() == 64);
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_EXIT,
        ..PidfdInfo::default()
    };
    // SAFETY: `pidfd` is an open pidfd and `info` a live, writable struct of
    // the size the request encodes.
    let r = unsafe {
        libc::ioctl(
            pidfd.as_fd().as_raw_fd(),
            PIDFD_GET_INFO as _,
            &mut info as *mut PidfdInfo,
        )
    };
    if r != 0 || info.mask & PIDFD_INFO_EXIT == 0 {
        return None;
    }
    let status = info.exit_code;
    Some(if libc::WIFEXITED(status) {
        ExitInfo::Exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        ExitInfo::Signaled(libc::WTERMSIG(status))
    } else {
        ExitInfo::Exited(-1)
    })
}

/// The `on_peer_fault` hook of cell `name`'s session (pid `pid`): records
/// why in `condemned`, then kills the cell. The SIGKILL is queued before the
/// session tells the cell anything, so the cell's exit status is SIGKILL
/// even if it still runs for an instant and tries to exit on its own: the
/// kernel marks the whole thread group as exiting with SIGKILL when the
/// signal is sent, and a later `exit_group` reports that code instead of
/// its own (Linux `complete_signal` in kernel/signal.c, `do_group_exit` in
/// kernel/exit.c).
fn condemn(
    name: String,
    pid: u32,
    pidfd: Arc<Pidfd>,
    condemned: Arc<OnceLock<SessionError>>,
) -> impl Fn(&SessionError) + Send + Sync + 'static {
    move |why| {
        tracing::error!(cell = %name, pid, "{why}; killing the cell");
        let _ = condemned.set(why.clone());
        signal(&pidfd, rustix::process::Signal::KILL);
    }
}

/// Sends `signal` to the process behind `pidfd` (no-op once it is gone).
pub(crate) fn signal(pidfd: &Pidfd, signal: rustix::process::Signal) {
    let _ = rustix::process::pidfd_send_signal(pidfd, signal);
}

/// Starts incarnation `epoch` of the cell described by `config`; its output
/// and log records pass through `gate`.
pub(crate) async fn start(
    config: &CellConfig,
    epoch: u32,
    gate: &Arc<LogGate>,
) -> Result<Incarnation, StartFailure> {
    let program: PathBuf = config.program.clone();
    let binary = open_checked(&program, config.sha256.as_deref())?;
    // A host always takes its cells with it, even with the sandbox disabled.
    let policy = sandbox::SandboxPolicy {
        die_with_parent: true,
        ..config.sandbox.clone()
    };
    let prepared = sandbox::prepare(&policy, &program).map_err(HostError::Sandbox)?;
    let lease = prepared.lease();
    let report = prepared.report().clone();
    let segment = Segment::create(&config.segment, epoch).map_err(HostError::Segment)?;
    let (host_ctl, cell_ctl) = socketpair()?;

    let exec_path: OsString = match &binary {
        Some(f) => format!("/proc/self/fd/{}", f.as_raw_fd()).into(),
        None => program.clone().into_os_string(),
    };
    let mut cmd = Command::new(&exec_path);
    cmd.arg0(program.file_name().unwrap_or(program.as_os_str()));
    cmd.args(&config.args);
    cmd.env_clear();
    for key in &config.env_allow {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    for (k, v) in &config.env_set {
        cmd.env(k, v);
    }
    cmd.env(ENV_CELL_NAME, &config.name)
        .env(ENV_PROTOCOL, PROTOCOL_VERSION.to_string())
        .env(ENV_SEGMENT_FD, SEGMENT_FD.to_string())
        .env(ENV_CONTROL_FD, CONTROL_FD.to_string())
        .env(ENV_WAKE_FD, WAKE_FD.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (seg_fd, ctl_fd) = (segment.fd().as_raw_fd(), cell_ctl.as_raw_fd());
    let wake_fd = segment.cell_wake_fd().map(|fd| fd.as_raw_fd()).ok_or_else(|| {
        HostError::Segment(osmos_shm::Error::InvalidArgument {
            reason: "a host segment has no wake pair for the cell".into(),
        })
    })?;
    let prepared = Arc::new(prepared);
    let in_child = prepared.clone();
    // SAFETY: the closure runs in the child between fork and exec and makes
    // only async-signal-safe system calls (fcntl, dup2, close_range, and the
    // sandbox's own raw system calls, PDEATHSIG included); it allocates
    // nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Move the three fds out of the way first, then into place: any
            // may already sit at 3, 4 or 5.
            let seg = libc::fcntl(seg_fd, libc::F_DUPFD, 10);
            let ctl = libc::fcntl(ctl_fd, libc::F_DUPFD, 10);
            let wake = libc::fcntl(wake_fd, libc::F_DUPFD, 10);
            if seg < 0
                || ctl < 0
                || wake < 0
                || libc::dup2(seg, SEGMENT_FD) < 0
                || libc::dup2(ctl, CONTROL_FD) < 0
                || libc::dup2(wake, WAKE_FD) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // Everything past stdio and the three bootstrap fds closes on exec
            // (the binary fd stays open until then, for /proc/self/fd exec).
            if libc::syscall(
                libc::SYS_close_range,
                (WAKE_FD + 1) as u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            sandbox::apply_in_child(&in_child)
        });
    }
    let mut child = spawn_on_spawner(cmd).await.map_err(|source| HostError::Spawn {
        op: "fork/exec",
        source,
    })?;
    drop(binary);
    drop(cell_ctl);
    let pid = child.id();
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid as i32).expect("a child pid is positive"),
        rustix::process::PidfdFlags::empty(),
    )
    .map_err(|e| HostError::Spawn {
        op: "pidfd_open",
        source: e.into(),
    })?;
    let pidfd = Arc::new(Pidfd::new(pidfd));
    let tail = Arc::new(StderrTail::default());
    if let Some(out) = child.stdout.take() {
        output::forward(gate.clone(), Stream::Stdout, out.into(), None);
    }
    let stderr_task = child
        .stderr
        .take()
        .and_then(|err| output::forward(gate.clone(), Stream::Stderr, err.into(), Some(tail.clone())));
    records::forward(gate.clone(), host_ctl);
    // The std Child is not waited on: the pidfd reaps it.
    drop(child);

    let endpoint = segment.endpoint().map_err(HostError::Segment)?;
    let liveness = endpoint.liveness.clone();
    let condemned = Arc::new(OnceLock::new());
    let mut session = SessionBuilder::new()
        .config(config.session.clone())
        .on_peer_fault(condemn(
            config.name.clone(),
            pid,
            pidfd.clone(),
            condemned.clone(),
        ));
    if let Some(d) = &config.serve {
        session = session.serve(d.clone());
    }
    if let Some(a) = &config.acceptor {
        session = session.accept_connections(a.clone());
    }
    let handshake = session.initiate(ShmLink::new(endpoint));
    tokio::pin!(handshake);
    tokio::select! {
        r = &mut handshake => match r {
            Ok(conn) => Ok(Incarnation { pid, conn, pidfd, condemned, liveness, report, stderr_tail: tail, _sandbox_lease: lease }),
            Err(error) => {
                signal(&pidfd, rustix::process::Signal::KILL);
                let exit = wait_exit(&pidfd).await;
                let error = HostError::Handshake { name: config.name.clone(), error, exit: Some(exit), stderr_tail: tail.text() };
                Err(StartFailure { error, stderr_tail: Some(tail) })
            }
        },
        exit = wait_exit(&pidfd) => {
            liveness.mark_dead(osmos_shm::Side::Cell);
            // The process is gone: its stderr reaches EOF once drained.
            if let Some(t) = stderr_task {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), t).await;
            }
            let error = HostError::Handshake {
                name: config.name.clone(),
                error: SessionError::PeerDied { detail: format!("cell '{}' (pid {pid}) {exit} during startup", config.name) },
                exit: Some(exit),
                stderr_tail: tail.text(),
            };
            Err(StartFailure { error, stderr_tail: Some(tail) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pidfd_of(child: &std::process::Child) -> OwnedFd {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
        assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        // SAFETY: the kernel returned a new fd that nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    #[test]
    fn the_exit_of_a_child_reaped_elsewhere_is_still_known() {
        for (script, expected) in [
            ("exit 0", ExitInfo::Exited(0)),
            ("exit 7", ExitInfo::Exited(7)),
            ("kill -9 $$", ExitInfo::Signaled(libc::SIGKILL)),
        ] {
            let mut child = Command::new("/bin/sh").args(["-c", script]).spawn().unwrap();
            let pidfd = pidfd_of(&child);
            // Reaped by other code: the pidfd alone must still tell.
            child.wait().unwrap();
            match exit_from_pidfd_info(&pidfd) {
                Some(exit) => assert_eq!(exit, expected, "{script}"),
                // Kernels before 6.15 keep no exit information.
                None => eprintln!("PIDFD_GET_INFO has no exit information on this kernel"),
            }
        }
    }
}
