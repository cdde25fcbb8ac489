//! What a sandbox consists of ([`SandboxPolicy`]), what was applied
//! ([`SandboxReport`]), and why preparing it failed ([`SandboxError`]).

use std::ffi::c_int;
use std::fmt;
use std::io;
use std::path::PathBuf;

/// The names of the sandbox steps, as they appear in [`SandboxReport`] and
/// [`SandboxError::Unavailable`], in the order they are applied.
pub mod steps {
    /// `PR_SET_PDEATHSIG(SIGKILL)` and the parent re-check.
    pub const DIE_WITH_PARENT: &str = "die-with-parent";
    /// `setsid()`.
    pub const NEW_SESSION: &str = "new-session";
    /// A user namespace with identity uid/gid maps.
    pub const USER_NAMESPACE: &str = "user-namespace";
    /// A network namespace: no network.
    pub const NETWORK_NAMESPACE: &str = "network-namespace";
    /// An IPC namespace.
    pub const IPC_NAMESPACE: &str = "ipc-namespace";
    /// A UTS namespace.
    pub const UTS_NAMESPACE: &str = "uts-namespace";
    /// A mount namespace, made recursively private.
    pub const MOUNT_NAMESPACE: &str = "mount-namespace";
    /// A cgroup namespace.
    pub const CGROUP_NAMESPACE: &str = "cgroup-namespace";
    /// The resource limits.
    pub const RLIMITS: &str = "rlimits";
    /// Only reported as skipped: `RLIMIT_NPROC` does not bind kernel uid 0,
    /// even mapped into a user namespace.
    pub const RLIMIT_NPROC: &str = "rlimit-nproc";
    /// Empty bounding, ambient, permitted, effective and inheritable sets.
    pub const DROP_CAPABILITIES: &str = "drop-capabilities";
    /// `PR_SET_NO_NEW_PRIVS`.
    pub const NO_NEW_PRIVILEGES: &str = "no-new-privileges";
    /// Landlock filesystem rules (ABI 1).
    pub const LANDLOCK_FILESYSTEM: &str = "landlock-filesystem";
    /// Landlock control of links and renames across directories (ABI 2).
    pub const LANDLOCK_REFER: &str = "landlock-refer";
    /// Landlock control of truncation (ABI 3).
    pub const LANDLOCK_TRUNCATE: &str = "landlock-truncate";
    /// Landlock control of TCP bind and connect (ABI 4).
    pub const LANDLOCK_NETWORK: &str = "landlock-network";
    /// Landlock control of ioctl on device files (ABI 5).
    pub const LANDLOCK_IOCTL_DEV: &str = "landlock-ioctl-dev";
    /// Landlock signal scoping: no signal to processes outside the cell (ABI 6).
    pub const LANDLOCK_SCOPE_SIGNAL: &str = "landlock-scope-signal";
    /// Landlock abstract unix socket scoping (ABI 6).
    pub const LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET: &str = "landlock-scope-abstract-unix-socket";
    /// The seccomp filters.
    pub const SECCOMP: &str = "seccomp";
    /// seccomp refuses new processes (threads stay allowed).
    pub const NO_SUBPROCESSES: &str = "no-subprocesses";
    /// Only reported as skipped, by a policy from `SandboxPolicy::disabled()`.
    pub const SANDBOX: &str = "sandbox";
}

/// What to do when the kernel cannot provide a part of the sandbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Enforcement {
    /// Spawning fails with [`SandboxError::Unavailable`] naming the missing
    /// feature. The default.
    #[default]
    Required,
    /// The missing part is skipped and recorded in [`SandboxReport::skipped`].
    BestEffort,
}

/// The namespaces a cell gets of its own.
///
/// A PID namespace is not offered: `unshare(CLONE_NEWPID)` only moves the
/// caller's *children*, so the cell itself would stay in the host's, and its
/// first child would become an init whose exit breaks every later fork.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Namespaces {
    /// A user namespace mapping the host's euid and egid to themselves.
    pub user: bool,
    /// A network namespace: only a downed loopback, so no network.
    pub network: bool,
    /// An IPC namespace (System V IPC, POSIX message queues).
    pub ipc: bool,
    /// A UTS namespace (host and domain name).
    pub uts: bool,
    /// A mount namespace, made recursively private.
    pub mount: bool,
    /// A cgroup namespace (hides the host's cgroup paths).
    pub cgroup: bool,
}

impl Namespaces {
    /// Every namespace this module knows of. The default.
    pub const ALL: Self = Self {
        user: true,
        network: true,
        ipc: true,
        uts: true,
        mount: true,
        cgroup: true,
    };
    /// No new namespace.
    pub const NONE: Self = Self {
        user: false,
        network: false,
        ipc: false,
        uts: false,
        mount: false,
        cgroup: false,
    };

    pub(super) fn any(&self) -> bool {
        *self != Self::NONE
    }
}

impl Default for Namespaces {
    fn default() -> Self {
        Self::ALL
    }
}

/// A resource limited by `setrlimit(2)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RlimitResource {
    /// `RLIMIT_AS`: address space size in bytes.
    AddressSpace,
    /// `RLIMIT_CORE`: core file size in bytes.
    Core,
    /// `RLIMIT_CPU`: CPU time in seconds.
    Cpu,
    /// `RLIMIT_DATA`: data segment size in bytes.
    Data,
    /// `RLIMIT_FSIZE`: largest file the process may write, in bytes.
    FileSize,
    /// `RLIMIT_MEMLOCK`: locked memory in bytes.
    MemLock,
    /// `RLIMIT_MSGQUEUE`: bytes in POSIX message queues.
    MsgQueue,
    /// `RLIMIT_NICE`: ceiling of the nice value.
    Nice,
    /// `RLIMIT_NOFILE`: one more than the highest file descriptor number.
    NoFile,
    /// `RLIMIT_NPROC`: tasks (processes and threads) of the user.
    NProc,
    /// `RLIMIT_RTPRIO`: ceiling of the real-time priority.
    RtPrio,
    /// `RLIMIT_RTTIME`: real-time CPU time in microseconds.
    RtTime,
    /// `RLIMIT_SIGPENDING`: queued signals.
    SigPending,
    /// `RLIMIT_STACK`: main thread stack size in bytes.
    Stack,
}

impl RlimitResource {
    pub(super) fn raw(self) -> c_int {
        // The libc constants have type `__rlimit_resource_t`, unsigned on glibc.
        #[allow(clippy::unnecessary_cast)]
        let raw = match self {
            Self::AddressSpace => libc::RLIMIT_AS,
            Self::Core => libc::RLIMIT_CORE,
            Self::Cpu => libc::RLIMIT_CPU,
            Self::Data => libc::RLIMIT_DATA,
            Self::FileSize => libc::RLIMIT_FSIZE,
            Self::MemLock => libc::RLIMIT_MEMLOCK,
            Self::MsgQueue => libc::RLIMIT_MSGQUEUE,
            Self::Nice => libc::RLIMIT_NICE,
            Self::NoFile => libc::RLIMIT_NOFILE,
            Self::NProc => libc::RLIMIT_NPROC,
            Self::RtPrio => libc::RLIMIT_RTPRIO,
            Self::RtTime => libc::RLIMIT_RTTIME,
            Self::SigPending => libc::RLIMIT_SIGPENDING,
            Self::Stack => libc::RLIMIT_STACK,
        } as c_int;
        raw
    }
}

/// One resource limit. Applied as `min(requested, host's current hard limit)`
/// for both values, so the sandbox only ever lowers a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rlimit {
    /// The resource.
    pub resource: RlimitResource,
    /// The soft limit (`u64::MAX` is `RLIM_INFINITY`).
    pub soft: u64,
    /// The hard limit; the cell cannot raise it (it holds no capability).
    pub hard: u64,
}

impl Rlimit {
    /// A limit with equal soft and hard values.
    pub const fn new(resource: RlimitResource, limit: u64) -> Self {
        Self {
            resource,
            soft: limit,
            hard: limit,
        }
    }

    /// The defaults of [`SandboxPolicy::default`]:
    ///
    /// - `RLIMIT_CORE` 0: a crashing cell writes no core file (its memory
    ///   would end up on disk, outside its write directory).
    /// - `RLIMIT_NOFILE` 1024.
    /// - `RLIMIT_NPROC` 256: bounds the cell's tasks, threads included. With
    ///   a user namespace it counts the cell's own tasks. The kernel never
    ///   applies it to kernel uid 0 (a host running as root), even inside a
    ///   user namespace; see [`SandboxPolicy::allow_subprocesses`].
    /// - `RLIMIT_FSIZE` 1 GiB: no file larger than that in the write directory
    ///   (a larger write gets `SIGXFSZ`, or `EFBIG` when ignored).
    /// - `RLIMIT_MEMLOCK` 64 KiB: the cell cannot pin the host's memory.
    /// - `RLIMIT_RTPRIO` 0: no real-time scheduling that could starve the host.
    pub fn defaults() -> Vec<Rlimit> {
        vec![
            Rlimit::new(RlimitResource::Core, 0),
            Rlimit::new(RlimitResource::NoFile, 1024),
            Rlimit::new(RlimitResource::NProc, 256),
            Rlimit::new(RlimitResource::FileSize, 1 << 30),
            Rlimit::new(RlimitResource::MemLock, 64 << 10),
            Rlimit::new(RlimitResource::RtPrio, 0),
        ]
    }
}

/// What the sandbox of a cell consists of. [`SandboxPolicy::default`] turns
/// everything on with [`Enforcement::Required`]: the sandbox is on by
/// default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxPolicy {
    /// Whether any of this applies. Turn it off only through
    /// [`SandboxPolicy::disabled`], the explicit debugging opt-out.
    pub enabled: bool,
    /// What to do when the kernel lacks a part.
    pub enforcement: Enforcement,
    /// `PR_SET_PDEATHSIG(SIGKILL)` and a re-check that the parent is still
    /// the process that prepared the sandbox.
    pub die_with_parent: bool,
    /// `setsid()`: leave the host's session and controlling terminal.
    pub new_session: bool,
    /// Resource limits, see [`Rlimit::defaults`].
    pub rlimits: Vec<Rlimit>,
    /// The namespaces of the cell.
    pub namespaces: Namespaces,
    /// Empty every capability set, so a cell running as root holds none.
    pub drop_capabilities: bool,
    /// Landlock filesystem, network and scope rules.
    pub landlock: bool,
    /// Extra read-only paths (files or directory trees) besides the program,
    /// its interpreter and shared libraries. Each must exist.
    pub read_paths: Vec<PathBuf>,
    /// The only writable directory tree, if any. Must be a directory.
    pub write_dir: Option<PathBuf>,
    /// The seccomp filters (see the module documentation for the deny list).
    pub seccomp: bool,
    /// Let the cell create processes (`fork`, `vfork`, `clone` without
    /// `CLONE_THREAD`). Off by default: seccomp refuses them with `EPERM`,
    /// which is what bounds a fork bomb when the host runs as root (for
    /// which the kernel ignores `RLIMIT_NPROC`). Needs `seccomp`.
    pub allow_subprocesses: bool,
}

impl Default for SandboxPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            enforcement: Enforcement::Required,
            die_with_parent: true,
            new_session: true,
            rlimits: Rlimit::defaults(),
            namespaces: Namespaces::ALL,
            drop_capabilities: true,
            landlock: true,
            read_paths: Vec::new(),
            write_dir: None,
            seccomp: true,
            allow_subprocesses: false,
        }
    }
}

impl SandboxPolicy {
    /// No sandbox at all: the cell runs with the host's full authority. For
    /// debugging only; [`prepare`](super::prepare) logs a warning and the report says so.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            enforcement: Enforcement::BestEffort,
            die_with_parent: false,
            new_session: false,
            rlimits: Vec::new(),
            namespaces: Namespaces::NONE,
            drop_capabilities: false,
            landlock: false,
            read_paths: Vec::new(),
            write_dir: None,
            seccomp: false,
            allow_subprocesses: true,
        }
    }

    /// This policy with the given enforcement.
    pub fn with_enforcement(mut self, enforcement: Enforcement) -> Self {
        self.enforcement = enforcement;
        self
    }

    /// This policy with [`Enforcement::BestEffort`].
    pub fn best_effort(self) -> Self {
        self.with_enforcement(Enforcement::BestEffort)
    }

    /// This policy with one more read-only path.
    pub fn with_read_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.read_paths.push(path.into());
        self
    }

    /// This policy with the given writable directory.
    pub fn with_write_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.write_dir = Some(dir.into());
        self
    }
}

/// What [`prepare`](super::prepare) decided: the steps that will be applied, in order, and
/// those skipped under [`Enforcement::BestEffort`] with the reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SandboxReport {
    /// The steps applied in the child, in order (names from [`steps`]).
    pub applied: Vec<&'static str>,
    /// The steps skipped, with why.
    pub skipped: Vec<(&'static str, String)>,
    /// The Landlock allow-list: each path with the access granted beneath it
    /// (`"read"`, `"read+execute"`, `"read+write"`).
    pub landlock_paths: Vec<(PathBuf, &'static str)>,
}

impl SandboxReport {
    /// Whether `step` will be applied.
    pub fn is_applied(&self, step: &str) -> bool {
        self.applied.contains(&step)
    }
}

impl fmt::Display for SandboxReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "applied: {}", self.applied.join(", "))?;
        if !self.skipped.is_empty() {
            f.write_str("; skipped: ")?;
            for (i, (step, why)) in self.skipped.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{step} ({why})")?;
            }
        }
        Ok(())
    }
}

/// Why [`prepare`](super::prepare) failed, and what to do about it.
#[derive(Debug)]
#[non_exhaustive]
pub enum SandboxError {
    /// Under [`Enforcement::Required`], the kernel cannot provide a step.
    Unavailable {
        /// The step, from [`steps`].
        feature: &'static str,
        /// What is missing.
        reason: String,
    },
    /// The cell program cannot be inspected (to find its interpreter and
    /// library directories for the Landlock rules).
    Program {
        /// The program.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A path of the policy (or a system path the program needs) cannot be
    /// used in a Landlock rule.
    Path {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The kernel refused the Landlock ruleset although it reported the ABI.
    Landlock(String),
    /// seccompiler refused the filter.
    Seccomp(String),
    /// The child process probing namespace support could not be run.
    Probe(io::Error),
}

impl fmt::Display for SandboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable { feature, reason } => write!(
                f,
                "the cell sandbox needs `{feature}`, which this system does not provide: {reason}; \
                 run the host where it is available, turn it off in the SandboxPolicy, or use \
                 Enforcement::BestEffort to run without it (it is then listed in \
                 SandboxReport::skipped)"
            ),
            Self::Program { path, reason } => write!(
                f,
                "cannot inspect the cell program {}: {reason}; the sandbox must read its ELF \
                 interpreter and library paths to allow executing it",
                path.display()
            ),
            Self::Path { path, reason } => write!(
                f,
                "cannot use {} in the sandbox's filesystem rules: {reason}; check that it exists \
                 and that the host can open it",
                path.display()
            ),
            Self::Landlock(e) => write!(f, "the kernel refused the Landlock ruleset: {e}"),
            Self::Seccomp(e) => write!(f, "compiling the seccomp filter failed: {e}"),
            Self::Probe(e) => write!(
                f,
                "probing namespace support in a child process failed: {e}; use \
                 Enforcement::BestEffort or turn namespaces off"
            ),
        }
    }
}

impl std::error::Error for SandboxError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Probe(e) => Some(e),
            _ => None,
        }
    }
}
