//! The code that runs in the child between `fork` and `exec`: raw,
//! async-signal-safe system calls on data prepared by [`super::prepare`]
//! (no allocation, no lock). The only module of the sandbox with `unsafe`
//! code, so it also holds the few raw system calls the parent makes while
//! preparing: the Landlock ruleset it builds once to validate the plan, the
//! kernel queries of the detection, and the namespace probe, itself a
//! forked child running the same steps.

use std::ffi::{CStr, c_int, c_long, c_ulong};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use seccompiler::TargetArch;

use super::detect::{NS_CGROUP, NS_IDS, NS_IPC, NS_MOUNT, NS_NET, NS_SLOTS, NS_USER, NS_UTS};
use super::landlock::{LandlockPlan, RulesetAttr};
use super::policy::{CpuPriority, Namespaces};
use super::{PreparedSandbox, UserMaps};

/// Applies a prepared sandbox to the calling process, in the order described
/// in the module documentation.
///
/// Makes only raw system calls on data prepared by [`prepare`](super::prepare): no
/// allocation, no lock, no logging. On error the process is left partly
/// sandboxed and must not `exec`: `pre_exec` then makes the spawn fail with
/// this error.
///
/// # Safety
///
/// Call only in a child process between `fork` and `exec` (for example from
/// `CommandExt::pre_exec`), forked by the process that called [`prepare`](super::prepare):
/// the child is single-threaded there, which `unshare(CLONE_NEWUSER)` and
/// seccomp's per-thread filters rely on, and after a fork of a multi-threaded
/// process only async-signal-safe calls are sound. The changes are
/// irreversible for the calling process.
pub unsafe fn apply_in_child(prepared: &PreparedSandbox) -> io::Result<()> {
    let plan = &prepared.plan;
    // 1. Die with the parent, and make sure it has not died already. The
    // only step a host applies even with the sandbox disabled.
    if plan.die_with_parent {
        arm_parent_death_signal(plan.expected_parent)?;
    }
    if !plan.enabled {
        return Ok(());
    }
    // 2. A new session, without the host's controlling terminal.
    if plan.new_session {
        sys_setsid()?;
    }
    // The Landlock ruleset is built now, before the rlimits could make a new
    // descriptor fail, and enforced at step 8.
    let ruleset = match &plan.landlock {
        Some(landlock) => Some(create_ruleset(landlock).map_err(|(_, e)| e)?),
        None => None,
    };
    // The cell's own cgroup, joined while the child may still write its
    // `cgroup.procs` (before it drops its ids).
    if let Some(procs) = &plan.cgroup_procs {
        write_all(procs.as_raw_fd(), b"0")?;
    }
    // 3. The cell's own uid and gid (a root host only), then re-arm
    // PDEATHSIG: changing credentials clears it.
    if let Some((uid, gid)) = plan.ids {
        switch_ids(uid, gid)?;
        if plan.die_with_parent {
            arm_parent_death_signal(plan.expected_parent)?;
        }
    }
    // 4. Namespaces: the user namespace first, then the others at once.
    if let Some(maps) = &plan.user_maps {
        enter_user_namespace(maps)?;
    }
    if plan.unshare_flags != 0 {
        sys_unshare(plan.unshare_flags)?;
    }
    if plan.make_mounts_private {
        sys_make_mounts_private()?;
    }
    // 5. Resource limits, counted in the new user namespace, and the CPU
    // priority.
    for (resource, limit) in &plan.rlimits {
        sys_prlimit(*resource, limit)?;
    }
    match plan.priority {
        Some(CpuPriority::Nice(nice)) => sys_set_nice(nice)?,
        Some(CpuPriority::Batch(nice)) => {
            sys_set_nice(nice)?;
            sys_set_policy(libc::SCHED_BATCH)?;
        }
        Some(CpuPriority::Idle) => sys_set_policy(libc::SCHED_IDLE)?,
        Some(CpuPriority::Inherit) | None => {}
    }
    // 6. Capabilities, then re-arm PDEATHSIG (credential changes may clear it).
    if plan.drop_capabilities {
        drop_capabilities(plan.drop_bounding_set, plan.last_cap)?;
    }
    if plan.die_with_parent {
        arm_parent_death_signal(plan.expected_parent)?;
    }
    // 7. No new privileges.
    if plan.no_new_privs {
        sys_prctl(libc::PR_SET_NO_NEW_PRIVS, 1)?;
    }
    // 8. Landlock.
    if let Some(ruleset) = ruleset {
        sys_landlock_restrict_self(ruleset.as_raw_fd())?;
    }
    // 9. seccomp, last.
    for program in &plan.seccomp {
        sys_seccomp_filter(program)?;
    }
    Ok(())
}

/// Turns a `-1` return into the `errno` error (no allocation).
pub(super) fn check(ret: c_long) -> io::Result<c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `prctl(option, arg2, 0, 0, 0)`, see `prctl(2)`.
pub(super) fn sys_prctl(option: c_int, arg2: c_ulong) -> io::Result<()> {
    // SAFETY: the options used here take integer arguments only.
    check(unsafe { libc::prctl(option, arg2, 0 as c_ulong, 0 as c_ulong, 0 as c_ulong) }.into()).map(drop)
}

/// `PR_SET_PDEATHSIG(SIGKILL)` and the check that the parent is still
/// `expected`: if it died before the signal was armed, the child is an
/// orphan and must not run.
pub(super) fn arm_parent_death_signal(expected: libc::pid_t) -> io::Result<()> {
    sys_prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong)?;
    // SAFETY: getppid cannot fail and touches no memory.
    if unsafe { libc::getppid() } != expected {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// Leaves every supplementary group and takes `uid` and `gid` as real,
/// effective and saved ids (raw `setgroups(2)`, `setresgid(2)`,
/// `setresuid(2)`: glibc's wrappers signal every thread of the process,
/// which is not async-signal-safe to rely on here). Losing uid 0 empties the
/// capability sets. Then `PR_SET_DUMPABLE` 1: the euid change made the
/// process non-dumpable, which would leave its `/proc/self` files (its
/// `uid_map` included) owned by root and closed to it.
pub(super) fn switch_ids(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: a zero-length group list is not read.
    check(unsafe { libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) })?;
    // SAFETY: integer arguments only.
    check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })?;
    // SAFETY: integer arguments only.
    check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) })?;
    sys_prctl(libc::PR_SET_DUMPABLE, 1)
}

/// `setpriority(PRIO_PROCESS, 0, nice)`: the calling thread, which every
/// thread the cell creates inherits from.
fn sys_set_nice(nice: c_int) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::syscall(libc::SYS_setpriority, libc::PRIO_PROCESS, 0, nice) }).map(drop)
}

/// `sched_setscheduler(0, policy, {0})`, for a policy without a static
/// priority (`SCHED_BATCH`, `SCHED_IDLE`); the nice value stays.
fn sys_set_policy(policy: c_int) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: the kernel reads one sched_param from a live local.
    check(unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0,
            policy,
            &param as *const libc::sched_param,
        )
    })
    .map(drop)
}

/// `setsid(2)`.
pub(super) fn sys_setsid() -> io::Result<()> {
    // SAFETY: setsid touches no memory.
    check(unsafe { libc::setsid() }.into()).map(drop)
}

/// `unshare(2)`.
pub(super) fn sys_unshare(flags: c_int) -> io::Result<()> {
    // SAFETY: unshare takes an integer argument only.
    check(unsafe { libc::unshare(flags) }.into()).map(drop)
}

/// `mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL)`: no propagation of
/// mount events between the cell's mount namespace and the host's.
pub(super) fn sys_make_mounts_private() -> io::Result<()> {
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

/// Enters a new user namespace and maps the caller's euid/egid (as `maps`
/// spells them) to themselves.
/// `setgroups` is denied first, which an unprivileged writer of `gid_map`
/// must do (see `user_namespaces(7)`).
pub(super) fn enter_user_namespace(maps: &UserMaps) -> io::Result<()> {
    sys_unshare(libc::CLONE_NEWUSER)?;
    write_proc_file(c"/proc/self/setgroups", b"deny")?;
    write_proc_file(c"/proc/self/uid_map", &maps.uid_map)?;
    write_proc_file(c"/proc/self/gid_map", &maps.gid_map)
}

/// One `write(2)` of all of `data`.
fn write_all(fd: c_int, data: &[u8]) -> io::Result<()> {
    // SAFETY: writes from a live slice to a descriptor the prepared sandbox
    // owns.
    let written = check(unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) } as c_long)?;
    if written as usize == data.len() {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::EIO))
    }
}

/// `open(path, O_WRONLY)`, one `write`, `close`.
pub(super) fn write_proc_file(path: &CStr, data: &[u8]) -> io::Result<()> {
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
pub(super) fn sys_prlimit(resource: c_int, limit: &[u64; 2]) -> io::Result<()> {
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
pub(super) fn drop_capabilities(bounding: bool, last_cap: c_ulong) -> io::Result<()> {
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
pub(super) fn sys_landlock_restrict_self(ruleset: c_int) -> io::Result<()> {
    // SAFETY: integer arguments only; the descriptor belongs to the prepared
    // sandbox, which outlives the call.
    check(unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) }).map(drop)
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, 0, program)`.
pub(super) fn sys_seccomp_filter(program: &[libc::sock_filter]) -> io::Result<()> {
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

// ---------------------------------------------------------------------------
// The Landlock ruleset, built by the child (and once by the parent, to validate it)
// ---------------------------------------------------------------------------

/// `LANDLOCK_RULE_PATH_BENEATH`, see `landlock_add_rule(2)`.
pub(super) const LANDLOCK_RULE_PATH_BENEATH: c_int = 1;

/// `struct landlock_path_beneath_attr`, packed in the UAPI.
#[repr(C, packed)]
pub(super) struct PathBeneathAttr {
    pub(super) allowed_access: u64,
    pub(super) parent_fd: i32,
}

/// Which part of [`create_ruleset`] failed.
#[derive(Debug)]
pub(super) enum RulesetStep {
    Create,
    Rule(usize),
    ProcSelf,
}

/// Creates a ruleset from `plan`, adds its rules and one for the caller's
/// own `/proc/self`. Raw system calls only: the child builds its domain with
/// it, and [`prepare`](super::prepare) runs it once in the parent to validate the plan.
pub(super) fn create_ruleset(plan: &LandlockPlan) -> Result<OwnedFd, (RulesetStep, io::Error)> {
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

// ---------------------------------------------------------------------------
// Raw queries the parent makes while preparing
// ---------------------------------------------------------------------------

/// `LANDLOCK_CREATE_RULESET_VERSION`, see `landlock_create_ruleset(2)`.
pub(super) const LANDLOCK_CREATE_RULESET_VERSION: c_ulong = 1;

/// The kernel's Landlock ABI version (`landlock_create_ruleset(2)`).
pub(super) fn landlock_abi() -> Result<i32, String> {
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
pub(super) fn seccomp_support() -> Result<(), String> {
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

/// The host's current `[soft, hard]` limit of `resource`.
pub(super) fn current_rlimit(resource: c_int) -> [u64; 2] {
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
pub(super) const CAP_SETPCAP: u32 = 8;
/// `_LINUX_CAPABILITY_VERSION_3`.
pub(super) const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`, see `capget(2)`.
#[repr(C)]
pub(super) struct CapHeader {
    pub(super) version: u32,
    pub(super) pid: c_int,
}

/// `struct __user_cap_data_struct`, see `capget(2)`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct CapData {
    pub(super) effective: u32,
    pub(super) permitted: u32,
    pub(super) inheritable: u32,
}

/// Whether this process holds `cap` in its effective set.
pub(super) fn holds_capability(cap: u32) -> bool {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget with a version 3 header writes two CapData structs.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) };
    ret == 0 && data[(cap / 32) as usize].effective & (1 << (cap % 32)) != 0
}

// ---------------------------------------------------------------------------
// The namespace probe: a forked child tries the steps
// ---------------------------------------------------------------------------

/// Forks a child that enters the requested namespaces the way
/// [`apply_in_child`](super::apply_in_child) does, one kind at a time, and reports each errno
/// through a pipe.
pub(super) fn probe_namespaces(
    requested: Namespaces,
    maps: &UserMaps,
    ids: Option<(u32, u32)>,
) -> io::Result<[i32; NS_SLOTS]> {
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
        if let Some((uid, gid)) = ids {
            results[NS_IDS] = errno_of(switch_ids(uid, gid));
        }
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

pub(super) fn read_fully(file: &File, buf: &mut [u8]) -> io::Result<usize> {
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

pub(super) fn errno_of(result: io::Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
    }
}
