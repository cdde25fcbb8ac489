//! The sandbox's report: every step applied on this machine, the limits and
//! the Landlock allow-list as applied, what best effort and the debugging
//! opt-out apply, and a missing path refused with a clear error.

mod sandbox;

use std::path::Path;

use osmos_host::sandbox::{
    CellIds, Enforcement, RlimitResource, SandboxPolicy, SandboxReport, Step, prepare,
};
use sandbox::{Fixture, PROBE, prepared, root};

#[test]
fn escape_report_lists_every_applied_step() {
    let fx = Fixture::new("report");
    let prepared = prepared(&fx.default_policy());
    let report: &SandboxReport = prepared.report();
    let expected: Vec<Step> = [
        Step::DieWithParent,
        Step::NewSession,
        Step::CellIds,
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
    .into_iter()
    // Own ids only where there are ids to change: under a root host.
    .filter(|s| root() || *s != Step::CellIds)
    .collect();
    assert_eq!(
        report.applied, expected,
        "this machine (Linux 6.18, Landlock ABI 7) provides every step"
    );
    // Nothing skipped: under a root host the cell's own uid makes
    // RLIMIT_NPROC bind.
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    // The limits are listed, as applied.
    let limit = |resource| {
        report
            .rlimits
            .iter()
            .find(|l| l.resource == resource)
            .map(|l| l.soft)
    };
    assert_eq!(
        limit(RlimitResource::Data),
        Some(osmos_host::sandbox::DEFAULT_MEMORY)
    );
    assert_eq!(
        limit(RlimitResource::NProc),
        Some(osmos_host::sandbox::DEFAULT_TASKS)
    );
    assert_eq!(limit(RlimitResource::Core), Some(0));
    // The default: below the host's nice, under SCHED_BATCH.
    let Some(osmos_host::sandbox::CpuPriority::Batch(nice)) = report.cpu_priority else {
        panic!("default cpu priority reported as {:?}", report.cpu_priority);
    };
    assert!(nice >= osmos_host::sandbox::DEFAULT_NICE_INCREMENT, "nice {nice}");
    let text = report.to_string();
    assert!(
        text.contains("RLIMIT_DATA=1GiB") && text.contains("RLIMIT_NPROC=256"),
        "{text}"
    );
    assert!(text.contains(&format!("nice {nice}, SCHED_BATCH")), "{text}");
    if root() {
        assert!(text.contains("runs as uid "), "{text}");
        // Keeping the host's uid 0, RLIMIT_NPROC cannot bind, and the report
        // says so.
        let as_root = prepare(
            &fx.default_policy().with_cell_ids(CellIds::Host),
            Path::new(PROBE),
        )
        .unwrap();
        let skipped: Vec<Step> = as_root.report().skipped.iter().map(|(s, _)| *s).collect();
        assert_eq!(skipped, [Step::RlimitNproc], "{:?}", as_root.report().skipped);
        assert!(!as_root.report().is_applied(Step::CellIds));
    }
    let access = |path: &Path| {
        report
            .landlock_paths
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, a)| *a)
    };
    assert_eq!(access(Path::new(PROBE)), Some("read+execute"));
    assert_eq!(access(&fx.write_dir), Some("read+write"));
    assert_eq!(access(Path::new("/dev/null")), Some("read+write"));
    assert_eq!(access(Path::new("/usr/lib")), Some("read"));
    assert_eq!(access(Path::new("/proc")), None);
    assert!(
        report
            .landlock_paths
            .iter()
            .filter(|(_, a)| *a == "read+execute")
            .count()
            >= 2,
        "the program and its ELF interpreter: {:?}",
        report.landlock_paths
    );
    eprintln!("allow-list: {:#?}", report.landlock_paths);

    // Best effort on this machine skips nothing either.
    let best = prepare(
        &fx.default_policy().with_enforcement(Enforcement::BestEffort),
        Path::new(PROBE),
    )
    .unwrap();
    assert_eq!(best.report().applied, report.applied);

    // The debugging opt-out applies nothing and says so.
    let off = prepare(&SandboxPolicy::disabled(), Path::new(PROBE)).unwrap();
    assert!(off.report().applied.is_empty());
    assert_eq!(off.report().skipped[0].0, Step::Sandbox);

    // A missing write dir or read path is a clear error, not a silent hole.
    let err = prepare(
        &SandboxPolicy::default().with_read_path(fx.root.join("missing")),
        Path::new(PROBE),
    )
    .unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}
