//! Crash loops, the restart policy's healthy reset, and exits told as they
//! happened.

use std::time::Duration;

use osmos_host::{CellBuilder, CellState, ExitInfo, HostError, RestartPolicy};
use osmos_tests::{AttackClient, TestCellClient};

use crate::harness::{
    ATTACKER, PEAK_FDS, PEAK_THREADS, SIBLING, Sampler, Sibling, Usage, bounded, run, size, until,
};

/// The fds one start of a cell holds at most while it runs.
const SPAWN_FDS: i64 = 32;

#[test]
fn a_crash_loop_is_given_up_on_with_its_stderr_bounded_and_the_host_unharmed() {
    run(|log| async move {
        let before = Usage::now();
        let restarts = size(8, 100) as u32;
        let mut sibling = Sibling::spawn().await;
        // Every incarnation crashes when it is called.
        let attacker = bounded(
            "the attacker",
            CellBuilder::new(ATTACKER)
                .name("crash-loop")
                .arg("--crash-on-add")
                .restart(RestartPolicy::OnFailure {
                    max_restarts: restarts,
                    backoff: Duration::from_millis(1),
                    max_backoff: Duration::from_millis(4),
                    reset_after: Duration::from_secs(3600),
                })
                .spawn(),
        )
        .await
        .unwrap();
        let baseline = Usage::now();
        let sampler = Sampler::start();
        sibling.call_throughout();
        let mut pid = attacker.pid().unwrap();
        for i in 0..=restarts {
            let r = attacker.client::<AttackClient>().unwrap().add(1, 1).await;
            assert!(r.is_err(), "the call crashed the cell");
            if i < restarts {
                pid = restarted(&attacker, pid).await;
            }
        }
        let state = bounded(
            "the policy to give up",
            attacker.wait_for(|s| matches!(s, CellState::Failed { .. })),
        )
        .await;
        let peak = sampler.stop();
        let calls = sibling.calls().await;
        eprintln!(
            "containment crash-loop: {restarts} restarts; host peak growth: rss {} KiB, threads {:+}, fds {:+}; sibling: {} calls, p50 {:.2?}, p99 {:.2?}",
            peak.rss_kib.saturating_sub(baseline.rss_kib),
            peak.threads - baseline.threads,
            peak.fds - baseline.fds,
            calls.ok,
            calls.percentile(0.5),
            calls.percentile(0.99),
        );
        assert!(peak.threads - baseline.threads <= PEAK_THREADS + 1);
        // A start holds fds for a moment (the sandbox plan opens the paths it
        // allows, the new segment, pipes, sockets, pidfd): one start's worth
        // at most, however many restarts.
        assert!(
            peak.fds - baseline.fds <= PEAK_FDS + SPAWN_FDS,
            "{peak:?} vs {baseline:?}"
        );
        let CellState::Failed { reason } = state else {
            unreachable!()
        };
        assert!(
            reason.contains(&format!("gave up after {restarts} restarts in a row"))
                && reason.contains("status 3"),
            "{reason}"
        );
        assert_eq!(attacker.stats().restarts, restarts);
        // The stderr of the last incarnation: kept after it died, bounded, escaped.
        until("the last incarnation's stderr", || {
            attacker.stderr_tail().last().map(String::as_str) == Some("attack-cell: crashing, the last line")
        })
        .await;
        let text = attacker.stderr_tail().join("\n");
        assert!(text.len() <= 4096 + 8, "{}", text.len());
        assert!(!text.contains('\x1b') && text.contains("\\x1b[2J"), "{text}");
        // The host's own events about it are bounded too.
        assert!(
            log.events()
                .iter()
                .filter(|e| e.about_cell("crash-loop"))
                .all(|e| e.text.len() < 6 << 10)
        );
        // Shutting down a cell that failed says how it really ended.
        assert_eq!(attacker.last_exit(), Some(ExitInfo::Exited(3)));
        assert_eq!(
            attacker.shutdown(Duration::from_secs(1)).await,
            ExitInfo::Exited(3)
        );
        until("the host's fds and threads to come back", || {
            let u = Usage::now();
            u.fds <= baseline.fds && u.threads <= baseline.threads + 1
        })
        .await;
        sibling.shutdown().await;
        until("the host's fds to come back", || Usage::now().fds <= before.fds).await;
    });
}

#[test]
fn a_start_failure_quotes_a_few_kib_of_stderr_at_most() {
    run(|_| async move {
        let marker = std::env::temp_dir().join(format!("osmos-bad-start-{}", std::process::id()));
        std::fs::write(&marker, b"not the first").unwrap();
        let err = bounded(
            "spawn",
            CellBuilder::new(ATTACKER)
                .name("bad-start")
                .arg("--fail-at-start-if-exists")
                .arg(&marker)
                .spawn(),
        )
        .await
        .unwrap_err();
        let _ = std::fs::remove_file(&marker);
        let HostError::Handshake {
            exit, stderr_tail, ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(*exit, Some(ExitInfo::Exited(3)));
        assert!(stderr_tail.len() <= 4096 + 8, "{}", stderr_tail.len());
        assert!(stderr_tail.ends_with("crashing, the last line"), "{stderr_tail}");
        assert!(err.to_string().len() < 6 << 10);
    });
}

/// Waits until the cell runs an incarnation other than `old`, and returns its pid.
async fn restarted(cell: &osmos_host::CellHandle, old: u32) -> u32 {
    let state = bounded(
        "the restart",
        cell.wait_for(|s| {
            matches!(s, CellState::Running { pid, .. } if *pid != old)
                || matches!(s, CellState::Failed { .. })
        }),
    )
    .await;
    match state {
        CellState::Running { pid, .. } => pid,
        s => panic!("the cell was not restarted: {s}"),
    }
}

#[test]
fn a_cell_that_crashes_after_healthy_runs_is_never_given_up_on() {
    run(|_| async move {
        let healthy = Duration::from_millis(200);
        let cell = bounded(
            "spawn",
            CellBuilder::new(SIBLING)
                .name("rare-crashes")
                // One failure in a row allowed: only the reset keeps it alive.
                .restart(RestartPolicy::on_failure(1).reset_after(healthy))
                .spawn(),
        )
        .await
        .unwrap();
        let crashes = size(5, 50) as u32;
        for round in 0..crashes {
            // The real event: the supervisor has seen a healthy run.
            until("the healthy period to reset the count", || {
                cell.stats().failures_in_a_row == 0
            })
            .await;
            let pid = cell.pid().unwrap();
            let _ = cell.client::<TestCellClient>().unwrap().exit(1).await;
            let next = restarted(&cell, pid).await;
            assert_eq!(cell.stats().restarts, round + 1);
            assert_eq!(
                cell.client::<TestCellClient>().unwrap().pid().await.unwrap(),
                next
            );
        }
        assert!(matches!(cell.state(), CellState::Running { .. }));
        assert_eq!(cell.shutdown(Duration::from_secs(5)).await, ExitInfo::Exited(0));

        // Without a healthy run between them, the second failure in a row
        // is one too many.
        let cell = bounded(
            "spawn",
            CellBuilder::new(SIBLING)
                .name("crashes-in-a-row")
                .restart(RestartPolicy::on_failure(1).reset_after(Duration::from_secs(3600)))
                .spawn(),
        )
        .await
        .unwrap();
        let pid = cell.pid().unwrap();
        let _ = cell.client::<TestCellClient>().unwrap().exit(1).await;
        restarted(&cell, pid).await;
        let _ = cell.client::<TestCellClient>().unwrap().exit(1).await;
        let state = bounded(
            "the policy to give up",
            cell.wait_for(|s| matches!(s, CellState::Failed { .. })),
        )
        .await;
        assert!(
            state.to_string().contains("gave up after 1 restarts in a row"),
            "{state}"
        );
        assert_eq!(cell.shutdown(Duration::from_secs(1)).await, ExitInfo::Exited(1));
    });
}

#[test]
fn every_signal_that_kills_a_cell_is_named() {
    run(|_| async move {
        for (sig, name) in [
            (libc::SIGXCPU, "SIGXCPU"),
            (libc::SIGXFSZ, "SIGXFSZ"),
            (libc::SIGSYS, "SIGSYS"),
            (libc::SIGUSR1, "SIGUSR1"),
            (libc::SIGRTMIN() + 3, "SIGRTMIN+3"),
        ] {
            let cell = bounded("spawn", CellBuilder::new(SIBLING).name("signalled").spawn())
                .await
                .unwrap();
            let pid = cell.pid().unwrap();
            // SAFETY: a plain kill of our own child.
            assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
            let state = bounded(
                "the death",
                cell.wait_for(|s| matches!(s, CellState::Stopped { .. })),
            )
            .await;
            assert_eq!(
                state,
                CellState::Stopped {
                    exit: ExitInfo::Signaled(sig)
                }
            );
            assert!(state.to_string().contains(name), "{state}");
            assert_eq!(
                cell.shutdown(Duration::from_secs(1)).await,
                ExitInfo::Signaled(sig)
            );
        }
    });
}

#[test]
fn a_clean_exit_never_logs_a_warning() {
    run(|log| async move {
        let n = size(8, 64);
        let mut cells = Vec::new();
        for i in 0..n {
            let cell = bounded(
                "spawn",
                CellBuilder::new(SIBLING).name(format!("clean-{i}")).spawn(),
            )
            .await
            .unwrap();
            assert_eq!(
                cell.client::<TestCellClient>().unwrap().add(1, 2).await.unwrap(),
                3
            );
            cells.push(cell);
        }
        // Judge the shutdowns only (a spawn may warn about the sandbox).
        let mark = log.events().len();
        let shutdowns: Vec<_> = cells
            .iter()
            .cloned()
            .map(|c| tokio::spawn(async move { c.shutdown(Duration::from_secs(5)).await }))
            .collect();
        let mut exits = Vec::new();
        for s in shutdowns {
            exits.push(bounded("a shutdown", s).await.unwrap());
        }
        assert!(exits.iter().all(|e| e.success()), "{exits:?}");
        // Cells that end on their own with status 0 (no goodbye from the
        // host: their link just goes away) are no warning either.
        for i in 0..n {
            let cell = bounded(
                "spawn",
                CellBuilder::new(SIBLING).name(format!("exits-{i}")).spawn(),
            )
            .await
            .unwrap();
            let _ = cell.client::<TestCellClient>().unwrap().exit(0).await;
            let state = bounded(
                "the exit",
                cell.wait_for(|s| matches!(s, CellState::Stopped { .. })),
            )
            .await;
            assert_eq!(
                state,
                CellState::Stopped {
                    exit: ExitInfo::Exited(0)
                }
            );
        }
        let mut warnings = log.events().split_off(mark);
        warnings.retain(|e| e.level <= tracing::Level::WARN && e.target.starts_with("osmos"));
        assert!(warnings.is_empty(), "a clean shutdown logged: {warnings:?}");
    });
}
