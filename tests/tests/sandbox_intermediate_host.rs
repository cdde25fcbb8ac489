//! Sandboxed probes under an intermediate host: these tests re-execute this
//! test binary as a host (`escape_helper_intermediate_host`) that spawns the
//! probe. The parent-death tests kill that host; this process makes itself a
//! child subreaper (`PR_SET_CHILD_SUBREAPER`) so that it can reap the
//! orphaned probes. The unprivileged-host test re-executes it as `nobody`.
//! Run with `--nocapture` to see the table of outcomes.

mod sandbox;

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use osmos_host::sandbox::{SandboxPolicy, apply_in_child};
use sandbox::{
    ATTEMPTS, BOUND, Fixture, HOST_SECRET, NPROC, PROBE, WRITE_INSIDE, kill_pidfd, output_bounded, parse,
    pidfd_open, prepared, wait_exit,
};

/// Set in the environment of the re-executed test binary acting as an
/// intermediate host (see `escape_helper_intermediate_host`).
const INTERMEDIATE_ENV: &str = "OSMOS_SANDBOX_TEST_INTERMEDIATE";
/// The probe's arguments for the intermediate host, one per line.
const PROBE_ARGS_ENV: &str = "OSMOS_SANDBOX_TEST_PROBE_ARGS";
/// The write directory for the intermediate host.
const WRITE_DIR_ENV: &str = "OSMOS_SANDBOX_TEST_WRITE_DIR";
/// The unprivileged user the intermediate host runs as (`nobody`).
const UNPRIVILEGED: u32 = 65534;

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
    // And never preempting the host on wakeup.
    assert_eq!(run.info("sched_policy"), libc::SCHED_BATCH.to_string());
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
