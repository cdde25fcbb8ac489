//! What the kernel and this process provide, and the decision of what a
//! policy applies on it; namespace support is probed in a forked child.

use std::ffi::{c_int, c_ulong};
use std::io;
use std::sync::Mutex;

use super::UserMaps;
use super::cgroup::check_delegated;
use super::child::{landlock_abi, probe_namespaces, seccomp_support};
use super::policy::{CpuPriority, Enforcement, Namespaces, Rlimit, RlimitResource, SandboxPolicy, Step};
use super::report::{SandboxError, SandboxReport};

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
    /// `Some` when cgroup limits are asked for: whether the directory is a
    /// delegated cgroup v2 with the controllers they need.
    pub(super) cgroup: Option<Result<(), String>>,
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
            cgroup: policy.cgroup.as_ref().map(check_delegated),
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
    /// Whether the cell joins a cgroup of its own.
    pub(super) cgroup: bool,
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

    let cgroup = match &support.cgroup {
        Some(available) => need(Step::Cgroup, available, &mut report)?,
        None => false,
    };
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
        cgroup,
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

/// `[soft, hard]` for `limit`, never above the host's current hard limit
/// (raising it would need `CAP_SYS_RESOURCE` and loosen the sandbox), and
/// soft never above hard.
pub(super) fn clamp_rlimit(limit: &Rlimit, current: [u64; 2]) -> [u64; 2] {
    let hard = limit.hard.min(current[1]);
    [limit.soft.min(hard), hard]
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
            cgroup: None,
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
        // A cell of a root host left under uid 0: the kernel ignores
        // RLIMIT_NPROC for it, and the report says so.
        let skipped: Vec<Step> = d.report.skipped.iter().map(|(s, _)| *s).collect();
        assert_eq!(skipped, vec![Step::RlimitNproc]);
        // Under its own ids it binds, and the switch is a step of its own.
        let own_ids = KernelSupport {
            cell_ids: Some(Ok(())),
            ..full_support()
        };
        let d3 = decide(&SandboxPolicy::default(), &own_ids).unwrap();
        assert!(d3.report.skipped.is_empty(), "{:?}", d3.report.skipped);
        assert!(d3.cell_ids && d3.report.applied[2] == Step::CellIds);
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
        let current = super::super::child::current_rlimit(RlimitResource::NoFile.raw());
        assert!(current[0] <= current[1] && current[1] > 0);
    }
}
