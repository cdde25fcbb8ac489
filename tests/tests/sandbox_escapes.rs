//! Every escape attempt of `osmos-probe`: denied under the default sandbox
//! (also when the probe is executed through `/proc/self/fd`), and, where this
//! machine permits it unsandboxed, allowed with the sandbox off. What the
//! machine permits is decided from this process's own capabilities and
//! sysctls, and printed. Run with `--nocapture` to see the tables of
//! outcomes.

mod sandbox;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use osmos_host::sandbox::SandboxPolicy;
use sandbox::{
    ATTEMPTS, Fixture, HOST_SECRET, NPROC, PROBE, WRITE_INSIDE, prepared, root, run_probe, run_probe_at,
};

// ---------------------------------------------------------------------------
// What this machine permits without a sandbox
// ---------------------------------------------------------------------------

fn effective_capabilities() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff in /proc/self/status")
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

fn has_cap(cap: u32) -> bool {
    effective_capabilities() & (1 << cap) != 0
}

fn sysctl(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SYS_MODULE: u32 = 16;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_SYSLOG: u32 = 34;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// `Ok(())` if this machine lets an unsandboxed process of this user make the
/// attempt, else why not.
fn machine_permits(attempt: &str) -> Result<(), String> {
    let why = |ok: bool, reason: &str| if ok { Ok(()) } else { Err(reason.to_owned()) };
    // SAFETY: getuid cannot fail.
    let root = unsafe { libc::getuid() } == 0;
    let ptrace_ok = has_cap(CAP_SYS_PTRACE) || sysctl("/proc/sys/kernel/yama/ptrace_scope").unwrap_or(0) == 0;
    match attempt {
        "raw_packet_socket" => why(has_cap(CAP_NET_RAW), "no CAP_NET_RAW"),
        "ptrace_parent" | "pidfd_getfd_parent" => why(ptrace_ok, "Yama restricts ptrace"),
        "raise_rlimit" => why(has_cap(CAP_SYS_RESOURCE), "no CAP_SYS_RESOURCE"),
        "setuid_other_user" => why(has_cap(CAP_SETUID), "no CAP_SETUID"),
        "setgid_other_group" => why(has_cap(CAP_SETGID), "no CAP_SETGID"),
        "fork_bomb" => why(root || nproc_unlimited(), "RLIMIT_NPROC applies"),
        "mount_tmpfs" => why(has_cap(CAP_SYS_ADMIN), "no CAP_SYS_ADMIN"),
        // /dev/null is no module: unsandboxed the kernel answers, but never
        // with success; see `module_load_reaches_the_kernel`.
        "load_kernel_module" => Err("never succeeds; compared by errno".to_owned()),
        "bpf_map_create" => why(has_cap(CAP_BPF) || has_cap(CAP_SYS_ADMIN), "no CAP_BPF"),
        "perf_event_open" => why(
            has_cap(CAP_PERFMON)
                || has_cap(CAP_SYS_ADMIN)
                || sysctl("/proc/sys/kernel/perf_event_paranoid").unwrap_or(3) <= 2,
            "perf_event_paranoid forbids it",
        ),
        "keyctl" | "add_key" => why(Path::new("/proc/keys").exists(), "no CONFIG_KEYS"),
        "io_uring_setup" => match sysctl("/proc/sys/kernel/io_uring_disabled") {
            Some(0) => Ok(()),
            Some(1) if has_cap(CAP_SYS_ADMIN) => Ok(()),
            Some(v) => Err(format!("io_uring_disabled = {v}")),
            None => Err("no io_uring_disabled sysctl to tell".to_owned()),
        },
        "read_kernel_log" => why(
            has_cap(CAP_SYSLOG) || sysctl("/proc/sys/kernel/dmesg_restrict") == Some(0),
            "dmesg_restrict",
        ),
        "clone_new_user_namespace" | "clone3_new_user_namespace" | "unshare_user_namespace" => why(
            sysctl("/proc/sys/user/max_user_namespaces").unwrap_or(0) > 0,
            "user namespaces are off",
        ),
        _ => Ok(()),
    }
}

fn nproc_unlimited() -> bool {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one struct rlimit.
    unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut limit) };
    limit.rlim_cur == libc::RLIM_INFINITY
}

/// `load_kernel_module` unsandboxed: the kernel handled the call (any answer
/// but `EPERM`) where `CAP_SYS_MODULE` is held and modules are not disabled.
fn module_load_reaches_the_kernel() -> bool {
    has_cap(CAP_SYS_MODULE) && sysctl("/proc/sys/kernel/modules_disabled").unwrap_or(0) == 0
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn escape_attempts_are_denied_by_the_default_sandbox() {
    let fx = Fixture::new("denied");
    let prepared = prepared(&fx.default_policy());
    let report = prepared.report().clone();
    let run = run_probe(prepared, &fx.args());
    run.print("default sandbox");
    eprintln!("  report: {report}");

    for attempt in ATTEMPTS {
        let o = run.outcome(attempt);
        assert!(!o.allowed, "escape `{attempt}` succeeded in the sandbox: {o:?}");
    }
    assert!(
        run.outcome(WRITE_INSIDE).allowed,
        "writing inside the write dir is allowed"
    );

    // No process at all (root is exempt from RLIMIT_NPROC; see the
    // unprivileged test for the rlimit).
    let fork_bomb = run.outcome("fork_bomb");
    assert_eq!(fork_bomb.errno.as_deref(), Some("EPERM"), "{fork_bomb:?}");
    assert_eq!(fork_bomb.detail, "forked=0");
    // seccomp answers before the kernel would (unsandboxed: ENOSYS or EINVAL...).
    assert_eq!(run.outcome("load_kernel_module").errno.as_deref(), Some("EPERM"));
    // clone3 is refused with ENOSYS so that libc falls back to clone.
    assert_eq!(
        run.outcome("clone3_new_user_namespace").errno.as_deref(),
        Some("ENOSYS")
    );

    // The probe's situation.
    assert_eq!(run.info("pdeathsig"), libc::SIGKILL.to_string());
    assert_eq!(run.info("session_leader"), "yes");
    assert_eq!(run.info("no_new_privs"), "1");
    assert_eq!(run.info("seccomp_mode"), "2");
    assert_eq!(run.info("cap_effective"), "0x0");
    assert_eq!(run.info("net_interfaces_with_ipv4"), "0");
    // The cell's own /proc/self is readable: stdio and the listing itself.
    let fds: usize = run.info("proc_self_fds").parse().unwrap();
    assert!(fds >= 3, "{fds} descriptors in /proc/self/fd");
    assert_eq!(run.info("rlimit_core"), "0 0");
    assert_eq!(run.info("rlimit_nproc"), format!("{NPROC} {NPROC}"));
    assert_eq!(run.info("rlimit_nofile"), "1024 1024");
    let data = osmos_host::sandbox::DEFAULT_MEMORY;
    assert_eq!(run.info("rlimit_data"), format!("{data} {data}"));
    // Below the host's priority (this process runs at nice 0 or more).
    let nice: i32 = run.info("nice").parse().unwrap();
    assert!(nice >= osmos_host::sandbox::DEFAULT_NICE_INCREMENT, "nice {nice}");
    // And never preempting the host on wakeup.
    assert_eq!(run.info("sched_policy"), libc::SCHED_BATCH.to_string());
    // A root host runs the cell under a uid and gid of its own.
    if root() {
        assert_eq!(
            report.cell_ids.map(|(u, _)| u.to_string()).as_deref(),
            Some(run.info("uid"))
        );
        assert_ne!(run.info("uid"), "0");
        assert_eq!(run.info("gid"), run.info("uid"));
    }

    // Nothing changed on the host side.
    assert_eq!(std::fs::read(&fx.host_file).unwrap(), HOST_SECRET);
    assert!(
        !fx.outside_file.exists(),
        "a file was written outside the write dir"
    );
    assert!(fx.removable.exists(), "a host file was removed");
    assert!(!fx.write_dir.join("probe-hardlink").exists());
}

#[test]
fn escape_attempts_succeed_without_the_sandbox() {
    let fx = Fixture::new("open");
    let prepared = prepared(&SandboxPolicy::disabled());
    assert!(!prepared.is_enabled());
    let run = run_probe(prepared, &fx.args());
    run.print("no sandbox");

    let mut compared = 0;
    for attempt in ATTEMPTS {
        let o = run.outcome(attempt);
        match machine_permits(attempt) {
            Ok(()) => {
                assert!(o.allowed, "`{attempt}` should work without the sandbox: {o:?}");
                compared += 1;
            }
            Err(why) => eprintln!("  not compared: {attempt} ({why}): {o:?}"),
        }
    }
    assert!(run.outcome(WRITE_INSIDE).allowed);
    if module_load_reaches_the_kernel() {
        let o = run.outcome("load_kernel_module");
        assert_ne!(o.errno.as_deref(), Some("EPERM"), "{o:?}");
    }
    let fork_bomb = run.outcome("fork_bomb");
    if fork_bomb.allowed {
        assert_eq!(fork_bomb.detail, "forked=1000");
    }
    // Most attempts are comparable on any Linux machine.
    assert!(
        compared >= ATTEMPTS.len() / 2,
        "only {compared} attempts compared"
    );

    assert_eq!(run.info("pdeathsig"), "0");
    assert_eq!(run.info("session_leader"), "no");
    assert_eq!(run.info("no_new_privs"), "0");
    assert_eq!(run.info("seccomp_mode"), "0");
    let interfaces: usize = run.info("net_interfaces_with_ipv4").parse().unwrap();
    assert!(interfaces >= 1, "the host network has an IPv4 loopback at least");
    assert!(fx.outside_file.exists() && !fx.removable.exists());
}

/// The host executes the verified binary through `/proc/self/fd/N`; the
/// Landlock rule binds to the file itself, so that works and changes nothing.
#[test]
fn escape_attempts_are_denied_when_exec_goes_through_proc_self_fd() {
    let fx = Fixture::new("proc-fd");
    let binary = std::fs::File::open(PROBE).unwrap();
    let via_fd = PathBuf::from(format!("/proc/self/fd/{}", binary.as_raw_fd()));
    let run = run_probe_at(&via_fd, prepared(&fx.default_policy()), &fx.args());
    for attempt in ATTEMPTS {
        assert!(
            !run.outcome(attempt).allowed,
            "`{attempt}`: {:?}",
            run.outcome(attempt)
        );
    }
    assert!(run.outcome(WRITE_INSIDE).allowed);
}
