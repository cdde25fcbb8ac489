//! Escape tests for the cell sandbox (`osmos_host::sandbox`).
//!
//! Each test spawns `osmos-probe` the way the host does, with
//! `Command::pre_exec` calling `apply_in_child` on a sandbox prepared in the
//! parent, and reads the probe's report of each escape attempt. The same
//! attempts run once without the sandbox, so the tests prove the sandbox and
//! not the machine: an attempt counts only where the machine permits it
//! unsandboxed (this is decided from the test process's own capabilities and
//! sysctls, and printed).
//!
//! The parent-death tests re-execute this test binary as an intermediate
//! host (`escape_helper_intermediate_host`) and kill it; this process makes
//! itself a child subreaper (`PR_SET_CHILD_SUBREAPER`) so that it can reap the
//! orphaned probes. The unprivileged-host test re-executes it as `nobody`.
//!
//! Run with `--nocapture` to see the table of outcomes.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use osmos_host::sandbox::{
    CellIds, Enforcement, Namespaces, PreparedSandbox, RlimitResource, SandboxPolicy, SandboxReport, Step,
    apply_in_child, prepare,
};

const PROBE: &str = env!("CARGO_BIN_EXE_osmos-probe");
/// Bound on every wait; only reached when something hangs.
const BOUND: Duration = Duration::from_secs(20);
/// Set in the environment of the re-executed test binary acting as an
/// intermediate host (see `escape_helper_intermediate_host`).
const INTERMEDIATE_ENV: &str = "OSMOS_SANDBOX_TEST_INTERMEDIATE";
/// The probe's arguments for the intermediate host, one per line.
const PROBE_ARGS_ENV: &str = "OSMOS_SANDBOX_TEST_PROBE_ARGS";
/// The write directory for the intermediate host.
const WRITE_DIR_ENV: &str = "OSMOS_SANDBOX_TEST_WRITE_DIR";
/// The unprivileged user the intermediate host runs as (`nobody`).
const UNPRIVILEGED: u32 = 65534;

fn root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Every escape the probe attempts when given all the fixture's arguments.
const ATTEMPTS: &[&str] = &[
    "read_host_file",
    "read_host_file_via_proc_self_root",
    "chmod_host_file",
    "chown_host_file",
    "set_times_host_file",
    "read_via_symlink_in_write_dir",
    "hardlink_host_file_into_write_dir",
    "write_outside_write_dir",
    "remove_host_file",
    "read_parent_status",
    "read_parent_environ",
    "tcp_connect",
    "udp_socket",
    "raw_packet_socket",
    "netlink_socket",
    "unix_connect_outside",
    "abstract_unix_connect",
    "signal_parent",
    "sigcont_parent",
    "ptrace_parent",
    "pidfd_getfd_parent",
    "raise_rlimit",
    "fork_bomb",
    "mount_tmpfs",
    "load_kernel_module",
    "bpf_map_create",
    "perf_event_open",
    "keyctl",
    "add_key",
    "io_uring_setup",
    "read_kernel_log",
    "clone_new_user_namespace",
    "clone3_new_user_namespace",
    "setgid_other_group",
    "setuid_other_user",
    "unshare_user_namespace",
    "exec_shell",
];
/// Not an escape: must be allowed whenever a write directory is given.
const WRITE_INSIDE: &str = "write_inside_write_dir";
/// The default `RLIMIT_NPROC`.
const NPROC: usize = 256;

// ---------------------------------------------------------------------------
// Fixture: host files, listeners and directories the probe attacks
// ---------------------------------------------------------------------------

struct Fixture {
    root: PathBuf,
    host_file: PathBuf,
    outside_file: PathBuf,
    write_dir: PathBuf,
    inside_file: PathBuf,
    removable: PathBuf,
    mount_dir: PathBuf,
    unix_path: PathBuf,
    abstract_name: String,
    tcp: std::net::TcpListener,
    _unix: std::os::unix::net::UnixListener,
    _abstract: std::os::unix::net::UnixListener,
}

const HOST_SECRET: &[u8] = b"host secret\n";

impl Fixture {
    fn new(tag: &str) -> Self {
        use std::os::linux::net::SocketAddrExt;
        let root =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sandbox-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let write_dir = root.join("write");
        let mount_dir = root.join("mnt");
        std::fs::create_dir_all(&write_dir).unwrap();
        std::fs::create_dir_all(&mount_dir).unwrap();
        let host_file = root.join("host-secret");
        std::fs::write(&host_file, HOST_SECRET).unwrap();
        let removable = root.join("removable");
        std::fs::write(&removable, b"remove me\n").unwrap();
        let unix_path = root.join("listener.sock");
        // The cells of a root host run under their own uid: the write
        // directory must be theirs to write.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::set_permissions(&write_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let abstract_name = format!("osmos-sandbox-test-{tag}-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name).unwrap();
        Self {
            outside_file: root.join("written-outside"),
            inside_file: write_dir.join("written-inside"),
            tcp: std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
            _unix: std::os::unix::net::UnixListener::bind(&unix_path).unwrap(),
            _abstract: std::os::unix::net::UnixListener::bind_addr(&addr).unwrap(),
            root,
            host_file,
            write_dir,
            removable,
            mount_dir,
            unix_path,
            abstract_name,
        }
    }

    fn args(&self) -> Vec<String> {
        let p = |key: &str, path: &Path| format!("{key}={}", path.display());
        vec![
            p("read", &self.host_file),
            p("write-outside", &self.outside_file),
            p("write-inside", &self.inside_file),
            p("write-dir", &self.write_dir),
            p("remove", &self.removable),
            format!("tcp={}", self.tcp.local_addr().unwrap().port()),
            p("unix", &self.unix_path),
            format!("abstract={}", self.abstract_name),
            p("mount", &self.mount_dir),
        ]
    }

    /// Makes every file and directory of the fixture accessible to any user,
    /// so that what an unprivileged probe is denied is the sandbox's doing.
    fn open_to_everyone(&self) {
        use std::os::unix::fs::PermissionsExt;
        for dir in [&self.root, &self.write_dir, &self.mount_dir] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        for file in [&self.host_file, &self.removable, &self.unix_path] {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o666)).unwrap();
        }
    }

    fn default_policy(&self) -> SandboxPolicy {
        SandboxPolicy::default().with_write_dir(&self.write_dir)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

// ---------------------------------------------------------------------------
// Running the probe with a bound
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    allowed: bool,
    /// The errno name when denied.
    errno: Option<String>,
    detail: String,
}

#[derive(Debug)]
struct ProbeRun {
    attempts: BTreeMap<String, Outcome>,
    info: BTreeMap<String, String>,
    stdout: String,
    stderr: String,
}

impl ProbeRun {
    fn outcome(&self, attempt: &str) -> &Outcome {
        self.attempts.get(attempt).unwrap_or_else(|| {
            panic!(
                "the probe did not report `{attempt}`\nstdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    fn info(&self, key: &str) -> &str {
        self.info
            .get(key)
            .unwrap_or_else(|| panic!("the probe did not report info `{key}`:\n{}", self.stdout))
    }

    fn print(&self, title: &str) {
        eprintln!("--- {title} ---");
        for (k, v) in &self.info {
            eprintln!("  info {k:<26} {v}");
        }
        for (k, o) in &self.attempts {
            let verdict = if o.allowed { "allowed" } else { "denied" };
            let errno = o.errno.as_deref().unwrap_or("");
            eprintln!("  {k:<34} {verdict:<8} {errno:<14} {}", o.detail);
        }
    }
}

fn parse(stdout: String, stderr: String) -> ProbeRun {
    let mut attempts = BTreeMap::new();
    let mut info = BTreeMap::new();
    for line in stdout.lines() {
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("attempt"), Some(name), Some(rest)) => {
                let (verdict, rest) = rest.split_once(' ').unwrap_or((rest, ""));
                let outcome = match verdict {
                    "allowed" => Outcome {
                        allowed: true,
                        errno: None,
                        detail: rest.to_owned(),
                    },
                    "denied" => {
                        let (errno, detail) = rest.split_once(' ').unwrap_or((rest, ""));
                        Outcome {
                            allowed: false,
                            errno: Some(errno.to_owned()),
                            detail: detail.to_owned(),
                        }
                    }
                    other => panic!("unexpected verdict {other:?} in {line:?}"),
                };
                attempts.insert(name.to_owned(), outcome);
            }
            (Some("info"), Some(name), Some(value)) => {
                info.insert(name.to_owned(), value.to_owned());
            }
            _ => {}
        }
    }
    ProbeRun {
        attempts,
        info,
        stdout,
        stderr,
    }
}

fn pidfd_open(pid: u32) -> OwnedFd {
    // SAFETY: integer arguments only.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(fd >= 0, "pidfd_open({pid}): {}", std::io::Error::last_os_error());
    // SAFETY: pidfd_open returned a new descriptor that we own.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Waits until the process behind `pidfd` has exited, at most `timeout`.
fn wait_exit(pidfd: &OwnedFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one live pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n > 0 {
            return true;
        }
        if n == 0 || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted) {
            return false;
        }
    }
}

fn kill_pidfd(pidfd: &OwnedFd) {
    // SAFETY: integer arguments and a null siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
}

/// Collects a child's output; a watchdog kills it if it outlives `BOUND`.
fn output_bounded(child: Child) -> (std::process::Output, bool) {
    let pidfd = pidfd_open(child.id());
    let watchdog = std::thread::spawn(move || {
        let exited = wait_exit(&pidfd, BOUND);
        if !exited {
            kill_pidfd(&pidfd);
        }
        !exited
    });
    let output = child.wait_with_output().expect("collect the probe's output");
    let timed_out = watchdog.join().expect("the watchdog");
    (output, timed_out)
}

/// Spawns the probe with `prepared` applied in the child, as the host does.
fn run_probe(prepared: PreparedSandbox, args: &[String]) -> ProbeRun {
    run_probe_at(PROBE.as_ref(), prepared, args)
}

/// Like `run_probe`, executing the probe through `program`.
fn run_probe_at(program: &Path, prepared: PreparedSandbox, args: &[String]) -> ProbeRun {
    let mut command = Command::new(program);
    command
        .arg("escape")
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the child between fork and exec;
    // `apply_in_child` only makes raw system calls on the prepared data.
    unsafe { command.pre_exec(move || apply_in_child(&prepared)) };
    let child = command.spawn().expect("spawn the sandboxed probe");
    let (output, timed_out) = output_bounded(child);
    let run = parse(
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert!(!timed_out, "the probe ran longer than {BOUND:?}:\n{}", run.stdout);
    run
}

fn prepared(policy: &SandboxPolicy) -> PreparedSandbox {
    prepare(policy, Path::new(PROBE)).unwrap_or_else(|e| panic!("prepare the sandbox: {e}"))
}

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

#[test]
fn escape_writes_are_confined_to_the_write_dir() {
    let fx = Fixture::new("write");
    let args = [
        format!("write-outside={}", fx.outside_file.display()),
        format!("write-inside={}", fx.inside_file.display()),
    ];

    // With a write dir: inside only.
    let run = run_probe(prepared(&fx.default_policy()), &args);
    assert!(
        run.outcome(WRITE_INSIDE).allowed,
        "{:?}",
        run.outcome(WRITE_INSIDE)
    );
    assert_eq!(
        std::fs::read(&fx.inside_file).unwrap(),
        b"written by osmos-probe\n"
    );
    let outside = run.outcome("write_outside_write_dir");
    assert_eq!(outside.errno.as_deref(), Some("EACCES"), "{outside:?}");
    assert!(!fx.outside_file.exists());

    // Without one: nowhere.
    std::fs::remove_file(&fx.inside_file).unwrap();
    let run = run_probe(prepared(&SandboxPolicy::default()), &args);
    for attempt in [WRITE_INSIDE, "write_outside_write_dir"] {
        let o = run.outcome(attempt);
        assert_eq!(o.errno.as_deref(), Some("EACCES"), "{attempt}: {o:?}");
    }
    assert!(!fx.inside_file.exists() && !fx.outside_file.exists());
}

#[test]
fn escape_through_read_paths_is_read_only() {
    let fx = Fixture::new("read-paths");
    let policy = fx.default_policy().with_read_path(&fx.host_file);
    let args = [
        format!("read={}", fx.host_file.display()),
        // Try to overwrite the readable file.
        format!("write-outside={}", fx.host_file.display()),
    ];
    let run = run_probe(prepared(&policy), &args);
    let read = run.outcome("read_host_file");
    assert!(read.allowed, "{read:?}");
    assert_eq!(read.detail, format!("{} bytes", HOST_SECRET.len()));
    assert_eq!(
        run.outcome("write_outside_write_dir").errno.as_deref(),
        Some("EACCES")
    );
    for attempt in ["chmod_host_file", "chown_host_file", "set_times_host_file"] {
        assert_eq!(run.outcome(attempt).errno.as_deref(), Some("EPERM"), "{attempt}");
    }
    assert_eq!(std::fs::read(&fx.host_file).unwrap(), HOST_SECRET);
}

/// Each layer on its own denies its share: the namespaces cut the network,
/// Landlock confines files, TCP and signals, seccomp refuses system calls.
#[test]
fn escape_layers_each_deny_on_their_own() {
    let bare = |fx: &Fixture| SandboxPolicy {
        namespaces: Namespaces::NONE,
        landlock: false,
        seccomp: false,
        cell_ids: CellIds::Host,
        ..fx.default_policy()
    };

    // Namespaces alone: no network.
    let fx = Fixture::new("layer-ns");
    let policy = SandboxPolicy {
        namespaces: Namespaces::ALL,
        ..bare(&fx)
    };
    let run = run_probe(prepared(&policy), &fx.args());
    run.print("namespaces only");
    assert_eq!(run.outcome("tcp_connect").errno.as_deref(), Some("ENETUNREACH"));
    assert_eq!(
        run.outcome("abstract_unix_connect").errno.as_deref(),
        Some("ECONNREFUSED")
    );
    assert_eq!(run.info("net_interfaces_with_ipv4"), "0");
    assert!(run.outcome("read_host_file").allowed, "no Landlock in this run");

    // Landlock alone: files, TCP, signals and ptrace of the host.
    let fx = Fixture::new("layer-landlock");
    let policy = SandboxPolicy {
        landlock: true,
        ..bare(&fx)
    };
    let run = run_probe(prepared(&policy), &fx.args());
    run.print("landlock only");
    for (attempt, errno) in [
        ("read_host_file", "EACCES"),
        ("read_host_file_via_proc_self_root", "EACCES"),
        ("read_parent_status", "EACCES"),
        ("read_parent_environ", "EACCES"),
        ("write_outside_write_dir", "EACCES"),
        ("remove_host_file", "EACCES"),
        ("read_via_symlink_in_write_dir", "EACCES"),
        ("hardlink_host_file_into_write_dir", "EXDEV"),
        ("tcp_connect", "EACCES"),
        ("signal_parent", "EPERM"),
        ("ptrace_parent", "EPERM"),
        ("mount_tmpfs", "EPERM"),
        ("exec_shell", "EACCES"),
    ] {
        assert_eq!(run.outcome(attempt).errno.as_deref(), Some(errno), "{attempt}");
    }
    assert!(run.outcome(WRITE_INSIDE).allowed);

    // seccomp alone: the dangerous system calls.
    let fx = Fixture::new("layer-seccomp");
    let policy = SandboxPolicy {
        seccomp: true,
        ..bare(&fx)
    };
    let run = run_probe(prepared(&policy), &fx.args());
    run.print("seccomp only");
    for attempt in [
        "chmod_host_file",
        "chown_host_file",
        "set_times_host_file",
        "tcp_connect",
        "udp_socket",
        "raw_packet_socket",
        "netlink_socket",
        "unix_connect_outside",
        "abstract_unix_connect",
        "ptrace_parent",
        "pidfd_getfd_parent",
        "mount_tmpfs",
        "load_kernel_module",
        "bpf_map_create",
        "perf_event_open",
        "keyctl",
        "add_key",
        "io_uring_setup",
        "read_kernel_log",
        "clone_new_user_namespace",
        "unshare_user_namespace",
        "fork_bomb",
    ] {
        assert_eq!(run.outcome(attempt).errno.as_deref(), Some("EPERM"), "{attempt}");
    }
    assert_eq!(
        run.outcome("clone3_new_user_namespace").errno.as_deref(),
        Some("ENOSYS")
    );
    // Landlock is off: the filesystem is open.
    assert!(run.outcome("read_host_file").allowed);
}

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
    assert!(report.cpu_priority.is_some());
    let text = report.to_string();
    assert!(
        text.contains("RLIMIT_DATA=1GiB") && text.contains("RLIMIT_NPROC=256"),
        "{text}"
    );
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

// ---------------------------------------------------------------------------
// Parent death: an intermediate host spawns the probe, then is killed
// ---------------------------------------------------------------------------

/// Not a test of its own: when re-executed with `INTERMEDIATE_ENV` set, this
/// process plays a host. In modes `die-with-parent` and `stay` it spawns a
/// sandboxed `osmos-probe wait` (sharing its stdin and stdout) and blocks
/// until it is killed; in mode `escape` (run as an unprivileged user) it runs
/// `osmos-probe escape` with the arguments in `PROBE_ARGS_ENV`.
#[test]
fn escape_helper_intermediate_host() {
    let Ok(mode) = std::env::var(INTERMEDIATE_ENV) else {
        return;
    };
    let mut command = Command::new(PROBE);
    command.env_clear();
    let policy = if mode == "escape" {
        let args = std::env::var(PROBE_ARGS_ENV).unwrap();
        command.arg("escape").args(args.lines());
        SandboxPolicy {
            write_dir: std::env::var_os(WRITE_DIR_ENV).map(PathBuf::from),
            allow_subprocesses: true,
            ..SandboxPolicy::default()
        }
    } else {
        command.arg("wait");
        SandboxPolicy {
            die_with_parent: mode == "die-with-parent",
            ..SandboxPolicy::default()
        }
    };
    let prepared = prepared(&policy);
    println!("intermediate report {}", prepared.report());
    // SAFETY: as in `run_probe`.
    unsafe { command.pre_exec(move || apply_in_child(&prepared)) };
    let mut child = command.spawn().expect("spawn the probe");
    println!("intermediate spawned {}", child.id());
    std::io::stdout().flush().unwrap();
    let _ = child.wait();
}

/// Reads lines from a pipe with a deadline (poll + read).
struct LineReader {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl LineReader {
    /// The next line, or `None` at end of file or when `deadline` passes.
    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Some(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polls one live pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
            if n == 0 {
                return None;
            }
            if n < 0 {
                continue; // EINTR
            }
            let mut chunk = [0u8; 4096];
            // SAFETY: reads into a live buffer.
            let r = unsafe { libc::read(self.fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
            if r == 0 {
                return None;
            }
            if r > 0 {
                self.buf.extend_from_slice(&chunk[..r as usize]);
            }
        }
    }
}

fn intermediate_command(mode: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "escape_helper_intermediate_host",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(INTERMEDIATE_ENV, mode);
    command
}

/// Reaps `pid`, which has exited and been reparented to this subreaper, and
/// returns the signal that killed it.
fn reap_orphan(pid: u32) -> Option<i32> {
    let mut status = 0;
    loop {
        // The process has exited (its pidfd said so): this does not block
        // for long. ECHILD (not our child) returns at once.
        // SAFETY: waits for one process and writes its status into a local.
        let ret = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if ret == pid as libc::pid_t {
            return libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status));
        }
        if ret == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        panic!("probe {pid} could not be reaped (waitpid returned {ret})");
    }
}

/// Starts the intermediate host, returns it, the probe's pid and pidfd, the
/// line reader of their shared stdout, and the probe's `ready` line.
fn start_intermediate(mode: &str) -> (Child, u32, OwnedFd, LineReader, String) {
    // Orphaned probes become our children, so that we can reap them.
    // SAFETY: integer arguments only.
    let ret = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(
        ret,
        0,
        "PR_SET_CHILD_SUBREAPER: {}",
        std::io::Error::last_os_error()
    );
    let mut helper = intermediate_command(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("re-execute the test binary as an intermediate host");
    let mut lines = LineReader {
        fd: helper.stdout.take().unwrap().into(),
        buf: Vec::new(),
    };
    let deadline = Instant::now() + BOUND;
    let (mut spawned, mut ready) = (None, None);
    while spawned.is_none() || ready.is_none() {
        let Some(line) = lines.next_line(deadline) else {
            let _ = helper.kill();
            panic!("the intermediate host did not start the probe (spawned {spawned:?}, ready {ready:?})");
        };
        if let Some(pid) = line.strip_prefix("intermediate spawned ") {
            spawned = Some(pid.parse::<u32>().unwrap());
        } else if line.starts_with("ready ") {
            ready = Some(line);
        }
    }
    let (pid, ready) = (spawned.unwrap(), ready.unwrap());
    assert!(ready.contains(&format!("pid={pid} ")), "{ready}");
    assert!(ready.contains(&format!("ppid={} ", helper.id())), "{ready}");
    // The probe is blocked reading the stdin we hold, under a living parent.
    let pidfd = pidfd_open(pid);
    (helper, pid, pidfd, lines, ready)
}

#[test]
fn escape_by_outliving_the_host_is_prevented_by_die_with_parent() {
    let (mut helper, pid, pidfd, mut lines, ready) = start_intermediate("die-with-parent");
    // Keep the probe's stdin open until it is reaped: `Child::wait` closes a
    // child's stdin first, and a probe reading EOF would exit on its own
    // before PDEATHSIG could kill it.
    let stdin = helper.stdin.take();
    assert!(
        ready.ends_with(&format!("pdeathsig={}", libc::SIGKILL)),
        "{ready}"
    );
    assert!(
        !wait_exit(&pidfd, Duration::ZERO),
        "the probe is alive before its parent dies"
    );

    let started = Instant::now();
    helper.kill().unwrap(); // SIGKILL: the host dies abruptly.
    helper.wait().unwrap();
    assert!(
        wait_exit(&pidfd, BOUND),
        "probe {pid} survived its parent for {BOUND:?}"
    );
    eprintln!(
        "probe {pid} died {:?} after its parent was killed",
        started.elapsed()
    );
    assert_eq!(reap_orphan(pid), Some(libc::SIGKILL), "PDEATHSIG killed it");
    drop(stdin);
    // Every writer of the shared stdout is gone.
    assert_eq!(lines.next_line(Instant::now() + BOUND), None);
}

#[test]
fn escape_by_outliving_the_host_succeeds_without_die_with_parent() {
    let (mut helper, pid, pidfd, mut lines, ready) = start_intermediate("stay");
    assert!(ready.ends_with("pdeathsig=0"), "{ready}");
    let mut stdin = helper.stdin.take().unwrap();
    helper.kill().unwrap();
    helper.wait().unwrap();

    // The orphaned probe still answers.
    writeln!(stdin, "ping").unwrap();
    assert_eq!(lines.next_line(Instant::now() + BOUND).as_deref(), Some("pong"));
    assert!(!wait_exit(&pidfd, Duration::ZERO), "probe {pid} is still alive");
    kill_pidfd(&pidfd);
    assert!(wait_exit(&pidfd, BOUND), "probe {pid} did not die of SIGKILL");
    assert_eq!(reap_orphan(pid), Some(libc::SIGKILL));
}

/// A host that is not root gets the same sandbox (its user namespace is what
/// lets it create the others), and there `RLIMIT_NPROC` bounds a fork bomb
/// even with subprocesses allowed.
#[test]
fn escape_attempts_are_denied_for_an_unprivileged_host_too() {
    let fx = Fixture::new("unprivileged");
    fx.open_to_everyone();
    let mut command = intermediate_command("escape");
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        command.uid(UNPRIVILEGED).gid(UNPRIVILEGED);
    }
    let child = command
        .env(PROBE_ARGS_ENV, fx.args().join("\n"))
        .env(WRITE_DIR_ENV, &fx.write_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("re-execute the test binary as an unprivileged host");
    let (output, timed_out) = output_bounded(child);
    let run = parse(
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert!(
        !timed_out,
        "the unprivileged host ran longer than {BOUND:?}:\n{}",
        run.stdout
    );
    run.print("unprivileged host, subprocesses allowed");
    let report = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("intermediate report "))
        .unwrap_or_else(|| {
            panic!(
                "no report from the intermediate host:\n{}\n{}",
                run.stdout, run.stderr
            )
        });
    eprintln!("  report: {report}");
    assert!(
        !report.contains("skipped"),
        "every step applies for an unprivileged host: {report}"
    );

    for attempt in ATTEMPTS {
        let o = run.outcome(attempt);
        assert!(!o.allowed, "escape `{attempt}` succeeded in the sandbox: {o:?}");
    }
    assert!(
        run.outcome(WRITE_INSIDE).allowed,
        "{:?}",
        run.outcome(WRITE_INSIDE)
    );
    let fork_bomb = run.outcome("fork_bomb");
    assert_eq!(fork_bomb.errno.as_deref(), Some("EAGAIN"), "{fork_bomb:?}");
    let forked: usize = fork_bomb.detail.trim_start_matches("forked=").parse().unwrap();
    assert!(forked < NPROC, "{forked} children under RLIMIT_NPROC {NPROC}");
    if root {
        assert_eq!(run.info("uid"), UNPRIVILEGED.to_string());
    }
    // The same limits for a host that is not root; its cells keep its ids.
    let data = osmos_host::sandbox::DEFAULT_MEMORY;
    assert_eq!(run.info("rlimit_data"), format!("{data} {data}"));
    let nice: i32 = run.info("nice").parse().unwrap();
    assert!(nice >= osmos_host::sandbox::DEFAULT_NICE_INCREMENT, "nice {nice}");
    assert!(
        report.contains("RLIMIT_DATA=1GiB") && report.contains("RLIMIT_NPROC=256"),
        "{report}"
    );
    assert!(
        !report.contains("cell-ids") && !report.contains("runs as uid"),
        "{report}"
    );
    assert_eq!(run.info("cap_effective"), "0x0");
    assert_eq!(run.info("pdeathsig"), libc::SIGKILL.to_string());
    assert_eq!(run.info("net_interfaces_with_ipv4"), "0");
    assert_eq!(std::fs::read(&fx.host_file).unwrap(), HOST_SECRET);
    assert!(!fx.outside_file.exists() && fx.removable.exists());
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
