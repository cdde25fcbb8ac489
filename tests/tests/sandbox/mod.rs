//! What the sandbox escape tests share: the fixture the probe attacks (host
//! files, listeners, directories), the list of escape attempts, and running
//! `osmos-probe` under a prepared sandbox with a bound.
//!
//! Each test spawns `osmos-probe` the way the host does, with
//! `Command::pre_exec` calling `apply_in_child` on a sandbox prepared in the
//! parent, and reads the probe's report of each escape attempt. The same
//! attempts run once without the sandbox, so the tests prove the sandbox and
//! not the machine: an attempt counts only where the machine permits it
//! unsandboxed (this is decided from the test process's own capabilities and
//! sysctls, and printed).
//!
//! The tests are `sandbox_escapes.rs` (every attempt with and without the
//! sandbox), `sandbox_policy.rs` (the write directory, read paths and each
//! layer on its own), `sandbox_report.rs` (what the report lists) and
//! `sandbox_intermediate_host.rs` (parent death and an unprivileged host).
//! Run them with `--nocapture` to see the tables of outcomes.
//!
//! Each test target compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use osmos_host::sandbox::{PreparedSandbox, SandboxPolicy, apply_in_child, prepare};

pub const PROBE: &str = env!("CARGO_BIN_EXE_osmos-probe");
/// Bound on every wait; only reached when something hangs.
pub const BOUND: Duration = Duration::from_secs(20);

pub fn root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Every escape the probe attempts when given all the fixture's arguments.
pub const ATTEMPTS: &[&str] = &[
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
pub const WRITE_INSIDE: &str = "write_inside_write_dir";
/// The default `RLIMIT_NPROC`.
pub const NPROC: usize = 256;

// ---------------------------------------------------------------------------
// Fixture: host files, listeners and directories the probe attacks
// ---------------------------------------------------------------------------

pub struct Fixture {
    pub root: PathBuf,
    pub host_file: PathBuf,
    pub outside_file: PathBuf,
    pub write_dir: PathBuf,
    pub inside_file: PathBuf,
    pub removable: PathBuf,
    pub mount_dir: PathBuf,
    pub unix_path: PathBuf,
    pub abstract_name: String,
    pub tcp: std::net::TcpListener,
    pub _unix: std::os::unix::net::UnixListener,
    pub _abstract: std::os::unix::net::UnixListener,
}

pub const HOST_SECRET: &[u8] = b"host secret\n";

impl Fixture {
    pub fn new(tag: &str) -> Self {
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

    pub fn args(&self) -> Vec<String> {
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
    pub fn open_to_everyone(&self) {
        use std::os::unix::fs::PermissionsExt;
        for dir in [&self.root, &self.write_dir, &self.mount_dir] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        for file in [&self.host_file, &self.removable, &self.unix_path] {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o666)).unwrap();
        }
    }

    pub fn default_policy(&self) -> SandboxPolicy {
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
pub struct Outcome {
    pub allowed: bool,
    /// The errno name when denied.
    pub errno: Option<String>,
    pub detail: String,
}

#[derive(Debug)]
pub struct ProbeRun {
    pub attempts: BTreeMap<String, Outcome>,
    pub info: BTreeMap<String, String>,
    pub stdout: String,
    pub stderr: String,
}

impl ProbeRun {
    pub fn outcome(&self, attempt: &str) -> &Outcome {
        self.attempts.get(attempt).unwrap_or_else(|| {
            panic!(
                "the probe did not report `{attempt}`\nstdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    pub fn info(&self, key: &str) -> &str {
        self.info
            .get(key)
            .unwrap_or_else(|| panic!("the probe did not report info `{key}`:\n{}", self.stdout))
    }

    pub fn print(&self, title: &str) {
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

pub fn parse(stdout: String, stderr: String) -> ProbeRun {
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

pub fn pidfd_open(pid: u32) -> OwnedFd {
    // SAFETY: integer arguments only.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(fd >= 0, "pidfd_open({pid}): {}", std::io::Error::last_os_error());
    // SAFETY: pidfd_open returned a new descriptor that we own.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Waits until the process behind `pidfd` has exited, at most `timeout`.
pub fn wait_exit(pidfd: &OwnedFd, timeout: Duration) -> bool {
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

pub fn kill_pidfd(pidfd: &OwnedFd) {
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
pub fn output_bounded(child: Child) -> (std::process::Output, bool) {
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
pub fn run_probe(prepared: PreparedSandbox, args: &[String]) -> ProbeRun {
    run_probe_at(PROBE.as_ref(), prepared, args)
}

/// Like `run_probe`, executing the probe through `program`.
pub fn run_probe_at(program: &Path, prepared: PreparedSandbox, args: &[String]) -> ProbeRun {
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

pub fn prepared(policy: &SandboxPolicy) -> PreparedSandbox {
    prepare(policy, Path::new(PROBE)).unwrap_or_else(|e| panic!("prepare the sandbox: {e}"))
}
