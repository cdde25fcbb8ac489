//! Cross-process tests of the host and the plugin SDK: a real host API
//! spawning real `test-cell` processes over shm, sandboxed by default.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use osmos_host::{CellBuilder, CellHandle, CellState, ExitInfo, HostError, RestartPolicy, SandboxPolicy};
use osmos_session::{CallError, CallOptions, SessionError};
use osmos_tests::{HostDirectory, HostDirectoryDispatcher, TestCellClient, bounded, streams_both_ways};

const CELL: &str = env!("CARGO_BIN_EXE_test-cell");
async fn spawn(name: &str) -> CellHandle {
    bounded("spawn", CellBuilder::new(CELL).name(name).spawn())
        .await
        .expect("spawn the test cell")
}

fn client(cell: &CellHandle) -> TestCellClient {
    cell.client::<TestCellClient>().expect("a running cell")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reach_a_separate_sandboxed_process() {
    let cell = spawn("calls").await;
    let c = client(&cell);
    let pid = bounded("pid", c.pid()).await.unwrap();
    assert_eq!(Some(pid), cell.pid());
    assert_ne!(pid, std::process::id());
    assert_eq!(c.add(20, 22).await.unwrap(), 42);
    let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    assert_eq!(bounded("echo", c.echo(big.clone())).await.unwrap(), big);
    let report = cell.sandbox_report().expect("a report");
    assert!(
        !report.applied.is_empty(),
        "the default sandbox applied something: {report:?}"
    );
    let stats = cell.stats();
    assert!(
        stats.session.calls_made >= 3 && stats.session.bytes_sent > 1 << 20,
        "{stats:?}"
    );
    assert_eq!(cell.shutdown(Duration::from_secs(5)).await, ExitInfo::Exited(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_flow_both_ways_across_processes() {
    let cell = spawn("streams").await;
    let c = client(&cell);
    streams_both_ways(&c, 10_000).await;
    cell.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_cancels_a_call_in_the_cell() {
    let cell = spawn("cancel").await;
    let c = client(&cell);
    let hang = osmos_session::method_id("TestCell", "hang");
    let r: Result<(), CallError<String>> = bounded(
        "call",
        c.connection()
            .call(hang, &(), CallOptions::timeout(Duration::from_millis(50))),
    )
    .await;
    assert!(matches!(r, Err(CallError::DeadlineExceeded { .. })), "{r:?}");
    assert_eq!(c.add(1, 1).await.unwrap(), 2, "the cell keeps serving");
    let served = bounded("cancel to arrive", async {
        loop {
            if cell.stats().session.serving_calls == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    });
    served.await;
    cell.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_killed_mid_call_fails_the_call_saying_how_it_died() {
    let cell = spawn("killed-mid-call").await;
    let c = client(&cell);
    let hanging = tokio::spawn({
        let c = c.clone();
        async move { c.hang().await }
    });
    // The hang call is in the cell once the cell reports it serving it.
    bounded("the call to reach the cell", async {
        while cell.stats().session.pending_calls == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(c.add(1, 2).await.unwrap(), 3);
    let killed = Instant::now();
    cell.kill();
    let err = bounded("the failed call", hanging).await.unwrap().unwrap_err();
    let latency = killed.elapsed();
    eprintln!("SIGKILL → in-flight call failed in {latency:?}: {err}");
    match &err {
        CallError::Session(SessionError::PeerDied { detail }) => {
            assert!(
                detail.contains("killed-mid-call") && detail.contains("SIGKILL"),
                "{detail}"
            );
        }
        e => panic!("expected PeerDied, got {e:?}"),
    }
    assert!(matches!(
        cell.wait_for(|s| matches!(s, CellState::Stopped { .. })).await,
        CellState::Stopped {
            exit: ExitInfo::Signaled(9)
        }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_killed_mid_stream_fails_the_stream() {
    let cell = spawn("killed-mid-stream").await;
    let c = client(&cell);
    let (tx, mut rx) = c.connection().channel::<u32>().unwrap();
    let counting = tokio::spawn({
        let c = c.clone();
        async move { c.count(u32::MAX, tx).await }
    });
    for i in 0..100 {
        assert_eq!(bounded("item", rx.recv()).await.unwrap().unwrap(), i);
    }
    cell.kill();
    let mut last = None;
    while let Some(item) = bounded("the stream to end", rx.recv()).await {
        if let Err(e) = item {
            last = Some(e);
            break;
        }
    }
    let e = last.expect("the stream ends with an error, not a clean close");
    assert!(e.to_string().contains("SIGKILL"), "{e}");
    assert!(bounded("count", counting).await.unwrap().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cell_is_restarted_and_its_client_works_again() {
    let cell = bounded(
        "spawn",
        CellBuilder::new(CELL)
            .name("restarted")
            .restart(RestartPolicy::on_failure(3))
            .spawn(),
    )
    .await
    .unwrap();
    let first = client(&cell).pid().await.unwrap();
    cell.kill();
    let state = bounded(
        "the restart",
        cell.wait_for(|s| matches!(s, CellState::Running { pid, .. } if *pid != first)),
    )
    .await;
    let CellState::Running { pid: second, .. } = state else {
        unreachable!()
    };
    assert_eq!(client(&cell).pid().await.unwrap(), second);
    assert_eq!(client(&cell).add(2, 2).await.unwrap(), 4);
    assert_eq!(cell.stats().restarts, 1);
    assert_eq!(cell.shutdown(Duration::from_secs(5)).await, ExitInfo::Exited(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restart_policy_gives_up() {
    let marker = std::env::temp_dir().join(format!("osmos-gives-up-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let cell = bounded(
        "spawn",
        CellBuilder::new(CELL)
            .name("gives-up")
            .arg("--fail-if-exists")
            .arg(&marker)
            .sandbox(SandboxPolicy::disabled())
            .restart(RestartPolicy::on_failure(2))
            .spawn(),
    )
    .await
    .unwrap();
    // Crash the first incarnation; every restart then fails at start.
    let _ = client(&cell).exit(7).await;
    let state = bounded(
        "the policy to give up",
        cell.wait_for(|s| matches!(s, CellState::Failed { .. })),
    )
    .await;
    let CellState::Failed { reason } = state else {
        unreachable!()
    };
    assert!(reason.contains("gave up after 2 restarts"), "{reason}");
    assert_eq!(cell.stats().restarts, 2);
    let _ = std::fs::remove_file(&marker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_exit_status_is_reported() {
    let cell = spawn("exits").await;
    let _ = client(&cell).exit(5).await;
    let s = bounded("exit", cell.wait_for(|s| matches!(s, CellState::Stopped { .. }))).await;
    assert_eq!(
        s,
        CellState::Stopped {
            exit: ExitInfo::Exited(5)
        }
    );
    assert!(matches!(cell.connection(), Err(HostError::NotRunning { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_that_fails_at_start_reports_how_and_its_stderr() {
    let err = bounded(
        "spawn",
        CellBuilder::new(CELL)
            .name("bad-start")
            .arg("--fail-at-start")
            .spawn(),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            HostError::Handshake {
                exit: Some(ExitInfo::Exited(3)),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(text.contains("failing at start as asked"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_by_hand_a_cell_explains_itself_and_exits_non_zero() {
    let out = std::process::Command::new(CELL)
        .env_remove("OSMOS_CELL_NAME")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(osmos_plugin_sdk::EXIT_NOT_LAUNCHED_BY_HOST)
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("osmos cell") && text.contains("CellBuilder::new"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_mismatch_runs_nothing() {
    let marker = std::env::temp_dir().join(format!("osmos-marker-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let err = CellBuilder::new(CELL)
        .arg("--marker")
        .arg(&marker)
        .expect_sha256("00".repeat(32))
        .sandbox(SandboxPolicy::disabled())
        .spawn()
        .await
        .unwrap_err();
    assert!(matches!(err, HostError::ChecksumMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("not executed"), "{err}");
    assert!(!marker.exists(), "the binary did not run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_checksum_runs() {
    let bytes = std::fs::read(CELL).unwrap();
    let digest = sha256_hex(&bytes);
    let cell = bounded(
        "spawn",
        CellBuilder::new(CELL)
            .name("checked")
            .expect_sha256(digest)
            .spawn(),
    )
    .await
    .unwrap();
    assert_eq!(client(&cell).add(1, 1).await.unwrap(), 2);
    cell.shutdown(Duration::from_secs(5)).await;
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_binary_is_a_clear_error() {
    let err = CellBuilder::new("/nonexistent/osmos-cell")
        .spawn()
        .await
        .unwrap_err();
    assert!(matches!(err, HostError::ProgramNotFound { .. }));
    assert!(err.to_string().contains("/nonexistent/osmos-cell"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_is_cleared_but_for_the_allow_list() {
    // PATH is set in any host environment; every other host variable must
    // stay behind.
    assert!(std::env::var_os("PATH").is_some());
    let cell = bounded(
        "spawn",
        CellBuilder::new(CELL)
            .name("env")
            .env_allow("PATH")
            .env("EXTRA", "1")
            .spawn(),
    )
    .await
    .unwrap();
    let env = client(&cell).env().await.unwrap();
    let keys: BTreeSet<String> = env
        .iter()
        .map(|l| l.split('=').next().unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = [
        "EXTRA",
        "OSMOS_CELL_NAME",
        "OSMOS_CONTROL_FD",
        "OSMOS_PROTOCOL_VERSION",
        "OSMOS_SEGMENT_FD",
        "OSMOS_WAKE_FD",
        "PATH",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(keys, expected, "{env:?}");
    assert!(env.contains(&"OSMOS_CELL_NAME=env".to_string()));
    cell.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_stdio_and_the_bootstrap_fds_are_inherited() {
    let cell = spawn("fds").await;
    let fds = client(&cell).fds().await.unwrap();
    // 0-2 stdio, 3 segment, 4 control, 5 wake; the rest are the cell's own
    // (runtime).
    for fd in [0, 1, 2, 3, 4, 5] {
        assert!(fds.contains(&fd), "{fds:?}");
    }
    // A descriptor the host holds open is not inherited.
    let probe = std::fs::File::open(CELL).unwrap();
    let cell2 = spawn("fds-2").await;
    let fds2 = client(&cell2).fds().await.unwrap();
    drop(probe);
    let inherited_max = fds2.iter().copied().filter(|&f| f <= 5).count();
    assert_eq!(inherited_max, 6, "{fds2:?}");
    cell.shutdown(Duration::from_secs(5)).await;
    cell2.shutdown(Duration::from_secs(5)).await;
}

/// Collects the events the host's tracing receives.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct V(String);
        impl tracing::field::Visit for V {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={v:?} ", f.name()));
            }
        }
        let mut v = V(String::new());
        event.record(&mut v);
        self.0.lock().unwrap().push(v.0);
    }
}

#[test]
fn cell_output_and_tracing_reach_the_host_tagged_with_the_cell_name() {
    use tracing_subscriber::prelude::*;
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cell = spawn("logger").await;
        client(&cell).log("hello from the cell".into()).await.unwrap();
        let wanted = |l: &str| l.contains("cell=logger") && l.contains("hello from the cell");
        bounded("the three lines", async {
            loop {
                let lines = captured.0.lock().unwrap().clone();
                let hits: Vec<_> = lines.iter().filter(|l| wanted(l)).collect();
                let stdout = hits.iter().any(|l| l.contains("stdout:"));
                let stderr = hits.iter().any(|l| l.contains("stderr:"));
                let traced = hits.iter().any(|l| l.contains("answer=42"));
                if stdout && stderr && traced {
                    break;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        cell.shutdown(Duration::from_secs(5)).await;
    });
}

struct Directory;
impl HostDirectory for Directory {
    async fn lookup(&self, key: String) -> Result<String, String> {
        if key == "answer" {
            Ok("42".into())
        } else {
            Err(format!("no key {key}"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_calls_a_service_the_host_exposes() {
    let cell = bounded(
        "spawn",
        CellBuilder::new(CELL)
            .name("asks")
            .serve(HostDirectoryDispatcher::new(Directory))
            .spawn(),
    )
    .await
    .unwrap();
    let c = client(&cell);
    assert_eq!(c.ask_host("answer".into()).await.unwrap(), "42");
    assert!(
        c.ask_host("other".into())
            .await
            .unwrap_err()
            .to_string()
            .contains("no key other")
    );
    cell.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_cells_at_once() {
    let cells: Vec<CellHandle> = futures_join(
        (0..64)
            .map(|i| async move { spawn(&format!("many-{i}")).await })
            .collect(),
    )
    .await;
    let pids: BTreeSet<u32> = cells.iter().filter_map(|c| c.pid()).collect();
    assert_eq!(pids.len(), 64, "64 distinct processes");
    let sums = futures_join(
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let c = client(c);
                async move { c.add(i as u32, 1).await.unwrap() }
            })
            .collect(),
    )
    .await;
    assert_eq!(sums, (1..=64).collect::<Vec<u32>>());
    let exits = futures_join(
        cells
            .iter()
            .cloned()
            .map(|c| async move { c.shutdown(Duration::from_secs(10)).await })
            .collect(),
    )
    .await;
    assert!(exits.iter().all(|e| e.success()), "{exits:?}");
}

/// Awaits all futures concurrently (spawned), in order.
async fn futures_join<F>(futs: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(bounded("a task", h).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_the_default_sandbox_denies_host_files_network_ptrace_and_writes() {
    let secret = std::env::temp_dir().join(format!("osmos-secret-{}", std::process::id()));
    std::fs::write(&secret, b"host secret").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let outside = std::env::temp_dir().join(format!("osmos-outside-{}", std::process::id()));
    let cell = spawn("jailed").await;
    let c = client(&cell);
    let read = c.try_read(secret.display().to_string()).await;
    assert!(read.is_err(), "reading a host file must fail: {read:?}");
    let connect = c.try_connect(addr.clone()).await;
    assert!(
        connect.is_err(),
        "connecting to the network must fail: {connect:?}"
    );
    let trace = c.try_ptrace_parent().await;
    assert!(trace.is_err(), "ptrace of the host must fail: {trace:?}");
    let write = c.try_write(outside.display().to_string()).await;
    assert!(
        write.is_err() && !outside.exists(),
        "writing outside must fail: {write:?}"
    );
    cell.shutdown(Duration::from_secs(5)).await;
    // The same attempts succeed without the sandbox: the test proves the sandbox.
    let open = bounded(
        "spawn",
        CellBuilder::new(CELL)
            .name("open")
            .sandbox(SandboxPolicy::disabled())
            .spawn(),
    )
    .await
    .unwrap();
    let c = client(&open);
    assert_eq!(c.try_read(secret.display().to_string()).await.unwrap(), 11);
    c.try_connect(addr).await.unwrap();
    c.try_write(outside.display().to_string()).await.unwrap();
    assert!(outside.exists());
    open.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_file(&secret);
    let _ = std::fs::remove_file(&outside);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_dies_takes_its_cells_with_it() {
    const ROLE: &str = "OSMOS_TEST_MINI_HOST";
    if std::env::var_os(ROLE).is_some() {
        // The mini host: spawn a cell, report its pid, then wait to be killed.
        let cell = spawn("orphan").await;
        println!("cell-pid {}", cell.pid().unwrap());
        use std::io::Write as _;
        std::io::stdout().flush().unwrap();
        std::future::pending::<()>().await;
    }
    let mut host = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "a_host_that_dies_takes_its_cells_with_it",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = host.stdout.take().unwrap();
    let pid: i32 = bounded(
        "the mini host's report",
        tokio::task::spawn_blocking(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout).lines() {
                // The test harness may print "test <name> ... " on the same line.
                if let Some((_, p)) = line.unwrap().split_once("cell-pid ") {
                    return p.trim().parse().unwrap();
                }
            }
            panic!("the mini host never reported its cell");
        }),
    )
    .await
    .unwrap();
    let pidfd = rustix_pidfd(pid);
    host.kill().unwrap();
    host.wait().unwrap();
    // SAFETY: the AsyncFd owns the pidfd, which stays open for its lifetime.
    let afd =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.to_string())
            .unwrap();
    bounded("the orphaned cell to die", afd.readable())
        .await
        .unwrap()
        .retain_ready();
}

/// A pidfd for `pid`, via the raw system call.
fn rustix_pidfd(pid: i32) -> std::os::fd::OwnedFd {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(fd >= 0, "pidfd_open({pid}): {}", std::io::Error::last_os_error());
    // SAFETY: the kernel returned a new fd that nothing else owns.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_that_ignores_goodbye_is_killed_after_the_grace_period() {
    let cell = bounded(
        "spawn",
        CellBuilder::new(CELL).name("lingers").arg("--linger").spawn(),
    )
    .await
    .unwrap();
    assert_eq!(client(&cell).add(1, 1).await.unwrap(), 2);
    let t = Instant::now();
    let exit = bounded("shutdown", cell.shutdown(Duration::from_millis(200))).await;
    assert_eq!(
        exit,
        ExitInfo::Signaled(libc::SIGKILL),
        "killed once the grace period ran out"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "it got its grace period: {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_kills_the_cell() {
    let cell = bounded(
        "spawn",
        CellBuilder::new(CELL)
            .name("dropped")
            .restart(RestartPolicy::on_failure(3))
            .spawn(),
    )
    .await
    .unwrap();
    let pid = cell.pid().unwrap();
    let pidfd = rustix_pidfd(pid as i32);
    let clone = cell.clone();
    drop(cell);
    assert_eq!(
        client(&clone).add(1, 1).await.unwrap(),
        2,
        "a clone keeps it alive"
    );
    drop(clone);
    // SAFETY: the AsyncFd owns the pidfd, which stays open for its lifetime.
    let afd =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.to_string())
            .unwrap();
    bounded("the cell to die", afd.readable())
        .await
        .unwrap()
        .retain_ready();
}
