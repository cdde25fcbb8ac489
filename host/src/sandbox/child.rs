//! The code that runs in the child between `fork` and `exec`: raw,
//! async-signal-safe system calls on data prepared by [`super::prepare`].

use std::ffi::{CStr, c_int, c_long, c_ulong};
use std::io;
use std::os::fd::AsRawFd;

use super::detect::{CAPABILITY_VERSION_3, CapData, CapHeader};
use super::landlock::create_ruleset;
use super::{ChildPriority, PreparedSandbox, UserMaps};

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
        Some(ChildPriority::Nice(nice)) => sys_set_nice(nice)?,
        Some(ChildPriority::Idle) => sys_set_sched_idle()?,
        None => {}
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

/// `sched_setscheduler(0, SCHED_IDLE, {0})`.
fn sys_set_sched_idle() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: the kernel reads one sched_param from a live local.
    check(unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0,
            libc::SCHED_IDLE,
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

/// Enters a new user namespace and maps the host's euid/egid to themselves.
/// `setgroups` is denied first, which an unprivileged writer of `gid_map`
/// must do (see `user_namespaces(7)`).
pub(super) fn enter_user_namespace(maps: &UserMaps) -> io::Result<()> {
    sys_unshare(libc::CLONE_NEWUSER)?;
    write_proc_file(c"/proc/self/setgroups", b"deny")?;
    write_proc_file(c"/proc/self/uid_map", &maps.uid_map)?;
    write_proc_file(c"/proc/self/gid_map", &maps.gid_map)
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
