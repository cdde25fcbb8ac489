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
//!    (not from a short-lived blocking-pool thread). This is the one place
//!    PDEATHSIG is set (re-armed after each credential change, which clears
//!    it); the host turns it on even for a disabled sandbox.
//! 2. **new-session**: `setsid()`. The cell loses the host's controlling
//!    terminal (no `TIOCSTI` injection, no job-control signals from it) and
//!    leaves the host's process group. Then the child builds its Landlock
//!    ruleset (enforced at step 8), while no rlimit can get in the way, and,
//!    with [`CgroupLimits`], joins the cgroup the host created for it
//!    (**cgroup**: it writes `0` to the `cgroup.procs` the parent opened).
//! 3. **cell-ids** (a root host only, see [`CellIds`]): drop every
//!    supplementary group, `setresgid`/`setresuid` to the cell's own
//!    unprivileged ids, `PR_SET_DUMPABLE` 1 (so its `/proc/self` stays its
//!    own), re-arm PDEATHSIG. From here on `RLIMIT_NPROC` binds the cell (the
//!    kernel charges it to the real uid of the initial namespace, and exempts
//!    only uid 0), and `kill(2)`/`ptrace(2)` permission checks keep it from
//!    its siblings and the host. The segment and control socket descriptors
//!    stay usable: access was checked when they were opened.
//! 4. **namespaces**: first a user namespace (`unshare(CLONE_NEWUSER)`, then
//!    `/proc/self/setgroups` = `deny`, and identity `uid_map`/`gid_map` for
//!    the cell's euid/egid, so the cell keeps its ids), then in one
//!    `unshare(2)` a network namespace (the cell sees only a downed loopback:
//!    no network at all), IPC (no System V / POSIX IPC objects shared with
//!    the host), UTS, cgroup and mount namespaces; the mount namespace is made
//!    recursively private so no mount event propagates either way. The user
//!    namespace is what lets an unprivileged host create the others, makes
//!    every capability the cell could hold meaningless outside it, and makes
//!    `RLIMIT_NPROC` count the cell's own tasks.
//! 5. **rlimits** and **cpu-priority**: `prlimit64(2)` on the cell; only
//!    ever lowered, never raised (see [`Rlimit::defaults`] for what each
//!    protects against). Applied after the user namespace so that
//!    `RLIMIT_NPROC` bounds the cell's tasks in its own namespace. The kernel
//!    never applies `RLIMIT_NPROC` to kernel uid 0, even mapped into a user
//!    namespace (measured: 1000 forks under a limit of 256): a cell left
//!    under uid 0 ([`CellIds::Host`] under a root host) gets `rlimit-nproc`
//!    in [`SandboxReport::skipped`], and **no-subprocesses** (below) is what
//!    stops a fork bomb there, though not a thread bomb. Then the nice value
//!    (`setpriority(2)`, the host's plus [`CpuPriority::Batch`]'s or
//!    [`CpuPriority::Nice`]'s increment) with `SCHED_BATCH` for the former,
//!    or `SCHED_IDLE`, inherited by every thread the cell creates.
//! 6. **drop-capabilities**: empty the bounding set (`PR_CAPBSET_DROP`), clear
//!    the ambient set and `capset(2)` all sets to zero, so that a cell
//!    running as uid 0 holds no capability and cannot regain one at `exec`.
//!    Then PDEATHSIG is armed again and the parent re-checked, because
//!    credential changes are where the kernel may clear it.
//! 7. **no-new-privileges**: `prctl(PR_SET_NO_NEW_PRIVS, 1)`: set-uid bits
//!    and file capabilities are ignored from now on. Landlock and seccomp
//!    require it.
//! 8. **Landlock**: `landlock_restrict_self(2)` on the ruleset built at
//!    step 2 (see the allow-list below). Handled (hence denied unless
//!    allowed) are all filesystem rights of the kernel's ABI (execute,
//!    read/write file, read dir, remove dir/file, make char/dir/reg/sock/
//!    fifo/block/sym, refer, truncate, ioctl on devices), TCP bind/connect
//!    (ABI 4, no port is allowed) and the scopes (ABI 6): no signal to a
//!    process outside the cell's domain (its host included) and no connection
//!    to an abstract unix socket created outside it. Landlock also forbids
//!    `ptrace` of processes outside the domain.
//! 9. **seccomp**, last so that everything above is still allowed, and
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
//! # Resource limits: what they stop, and what only a cgroup can
//!
//! The rlimits bound each cell on its own: private writable memory
//! (`RLIMIT_DATA`, 1 GiB), tasks (`RLIMIT_NPROC`, 256, threads included),
//! descriptors, file size, locked memory, core dumps (none), optionally CPU
//! time; the nice value keeps a spinning cell from starving the host. They
//! cannot bound what many cells take together (ten cells may hold 10 GiB),
//! page cache and kernel memory a cell causes, memory bandwidth, or the
//! share of CPU time over a period: only a cgroup v2 does. Given a
//! delegated cgroup v2 directory ([`CgroupLimits`], off by default), the
//! host creates a cgroup per cell under it with `memory.max`, `pids.max`
//! and `cpu.max`, and removes it when the cell's [`SandboxLease`] is
//! dropped; it never writes a cgroup it did not create. To bound all cells
//! together, run the host itself in a cgroup (e.g. a systemd unit with
//! `MemoryMax=`, `TasksMax=`, `CPUQuota=`, `Delegate=yes`). A cell under
//! [`CellIds::Host`] on a root host escapes `RLIMIT_NPROC` (see step 5).
//!
//! # Enforcement and the report
//!
//! Each step has a name (see [`Step`]). Under [`Enforcement::Required`] a
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

use std::ffi::{c_int, c_ulong};
use std::fmt;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

mod cgroup;
mod child;
mod detect;
mod ids;
mod landlock;
mod policy;
mod program;
mod report;
mod seccomp;

pub use cgroup::CgroupLease;
pub use child::apply_in_child;
pub use ids::CellIdLease;
pub use policy::{
    CellIds, CgroupLimits, CpuPriority, DEFAULT_MEMORY, DEFAULT_NICE_INCREMENT, DEFAULT_TASKS, Enforcement,
    Namespaces, Rlimit, RlimitResource, SandboxPolicy, Step,
};
pub use report::{SandboxError, SandboxReport};

use child::{CAP_SETPCAP, current_rlimit, holds_capability};
use detect::{KernelSupport, clamp_rlimit, decide, last_capability, unshare_flags};
use landlock::{LandlockPlan, build_landlock};
use program::{ProgramDeps, inspect_program};
use seccomp::compile_seccomp;

/// A sandbox computed in the parent by [`prepare`], applied in the child by
/// [`apply_in_child`]. It may be applied to any number of children forked by
/// the process that prepared it.
pub struct PreparedSandbox {
    plan: ChildPlan,
    report: SandboxReport,
    /// What is reserved for the cell while this (or a clone of the lease)
    /// lives.
    lease: Arc<SandboxLease>,
}

/// What a prepared sandbox reserves for its cell: its uid and gid (under a
/// root host, see [`CellIds`]) and its cgroup (see [`CgroupLimits`]). Keep
/// it until the cell's processes are gone: dropping it lets another cell
/// have the ids, and removes the cgroup.
#[derive(Debug, Default)]
pub struct SandboxLease {
    ids: Option<CellIdLease>,
    cgroup: Option<CgroupLease>,
}

impl SandboxLease {
    /// The uid and gid the cell runs as, when not the host's.
    pub fn cell_ids(&self) -> Option<(u32, u32)> {
        self.ids.as_ref().map(|l| (l.uid(), l.gid()))
    }

    /// The cell's cgroup, when it has one.
    pub fn cgroup(&self) -> Option<&Path> {
        self.cgroup.as_ref().map(CgroupLease::path)
    }
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

    /// What is reserved for the cell: keep it until the cell's processes
    /// are gone (see [`SandboxLease`]).
    pub fn lease(&self) -> Arc<SandboxLease> {
        self.lease.clone()
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
    /// `(uid, gid)` the cell switches to, under a root host.
    ids: Option<(u32, u32)>,
    /// The CPU priority the cell takes, its nice value absolute (the
    /// host's plus the policy's increment).
    priority: Option<CpuPriority>,
    /// `cgroup.procs` of the cell's own cgroup, which it joins by writing
    /// `0`.
    cgroup_procs: Option<OwnedFd>,
}

struct UserMaps {
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
}

impl ChildPlan {
    /// The plan of a disabled sandbox: at most die-with-parent.
    fn disabled(die_with_parent: bool, expected_parent: libc::pid_t) -> Self {
        Self {
            enabled: false,
            expected_parent,
            die_with_parent,
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
            ids: None,
            priority: None,
            cgroup_procs: None,
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
    let euid = rustix::process::geteuid().as_raw();
    let egid = rustix::process::getegid().as_raw();
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    if !policy.enabled {
        tracing::warn!(
            program = %program.display(),
            "cell sandbox disabled by SandboxPolicy::disabled(): the cell runs with the host's full authority"
        );
        let applied = if policy.die_with_parent {
            vec![Step::DieWithParent]
        } else {
            Vec::new()
        };
        return Ok(PreparedSandbox {
            plan: ChildPlan::disabled(policy.die_with_parent, pid),
            report: SandboxReport {
                applied,
                skipped: vec![(Step::Sandbox, "disabled by SandboxPolicy::disabled()".to_owned())],
                ..SandboxReport::default()
            },
            lease: Arc::default(),
        });
    }

    let maps_for = |uid: u32, gid: u32| UserMaps {
        uid_map: format!("{uid} {uid} 1\n").into_bytes(),
        gid_map: format!("{gid} {gid} 1\n").into_bytes(),
    };
    let lease = ids::lease(policy.cell_ids, euid)?;
    // The probe child tries the id switch with the range's first ids, so
    // that one probe answers for every cell of the range.
    let probe_ids = lease.as_ref().map(|l| match policy.cell_ids {
        CellIds::Range { first, .. } => (first.max(1), first.max(1)),
        _ => (l.uid(), l.gid()),
    });
    let probe_maps = probe_ids.map_or_else(|| maps_for(euid, egid), |(u, g)| maps_for(u, g));
    let support = KernelSupport::detect(policy, &probe_maps, probe_ids, euid == 0)?;
    let mut decisions = decide(policy, &support)?;
    let ids = lease
        .as_ref()
        .filter(|_| decisions.cell_ids)
        .map(|l| (l.uid(), l.gid()));
    let user_maps = ids.map_or_else(|| maps_for(euid, egid), |(u, g)| maps_for(u, g));
    if let Some((uid, gid)) = ids {
        check_access_as(program, uid, gid, 0o1, "execute", "the cell program")?;
        // The kernel opens the interpreter, and the loader the libraries of
        // the run path, as the cell.
        let mut deps = ProgramDeps::default();
        inspect_program(program, 0, &mut deps)?;
        for interpreter in deps.executables.iter().skip(1) {
            check_access_as(
                interpreter,
                uid,
                gid,
                0o5,
                "read and execute",
                "the program's interpreter",
            )?;
        }
        for dir in &deps.library_dirs {
            check_access_as(
                dir,
                uid,
                gid,
                0o5,
                "list and enter",
                "a library directory of the program (DT_RUNPATH)",
            )?;
        }
        if let Some(dir) = &policy.write_dir {
            check_access_as(dir, uid, gid, 0o3, "write and enter", "the write directory")?;
        }
    }

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
        ids: None,
        priority: None,
        cgroup_procs: None,
    };

    let ns = decisions.namespaces;
    if ns.user {
        plan.user_maps = Some(user_maps);
    }
    plan.unshare_flags = unshare_flags(ns);
    plan.make_mounts_private = ns.mount;

    for limit in &policy.rlimits {
        let current = current_rlimit(limit.resource.raw());
        let [soft, hard] = clamp_rlimit(limit, current);
        plan.rlimits.push((limit.resource.raw(), [soft, hard]));
        decisions.report.rlimits.push(Rlimit {
            resource: limit.resource,
            soft,
            hard,
        });
    }
    plan.ids = ids;
    decisions.report.cell_ids = ids;
    // The increments become the cell's absolute nice value.
    let cell_nice = |increment: i32| {
        let host = rustix::process::getpriority_process(None).unwrap_or(0);
        host.saturating_add(increment).clamp(-20, 19)
    };
    plan.priority = match policy.cpu_priority {
        CpuPriority::Inherit => None,
        CpuPriority::Nice(increment) => Some(CpuPriority::Nice(cell_nice(increment))),
        CpuPriority::Batch(increment) => Some(CpuPriority::Batch(cell_nice(increment))),
        CpuPriority::Idle => Some(CpuPriority::Idle),
    };
    decisions.report.cpu_priority = plan.priority;

    let mut cgroup = None;
    if let (true, Some(limits)) = (decisions.cgroup, &policy.cgroup) {
        let (lease, procs) = cgroup::create(limits)?;
        decisions.report.cgroup = Some(lease.path().to_path_buf());
        plan.cgroup_procs = Some(procs);
        cgroup = Some(lease);
    }

    // After the id switch the cell holds no capability in the host's user
    // namespace: only a new user namespace lets it drop the bounding set.
    plan.drop_bounding_set = ns.user || (ids.is_none() && holds_capability(CAP_SETPCAP));

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
    static WARNED: std::sync::Mutex<Vec<Step>> = std::sync::Mutex::new(Vec::new());
    for (step, why) in &report.skipped {
        let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
        if !warned.contains(step) {
            warned.push(*step);
            tracing::warn!(step = step.name(), reason = %why, program = %program.display(), "cell sandbox step skipped");
        }
    }
    tracing::debug!(program = %program.display(), %report, "cell sandbox prepared");
    Ok(PreparedSandbox {
        plan,
        report,
        lease: Arc::new(SandboxLease {
            ids: lease.filter(|_| ids.is_some()),
            cgroup,
        }),
    })
}

/// Fails unless the owner, group or other permission bits of `path` grant
/// all of `bits` (of `0o7`: read 4, write 2, execute 1) to a process running
/// as `uid`/`gid` without capabilities, as the cell will.
fn check_access_as(
    path: &Path,
    uid: u32,
    gid: u32,
    bits: u32,
    what: &str,
    role: &str,
) -> Result<(), SandboxError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| SandboxError::Path {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mode = meta.mode();
    let granted = if meta.uid() == uid {
        mode >> 6
    } else if meta.gid() == gid {
        mode >> 3
    } else {
        mode
    } & 0o7;
    if granted & bits == bits {
        return Ok(());
    }
    Err(SandboxError::Path {
        path: path.to_path_buf(),
        reason: format!(
            "{role} must be accessible to the cell, which runs as uid {uid} gid {gid} and may \
             not {what} it (mode {:o}, owner {}:{}); grant it to others (chmod o+{}), or \
             choose the cell's ids with SandboxPolicy::cell_ids (CellIds::Fixed for an \
             account that owns it)",
            mode & 0o7777,
            meta.uid(),
            meta.gid(),
            match bits {
                0o1 => "x",
                0o3 => "wx",
                0o5 => "rx",
                _ => "rwx",
            }
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disabled_policy_applies_nothing() {
        let prepared = prepare(&SandboxPolicy::disabled(), Path::new("/bin/true")).unwrap();
        assert!(!prepared.is_enabled());
        assert!(prepared.report().applied.is_empty());
        assert_eq!(prepared.report().skipped[0].0, Step::Sandbox);
    }

    #[test]
    fn access_is_judged_as_the_cell_would_be() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("osmos-access-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (uid, gid) = (2_000_123_456, 2_000_123_456);
        let check = |bits| check_access_as(&dir, uid, gid, bits, "list and enter", "a directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        let err = check(0o5).unwrap_err().to_string();
        assert!(
            err.contains("uid 2000123456") && err.contains("chmod o+rx"),
            "{err}"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        check(0o5).unwrap();
        assert!(check(0o3).is_err(), "not writable by others");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
