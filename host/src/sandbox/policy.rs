//! What a sandbox consists of ([`SandboxPolicy`]) and the pieces it is
//! made of; what was applied and why preparing failed are in `report`.

use std::ffi::c_int;
use std::fmt;
use std::path::PathBuf;

/// A step of the sandbox, as listed in [`SandboxReport`](super::SandboxReport)
/// and named by [`SandboxError::Unavailable`](super::SandboxError::Unavailable).
/// Declared in the order the child applies them; [`Step::name`] is the
/// stable kebab-case name used in messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Step {
    /// `PR_SET_PDEATHSIG(SIGKILL)` and the parent re-check.
    DieWithParent,
    /// `setsid()`.
    NewSession,
    /// The cell joins a cgroup v2 of its own with [`CgroupLimits`].
    Cgroup,
    /// The cell runs as its own unprivileged uid and gid ([`CellIds`]).
    CellIds,
    /// A user namespace with identity uid/gid maps.
    UserNamespace,
    /// A network namespace: no network.
    NetworkNamespace,
    /// An IPC namespace.
    IpcNamespace,
    /// A UTS namespace.
    UtsNamespace,
    /// A mount namespace, made recursively private.
    MountNamespace,
    /// A cgroup namespace.
    CgroupNamespace,
    /// The resource limits.
    Rlimits,
    /// Only reported as skipped: `RLIMIT_NPROC` does not bind kernel uid 0,
    /// even mapped into a user namespace.
    RlimitNproc,
    /// The cell's CPU priority below the host's ([`CpuPriority`]).
    CpuPriority,
    /// Empty bounding, ambient, permitted, effective and inheritable sets.
    DropCapabilities,
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivileges,
    /// Landlock filesystem rules (ABI 1).
    LandlockFilesystem,
    /// Landlock control of links and renames across directories (ABI 2).
    LandlockRefer,
    /// Landlock control of truncation (ABI 3).
    LandlockTruncate,
    /// Landlock control of TCP bind and connect (ABI 4).
    LandlockNetwork,
    /// Landlock control of ioctl on device files (ABI 5).
    LandlockIoctlDev,
    /// Landlock signal scoping: no signal to processes outside the cell (ABI 6).
    LandlockScopeSignal,
    /// Landlock abstract unix socket scoping (ABI 6).
    LandlockScopeAbstractUnixSocket,
    /// The seccomp filters.
    Seccomp,
    /// seccomp refuses new processes (threads stay allowed).
    NoSubprocesses,
    /// Only reported as skipped, by a policy from `SandboxPolicy::disabled()`.
    Sandbox,
}

impl Step {
    /// The step's stable name, e.g. `"landlock-filesystem"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::DieWithParent => "die-with-parent",
            Self::NewSession => "new-session",
            Self::Cgroup => "cgroup",
            Self::CellIds => "cell-ids",
            Self::UserNamespace => "user-namespace",
            Self::NetworkNamespace => "network-namespace",
            Self::IpcNamespace => "ipc-namespace",
            Self::UtsNamespace => "uts-namespace",
            Self::MountNamespace => "mount-namespace",
            Self::CgroupNamespace => "cgroup-namespace",
            Self::Rlimits => "rlimits",
            Self::RlimitNproc => "rlimit-nproc",
            Self::CpuPriority => "cpu-priority",
            Self::DropCapabilities => "drop-capabilities",
            Self::NoNewPrivileges => "no-new-privileges",
            Self::LandlockFilesystem => "landlock-filesystem",
            Self::LandlockRefer => "landlock-refer",
            Self::LandlockTruncate => "landlock-truncate",
            Self::LandlockNetwork => "landlock-network",
            Self::LandlockIoctlDev => "landlock-ioctl-dev",
            Self::LandlockScopeSignal => "landlock-scope-signal",
            Self::LandlockScopeAbstractUnixSocket => "landlock-scope-abstract-unix-socket",
            Self::Seccomp => "seccomp",
            Self::NoSubprocesses => "no-subprocesses",
            Self::Sandbox => "sandbox",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What to do when the kernel cannot provide a part of the sandbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Enforcement {
    /// Spawning fails with
    /// [`SandboxError::Unavailable`](super::SandboxError::Unavailable)
    /// naming the missing feature. The default.
    #[default]
    Required,
    /// The missing part is skipped and recorded in
    /// [`SandboxReport::skipped`](super::SandboxReport::skipped).
    BestEffort,
}

/// The namespaces a cell gets of its own.
///
/// A PID namespace is not offered: `unshare(CLONE_NEWPID)` only moves the
/// caller's *children*, so the cell itself would stay in the host's, and its
/// first child would become an init whose exit breaks every later fork.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Namespaces {
    /// A user namespace mapping the cell's euid and egid (the host's, or its
    /// own under a root host) to themselves.
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
    /// Whether the limit is a number of bytes.
    pub const fn counts_bytes(self) -> bool {
        matches!(
            self,
            Self::AddressSpace
                | Self::Core
                | Self::Data
                | Self::FileSize
                | Self::MemLock
                | Self::MsgQueue
                | Self::Stack
        )
    }

    /// The kernel's name, e.g. `"RLIMIT_DATA"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::AddressSpace => "RLIMIT_AS",
            Self::Core => "RLIMIT_CORE",
            Self::Cpu => "RLIMIT_CPU",
            Self::Data => "RLIMIT_DATA",
            Self::FileSize => "RLIMIT_FSIZE",
            Self::MemLock => "RLIMIT_MEMLOCK",
            Self::MsgQueue => "RLIMIT_MSGQUEUE",
            Self::Nice => "RLIMIT_NICE",
            Self::NoFile => "RLIMIT_NOFILE",
            Self::NProc => "RLIMIT_NPROC",
            Self::RtPrio => "RLIMIT_RTPRIO",
            Self::RtTime => "RLIMIT_RTTIME",
            Self::SigPending => "RLIMIT_SIGPENDING",
            Self::Stack => "RLIMIT_STACK",
        }
    }

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

    /// The defaults of [`SandboxPolicy::default`], each bounding what one
    /// cell can take from the machine:
    ///
    /// - `RLIMIT_DATA` 1 GiB ([`DEFAULT_MEMORY`]): the cell's private
    ///   writable memory (heap, anonymous mappings, thread stacks; since
    ///   Linux 4.7). A runaway allocation fails (`ENOMEM`; Rust's allocator
    ///   then aborts) long before it threatens the host. Chosen over
    ///   `RLIMIT_AS`, which counts every reservation: glibc reserves 64 MiB
    ///   of address space per malloc arena (up to eight per core) and a
    ///   multi-threaded tokio cell can reserve gigabytes it never touches,
    ///   so `RLIMIT_AS` kills honest cells. Shared mappings (the segment) and
    ///   read-only file mappings (libraries) are not counted.
    /// - `RLIMIT_NPROC` 256 ([`DEFAULT_TASKS`]): the cell's tasks, threads
    ///   included: a thread or fork bomb gets `EAGAIN`. The kernel never
    ///   applies it to kernel uid 0, which is why a cell of a host running as
    ///   root runs under its own uid ([`SandboxPolicy::cell_ids`]).
    /// - `RLIMIT_NOFILE` 1024: descriptors (and the kernel memory behind them).
    /// - `RLIMIT_CORE` 0: a crashing cell writes no core file (its memory
    ///   would end up on disk, outside its write directory).
    /// - `RLIMIT_FSIZE` 1 GiB: no file larger than that in the write directory
    ///   (a larger write gets `SIGXFSZ`, or `EFBIG` when ignored).
    /// - `RLIMIT_MEMLOCK` 64 KiB: the cell cannot pin the host's memory.
    /// - `RLIMIT_RTPRIO` 0 and `RLIMIT_NICE` 0: no real-time scheduling and
    ///   no raising its priority above what [`SandboxPolicy::cpu_priority`]
    ///   set.
    ///
    /// `RLIMIT_CPU` is not set by default (a long-lived cell legitimately
    /// accumulates CPU time); see [`SandboxPolicy::with_cpu_time`].
    pub fn defaults() -> Vec<Rlimit> {
        vec![
            Rlimit::new(RlimitResource::Data, DEFAULT_MEMORY),
            Rlimit::new(RlimitResource::NProc, DEFAULT_TASKS),
            Rlimit::new(RlimitResource::NoFile, 1024),
            Rlimit::new(RlimitResource::Core, 0),
            Rlimit::new(RlimitResource::FileSize, 1 << 30),
            Rlimit::new(RlimitResource::MemLock, 64 << 10),
            Rlimit::new(RlimitResource::RtPrio, 0),
            Rlimit::new(RlimitResource::Nice, 0),
        ]
    }
}

/// The default memory limit of a cell (`RLIMIT_DATA`): 1 GiB.
pub const DEFAULT_MEMORY: u64 = 1 << 30;
/// The default task limit of a cell (`RLIMIT_NPROC`), threads included.
pub const DEFAULT_TASKS: u64 = 256;
/// The default nice increment of a cell over the host's nice value.
pub const DEFAULT_NICE_INCREMENT: i32 = 10;

/// Who a cell runs as. What is applied is listed in
/// [`SandboxReport::cell_ids`](super::SandboxReport::cell_ids).
///
/// Under a host running as root, a cell under uid 0 escapes `RLIMIT_NPROC`
/// (the kernel exempts uid 0, even mapped into a user namespace) and shares
/// its uid with every other cell. With [`CellIds::Range`] (the default)
/// each cell runs as an unprivileged uid and gid of its own, in the
/// kernel's initial namespace (its user namespace maps that uid to
/// itself), so `RLIMIT_NPROC` is charged to it alone, and no cell can
/// signal or `ptrace` another or the host (see `kill(2)`, `ptrace(2)`;
/// Landlock's scoping and seccomp refuse both as well). The host opens the
/// cell program and executes it by descriptor, so the program may sit where
/// only the host can reach it (a root-only home directory, say); it must
/// still be executable by others (mode `o+x`), and its interpreter and
/// libraries readable by others (as the system's are). A write directory
/// must be writable by the cell's uid.
///
/// A host that is not root cannot change ids: its cells keep its uid and
/// gid (in their own user namespace, `RLIMIT_NPROC` counts only their
/// tasks) whatever this says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CellIds {
    /// The host's uid and gid, even when it is root (then `RLIMIT_NPROC`
    /// does not bind, and [`Step::RlimitNproc`] is reported skipped).
    Host,
    /// Under a root host, each cell gets uid = gid = a number of
    /// `first .. first + count` that no other live cell of this process has
    /// (round robin, so numbers are reused as late as possible). The range
    /// must be reserved for this host: no user of the machine and no other
    /// host may use it. Preparing fails when every number is in use.
    Range {
        /// The first uid (and gid) of the range.
        first: u32,
        /// How many.
        count: u32,
    },
    /// Under a root host, this uid and gid (e.g. an account made for the
    /// cell, owning its write directory). Cells sharing it share their
    /// `RLIMIT_NPROC` count.
    Fixed {
        /// The uid.
        uid: u32,
        /// The gid.
        gid: u32,
    },
}

impl CellIds {
    /// The default range: 65,536 ids from 2,000,000,000, far above the
    /// ranges distributions and container tools allocate by default.
    pub const DEFAULT_RANGE: Self = Self::Range {
        first: 2_000_000_000,
        count: 65_536,
    };
}

impl Default for CellIds {
    fn default() -> Self {
        Self::DEFAULT_RANGE
    }
}

/// The CPU priority of a cell, relative to the host. Set in the child
/// before `exec`; every thread of the cell inherits it, and `RLIMIT_NICE`
/// 0 keeps the cell from raising it.
///
/// A nice value weighs only within a scheduling group. Where the kernel
/// makes each session a group (autogroups, `sched(7)`: the default in the
/// root cgroup, e.g. a host started from a shell), a cell in a session of
/// its own ([`SandboxPolicy::new_session`]) weighs as much as the host's
/// whole session, whatever its nice value: for a bound that holds there,
/// use [`CgroupLimits::cpu_max`]. (Nicing the cell's autogroup too made a
/// 1000-item stream's p99 13–18 ms instead of about 1 ms.) On one CPU the
/// lighter side runs only while the other sleeps (README, "One CPU").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuPriority {
    /// The host's priority.
    Inherit,
    /// The host's nice value plus this increment (clamped to 19). Each step
    /// of nice is ~1.25x less CPU weight: at +10, a cell spinning on every
    /// core gets about a tenth of what the host's threads get where they
    /// compete, so it cannot starve the host (or, as much, its siblings).
    Nice(i32),
    /// [`CpuPriority::Nice`] with the `SCHED_BATCH` policy (the default): a
    /// cell that wakes up never preempts the thread running on its CPU (the
    /// kernel's wakeup preemption is only for `SCHED_OTHER`), so a host that
    /// rings a cell keeps its CPU until it waits, and a cell that wakes cannot
    /// cut into the host's work. One CPU shared by host and cells gains the
    /// most: pinned, an `add` round trip took 6.4 µs instead of 11.5 µs and
    /// 64 cells called at once served 30 % more calls (README,
    /// "Performance"). The cell may set its policy back to `SCHED_OTHER`
    /// (the kernel lets any thread do that); its nice value it cannot lower.
    Batch(i32),
    /// `SCHED_IDLE`: the cell runs only when nothing else wants the CPU.
    Idle,
}

impl Default for CpuPriority {
    fn default() -> Self {
        Self::Batch(DEFAULT_NICE_INCREMENT)
    }
}

/// Limits set through a cgroup v2 of the cell's own, which the host creates
/// under [`CgroupLimits::parent`], a directory delegated to it (see
/// `cgroups(7)`, "Delegation"; e.g. a systemd unit with `Delegate=yes`).
/// They bound what rlimits cannot: all the memory the cell causes (page
/// cache and kernel memory included, `memory.max`: the cell is OOM-killed
/// past it), every task of the cell whatever its uid (`pids.max`), and its
/// share of CPU time (`cpu.max`). The host never writes a cgroup it did not
/// create, and removes the cell's cgroup when its sandbox lease is dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupLimits {
    /// The delegated cgroup v2 directory: the host must be able to create
    /// directories in it, and its `cgroup.subtree_control` must enable the
    /// controllers used below.
    pub parent: PathBuf,
    /// `memory.max`, in bytes.
    pub memory_max: Option<u64>,
    /// `pids.max`.
    pub pids_max: Option<u64>,
    /// `cpu.max`: `(quota, period)` in microseconds, e.g. `(50_000,
    /// 100_000)` for half a CPU.
    pub cpu_max: Option<(u64, u64)>,
}

impl CgroupLimits {
    /// No limit yet, under `parent`.
    pub fn new(parent: impl Into<PathBuf>) -> Self {
        Self {
            parent: parent.into(),
            memory_max: None,
            pids_max: None,
            cpu_max: None,
        }
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
    /// `CLONE_THREAD`). Off by default: seccomp refuses them with `EPERM`
    /// (a cell cannot `exec` anything but its own program anyway), so even a
    /// cell left under uid 0, which `RLIMIT_NPROC` does not bind, cannot
    /// fork-bomb. Needs `seccomp`.
    pub allow_subprocesses: bool,
    /// Who the cell runs as; see [`CellIds`]. Default [`CellIds::DEFAULT_RANGE`].
    pub cell_ids: CellIds,
    /// The cell's CPU priority; default nice +10.
    pub cpu_priority: CpuPriority,
    /// Optional cgroup v2 limits; none by default.
    pub cgroup: Option<CgroupLimits>,
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
            cell_ids: CellIds::default(),
            cpu_priority: CpuPriority::default(),
            cgroup: None,
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
            cell_ids: CellIds::Host,
            cpu_priority: CpuPriority::Inherit,
            cgroup: None,
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

    /// This policy with `limit` in place of any limit of the same resource.
    pub fn with_rlimit(mut self, limit: Rlimit) -> Self {
        self.rlimits.retain(|l| l.resource != limit.resource);
        self.rlimits.push(limit);
        self
    }

    /// This policy with the cell's private writable memory (`RLIMIT_DATA`)
    /// limited to `bytes`; see [`Rlimit::defaults`].
    pub fn with_memory_limit(self, bytes: u64) -> Self {
        self.with_rlimit(Rlimit::new(RlimitResource::Data, bytes))
    }

    /// This policy with the cell's tasks, threads included (`RLIMIT_NPROC`),
    /// limited to `tasks`.
    pub fn with_task_limit(self, tasks: u64) -> Self {
        self.with_rlimit(Rlimit::new(RlimitResource::NProc, tasks))
    }

    /// This policy with the cell's open descriptors (`RLIMIT_NOFILE`)
    /// limited to `files`.
    pub fn with_open_file_limit(self, files: u64) -> Self {
        self.with_rlimit(Rlimit::new(RlimitResource::NoFile, files))
    }

    /// This policy with a CPU time limit (`RLIMIT_CPU`): at `seconds` of CPU
    /// time the cell gets `SIGXCPU` (which kills it unless handled), and
    /// `SIGKILL` one second later.
    pub fn with_cpu_time(self, seconds: u64) -> Self {
        self.with_rlimit(Rlimit {
            resource: RlimitResource::Cpu,
            soft: seconds,
            hard: seconds.saturating_add(1),
        })
    }

    /// This policy with the given identity for its cells.
    pub fn with_cell_ids(mut self, ids: CellIds) -> Self {
        self.cell_ids = ids;
        self
    }

    /// This policy with cgroup v2 limits.
    pub fn with_cgroup(mut self, limits: CgroupLimits) -> Self {
        self.cgroup = Some(limits);
        self
    }

    /// This policy with the given CPU priority.
    pub fn with_cpu_priority(mut self, priority: CpuPriority) -> Self {
        self.cpu_priority = priority;
        self
    }

    /// This policy with the given writable directory.
    pub fn with_write_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.write_dir = Some(dir.into());
        self
    }
}
