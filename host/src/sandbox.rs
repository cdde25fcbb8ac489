//! The sandbox a host applies to a cell process between `fork` and `exec`.
//!
//! A cell is a plugin: code the host runs but does not trust. The sandbox
//! takes away what a plugin never needs (the network, the rest of the
//! filesystem, the host's processes, kernel attack surface) so that a
//! compromised or hostile cell can harm nothing but itself.
//!
//! # Two halves: prepare in the parent, apply in the child
//!
//! The host is multi-threaded (tokio). After `fork` in a multi-threaded
//! process the child may only make async-signal-safe calls: no allocation, no
//! locks, no `tracing`, no formatting. So the work is split:
//!
//! - [`prepare`] runs in the **parent**. It detects what the kernel provides,
//!   decides what will be applied (or fails under [`Enforcement::Required`]),
//!   inspects the cell program (its ELF interpreter, `#!` interpreter and
//!   `DT_RUNPATH`), opens every path of the Landlock allow-list (`O_PATH`,
//!   kept as file descriptors) and builds the ruleset once to validate it,
//!   compiles the seccomp programs, clamps the rlimits, formats the user
//!   namespace id maps, records the expected parent pid and builds the
//!   [`SandboxReport`].
//! - [`apply_in_child`] runs in the **child** between `fork` and `exec` (for
//!   example from [`std::os::unix::process::CommandExt::pre_exec`]). It only
//!   issues raw system calls on the prepared data: no allocation, no lock.
//!   It does not use the `landlock` crate's `restrict_self` (which consumes
//!   the ruleset) nor seccompiler's `apply_filter`; it calls
//!   `landlock_create_ruleset(2)`, `landlock_add_rule(2)` (on the prepared
//!   descriptors), `landlock_restrict_self(2)` and `seccomp(2)` itself. The
//!   child builds its own ruleset, rather than reusing one built by the
//!   parent, because one rule names the child's own `/proc/self` (which the
//!   parent cannot open for it) and a ruleset shared by several children
//!   would accumulate each child's `/proc` directory.
//!
//! # The steps, in the order the child applies them
//!
//! 1. **die-with-parent**: `prctl(PR_SET_PDEATHSIG, SIGKILL)`, then
//!    `getppid()` must still be the pid recorded by [`prepare`]; if the parent
//!    already died the child fails instead of running orphaned. Protects
//!    against cells outliving their host. The signal fires when the *thread*
//!    that forked the child exits (see `prctl(2)`), so the host must spawn
//!    cells from a thread that lives as long as it wants its cells to live
//!    (not from a short-lived blocking-pool thread).
//! 2. **new-session**: `setsid()`. The cell loses the host's controlling
//!    terminal (no `TIOCSTI` injection, no job-control signals from it) and
//!    leaves the host's process group. Then the child builds its Landlock
//!    ruleset (enforced at step 7), while no rlimit can get in the way.
//! 3. **namespaces**: first a user namespace (`unshare(CLONE_NEWUSER)`, then
//!    `/proc/self/setgroups` = `deny`, and identity `uid_map`/`gid_map` for
//!    the host's euid/egid, so the cell keeps its ids), then in one
//!    `unshare(2)` a network namespace (the cell sees only a downed loopback:
//!    no network at all), IPC (no System V / POSIX IPC objects shared with
//!    the host), UTS, cgroup and mount namespaces; the mount namespace is made
//!    recursively private so no mount event propagates either way. The user
//!    namespace is what lets an unprivileged host create the others, makes
//!    every capability the cell could hold meaningless outside it, and makes
//!    `RLIMIT_NPROC` count the cell's own tasks.
//! 4. **rlimits**: `prlimit64(2)` on the cell; only ever lowered, never
//!    raised (see [`Rlimit::defaults`]). Applied after the user namespace so
//!    that `RLIMIT_NPROC` bounds the cell's tasks in its own namespace. The
//!    kernel never applies `RLIMIT_NPROC` to kernel uid 0, even mapped into a
//!    user namespace (measured: 1000 forks under a limit of 256), so a host
//!    running as root gets `rlimit-nproc` in [`SandboxReport::skipped`];
//!    **no-subprocesses** (below) is what stops a fork bomb there.
//! 5. **drop-capabilities**: empty the bounding set (`PR_CAPBSET_DROP`), clear
//!    the ambient set and `capset(2)` all sets to zero, so that a cell
//!    running as uid 0 holds no capability and cannot regain one at `exec`.
//!    Then PDEATHSIG is armed again and the parent re-checked, because
//!    credential changes are where the kernel may clear it.
//! 6. **no-new-privileges**: `prctl(PR_SET_NO_NEW_PRIVS, 1)`: set-uid bits
//!    and file capabilities are ignored from now on. Landlock and seccomp
//!    require it.
//! 7. **Landlock**: `landlock_restrict_self(2)` on the ruleset built at
//!    step 2 (see the allow-list below). Handled (hence denied unless
//!    allowed) are all filesystem rights of the kernel's ABI (execute,
//!    read/write file, read dir, remove dir/file, make char/dir/reg/sock/
//!    fifo/block/sym, refer, truncate, ioctl on devices), TCP bind/connect
//!    (ABI 4, no port is allowed) and the scopes (ABI 6): no signal to a
//!    process outside the cell's domain (its host included) and no connection
//!    to an abstract unix socket created outside it. Landlock also forbids
//!    `ptrace` of processes outside the domain.
//! 8. **seccomp**, last so that everything above is still allowed, and
//!    `execve` remains allowed: two filters, see the deny list below.
//!
//! # The Landlock allow-list
//!
//! Everything not listed is denied (`EACCES`; `EXDEV` for cross-directory
//! links and renames).
//!
//! | path | access | why |
//! |---|---|---|
//! | the program | read + execute | `execve` opens it with `FMODE_EXEC` |
//! | its `PT_INTERP` (e.g. `/lib64/ld-linux-x86-64.so.2`), and for a `#!` script the interpreter, recursively | read + execute | the kernel opens the ELF interpreter with `open_exec` |
//! | `/lib`, `/lib32`, `/lib64`, `/usr/lib`, `/usr/lib32`, `/usr/lib64`, `/usr/local/lib` (those that exist) | read (files and directory listing), **no** execute | the dynamic loader opens shared libraries with `open(O_RDONLY)` and maps them; Landlock's execute right only governs `execve` |
//! | the program's `DT_RUNPATH` / `DT_RPATH` directories (`$ORIGIN` expanded; entries with other `$` tokens ignored) | read | libraries shipped next to the program |
//! | `/etc/ld.so.cache` | read | the loader's library index |
//! | `/dev/null` | read + write + truncate | `> /dev/null` opens with `O_TRUNC` |
//! | `/dev/urandom`, `/dev/random` | read | randomness fallback when `getrandom(2)` is not used |
//! | the cell's own `/proc/self` (opened in the child) | read | runtimes read `/proc/self/maps`, `status`, `fd`, `cgroup`, `mountinfo`; magic links such as `/proc/self/fd/N` or `root` lead to paths that are checked on their own |
//! | [`SandboxPolicy::read_paths`] | read | what the embedder grants |
//! | [`SandboxPolicy::write_dir`] | read, write, create, remove, rename/link within it, truncate | the only writable place; no execute (write xor execute), no device nodes, no device ioctls |
//!
//! Not allowed on purpose: the rest of `/proc` (other processes, the host
//! included; Landlock also refuses `ptrace`-mode access to them), `/sys`,
//! `/etc` beyond the loader cache, `/tmp`, and the current directory.
//! Libraries installed
//! elsewhere (an `ld.so.conf` entry outside the directories above) must be
//! added to [`SandboxPolicy::read_paths`]. The rules bind to inodes at
//! [`prepare`] time: prepare again if the program file is replaced.
//!
//! # The seccomp deny list
//!
//! The main filter (compiled with seccompiler) returns `EPERM` for:
//! `ptrace`, `process_vm_readv`, `process_vm_writev`, `pidfd_getfd`;
//! `mount`, `umount2`, `pivot_root`, `chroot`, `fsopen`, `fsconfig`,
//! `fsmount`, `fspick`, `move_mount`, `open_tree`, `open_tree_attr`,
//! `mount_setattr`; `bpf`, `perf_event_open`, `userfaultfd`,
//! `io_uring_setup`, `io_uring_enter`, `io_uring_register`; `kexec_load`,
//! `kexec_file_load`, `init_module`, `finit_module`, `delete_module`,
//! `reboot`, `swapon`, `swapoff`, `acct`, `syslog`; `keyctl`, `add_key`,
//! `request_key`; `setns`, `unshare` and `clone` when the flags contain
//! `CLONE_NEWUSER`; unless [`SandboxPolicy::allow_subprocesses`] (step
//! **no-subprocesses**): `fork`, `vfork`, and `clone` without
//! `CLONE_THREAD` (threads stay allowed; a cell cannot `exec` anything but
//! its own program anyway); `socket` and `socketpair` for every family but
//! `AF_UNIX`; `connect` (all: a cell talks through inherited descriptors,
//! and before Landlock ABI 9 nothing else stops a `connect` to a pathname
//! unix socket such as a container daemon's); `sendto` with a destination
//! address; `open_by_handle_at`; the path-based metadata changes Landlock
//! does not govern: `chmod`, `fchmodat`, `fchmodat2`, `chown`, `lchown`,
//! `fchownat`, `utime`, `utimes`, `futimesat`, `utimensat` with a path,
//! `setxattr`, `lsetxattr`, `setxattrat`, `removexattr`, `lremovexattr`,
//! `removexattrat` (a cell running as the owner of host files could
//! otherwise change their modes); `ioctl(TIOCSTI)`. A system call made with
//! a foreign architecture (e.g. `int 0x80` on x86-64) kills the process.
//!
//! A second, hand-written filter returns `ENOSYS` for `clone3` (its flags
//! are in memory where seccomp cannot read them; on `ENOSYS` glibc falls back
//! to `clone`, whose flags the main filter inspects) and, on x86-64, for
//! every x32 system call (numbers with bit 30 set would otherwise bypass a
//! filter keyed on x86-64 numbers).
//!
//! Residual gaps: `sendmsg` carries its destination inside memory, so a
//! datagram to a pathname unix socket cannot be filtered; the filesystem
//! metadata visible through `stat(2)` is not hidden.
//!
//! # Enforcement and the report
//!
//! Each step has a name (see [`steps`]). Under [`Enforcement::Required`] a
//! step the kernel cannot provide makes [`prepare`] fail with
//! [`SandboxError::Unavailable`] naming it; under
//! [`Enforcement::BestEffort`] it is skipped and listed in
//! [`SandboxReport::skipped`] with the reason. Namespace support is probed
//! once per process (and per requested set) by forking a child that tries
//! the same steps; Landlock and seccomp support are asked of the kernel.
//!
//! # Example
//!
//! ```no_run
//! use std::os::unix::process::CommandExt;
//! use osmos_host::sandbox::{SandboxPolicy, apply_in_child, prepare};
//!
//! let program = std::path::Path::new("/usr/libexec/my-cell");
//! let prepared = prepare(&SandboxPolicy::default().with_write_dir("/var/lib/my-cell"), program)?;
//! let mut command = std::process::Command::new(program);
//! // SAFETY: the closure runs in the child between fork and exec, which is
//! // what `apply_in_child` requires; it only issues raw system calls.
//! unsafe { command.pre_exec(move || apply_in_child(&prepared)) };
//! let child = command.spawn()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::ffi::{CStr, OsStr, c_int, c_long, c_ulong};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use landlock::{ABI, Access, AccessFs, AccessNet, BitFlags, Scope};
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

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

    fn any(&self) -> bool {
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
    fn raw(self) -> c_int {
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
    /// debugging only; [`prepare`] logs a warning and the report says so.
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

/// What [`prepare`] decided: the steps that will be applied, in order, and
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

/// Why [`prepare`] failed, and what to do about it.
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

/// A sandbox computed in the parent by [`prepare`], applied in the child by
/// [`apply_in_child`]. It may be applied to any number of children forked by
/// the process that prepared it.
pub struct PreparedSandbox {
    plan: ChildPlan,
    report: SandboxReport,
}

impl PreparedSandbox {
    /// What will be applied and what was skipped.
    pub fn report(&self) -> &SandboxReport {
        &self.report
    }

    /// Whether any step will be applied (false for [`SandboxPolicy::disabled`]).
    pub fn is_enabled(&self) -> bool {
        self.plan.enabled
    }
}

impl fmt::Debug for PreparedSandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedSandbox")
            .field("expected_parent", &self.plan.expected_parent)
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

/// Everything the child needs, computed in the parent. The child only reads it.
struct ChildPlan {
    enabled: bool,
    /// The pid of the process that prepared the sandbox: the parent the child
    /// must still have after arming PDEATHSIG.
    expected_parent: libc::pid_t,
    die_with_parent: bool,
    new_session: bool,
    /// `Some` when a user namespace is entered: the bytes for `uid_map` and
    /// `gid_map`.
    user_maps: Option<UserMaps>,
    /// `CLONE_NEW*` flags for the single `unshare` after the user namespace.
    unshare_flags: c_int,
    /// `mount("/", MS_REC | MS_PRIVATE)` after a new mount namespace.
    make_mounts_private: bool,
    /// `(resource, [soft, hard])`, already clamped to the host's hard limits.
    rlimits: Vec<(c_int, [u64; 2])>,
    drop_capabilities: bool,
    /// Whether `PR_CAPBSET_DROP` is possible (we hold `CAP_SETPCAP`, in the
    /// host's user namespace or in the cell's new one).
    drop_bounding_set: bool,
    /// `/proc/sys/kernel/cap_last_cap`.
    last_cap: c_ulong,
    no_new_privs: bool,
    /// The Landlock domain, planned (and validated) in the parent.
    landlock: Option<LandlockPlan>,
    /// BPF programs, installed in order. Each is at most `BPF_MAXINSNS` long.
    seccomp: Vec<Vec<libc::sock_filter>>,
}

struct UserMaps {
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
}

impl ChildPlan {
    fn disabled() -> Self {
        Self {
            enabled: false,
            expected_parent: 0,
            die_with_parent: false,
            new_session: false,
            user_maps: None,
            unshare_flags: 0,
            make_mounts_private: false,
            rlimits: Vec::new(),
            drop_capabilities: false,
            drop_bounding_set: false,
            last_cap: 0,
            no_new_privs: false,
            landlock: None,
            seccomp: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------
// prepare (parent side)
// ---------------------------------------------------------------------------

/// Prepares the sandbox of a cell that will run `program`, in the parent.
///
/// `program` must be the file the host will `exec` (Landlock allows
/// executing exactly that file and its interpreter; executing it through
/// `/proc/self/fd/N` works too). Checks what the kernel provides, opens the
/// Landlock allow-list and validates the ruleset, compiles the seccomp
/// filters; the first call in a process (per namespace set) forks once to
/// probe namespace support. Prepare once per spawn: the rules bind to the
/// files as they are now.
///
/// Under [`Enforcement::Required`] fails with
/// [`SandboxError::Unavailable`] when a requested step is not available.
/// Logs a warning for each skipped step, and for a disabled policy.
pub fn prepare(policy: &SandboxPolicy, program: &Path) -> Result<PreparedSandbox, SandboxError> {
    if !policy.enabled {
        tracing::warn!(
            program = %program.display(),
            "cell sandbox disabled by SandboxPolicy::disabled(): the cell runs with the host's full authority"
        );
        return Ok(PreparedSandbox {
            plan: ChildPlan::disabled(),
            report: SandboxReport {
                applied: Vec::new(),
                skipped: vec![(steps::SANDBOX, "disabled by SandboxPolicy::disabled()".to_owned())],
                landlock_paths: Vec::new(),
            },
        });
    }

    // SAFETY: geteuid/getegid/getpid cannot fail and touch no memory.
    let (euid, egid, pid) = unsafe { (libc::geteuid(), libc::getegid(), libc::getpid()) };
    let user_maps = UserMaps {
        uid_map: format!("{euid} {euid} 1\n").into_bytes(),
        gid_map: format!("{egid} {egid} 1\n").into_bytes(),
    };

    let support = KernelSupport::detect(policy, &user_maps, euid == 0)?;
    let mut decisions = decide(policy, &support)?;

    let mut plan = ChildPlan {
        enabled: true,
        expected_parent: pid,
        die_with_parent: policy.die_with_parent,
        new_session: policy.new_session,
        user_maps: None,
        unshare_flags: 0,
        make_mounts_private: false,
        rlimits: Vec::new(),
        drop_capabilities: policy.drop_capabilities,
        drop_bounding_set: false,
        last_cap: last_capability(),
        no_new_privs: true,
        landlock: None,
        seccomp: Vec::new(),
    };

    let ns = decisions.namespaces;
    if ns.user {
        plan.user_maps = Some(user_maps);
    }
    plan.unshare_flags = unshare_flags(ns);
    plan.make_mounts_private = ns.mount;

    for limit in &policy.rlimits {
        let current = current_rlimit(limit.resource.raw());
        plan.rlimits
            .push((limit.resource.raw(), clamp_rlimit(limit, current)));
    }

    plan.drop_bounding_set = ns.user || holds_capability(CAP_SETPCAP);

    if let Some(abi) = decisions.landlock_abi {
        let (landlock, paths) = build_landlock(abi, policy, program)?;
        plan.landlock = Some(landlock);
        decisions.report.landlock_paths = paths;
    }

    if decisions.seccomp {
        plan.seccomp = compile_seccomp(!policy.allow_subprocesses)?;
    }

    let report = decisions.report;
    // Each skipped step is warned about once per process: the reasons are
    // properties of the host and kernel, the same for every spawn (the
    // report of every cell still lists them).
    static WARNED: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    for (step, why) in &report.skipped {
        let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
        if !warned.contains(step) {
            warned.push(step);
            tracing::warn!(step, reason = %why, program = %program.display(), "cell sandbox step skipped");
        }
    }
    tracing::debug!(program = %program.display(), %report, "cell sandbox prepared");
    Ok(PreparedSandbox { plan, report })
}

/// What the kernel (and this process) can provide; each `Err` says why not.
#[derive(Clone, Debug)]
struct KernelSupport {
    /// The Landlock ABI version, or why Landlock is unavailable.
    landlock_abi: Result<i32, String>,
    seccomp: Result<(), String>,
    user_ns: Result<(), String>,
    network_ns: Result<(), String>,
    ipc_ns: Result<(), String>,
    uts_ns: Result<(), String>,
    mount_ns: Result<(), String>,
    cgroup_ns: Result<(), String>,
    /// The host runs as uid 0.
    root: bool,
}

impl KernelSupport {
    fn detect(policy: &SandboxPolicy, maps: &UserMaps, root: bool) -> Result<Self, SandboxError> {
        let ns = if policy.namespaces.any() {
            probe_namespaces_cached(policy.namespaces, maps)?
        } else {
            [0; NS_SLOTS]
        };
        let result = |slot: usize, call: &str| -> Result<(), String> {
            match ns[slot] {
                0 => Ok(()),
                errno => Err(format!(
                    "{call} failed in a probe child: {}",
                    io::Error::from_raw_os_error(errno)
                )),
            }
        };
        Ok(Self {
            landlock_abi: if policy.landlock { landlock_abi() } else { Ok(0) },
            seccomp: if policy.seccomp { seccomp_support() } else { Ok(()) },
            user_ns: result(NS_USER, "unshare(CLONE_NEWUSER) with identity uid/gid maps"),
            network_ns: result(NS_NET, "unshare(CLONE_NEWNET)"),
            ipc_ns: result(NS_IPC, "unshare(CLONE_NEWIPC)"),
            uts_ns: result(NS_UTS, "unshare(CLONE_NEWUTS)"),
            mount_ns: result(
                NS_MOUNT,
                "unshare(CLONE_NEWNS) and mount(\"/\", MS_REC | MS_PRIVATE)",
            ),
            cgroup_ns: result(NS_CGROUP, "unshare(CLONE_NEWCGROUP)"),
            root,
        })
    }
}

/// The outcome of matching a policy against the kernel.
#[derive(Debug)]
struct Decisions {
    namespaces: Namespaces,
    /// `Some(abi)` when Landlock is applied.
    landlock_abi: Option<i32>,
    seccomp: bool,
    report: SandboxReport,
}

/// The Landlock steps and the ABI each needs.
const LANDLOCK_STEPS: [(&str, i32, &str); 7] = [
    (steps::LANDLOCK_FILESYSTEM, 1, "Linux 5.13"),
    (steps::LANDLOCK_REFER, 2, "Linux 5.19"),
    (steps::LANDLOCK_TRUNCATE, 3, "Linux 6.2"),
    (steps::LANDLOCK_NETWORK, 4, "Linux 6.7"),
    (steps::LANDLOCK_IOCTL_DEV, 5, "Linux 6.10"),
    (steps::LANDLOCK_SCOPE_SIGNAL, 6, "Linux 6.12"),
    (steps::LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET, 6, "Linux 6.12"),
];

/// Decides, without system calls, what is applied; fails under
/// [`Enforcement::Required`] on the first unavailable step.
fn decide(policy: &SandboxPolicy, support: &KernelSupport) -> Result<Decisions, SandboxError> {
    let mut report = SandboxReport::default();
    let need = |feature: &'static str,
                available: &Result<(), String>,
                report: &mut SandboxReport|
     -> Result<bool, SandboxError> {
        match available {
            Ok(()) => {
                report.applied.push(feature);
                Ok(true)
            }
            Err(reason) => match policy.enforcement {
                Enforcement::Required => Err(SandboxError::Unavailable {
                    feature,
                    reason: reason.clone(),
                }),
                Enforcement::BestEffort => {
                    report.skipped.push((feature, reason.clone()));
                    Ok(false)
                }
            },
        }
    };

    if policy.die_with_parent {
        report.applied.push(steps::DIE_WITH_PARENT);
    }
    if policy.new_session {
        report.applied.push(steps::NEW_SESSION);
    }

    let wanted = policy.namespaces;
    let mut ns = Namespaces::NONE;
    for (on, step, available, entered) in [
        (wanted.user, steps::USER_NAMESPACE, &support.user_ns, &mut ns.user),
        (
            wanted.network,
            steps::NETWORK_NAMESPACE,
            &support.network_ns,
            &mut ns.network,
        ),
        (wanted.ipc, steps::IPC_NAMESPACE, &support.ipc_ns, &mut ns.ipc),
        (wanted.uts, steps::UTS_NAMESPACE, &support.uts_ns, &mut ns.uts),
        (
            wanted.mount,
            steps::MOUNT_NAMESPACE,
            &support.mount_ns,
            &mut ns.mount,
        ),
        (
            wanted.cgroup,
            steps::CGROUP_NAMESPACE,
            &support.cgroup_ns,
            &mut ns.cgroup,
        ),
    ] {
        if on {
            *entered = need(step, available, &mut report)?;
        }
    }

    if !policy.rlimits.is_empty() {
        report.applied.push(steps::RLIMITS);
        let limits_nproc = policy.rlimits.iter().any(|l| l.resource == RlimitResource::NProc);
        if limits_nproc && support.root {
            report.skipped.push((
                steps::RLIMIT_NPROC,
                "the host runs as root and the kernel does not apply RLIMIT_NPROC to uid 0, even \
                 mapped into a user namespace; run cells in a pids cgroup to bound their threads"
                    .to_owned(),
            ));
        }
    }
    if policy.drop_capabilities {
        report.applied.push(steps::DROP_CAPABILITIES);
    }
    report.applied.push(steps::NO_NEW_PRIVILEGES);

    let mut landlock_abi = None;
    if policy.landlock {
        let abi = support.landlock_abi.clone();
        let mut filesystem = false;
        for (step, min_abi, since) in LANDLOCK_STEPS {
            let available = match &abi {
                Err(reason) => Err(reason.clone()),
                Ok(_) if step != steps::LANDLOCK_FILESYSTEM && !filesystem => {
                    Err("Landlock filesystem rules are not applied".to_owned())
                }
                Ok(v) if *v >= min_abi => Ok(()),
                Ok(v) => Err(format!(
                    "the kernel's Landlock ABI is {v}; this needs ABI {min_abi} ({since})"
                )),
            };
            let applied = need(step, &available, &mut report)?;
            if step == steps::LANDLOCK_FILESYSTEM {
                filesystem = applied;
            }
        }
        if filesystem {
            landlock_abi = abi.ok();
        }
    }

    let seccomp = policy.seccomp && need(steps::SECCOMP, &support.seccomp, &mut report)?;
    if !policy.allow_subprocesses {
        // Part of the seccomp step: its absence was already enforced above.
        if seccomp {
            report.applied.push(steps::NO_SUBPROCESSES);
        } else {
            report.skipped.push((
                steps::NO_SUBPROCESSES,
                "it is enforced by the seccomp filter, which is not applied".to_owned(),
            ));
        }
    }

    Ok(Decisions {
        namespaces: ns,
        landlock_abi,
        seccomp,
        report,
    })
}

fn unshare_flags(ns: Namespaces) -> c_int {
    let mut flags = 0;
    for (on, flag) in [
        (ns.network, libc::CLONE_NEWNET),
        (ns.ipc, libc::CLONE_NEWIPC),
        (ns.uts, libc::CLONE_NEWUTS),
        (ns.mount, libc::CLONE_NEWNS),
        (ns.cgroup, libc::CLONE_NEWCGROUP),
    ] {
        if on {
            flags |= flag;
        }
    }
    flags
}

/// `LANDLOCK_CREATE_RULESET_VERSION`, see `landlock_create_ruleset(2)`.
const LANDLOCK_CREATE_RULESET_VERSION: c_ulong = 1;

/// The kernel's Landlock ABI version (`landlock_create_ruleset(2)`).
fn landlock_abi() -> Result<i32, String> {
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag the
    // kernel reads no memory and returns the ABI version.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if ret < 0 {
        let e = io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::ENOSYS) => "the kernel is built without CONFIG_SECURITY_LANDLOCK",
            Some(libc::EOPNOTSUPP) => "Landlock is not enabled at boot (add it to the lsm= list)",
            _ => "unexpected error",
        };
        Err(format!("landlock_create_ruleset failed: {e}: {hint}"))
    } else {
        Ok(i32::try_from(ret).unwrap_or(i32::MAX))
    }
}

/// Whether this process may install a seccomp filter returning errno
/// (`seccomp(2)`, `SECCOMP_GET_ACTION_AVAIL`).
fn seccomp_support() -> Result<(), String> {
    if TargetArch::try_from(std::env::consts::ARCH).is_err() {
        return Err(format!(
            "seccompiler has no syscall table for the {} architecture",
            std::env::consts::ARCH
        ));
    }
    let action: u32 = libc::SECCOMP_RET_ERRNO;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 through the pointer,
    // which points to a live local.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(format!(
            "seccomp(SECCOMP_GET_ACTION_AVAIL) failed: {}: the kernel lacks \
             CONFIG_SECCOMP_FILTER or this process may not use seccomp",
            io::Error::last_os_error()
        ))
    }
}

/// `[soft, hard]` for `limit`, never above the host's current hard limit
/// (raising it would need `CAP_SYS_RESOURCE` and loosen the sandbox), and
/// soft never above hard.
fn clamp_rlimit(limit: &Rlimit, current: [u64; 2]) -> [u64; 2] {
    let hard = limit.hard.min(current[1]);
    [limit.soft.min(hard), hard]
}

/// The host's current `[soft, hard]` limit of `resource`.
fn current_rlimit(resource: c_int) -> [u64; 2] {
    let mut old = [u64::MAX; 2];
    // SAFETY: prlimit64(0, resource, NULL, &old) writes one `struct
    // rlimit64` (two u64) into `old`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            0,
            resource,
            std::ptr::null::<[u64; 2]>(),
            old.as_mut_ptr(),
        )
    };
    if ret != 0 { [u64::MAX; 2] } else { old }
}

/// `CAP_SETPCAP`, see `capabilities(7)`.
const CAP_SETPCAP: u32 = 8;
/// `_LINUX_CAPABILITY_VERSION_3`.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`, see `capget(2)`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

/// `struct __user_cap_data_struct`, see `capget(2)`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Whether this process holds `cap` in its effective set.
fn holds_capability(cap: u32) -> bool {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget with a version 3 header writes two CapData structs.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) };
    ret == 0 && data[(cap / 32) as usize].effective & (1 << (cap % 32)) != 0
}

/// `/proc/sys/kernel/cap_last_cap`, or 63 (drops stop at the first `EINVAL`).
fn last_capability() -> c_ulong {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

// ---------------------------------------------------------------------------
// Namespace probe (parent forks a child that tries the steps)
// ---------------------------------------------------------------------------

const NS_USER: usize = 0;
const NS_NET: usize = 1;
const NS_IPC: usize = 2;
const NS_UTS: usize = 3;
const NS_MOUNT: usize = 4;
const NS_CGROUP: usize = 5;
const NS_SLOTS: usize = 6;

type ProbeKey = (Namespaces, Vec<u8>, Vec<u8>);
static NAMESPACE_PROBES: Mutex<Vec<(ProbeKey, [i32; NS_SLOTS])>> = Mutex::new(Vec::new());

/// The errno of each namespace step (0 = works), probed once per process and
/// requested set.
fn probe_namespaces_cached(requested: Namespaces, maps: &UserMaps) -> Result<[i32; NS_SLOTS], SandboxError> {
    let key = (requested, maps.uid_map.clone(), maps.gid_map.clone());
    let mut cache = NAMESPACE_PROBES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, results)) = cache.iter().find(|(k, _)| *k == key) {
        return Ok(*results);
    }
    let results = probe_namespaces(requested, maps).map_err(SandboxError::Probe)?;
    cache.push((key, results));
    Ok(results)
}

/// Forks a child that enters the requested namespaces the way
/// [`apply_in_child`] does, one kind at a time, and reports each errno
/// through a pipe.
fn probe_namespaces(requested: Namespaces, maps: &UserMaps) -> io::Result<[i32; NS_SLOTS]> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [read_fd, write_fd] = fds;
    // SAFETY: fork is safe to call; the child below only makes
    // async-signal-safe raw system calls on data prepared before the fork,
    // and leaves with `_exit` without returning into Rust code.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // Child.
        let mut results = [-1i32; NS_SLOTS];
        if requested.user {
            results[NS_USER] = errno_of(enter_user_namespace(maps));
        }
        for (slot, on, flag) in [
            (NS_NET, requested.network, libc::CLONE_NEWNET),
            (NS_IPC, requested.ipc, libc::CLONE_NEWIPC),
            (NS_UTS, requested.uts, libc::CLONE_NEWUTS),
            (NS_CGROUP, requested.cgroup, libc::CLONE_NEWCGROUP),
        ] {
            if on {
                results[slot] = errno_of(sys_unshare(flag));
            }
        }
        if requested.mount {
            results[NS_MOUNT] =
                errno_of(sys_unshare(libc::CLONE_NEWNS).and_then(|()| sys_make_mounts_private()));
        }
        let mut bytes = [0u8; NS_SLOTS * 4];
        for (chunk, value) in bytes.chunks_exact_mut(4).zip(results) {
            chunk.copy_from_slice(&value.to_ne_bytes());
        }
        // SAFETY: writes from a live stack buffer, then ends the child
        // without running atexit handlers or destructors.
        unsafe {
            libc::write(write_fd, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(0);
        }
    }
    let fork_error = (pid < 0).then(io::Error::last_os_error);
    // SAFETY: `write_fd` is ours and no longer used in the parent.
    unsafe { libc::close(write_fd) };
    // SAFETY: `read_fd` is a descriptor we own; File closes it on drop.
    let read_end = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(read_fd) };
    if let Some(e) = fork_error {
        return Err(e);
    }
    let mut bytes = [0u8; NS_SLOTS * 4];
    let read = read_fully(&read_end, &mut bytes);
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child and writes its status into a local.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    if read? != bytes.len() {
        return Err(io::Error::other(format!(
            "the probe child ended without reporting (wait status {status:#x})"
        )));
    }
    let mut results = [0i32; NS_SLOTS];
    for (value, chunk) in results.iter_mut().zip(bytes.chunks_exact(4)) {
        *value = i32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    // Slots not tried (-1) count as available: they are never asked for.
    Ok(results.map(|e| e.max(0)))
}

fn read_fully(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::Read;
    let mut filled = 0;
    let mut file = file;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn errno_of(result: io::Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
    }
}

// ---------------------------------------------------------------------------
// Landlock ruleset (built in the parent)
// ---------------------------------------------------------------------------

/// Standard shared library directories, allowed read-only when they exist.
const LIBRARY_DIRS: [&str; 7] = [
    "/lib",
    "/lib32",
    "/lib64",
    "/usr/lib",
    "/usr/lib32",
    "/usr/lib64",
    "/usr/local/lib",
];
/// Single files every dynamically linked program may need.
const SYSTEM_READ_FILES: [&str; 3] = ["/etc/ld.so.cache", "/dev/urandom", "/dev/random"];

const READ: &str = "read";
const READ_EXECUTE: &str = "read+execute";
const READ_WRITE: &str = "read+write";

/// The Landlock allow-list as reported: each path and the access label.
type AllowList = Vec<(PathBuf, &'static str)>;

/// `LANDLOCK_RULE_PATH_BENEATH`, see `landlock_add_rule(2)`.
const LANDLOCK_RULE_PATH_BENEATH: c_int = 1;
/// The descriptors of the rules are moved at or above this number, so that
/// an embedder moving stdio and a few bootstrap descriptors into low numbers
/// (with `dup2`, before `apply_in_child`) cannot replace them.
const RULE_FD_FLOOR: c_int = 100;

/// `struct landlock_ruleset_attr` in its ABI 6 layout; the kernel accepts it
/// from older ABIs as long as the fields they lack are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

/// `struct landlock_path_beneath_attr`, packed in the UAPI.
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// What the child needs to build its Landlock domain. Each child builds its
/// own ruleset (raw system calls, no allocation) because one rule must name
/// the child's own `/proc/self`, which the parent cannot open for it, and a
/// ruleset shared between children would accumulate every child's rule.
#[derive(Debug)]
struct LandlockPlan {
    attr: RulesetAttr,
    /// Each allowed hierarchy, opened `O_PATH` in the parent, with its rights.
    rules: Vec<(OwnedFd, u64)>,
    /// The rights on the calling process's own `/proc/self`.
    proc_self: u64,
}

/// Which part of [`create_ruleset`] failed.
#[derive(Debug)]
enum RulesetStep {
    Create,
    Rule(usize),
    ProcSelf,
}

/// Creates a ruleset from `plan`, adds its rules and one for the caller's
/// own `/proc/self`. Raw system calls only: the child builds its domain with
/// it, and [`prepare`] runs it once in the parent to validate the plan.
fn create_ruleset(plan: &LandlockPlan) -> Result<OwnedFd, (RulesetStep, io::Error)> {
    // SAFETY: the kernel reads `size_of::<RulesetAttr>()` bytes from a live
    // struct whose layout matches the UAPI.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &plan.attr as *const RulesetAttr,
            size_of::<RulesetAttr>(),
            0u32,
        )
    };
    let fd = check(fd).map_err(|e| (RulesetStep::Create, e))? as c_int;
    // SAFETY: landlock_create_ruleset returned a new descriptor we own.
    let ruleset = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let add = |parent_fd: c_int, allowed_access: u64| -> io::Result<()> {
        let attr = PathBeneathAttr {
            allowed_access,
            parent_fd,
        };
        // SAFETY: the kernel reads a packed path_beneath_attr from a live
        // local; the descriptors are valid for the duration of the call.
        check(unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset.as_raw_fd(),
                LANDLOCK_RULE_PATH_BENEATH,
                &attr as *const PathBeneathAttr,
                0u32,
            )
        })
        .map(drop)
    };
    for (i, (path, access)) in plan.rules.iter().enumerate() {
        add(path.as_raw_fd(), *access).map_err(|e| (RulesetStep::Rule(i), e))?;
    }
    if plan.proc_self != 0 {
        const PROC_SELF: &CStr = c"/proc/self";
        // SAFETY: a static C string; O_PATH opens do not touch the file.
        let fd = unsafe {
            libc::open(
                PROC_SELF.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        let fd = check(fd.into()).map_err(|e| (RulesetStep::ProcSelf, e))? as c_int;
        let added = add(fd, plan.proc_self);
        // SAFETY: closes the descriptor opened above.
        unsafe { libc::close(fd) };
        added.map_err(|e| (RulesetStep::ProcSelf, e))?;
    }
    Ok(ruleset)
}

/// Opens `path` with `O_PATH` at or above [`RULE_FD_FLOOR`].
fn open_rule_path(path: &Path) -> Result<(OwnedFd, bool), SandboxError> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: io::Error| SandboxError::Path {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .map_err(fail)?;
    let is_dir = file.metadata().map_err(fail)?.is_dir();
    // SAFETY: duplicates a descriptor we own; the new one is ours too.
    let high = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, RULE_FD_FLOOR) };
    let high = check(high.into()).map_err(fail)? as c_int;
    // SAFETY: fcntl returned a new descriptor we own.
    Ok((
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(high) },
        is_dir,
    ))
}

/// Plans the Landlock domain for `abi`: the handled rights and the
/// allow-list, each path opened `O_PATH`. Validates the plan by building a
/// ruleset once. Returns the plan and the list for the report.
fn build_landlock(
    abi: i32,
    policy: &SandboxPolicy,
    program: &Path,
) -> Result<(LandlockPlan, AllowList), SandboxError> {
    // The ABI is the one the kernel reported, so that the report states
    // exactly what is enforced.
    let abi = ABI::from(abi);
    let handled = AccessFs::from_all(abi);
    let file_rights = AccessFs::from_file(abi);
    let read_dir: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::ReadDir;
    let read_execute: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::Execute;
    let device_rw: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate;
    let write_dir_rights =
        handled & !(AccessFs::Execute | AccessFs::MakeChar | AccessFs::MakeBlock | AccessFs::IoctlDev);

    let mut rules: Vec<(PathBuf, BitFlags<AccessFs>, &'static str)> = Vec::new();

    let mut deps = ProgramDeps::default();
    inspect_program(program, 0, &mut deps)?;
    for exe in deps.executables {
        rules.push((exe, read_execute, READ_EXECUTE));
    }
    for dir in LIBRARY_DIRS.iter().map(PathBuf::from).chain(deps.library_dirs) {
        if dir.is_dir() {
            rules.push((dir, read_dir, READ));
        }
    }
    for file in SYSTEM_READ_FILES {
        if Path::new(file).exists() {
            rules.push((file.into(), AccessFs::ReadFile.into(), READ));
        }
    }
    rules.push(("/dev/null".into(), device_rw, READ_WRITE));
    for path in &policy.read_paths {
        rules.push((path.clone(), read_dir, READ));
    }
    if let Some(dir) = &policy.write_dir {
        if !dir.is_dir() {
            return Err(SandboxError::Path {
                path: dir.clone(),
                reason: "the write directory is not a directory".to_owned(),
            });
        }
        rules.push((dir.clone(), write_dir_rights, READ_WRITE));
    }

    let mut plan = LandlockPlan {
        attr: RulesetAttr {
            handled_access_fs: handled.bits(),
            handled_access_net: AccessNet::from_all(abi).bits(),
            scoped: Scope::from_all(abi).bits(),
        },
        rules: Vec::with_capacity(rules.len()),
        proc_self: (read_dir & handled).bits(),
    };
    let mut listed = Vec::with_capacity(rules.len() + 1);
    for (path, rights, label) in rules {
        let (fd, is_dir) = open_rule_path(&path)?;
        let mut rights = rights & handled;
        if !is_dir {
            rights &= file_rights;
        }
        plan.rules.push((fd, rights.bits()));
        listed.push((path, label));
    }
    listed.push((PathBuf::from("/proc/self"), READ));

    // Dry run in the parent (with the parent's /proc/self): any rule the
    // kernel refuses fails here, with its path, instead of in the child.
    match create_ruleset(&plan) {
        Ok(_validated) => {}
        Err((RulesetStep::Rule(i), e)) => {
            return Err(SandboxError::Path {
                path: listed[i].0.clone(),
                reason: format!("landlock_add_rule failed: {e}"),
            });
        }
        Err((step, e)) => return Err(SandboxError::Landlock(format!("{step:?}: {e}"))),
    }
    Ok((plan, listed))
}

/// The files the kernel opens for `exec` and the directories the loader
/// reads, found by inspecting the program.
#[derive(Debug, Default)]
struct ProgramDeps {
    /// The program, its `#!` interpreters and ELF interpreters.
    executables: Vec<PathBuf>,
    /// `DT_RUNPATH` / `DT_RPATH` directories.
    library_dirs: Vec<PathBuf>,
}

/// The kernel follows at most this many `#!` interpreters
/// (`BINPRM_MAX_RECURSION`).
const MAX_INTERPRETER_DEPTH: u32 = 4;

fn inspect_program(path: &Path, depth: u32, deps: &mut ProgramDeps) -> Result<(), SandboxError> {
    let fail = |reason: String| SandboxError::Program {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut head = [0u8; 256];
    let n = read_at(&file, 0, &mut head).map_err(|e| fail(e.to_string()))?;
    let head = &head[..n];
    deps.executables.push(path.to_path_buf());

    if let Some(rest) = head.strip_prefix(b"#!") {
        if depth >= MAX_INTERPRETER_DEPTH {
            return Err(fail("too many nested #! interpreters".to_owned()));
        }
        let line = rest.split(|b| *b == b'\n').next().unwrap_or_default();
        let interpreter = line
            .split(|b| *b == b' ' || *b == b'\t')
            .find(|t| !t.is_empty())
            .ok_or_else(|| fail("empty #! line".to_owned()))?;
        let interpreter = Path::new(OsStr::from_bytes(interpreter));
        if !interpreter.is_absolute() {
            return Err(fail(format!(
                "the #! interpreter {} is not an absolute path",
                interpreter.display()
            )));
        }
        return inspect_program(interpreter, depth + 1, deps);
    }

    if head.len() < 64 || &head[..4] != b"\x7fELF" {
        return Err(fail("neither an ELF file nor a #! script".to_owned()));
    }
    if head[4] != 2 || head[5] != 1 {
        return Err(fail(
            "only 64-bit little-endian ELF programs are supported".to_owned(),
        ));
    }
    let elf = Elf64::parse(&file, head).map_err(fail)?;
    if let Some(interpreter) = elf.interpreter {
        // ELF interpreters are static: no interpreter or run path of their own.
        deps.executables.push(interpreter);
    }
    let origin = std::fs::canonicalize(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    for entry in elf.run_paths {
        let expanded = match &origin {
            Some(origin) => {
                let o = origin.to_string_lossy();
                entry.replace("${ORIGIN}", &o).replace("$ORIGIN", &o)
            }
            None => continue,
        };
        if expanded.is_empty() || expanded.contains('$') {
            tracing::debug!(entry, "run path entry with an unsupported token ignored");
            continue;
        }
        let dir = PathBuf::from(expanded);
        if dir.is_dir() {
            deps.library_dirs.push(dir);
        }
    }
    Ok(())
}

fn read_at(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// What the sandbox needs from a 64-bit little-endian ELF file: its
/// `PT_INTERP` and its `DT_RUNPATH`/`DT_RPATH` entries.
#[derive(Debug, Default)]
struct Elf64 {
    interpreter: Option<PathBuf>,
    run_paths: Vec<String>,
}

impl Elf64 {
    const PT_LOAD: u32 = 1;
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const DT_NULL: u64 = 0;
    const DT_STRTAB: u64 = 5;
    const DT_STRSZ: u64 = 10;
    const DT_RPATH: u64 = 15;
    const DT_RUNPATH: u64 = 29;
    /// Bounds on what a sane program header table and dynamic section hold.
    const MAX_PHNUM: usize = 4096;
    const MAX_DYNAMIC: u64 = 1 << 20;
    const MAX_STRING: usize = 1 << 16;

    fn parse(file: &File, head: &[u8]) -> Result<Self, String> {
        let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));

        let phoff = u64_at(head, 0x20);
        let phentsize = usize::from(u16_at(head, 0x36));
        let phnum = usize::from(u16_at(head, 0x38));
        if phentsize < 56 || phnum > Self::MAX_PHNUM {
            return Err(format!(
                "unexpected ELF program header table ({phnum} entries of {phentsize} bytes)"
            ));
        }
        let mut table = vec![0u8; phnum * phentsize];
        if read_at(file, phoff, &mut table).map_err(|e| e.to_string())? != table.len() {
            return Err("truncated ELF program header table".to_owned());
        }

        let mut elf = Self::default();
        let mut loads = Vec::new();
        let mut dynamic = None;
        for ph in table.chunks_exact(phentsize) {
            let (p_type, offset, vaddr, filesz) =
                (u32_at(ph, 0), u64_at(ph, 8), u64_at(ph, 16), u64_at(ph, 32));
            match p_type {
                Self::PT_LOAD => loads.push((vaddr, offset, filesz)),
                Self::PT_DYNAMIC => dynamic = Some((offset, filesz)),
                Self::PT_INTERP => {
                    let s = read_c_string(file, offset, (filesz as usize).min(Self::MAX_STRING))?;
                    elf.interpreter = Some(PathBuf::from(OsStr::from_bytes(&s)));
                }
                _ => {}
            }
        }

        let Some((dyn_offset, dyn_size)) = dynamic else {
            return Ok(elf);
        };
        let mut entries = vec![0u8; dyn_size.min(Self::MAX_DYNAMIC) as usize];
        let n = read_at(file, dyn_offset, &mut entries).map_err(|e| e.to_string())?;
        let (mut strtab, mut strsz, mut paths) = (None, u64::MAX, Vec::new());
        for entry in entries[..n].chunks_exact(16) {
            let (tag, value) = (u64_at(entry, 0), u64_at(entry, 8));
            match tag {
                Self::DT_NULL => break,
                Self::DT_STRTAB => strtab = Some(value),
                Self::DT_STRSZ => strsz = value,
                Self::DT_RPATH | Self::DT_RUNPATH => paths.push(value),
                _ => {}
            }
        }
        if paths.is_empty() {
            return Ok(elf);
        }
        let strtab = strtab.ok_or("DT_RUNPATH without DT_STRTAB")?;
        // DT_STRTAB is a virtual address: find the file offset through PT_LOAD.
        let strtab_offset = loads
            .iter()
            .find(|(vaddr, _, filesz)| strtab >= *vaddr && strtab - vaddr < *filesz)
            .map(|(vaddr, offset, _)| strtab - vaddr + offset)
            .ok_or("DT_STRTAB outside every PT_LOAD segment")?;
        for string_offset in paths {
            if string_offset >= strsz {
                return Err("DT_RUNPATH outside the string table".to_owned());
            }
            let s = read_c_string(file, strtab_offset + string_offset, Self::MAX_STRING)?;
            let s = String::from_utf8_lossy(&s).into_owned();
            elf.run_paths
                .extend(s.split(':').filter(|p| !p.is_empty()).map(str::to_owned));
        }
        Ok(elf)
    }
}

fn read_c_string(file: &File, offset: u64, max: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; max];
    let n = read_at(file, offset, &mut buf).map_err(|e| e.to_string())?;
    buf.truncate(n);
    match buf.iter().position(|b| *b == 0) {
        Some(end) => {
            buf.truncate(end);
            Ok(buf)
        }
        None => Err("unterminated string in the ELF file".to_owned()),
    }
}

// ---------------------------------------------------------------------------
// seccomp (compiled in the parent)
// ---------------------------------------------------------------------------

/// `setxattrat(2)` (Linux 6.13): the same number on every architecture.
const SYS_SETXATTRAT: c_long = 463;
/// `removexattrat(2)` (Linux 6.13).
const SYS_REMOVEXATTRAT: c_long = 466;
/// `open_tree_attr(2)` (Linux 6.15).
const SYS_OPEN_TREE_ATTR: c_long = 467;
/// The x32 ABI marks its system call numbers with this bit.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// The maximum length of a classic BPF program (`BPF_MAXINSNS`).
const BPF_MAXINSNS: usize = 4096;

/// When a denied system call is denied.
#[derive(Clone, Copy)]
enum Deny {
    Always,
    /// When argument `index` (a 32-bit value) has all of `bits` set.
    ArgHasBits(u8, u64),
    /// When argument `index` (a 32-bit value) has none of `bits` set.
    ArgLacksBits(u8, u64),
    /// When argument `index` (a 32-bit value) differs from `value`.
    ArgNot(u8, u64),
    /// When argument `index` (a 32-bit value) equals `value`.
    ArgIs(u8, u64),
    /// When pointer argument `index` is not null.
    ArgNonNull(u8),
}

/// The main deny list: `(syscall, when)`. Matches return `EPERM`. Several
/// entries for one system call deny it when any of them matches.
fn deny_list(no_subprocesses: bool) -> Vec<(c_long, Deny)> {
    use Deny::*;
    let newuser = libc::CLONE_NEWUSER as u64;
    // `TIOCSTI` is a `c_ulong` on some targets and a `c_int` on others.
    #[allow(clippy::unnecessary_cast)]
    let tiocsti = libc::TIOCSTI as u64;
    let mut list = vec![
        // Other processes' memory.
        (libc::SYS_ptrace, Always),
        (libc::SYS_process_vm_readv, Always),
        (libc::SYS_process_vm_writev, Always),
        (libc::SYS_pidfd_getfd, Always),
        // Mounts and the filesystem topology.
        (libc::SYS_mount, Always),
        (libc::SYS_umount2, Always),
        (libc::SYS_pivot_root, Always),
        (libc::SYS_chroot, Always),
        (libc::SYS_fsopen, Always),
        (libc::SYS_fsconfig, Always),
        (libc::SYS_fsmount, Always),
        (libc::SYS_fspick, Always),
        (libc::SYS_move_mount, Always),
        (libc::SYS_open_tree, Always),
        (SYS_OPEN_TREE_ATTR, Always),
        (libc::SYS_mount_setattr, Always),
        // Kernel attack surface.
        (libc::SYS_bpf, Always),
        (libc::SYS_perf_event_open, Always),
        (libc::SYS_userfaultfd, Always),
        (libc::SYS_io_uring_setup, Always),
        (libc::SYS_io_uring_enter, Always),
        (libc::SYS_io_uring_register, Always),
        (libc::SYS_kexec_load, Always),
        (libc::SYS_kexec_file_load, Always),
        (libc::SYS_init_module, Always),
        (libc::SYS_finit_module, Always),
        (libc::SYS_delete_module, Always),
        (libc::SYS_reboot, Always),
        (libc::SYS_swapon, Always),
        (libc::SYS_swapoff, Always),
        (libc::SYS_acct, Always),
        (libc::SYS_syslog, Always),
        (libc::SYS_keyctl, Always),
        (libc::SYS_add_key, Always),
        (libc::SYS_request_key, Always),
        // Namespaces: no new user namespace (clone3 is handled by the guard).
        (libc::SYS_setns, Always),
        (libc::SYS_unshare, ArgHasBits(0, newuser)),
        (libc::SYS_clone, ArgHasBits(0, newuser)),
        // Network: AF_UNIX only, no connect, no addressed sendto.
        (libc::SYS_socket, ArgNot(0, libc::AF_UNIX as u64)),
        (libc::SYS_socketpair, ArgNot(0, libc::AF_UNIX as u64)),
        (libc::SYS_connect, Always),
        (libc::SYS_sendto, ArgNonNull(4)),
        // Path-based metadata changes Landlock does not govern.
        (libc::SYS_open_by_handle_at, Always),
        (libc::SYS_fchmodat, Always),
        (libc::SYS_fchmodat2, Always),
        (libc::SYS_fchownat, Always),
        (libc::SYS_utimensat, ArgNonNull(1)),
        (libc::SYS_setxattr, Always),
        (libc::SYS_lsetxattr, Always),
        (SYS_SETXATTRAT, Always),
        (libc::SYS_removexattr, Always),
        (libc::SYS_lremovexattr, Always),
        (SYS_REMOVEXATTRAT, Always),
        // Terminal input injection.
        (libc::SYS_ioctl, ArgIs(1, tiocsti)),
    ];
    if no_subprocesses {
        list.push((libc::SYS_clone, ArgLacksBits(0, libc::CLONE_THREAD as u64)));
        #[cfg(target_arch = "x86_64")]
        list.extend([(libc::SYS_fork, Always), (libc::SYS_vfork, Always)]);
    }
    #[cfg(target_arch = "x86_64")]
    list.extend([
        (libc::SYS_chmod, Always),
        (libc::SYS_chown, Always),
        (libc::SYS_lchown, Always),
        (libc::SYS_utime, Always),
        (libc::SYS_utimes, Always),
        (libc::SYS_futimesat, Always),
    ]);
    list
}

/// Compiles the guard and the main deny list, in installation order.
fn compile_seccomp(no_subprocesses: bool) -> Result<Vec<Vec<libc::sock_filter>>, SandboxError> {
    let arch =
        TargetArch::try_from(std::env::consts::ARCH).map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    let cond = |index: u8, op: SeccompCmpOp, value: u64, len: SeccompCmpArgLen| {
        SeccompCondition::new(index, len, op, value)
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(|e| SandboxError::Seccomp(e.to_string()))
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut unconditional = std::collections::BTreeSet::new();
    for (nr, when) in deny_list(no_subprocesses) {
        use SeccompCmpArgLen::{Dword, Qword};
        let rule = match when {
            Deny::Always => None,
            Deny::ArgHasBits(i, bits) => Some(cond(i, SeccompCmpOp::MaskedEq(bits), bits, Dword)?),
            Deny::ArgLacksBits(i, bits) => Some(cond(i, SeccompCmpOp::MaskedEq(bits), 0, Dword)?),
            Deny::ArgNot(i, v) => Some(cond(i, SeccompCmpOp::Ne, v, Dword)?),
            Deny::ArgIs(i, v) => Some(cond(i, SeccompCmpOp::Eq, v, Dword)?),
            Deny::ArgNonNull(i) => Some(cond(i, SeccompCmpOp::Ne, 0, Qword)?),
        };
        match rule {
            None => {
                unconditional.insert(nr);
            }
            Some(rule) => rules.entry(nr).or_default().push(rule),
        }
    }
    // An empty rule list matches the system call whatever its arguments.
    for nr in unconditional {
        rules.insert(nr, Vec::new());
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    let program: seccompiler::BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string()))?;
    let main: Vec<libc::sock_filter> = program
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let guard = guard_program(audit_arch());
    for p in [&guard, &main] {
        if p.is_empty() || p.len() > BPF_MAXINSNS {
            return Err(SandboxError::Seccomp(format!(
                "a BPF program of {} instructions",
                p.len()
            )));
        }
    }
    Ok(vec![guard, main])
}

/// `AUDIT_ARCH_*` of this build, see `linux/audit.h`.
fn audit_arch() -> u32 {
    const LE64: u32 = 0x8000_0000 | 0x4000_0000;
    match std::env::consts::ARCH {
        "x86_64" => 62 | LE64,
        "aarch64" => 183 | LE64,
        "riscv64" => 243 | LE64,
        _ => 0,
    }
}

const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
#[cfg(target_arch = "x86_64")]
const BPF_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
/// Offsets in `struct seccomp_data`.
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;

fn bpf(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// `clone3` (and on x86-64 every x32 system call) returns `ENOSYS`; a foreign
/// architecture is left to the main filter, which kills it.
fn guard_program(arch: u32) -> Vec<libc::sock_filter> {
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let allow = libc::SECCOMP_RET_ALLOW;
    let clone3 = libc::SYS_clone3 as u32;
    #[cfg(target_arch = "x86_64")]
    let program = vec![
        bpf(BPF_LD_W_ABS, SECCOMP_DATA_ARCH, 0, 0),
        bpf(BPF_JEQ_K, arch, 0, 4), // other arch: 6 (allow)
        bpf(BPF_LD_W_ABS, SECCOMP_DATA_NR, 0, 0),
        bpf(BPF_JGE_K, X32_SYSCALL_BIT, 1, 0), // x32: 5 (ENOSYS)
        bpf(BPF_JEQ_K, clone3, 0, 1),          // clone3: 5, else 6
        bpf(BPF_RET_K, enosys, 0, 0),
        bpf(BPF_RET_K, allow, 0, 0),
    ];
    #[cfg(not(target_arch = "x86_64"))]
    let program = vec![
        bpf(BPF_LD_W_ABS, SECCOMP_DATA_ARCH, 0, 0),
        bpf(BPF_JEQ_K, arch, 0, 3), // other arch: 5 (allow)
        bpf(BPF_LD_W_ABS, SECCOMP_DATA_NR, 0, 0),
        bpf(BPF_JEQ_K, clone3, 0, 1), // clone3: 4, else 5
        bpf(BPF_RET_K, enosys, 0, 0),
        bpf(BPF_RET_K, allow, 0, 0),
    ];
    program
}

// ---------------------------------------------------------------------------
// apply_in_child (child side: raw system calls only)
// ---------------------------------------------------------------------------

/// Applies a prepared sandbox to the calling process, in the order described
/// in the module documentation.
///
/// Makes only raw system calls on data prepared by [`prepare`]: no
/// allocation, no lock, no logging. On error the process is left partly
/// sandboxed and must not `exec`: `pre_exec` then makes the spawn fail with
/// this error.
///
/// # Safety
///
/// Call only in a child process between `fork` and `exec` (for example from
/// `CommandExt::pre_exec`), forked by the process that called [`prepare`]:
/// the child is single-threaded there, which `unshare(CLONE_NEWUSER)` and
/// seccomp's per-thread filters rely on, and after a fork of a multi-threaded
/// process only async-signal-safe calls are sound. The changes are
/// irreversible for the calling process.
pub unsafe fn apply_in_child(prepared: &PreparedSandbox) -> io::Result<()> {
    let plan = &prepared.plan;
    if !plan.enabled {
        return Ok(());
    }

    // 1. Die with the parent, and make sure it has not died already.
    if plan.die_with_parent {
        arm_parent_death_signal(plan.expected_parent)?;
    }
    // 2. A new session, without the host's controlling terminal.
    if plan.new_session {
        sys_setsid()?;
    }
    // The Landlock ruleset is built now, before the rlimits could make a new
    // descriptor fail, and enforced at step 7.
    let ruleset = match &plan.landlock {
        Some(landlock) => Some(create_ruleset(landlock).map_err(|(_, e)| e)?),
        None => None,
    };
    // 3. Namespaces: the user namespace first, then the others at once.
    if let Some(maps) = &plan.user_maps {
        enter_user_namespace(maps)?;
    }
    if plan.unshare_flags != 0 {
        sys_unshare(plan.unshare_flags)?;
    }
    if plan.make_mounts_private {
        sys_make_mounts_private()?;
    }
    // 4. Resource limits, counted in the new user namespace.
    for (resource, limit) in &plan.rlimits {
        sys_prlimit(*resource, limit)?;
    }
    // 5. Capabilities, then re-arm PDEATHSIG (credential changes may clear it).
    if plan.drop_capabilities {
        drop_capabilities(plan.drop_bounding_set, plan.last_cap)?;
    }
    if plan.die_with_parent {
        arm_parent_death_signal(plan.expected_parent)?;
    }
    // 6. No new privileges.
    if plan.no_new_privs {
        sys_prctl(libc::PR_SET_NO_NEW_PRIVS, 1)?;
    }
    // 7. Landlock.
    if let Some(ruleset) = ruleset {
        sys_landlock_restrict_self(ruleset.as_raw_fd())?;
    }
    // 8. seccomp, last.
    for program in &plan.seccomp {
        sys_seccomp_filter(program)?;
    }
    Ok(())
}

/// Turns a `-1` return into the `errno` error (no allocation).
fn check(ret: c_long) -> io::Result<c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `prctl(option, arg2, 0, 0, 0)`, see `prctl(2)`.
fn sys_prctl(option: c_int, arg2: c_ulong) -> io::Result<()> {
    // SAFETY: the options used here take integer arguments only.
    check(unsafe { libc::prctl(option, arg2, 0 as c_ulong, 0 as c_ulong, 0 as c_ulong) }.into()).map(drop)
}

/// `PR_SET_PDEATHSIG(SIGKILL)` and the check that the parent is still
/// `expected`: if it died before the signal was armed, the child is an
/// orphan and must not run.
fn arm_parent_death_signal(expected: libc::pid_t) -> io::Result<()> {
    sys_prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong)?;
    // SAFETY: getppid cannot fail and touches no memory.
    if unsafe { libc::getppid() } != expected {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// `setsid(2)`.
fn sys_setsid() -> io::Result<()> {
    // SAFETY: setsid touches no memory.
    check(unsafe { libc::setsid() }.into()).map(drop)
}

/// `unshare(2)`.
fn sys_unshare(flags: c_int) -> io::Result<()> {
    // SAFETY: unshare takes an integer argument only.
    check(unsafe { libc::unshare(flags) }.into()).map(drop)
}

/// `mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL)`: no propagation of
/// mount events between the cell's mount namespace and the host's.
fn sys_make_mounts_private() -> io::Result<()> {
    const ROOT: &CStr = c"/";
    // SAFETY: the target is a static C string; the other pointers are null,
    // which mount(2) accepts for a propagation change.
    check(
        unsafe {
            libc::mount(
                std::ptr::null(),
                ROOT.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        }
        .into(),
    )
    .map(drop)
}

/// Enters a new user namespace and maps the host's euid/egid to themselves.
/// `setgroups` is denied first, which an unprivileged writer of `gid_map`
/// must do (see `user_namespaces(7)`).
fn enter_user_namespace(maps: &UserMaps) -> io::Result<()> {
    sys_unshare(libc::CLONE_NEWUSER)?;
    write_proc_file(c"/proc/self/setgroups", b"deny")?;
    write_proc_file(c"/proc/self/uid_map", &maps.uid_map)?;
    write_proc_file(c"/proc/self/gid_map", &maps.gid_map)
}

/// `open(path, O_WRONLY)`, one `write`, `close`.
fn write_proc_file(path: &CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: `path` is a valid C string.
    let fd = check(unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) }.into())?;
    let fd = fd as c_int;
    // SAFETY: writes from a live slice to the descriptor just opened.
    let written = check(unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) } as c_long);
    // SAFETY: closes the descriptor opened above, used by nothing else.
    unsafe { libc::close(fd) };
    match written? {
        n if n as usize == data.len() => Ok(()),
        _ => Err(io::Error::from_raw_os_error(libc::EIO)),
    }
}

/// `prlimit64(0, resource, &[soft, hard], NULL)`.
fn sys_prlimit(resource: c_int, limit: &[u64; 2]) -> io::Result<()> {
    // SAFETY: the kernel reads one `struct rlimit64` (two u64) from `limit`.
    check(unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            0,
            resource,
            limit.as_ptr(),
            std::ptr::null_mut::<u64>(),
        )
    })
    .map(drop)
}

/// Empties the bounding set (when we hold `CAP_SETPCAP`), the ambient set,
/// and the permitted, effective and inheritable sets.
fn drop_capabilities(bounding: bool, last_cap: c_ulong) -> io::Result<()> {
    if bounding {
        for cap in 0..=last_cap {
            if let Err(e) = sys_prctl(libc::PR_CAPBSET_DROP, cap) {
                if e.raw_os_error() == Some(libc::EINVAL) {
                    break; // beyond the kernel's last capability
                }
                return Err(e);
            }
        }
    }
    // SAFETY: integer arguments only.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
        )
    };
    if let Err(e) = check(ret.into()) {
        // Kernels before 4.3 have no ambient set.
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
    }
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a version 3 header and two CapData structs, both
    // live locals.
    check(unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) }).map(drop)
}

/// `landlock_restrict_self(ruleset, 0)`.
fn sys_landlock_restrict_self(ruleset: c_int) -> io::Result<()> {
    // SAFETY: integer arguments only; the descriptor belongs to the prepared
    // sandbox, which outlives the call.
    check(unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) }).map(drop)
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, 0, program)`.
fn sys_seccomp_filter(program: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        // `prepare` checked that the program has at most BPF_MAXINSNS entries.
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: the kernel copies the program from `fprog`, which points into a
    // live slice; it does not write through the pointer.
    check(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    })
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_support() -> KernelSupport {
        KernelSupport {
            landlock_abi: Ok(7),
            seccomp: Ok(()),
            user_ns: Ok(()),
            network_ns: Ok(()),
            ipc_ns: Ok(()),
            uts_ns: Ok(()),
            mount_ns: Ok(()),
            cgroup_ns: Ok(()),
            root: true,
        }
    }

    #[test]
    fn everything_available_applies_every_step_in_order() {
        let d = decide(&SandboxPolicy::default(), &full_support()).unwrap();
        assert_eq!(
            d.report.applied,
            vec![
                steps::DIE_WITH_PARENT,
                steps::NEW_SESSION,
                steps::USER_NAMESPACE,
                steps::NETWORK_NAMESPACE,
                steps::IPC_NAMESPACE,
                steps::UTS_NAMESPACE,
                steps::MOUNT_NAMESPACE,
                steps::CGROUP_NAMESPACE,
                steps::RLIMITS,
                steps::DROP_CAPABILITIES,
                steps::NO_NEW_PRIVILEGES,
                steps::LANDLOCK_FILESYSTEM,
                steps::LANDLOCK_REFER,
                steps::LANDLOCK_TRUNCATE,
                steps::LANDLOCK_NETWORK,
                steps::LANDLOCK_IOCTL_DEV,
                steps::LANDLOCK_SCOPE_SIGNAL,
                steps::LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET,
                steps::SECCOMP,
                steps::NO_SUBPROCESSES,
            ]
        );
        // The kernel ignores RLIMIT_NPROC for root, and the report says so.
        let skipped: Vec<&str> = d.report.skipped.iter().map(|(s, _)| *s).collect();
        assert_eq!(skipped, vec![steps::RLIMIT_NPROC]);
        let unprivileged = KernelSupport {
            root: false,
            ..full_support()
        };
        let d2 = decide(&SandboxPolicy::default(), &unprivileged).unwrap();
        assert!(d2.report.skipped.is_empty());
        assert_eq!(d2.report.applied, d.report.applied);
        assert_eq!(d.landlock_abi, Some(7));
        assert!(d.seccomp);
        assert_eq!(d.namespaces, Namespaces::ALL);
    }

    #[test]
    fn required_fails_naming_the_missing_landlock_abi() {
        let support = KernelSupport {
            landlock_abi: Ok(3),
            ..full_support()
        };
        let err = decide(&SandboxPolicy::default(), &support).unwrap_err();
        match &err {
            SandboxError::Unavailable { feature, reason } => {
                assert_eq!(*feature, steps::LANDLOCK_NETWORK);
                assert!(reason.contains("ABI is 3"), "{reason}");
                assert!(reason.contains("ABI 4"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains("landlock-network"), "{message}");
        assert!(message.contains("BestEffort"), "{message}");
    }

    #[test]
    fn best_effort_skips_and_reports_what_the_kernel_lacks() {
        let support = KernelSupport {
            landlock_abi: Ok(3),
            seccomp: Err("no seccomp here".to_owned()),
            network_ns: Err("unshare(CLONE_NEWNET) failed: EPERM".to_owned()),
            ..full_support()
        };
        let policy = SandboxPolicy::default().best_effort();
        let d = decide(&policy, &support).unwrap();
        let skipped: Vec<&str> = d.report.skipped.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            skipped,
            vec![
                steps::NETWORK_NAMESPACE,
                steps::RLIMIT_NPROC,
                steps::LANDLOCK_NETWORK,
                steps::LANDLOCK_IOCTL_DEV,
                steps::LANDLOCK_SCOPE_SIGNAL,
                steps::LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET,
                steps::SECCOMP,
                steps::NO_SUBPROCESSES,
            ]
        );
        assert!(d.report.is_applied(steps::LANDLOCK_TRUNCATE));
        assert!(!d.namespaces.network && d.namespaces.ipc);
        assert_eq!(d.landlock_abi, Some(3));
        assert!(!d.seccomp);
        let text = d.report.to_string();
        assert!(text.contains("seccomp (no seccomp here)"), "{text}");
    }

    #[test]
    fn without_landlock_every_landlock_step_is_skipped_with_the_reason() {
        let support = KernelSupport {
            landlock_abi: Err("Landlock is not enabled at boot".to_owned()),
            root: false,
            ..full_support()
        };
        let err = decide(&SandboxPolicy::default(), &support).unwrap_err();
        assert!(matches!(
            err,
            SandboxError::Unavailable {
                feature: steps::LANDLOCK_FILESYSTEM,
                ..
            }
        ));
        let d = decide(&SandboxPolicy::default().best_effort(), &support).unwrap();
        assert_eq!(d.landlock_abi, None);
        assert_eq!(d.report.skipped.len(), LANDLOCK_STEPS.len());
        assert!(d.report.skipped.iter().all(|(s, _)| s.starts_with("landlock-")));
        assert!(d.report.skipped[0].1.contains("not enabled at boot"));
    }

    #[test]
    fn required_fails_on_a_missing_user_namespace() {
        let support = KernelSupport {
            user_ns: Err("unshare(CLONE_NEWUSER) failed: Operation not permitted".to_owned()),
            ..full_support()
        };
        let err = decide(&SandboxPolicy::default(), &support).unwrap_err();
        assert!(err.to_string().contains("user-namespace"), "{err}");
        let d = decide(&SandboxPolicy::default().best_effort(), &support).unwrap();
        let skipped: Vec<&str> = d.report.skipped.iter().map(|(s, _)| *s).collect();
        assert_eq!(skipped, vec![steps::USER_NAMESPACE, steps::RLIMIT_NPROC]);
    }

    #[test]
    fn a_disabled_policy_applies_nothing() {
        let prepared = prepare(&SandboxPolicy::disabled(), Path::new("/bin/true")).unwrap();
        assert!(!prepared.is_enabled());
        assert!(prepared.report().applied.is_empty());
        assert_eq!(prepared.report().skipped[0].0, steps::SANDBOX);
    }

    #[test]
    fn the_test_binary_has_an_elf_interpreter() {
        let exe = std::env::current_exe().unwrap();
        let mut deps = ProgramDeps::default();
        inspect_program(&exe, 0, &mut deps).unwrap();
        assert_eq!(deps.executables[0], exe);
        // Dynamically linked against glibc (or static: then only the program).
        if let Some(interp) = deps.executables.get(1) {
            assert!(interp.is_absolute(), "{interp:?}");
            assert!(interp.exists(), "{interp:?}");
        }
    }

    #[test]
    fn scripts_resolve_to_their_interpreter() {
        let dir = std::env::temp_dir().join(format!("osmos-sandbox-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("script");
        let interpreter = std::env::current_exe().unwrap();
        std::fs::write(&script, format!("#!{} -x\necho\n", interpreter.display())).unwrap();
        let mut deps = ProgramDeps::default();
        inspect_program(&script, 0, &mut deps).unwrap();
        assert_eq!(deps.executables[0], script);
        assert_eq!(deps.executables[1], interpreter);

        std::fs::write(&script, b"plain text").unwrap();
        let err = inspect_program(&script, 0, &mut ProgramDeps::default()).unwrap_err();
        assert!(err.to_string().contains("neither an ELF"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_landlock_plan_opens_every_path_high_and_validates() {
        let Ok(abi) = landlock_abi() else {
            eprintln!("Landlock unavailable here: nothing to check");
            return;
        };
        let exe = std::env::current_exe().unwrap();
        let dir = std::env::temp_dir();
        let policy = SandboxPolicy::default().with_write_dir(&dir);
        let (plan, listed) = build_landlock(abi, &policy, &exe).unwrap();
        assert_eq!(listed.len(), plan.rules.len() + 1, "{listed:?}");
        assert_eq!(listed[0], (exe, READ_EXECUTE));
        assert_eq!(listed.last().unwrap(), &(PathBuf::from("/proc/self"), READ));
        assert!(listed.contains(&(dir, READ_WRITE)));
        for (fd, access) in &plan.rules {
            assert!(fd.as_raw_fd() >= RULE_FD_FLOOR);
            assert_ne!(*access, 0);
            assert_eq!(access & !plan.attr.handled_access_fs, 0, "only handled rights");
        }
        // The write directory is never executable.
        let write_rights = plan.rules.last().unwrap().1;
        assert_eq!(write_rights & AccessFs::Execute as u64, 0);

        let err = build_landlock(
            abi,
            &policy.with_read_path("/nonexistent/osmos"),
            Path::new("/bin/sh"),
        )
        .unwrap_err();
        assert!(
            matches!(&err, SandboxError::Path { path, .. } if path == Path::new("/nonexistent/osmos")),
            "{err}"
        );
    }

    #[test]
    fn the_seccomp_programs_compile_within_bounds() {
        for no_subprocesses in [false, true] {
            let programs = compile_seccomp(no_subprocesses).unwrap();
            assert_eq!(programs.len(), 2);
            for p in &programs {
                assert!(!p.is_empty() && p.len() <= BPF_MAXINSNS);
                // Every program ends in a return.
                assert_eq!(p.last().unwrap().code, BPF_RET_K);
            }
        }
    }

    #[test]
    fn rlimits_are_only_lowered() {
        let nofile = |soft, hard| Rlimit {
            resource: RlimitResource::NoFile,
            soft,
            hard,
        };
        assert_eq!(clamp_rlimit(&nofile(1024, 1024), [20000, 20000]), [1024, 1024]);
        assert_eq!(
            clamp_rlimit(&nofile(u64::MAX, u64::MAX), [1024, 4096]),
            [4096, 4096]
        );
        assert_eq!(clamp_rlimit(&nofile(8192, 100), [1024, 4096]), [100, 100]);
        let current = current_rlimit(RlimitResource::NoFile.raw());
        assert!(current[0] <= current[1] && current[1] > 0);
    }
}
