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

use std::ffi::{c_int, c_ulong};
use std::fmt;
use std::path::Path;

mod child;
mod detect;
mod landlock;
mod policy;
mod program;
mod seccomp;

pub use child::apply_in_child;
pub use policy::{
    Enforcement, Namespaces, Rlimit, RlimitResource, SandboxError, SandboxPolicy, SandboxReport, steps,
};

use detect::{
    CAP_SETPCAP, KernelSupport, clamp_rlimit, current_rlimit, decide, holds_capability, last_capability,
    unshare_flags,
};
use landlock::{LandlockPlan, build_landlock};
use seccomp::compile_seccomp;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disabled_policy_applies_nothing() {
        let prepared = prepare(&SandboxPolicy::disabled(), Path::new("/bin/true")).unwrap();
        assert!(!prepared.is_enabled());
        assert!(prepared.report().applied.is_empty());
        assert_eq!(prepared.report().skipped[0].0, steps::SANDBOX);
    }
}
