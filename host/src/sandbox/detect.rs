//! What the kernel and this process provide, and the decision of what a
//! policy applies on it; namespace support is probed in a forked child.

use std::ffi::{c_int, c_ulong};
use std::fs::File;
use std::io;
use std::sync::Mutex;

use seccompiler::TargetArch;

use super::UserMaps;
use super::child::{enter_user_namespace, switch_ids, sys_make_mounts_private, sys_unshare};
use super::policy::{
    CpuPriority, Enforcement, Namespaces, Rlimit, RlimitResource, SandboxError, SandboxPolicy, SandboxReport,
    Step,
};

/// What the kernel (and this process) can provide; each `Err` says why not.
#[derive(Clone, Debug)]
pub(super) struct KernelSupport {
    /// The Landlock ABI version, or why Landlock is unavailable.
    pub(super) landlock_abi: Result<i32, String>,
    pub(super) seccomp: Result<(), String>,
    pub(super) user_ns: Result<(), String>,
    pub(super) network_ns: Result<(), String>,
    pub(super) ipc_ns: Result<(), String>,
    pub(super) uts_ns: Result<(), String>,
    pub(super) mount_ns: Result<(), String>,
    pub(super) cgroup_ns: Result<(), String>,
    /// `Some` when the cell is to run under its own ids: whether the switch
    /// worked in the probe child.
    pub(super) cell_ids: Option<Result<(), String>>,
    /// The host runs as uid 0.
    pub(super) root: bool,
}

impl KernelSupport {
    /// Asks the kernel, and probes namespaces (and the switch to `ids`, the
    /// cell's uid and gid when it gets its own) in a forked child.
    pub(super) fn detect(
        policy: &SandboxPolicy,
        maps: &UserMaps,
        ids: Option<(u32, u32)>,
        root: bool,
    ) -> Result<Self, SandboxError> {
        let ns = if policy.namespaces.any() || ids.is_some() {
            probe_namespaces_cached(policy.namespaces, maps, ids)?
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
            cell_ids: ids.map(|_| result(NS_IDS, "setgroups, setresgid and setresuid to the cell's ids")),
            root,
        })
    }
}

/// The outcome of matching a policy against the kernel.
#[derive(Debug)]
pub(super) struct Decisions {
    pub(super) namespaces: Namespaces,
    /// `Some(abi)` when Landlock is applied.
    pub(super) landlock_abi: Option<i32>,
    pub(super) seccomp: bool,
    /// Whether the cell runs under its own uid and gid.
    pub(super) cell_ids: bool,
    pub(super) report: SandboxReport,
}

/// The Landlock steps and the ABI each needs.
pub(super) const LANDLOCK_STEPS: [(Step, i32, &str); 7] = [
    (Step::LandlockFilesystem, 1, "Linux 5.13"),
    (Step::LandlockRefer, 2, "Linux 5.19"),
    (Step::LandlockTruncate, 3, "Linux 6.2"),
    (Step::LandlockNetwork, 4, "Linux 6.7"),
    (Step::LandlockIoctlDev, 5, "Linux 6.10"),
    (Step::LandlockScopeSignal, 6, "Linux 6.12"),
    (Step::LandlockScopeAbstractUnixSocket, 6, "Linux 6.12"),
];

/// Decides, without system calls, what is applied; fails under
/// [`Enforcement::Required`] on the first unavailable step.
pub(super) fn decide(policy: &SandboxPolicy, support: &KernelSupport) -> Result<Decisions, SandboxError> {
    let mut report = SandboxReport::default();
    let need = |feature: Step,
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
        report.applied.push(Step::DieWithParent);
    }
    if policy.new_session {
        report.applied.push(Step::NewSession);
    }

    let cell_ids = match &support.cell_ids {
        Some(available) => need(Step::CellIds, available, &mut report)?,
        None => false,
    };

    let wanted = policy.namespaces;
    let mut ns = Namespaces::NONE;
    for (on, step, available, entered) in [
        (wanted.user, Step::UserNamespace, &support.user_ns, &mut ns.user),
        (
            wanted.network,
            Step::NetworkNamespace,
            &support.network_ns,
            &mut ns.network,
        ),
        (wanted.ipc, Step::IpcNamespace, &support.ipc_ns, &mut ns.ipc),
        (wanted.uts, Step::UtsNamespace, &support.uts_ns, &mut ns.uts),
        (
            wanted.mount,
            Step::MountNamespace,
            &support.mount_ns,
            &mut ns.mount,
        ),
        (
            wanted.cgroup,
            Step::CgroupNamespace,
            &support.cgroup_ns,
            &mut ns.cgroup,
        ),
    ] {
        if on {
            *entered = need(step, available, &mut report)?;
        }
    }

    if !policy.rlimits.is_empty() {
        report.applied.push(Step::Rlimits);
        let limits_nproc = policy.rlimits.iter().any(|l| l.resource == RlimitResource::NProc);
        if limits_nproc && support.root && !cell_ids {
            report.skipped.push((
                Step::RlimitNproc,
                "the cell runs as uid 0 (a root host with CellIds::Host, or the id switch is \
                 unavailable) and the kernel does not apply RLIMIT_NPROC to uid 0, even mapped \
                 into a user namespace; give cells their own ids (SandboxPolicy::cell_ids) or run \
                 them in a pids cgroup to bound their threads"
                    .to_owned(),
            ));
        }
    }
    if policy.cpu_priority != CpuPriority::Inherit {
        report.applied.push(Step::CpuPriority);
    }
    if policy.drop_capabilities {
        report.applied.push(Step::DropCapabilities);
    }
    report.applied.push(Step::NoNewPrivileges);

    let mut landlock_abi = None;
    if policy.landlock {
        let abi = support.landlock_abi.clone();
        let mut filesystem = false;
        for (step, min_abi, since) in LANDLOCK_STEPS {
            let available = match &abi {
                Err(reason) => Err(reason.clone()),
                Ok(_) if step != Step::LandlockFilesystem && !filesystem => {
                    Err("Landlock filesystem rules are not applied".to_owned())
                }
                Ok(v) if *v >= min_abi => Ok(()),
                Ok(v) => Err(format!(
                    "the kernel's Landlock ABI is {v}; this needs ABI {min_abi} ({since})"
                )),
            };
            let applied = need(step, &available, &mut report)?;
            if step == Step::LandlockFilesystem {
                filesystem = applied;
            }
        }
        if filesystem {
            landlock_abi = abi.ok();
        }
    }

    let seccomp = policy.seccomp && need(Step::Seccomp, &support.seccomp, &mut report)?;
    if !policy.allow_subprocesses {
        // Part of the seccomp step: its absence was already enforced above.
        if seccomp {
            report.applied.push(Step::NoSubprocesses);
        } else {
            report.skipped.push((
                Step::NoSubprocesses,
                "it is enforced by the seccomp filter, which is not applied".to_owned(),
            ));
        }
    }

    Ok(Decisions {
        cell_ids,
        namespaces: ns,
        landlock_abi,
        seccomp,
        report,
    })
}

pub(super) fn unshare_flags(ns: Namespaces) -> c_int {
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

/// `[soft, hard]` for `limit`, never above the host's current hard limit
/// (raising it would need `CAP_SYS_RESOURCE` and loosen the sandbox), and
/// soft never above hard.
pub(super) fn clamp_rlimit(limit: &Rlimit, current: [u64; 2]) -> [u64; 2] {
    let hard = limit.hard.min(current[1]);
    [limit.soft.min(hard), hard]
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

/// `/proc/sys/kernel/cap_last_cap`, or 63 (drops stop at the first `EINVAL`).
pub(super) fn last_capability() -> c_ulong {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

// ---------------------------------------------------------------------------
// Namespace probe (parent forks a child that tries the steps)
// ---------------------------------------------------------------------------

pub(super) const NS_USER: usize = 0;
pub(super) const NS_NET: usize = 1;
pub(super) const NS_IPC: usize = 2;
pub(super) const NS_UTS: usize = 3;
pub(super) const NS_MOUNT: usize = 4;
pub(super) const NS_CGROUP: usize = 5;
/// Not a namespace: the switch to the cell's ids, tried first.
pub(super) const NS_IDS: usize = 6;
pub(super) const NS_SLOTS: usize = 7;

pub(super) type ProbeKey = (Namespaces, Vec<u8>, Vec<u8>, Option<(u32, u32)>);
pub(super) static NAMESPACE_PROBES: Mutex<Vec<(ProbeKey, [i32; NS_SLOTS])>> = Mutex::new(Vec::new());

/// The errno of each namespace step (0 = works), probed once per process and
/// requested set.
pub(super) fn probe_namespaces_cached(
    requested: Namespaces,
    maps: &UserMaps,
    ids: Option<(u32, u32)>,
) -> Result<[i32; NS_SLOTS], SandboxError> {
    let key = (requested, maps.uid_map.clone(), maps.gid_map.clone(), ids);
    let mut cache = NAMESPACE_PROBES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, results)) = cache.iter().find(|(k, _)| *k == key) {
        return Ok(*results);
    }
    let results = probe_namespaces(requested, maps, ids).map_err(SandboxError::Probe)?;
    cache.push((key, results));
    Ok(results)
}

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
            cell_ids: None,
            root: true,
        }
    }

    #[test]
    fn everything_available_applies_every_step_in_order() {
        let d = decide(&SandboxPolicy::default(), &full_support()).unwrap();
        assert_eq!(
            d.report.applied,
            vec![
                Step::DieWithParent,
                Step::NewSession,
                Step::UserNamespace,
                Step::NetworkNamespace,
                Step::IpcNamespace,
                Step::UtsNamespace,
                Step::MountNamespace,
                Step::CgroupNamespace,
                Step::Rlimits,
                Step::CpuPriority,
                Step::DropCapabilities,
                Step::NoNewPrivileges,
                Step::LandlockFilesystem,
                Step::LandlockRefer,
                Step::LandlockTruncate,
                Step::LandlockNetwork,
                Step::LandlockIoctlDev,
                Step::LandlockScopeSignal,
                Step::LandlockScopeAbstractUnixSocket,
                Step::Seccomp,
                Step::NoSubprocesses,
            ]
        );
        // The kernel ignores RLIMIT_NPROC for root, and the report says so.
        let skipped: Vec<Step> = d.report.skipped.iter().map(|(s, _)| *s).collect();
        assert_eq!(skipped, vec![Step::RlimitNproc]);
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
                assert_eq!(*feature, Step::LandlockNetwork);
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
        let skipped: Vec<Step> = d.report.skipped.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            skipped,
            vec![
                Step::NetworkNamespace,
                Step::RlimitNproc,
                Step::LandlockNetwork,
                Step::LandlockIoctlDev,
                Step::LandlockScopeSignal,
                Step::LandlockScopeAbstractUnixSocket,
                Step::Seccomp,
                Step::NoSubprocesses,
            ]
        );
        assert!(d.report.is_applied(Step::LandlockTruncate));
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
                feature: Step::LandlockFilesystem,
                ..
            }
        ));
        let d = decide(&SandboxPolicy::default().best_effort(), &support).unwrap();
        assert_eq!(d.landlock_abi, None);
        assert_eq!(d.report.skipped.len(), LANDLOCK_STEPS.len());
        assert!(
            d.report
                .skipped
                .iter()
                .all(|(s, _)| s.name().starts_with("landlock-"))
        );
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
        let skipped: Vec<Step> = d.report.skipped.iter().map(|(s, _)| *s).collect();
        assert_eq!(skipped, vec![Step::UserNamespace, Step::RlimitNproc]);
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
