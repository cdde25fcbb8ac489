//! Clients across restarts: the cell's client (`CellHandle::client`) and a
//! `FollowingClient` reach whichever `test-cell` process runs when a call is
//! made, fails the calls in flight at a death
//! once with how the cell died, waits while the cell restarts, and fails
//! clearly once the cell is given up on or shut down. And the order a caller
//! relies on: the cell's state leaves `Running` before its calls fail.

use std::time::{Duration, Instant};

use osmos_host::{
    CellBuilder, CellHandle, CellState, FollowingClient, HostError, RestartPolicy, SandboxPolicy,
};
use osmos_session::{CallError, CallOptions, SessionError};
use osmos_tests::{BOUND, TestCellClient, bounded};

const CELL: &str = env!("CARGO_BIN_EXE_test-cell");
async fn spawn(name: &str, policy: RestartPolicy) -> CellHandle {
    bounded("spawn", CellBuilder::new(CELL).name(name).restart(policy).spawn())
        .await
        .expect("spawn the test cell")
}

/// A policy restarting after `backoff` every time.
fn steady(backoff: Duration) -> RestartPolicy {
    RestartPolicy::OnFailure {
        max_restarts: 10,
        backoff,
        max_backoff: backoff,
        reset_after: Duration::from_secs(60),
    }
}

async fn pid_of(cell: &FollowingClient<TestCellClient>) -> u32 {
    bounded("a pid call", cell.call(|c| async move { c.pid().await }))
        .await
        .expect("a pid call")
}

fn running(s: &CellState) -> bool {
    matches!(s, CellState::Running { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_taken_before_a_crash_calls_the_restarted_cell() {
    let cell = spawn("follows", RestartPolicy::on_failure(5)).await;
    let follower = cell.following_client::<TestCellClient>();
    let client = cell.client::<TestCellClient>().unwrap();
    let bound_to_first = TestCellClient::new(cell.connection().unwrap());
    let first = pid_of(&follower).await;
    assert_eq!(bounded("pid", client.pid()).await.unwrap(), first);
    assert_eq!(Some(first), cell.pid());

    // The crash happens during the call: that call fails, saying how.
    let crashed = bounded("the exit call", follower.call(|c| async move { c.exit(1).await })).await;
    match crashed {
        Err(CallError::Session(SessionError::PeerDied { detail })) => assert!(
            detail.contains("'follows'")
                && detail.contains(&format!("pid {first}"))
                && detail.contains("exited with status 1"),
            "{detail}"
        ),
        other => panic!("expected PeerDied, got {other:?}"),
    }

    // The same follower reaches the next process; no wait needed first.
    let second = pid_of(&follower).await;
    assert_ne!(first, second);
    assert_eq!(Some(second), cell.pid());
    assert_eq!(
        bounded("add", follower.call(|c| async move { c.add(40, 2).await }))
            .await
            .unwrap(),
        42
    );
    // The cell's client, held across the crash, calls the new process.
    assert_eq!(bounded("pid", client.pid()).await.unwrap(), second);
    assert!(
        client.connection().ended().is_none(),
        "the client's connection is the new process's"
    );
    // A client made from one connection stays bound to that process.
    assert!(matches!(
        bound_to_first.add(1, 1).await,
        Err(CallError::Session(SessionError::PeerDied { .. }))
    ));
    cell.shutdown(Duration::from_secs(5)).await;
}

/// Makes a `hang` call, kills the cell once the call is pending, and
/// returns the call's result with the cell's state read the instant the
/// call is seen to fail: the call is polled in a busy loop on the test's
/// own thread (no task wake in between), so a state published after the
/// calls fail, even by microseconds, is seen as still running.
async fn hang_then_kill(
    cell: &CellHandle,
    follower: &FollowingClient<TestCellClient>,
) -> (Result<(), CallError<String>>, CellState) {
    use std::future::Future;
    use std::task::Poll;
    let call = follower.call(|c| async move { c.hang().await });
    let mut call = std::pin::pin!(call);
    let started = Instant::now();
    let mut killed = false;
    std::future::poll_fn(|cx| {
        loop {
            if let Poll::Ready(r) = call.as_mut().poll(cx) {
                return Poll::Ready((r, cell.state()));
            }
            if !killed && cell.stats().session.pending_calls >= 1 {
                cell.kill();
                killed = true;
            }
            assert!(
                started.elapsed() < BOUND,
                "timed out waiting for the in-flight call to fail"
            );
            std::hint::spin_loop();
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_call_fails_once_and_running_then_means_a_new_process() {
    let cell = spawn("in-flight", steady(Duration::from_millis(10))).await;
    let follower = cell.following_client::<TestCellClient>();
    for round in 0..8 {
        let old = cell.pid().expect("running");
        let (failed, state_at_failure) = hang_then_kill(&cell, &follower).await;
        // When the call failed, the state had already left `Running` as
        // the dead process.
        assert!(
            !matches!(state_at_failure, CellState::Running { pid, .. } if pid == old),
            "round {round}: the call failed while the state still said running as the dead pid {old}"
        );
        match failed {
            Err(CallError::Session(SessionError::PeerDied { detail })) => assert!(
                detail.contains(&format!("pid {old}")) && detail.contains("SIGKILL"),
                "round {round}: {detail}"
            ),
            other => panic!("round {round}: expected PeerDied, got {other:?}"),
        }
        // Waiting for `Running` now gives the next process, never the dead one.
        let CellState::Running { pid, incarnation } = bounded("running again", cell.wait_for(running)).await
        else {
            unreachable!()
        };
        assert_eq!(
            incarnation,
            round + 1,
            "round {round}: each restart is the next incarnation"
        );
        assert_ne!(
            pid, old,
            "round {round}: wait_for(Running) returned the dead process"
        );
        // Only the call in flight failed: the next one reaches the new process.
        assert_eq!(pid_of(&follower).await, pid, "round {round}");
    }
    cell.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_made_while_the_cell_restarts_waits_for_the_new_process() {
    // A backoff long enough that the call below is made while restarting.
    let cell = spawn("waits", steady(Duration::from_millis(500))).await;
    let follower = cell.following_client::<TestCellClient>();
    let old = pid_of(&follower).await;
    cell.kill();
    bounded(
        "restarting",
        cell.wait_for(|s| matches!(s, CellState::Restarting { .. })),
    )
    .await;
    // The current incarnation's connection cannot be had now...
    assert!(matches!(cell.connection(), Err(HostError::NotRunning { .. })));
    // ...but a call through the cell's client, made now, waits for the
    // next one, and so does a following call.
    let client = cell.client::<TestCellClient>().unwrap();
    let started = Instant::now();
    let was = cell.state();
    let new = bounded("pid", client.pid()).await.unwrap();
    assert_eq!(pid_of(&follower).await, new);
    eprintln!(
        "a call made while {was} was answered by pid {new} after {:?}",
        started.elapsed()
    );
    assert_ne!(new, old);
    assert_eq!(Some(new), cell.pid());
    cell.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_cell_restarts_a_call_fails_fast_or_at_its_own_deadline_if_asked() {
    // A backoff long enough that the calls below are made while restarting.
    let cell = spawn("fail-fast", steady(Duration::from_secs(5))).await;
    let client = cell.client::<TestCellClient>().unwrap();
    let old = bounded("pid", client.pid()).await.unwrap();
    cell.kill();
    bounded(
        "restarting",
        cell.wait_for(|s| matches!(s, CellState::Restarting { .. })),
    )
    .await;
    let started = Instant::now();
    match bounded(
        "a fail-fast call",
        client.pid_with(CallOptions::default().fail_fast()),
    )
    .await
    {
        Err(CallError::Session(SessionError::PeerDied { detail })) => {
            assert!(
                detail.contains("'fail-fast'") && detail.contains("restarting"),
                "{detail}"
            )
        }
        other => panic!("expected PeerDied at once, got {other:?}"),
    }
    // A timeout shorter than the restart: the call's own deadline ends the
    // wait, reported against the whole timeout.
    let timeout = Duration::from_millis(100);
    match bounded(
        "a call with a short deadline",
        client.pid_with(CallOptions::timeout(timeout)),
    )
    .await
    {
        Err(CallError::DeadlineExceeded { after }) => assert_eq!(after, timeout),
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    assert!(
        matches!(cell.state(), CellState::Restarting { .. }),
        "the calls waited for the restart ({:?}): {}",
        started.elapsed(),
        cell.state()
    );
    // Without either, the same client waits for the new process.
    let new = bounded("pid", client.pid()).await.unwrap();
    assert_ne!(new, old);
    cell.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waits_past_an_incarnation_whose_session_ended_while_it_runs() {
    // `--linger`: the cell ignores the end of its session and keeps running,
    // until the supervisor kills it after the grace period and restarts it.
    let cell = bounded(
        "spawn",
        CellBuilder::new(CELL)
            .name("lingers")
            .arg("--linger")
            .restart(steady(Duration::from_millis(10)))
            .spawn(),
    )
    .await
    .unwrap();
    let follower = cell.following_client::<TestCellClient>();
    let old = pid_of(&follower).await;
    cell.connection()
        .unwrap()
        .goodbye("the test ends this session")
        .await;
    // The process still runs, its session is over: the call must not go to
    // it (it would fail with the session's end), but wait for the next one.
    assert!(matches!(cell.state(), CellState::Running { pid, .. } if pid == old));
    let new = pid_of(&follower).await;
    assert_ne!(new, old);
    // It ignores goodbyes: no use giving it long.
    cell.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_fails_clearly_when_the_cell_is_not_back_within_its_wait() {
    let cell = spawn("slow-restart", steady(Duration::from_secs(2))).await;
    let follower = cell
        .following_client::<TestCellClient>()
        .wait_at_most(Duration::from_millis(50));
    let _ = pid_of(&follower).await;
    cell.kill();
    bounded(
        "restarting",
        cell.wait_for(|s| matches!(s, CellState::Restarting { .. })),
    )
    .await;
    match bounded("the call", follower.call(|c| async move { c.pid().await })).await {
        Err(CallError::Session(SessionError::PeerDied { detail })) => assert!(
            detail.contains("'slow-restart' was not running again within 50ms")
                && detail.contains("restarting")
                && detail.contains("wait_at_most"),
            "{detail}"
        ),
        other => panic!("expected a clear PeerDied, got {other:?}"),
    }
    cell.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_clearly_once_the_cell_is_given_up_on() {
    let marker = std::env::temp_dir().join(format!("osmos-restarts-gives-up-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let cell = bounded(
        "spawn",
        CellBuilder::new(CELL)
            .name("given-up")
            .arg("--fail-if-exists")
            .arg(&marker)
            .sandbox(SandboxPolicy::disabled())
            .restart(RestartPolicy::on_failure(2))
            .spawn(),
    )
    .await
    .unwrap();
    let follower = cell.following_client::<TestCellClient>();
    // Crash the first incarnation; every restart then fails at start.
    let crashed = bounded("the exit call", follower.call(|c| async move { c.exit(7).await })).await;
    assert!(
        matches!(crashed, Err(CallError::Session(SessionError::PeerDied { .. }))),
        "{crashed:?}"
    );
    // This call waits through the failing restarts, then fails.
    match bounded("the call", follower.call(|c| async move { c.pid().await })).await {
        Err(CallError::ConnectionClosed { reason }) => assert!(
            reason.contains("'given-up' was given up on")
                && reason.contains("gave up after 2 restarts")
                && reason.contains("spawn it again"),
            "{reason}"
        ),
        other => panic!("expected ConnectionClosed, got {other:?}"),
    }
    assert!(matches!(cell.state(), CellState::Failed { .. }));
    assert!(matches!(
        follower.get().await,
        Err(HostError::GaveUp { ref name, .. }) if name == "given-up"
    ));
    let _ = std::fs::remove_file(&marker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_exits_0_before_serving_is_a_failed_start() {
    let marker = std::env::temp_dir().join(format!("osmos-restarts-exit-0-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let cell = bounded(
        "spawn",
        CellBuilder::new(CELL)
            .name("exits-0-at-start")
            .arg("--exit-0-if-exists")
            .arg(&marker)
            .sandbox(SandboxPolicy::disabled())
            .restart(RestartPolicy::on_failure(2))
            .spawn(),
    )
    .await
    .unwrap();
    let follower = cell.following_client::<TestCellClient>();
    let _ = bounded("the exit call", follower.call(|c| async move { c.exit(7).await })).await;
    // Every restart exits 0 without serving: the policy spends its restarts
    // and gives up, rather than calling the cell cleanly stopped.
    let state = bounded(
        "the policy to give up",
        cell.wait_for(|s| matches!(s, CellState::Failed { .. } | CellState::Stopped { .. })),
    )
    .await;
    assert!(
        matches!(&state, CellState::Failed { reason } if reason.contains("gave up after 2 restarts")),
        "{state:?}"
    );
    assert_eq!(cell.stats().restarts, 2);
    let _ = std::fs::remove_file(&marker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_clearly_once_the_cell_is_shut_down() {
    // Shut down while running.
    let cell = spawn("shut-down", RestartPolicy::on_failure(5)).await;
    let follower = cell.following_client::<TestCellClient>();
    let _ = pid_of(&follower).await;
    cell.shutdown(Duration::from_secs(5)).await;
    match follower.call(|c| async move { c.pid().await }).await {
        Err(CallError::ConnectionClosed { reason }) => assert!(
            reason.contains("'shut-down' was shut down by the host") && reason.contains("spawn it again"),
            "{reason}"
        ),
        other => panic!("expected ConnectionClosed, got {other:?}"),
    }

    // Shut down while a call waits for a restart: the waiting call fails.
    let cell = spawn("shut-down-restarting", steady(Duration::from_millis(300))).await;
    let follower = cell.following_client::<TestCellClient>();
    cell.kill();
    bounded(
        "restarting",
        cell.wait_for(|s| matches!(s, CellState::Restarting { .. })),
    )
    .await;
    let waiting = tokio::spawn({
        let f = follower.clone();
        async move { f.call(|c| async move { c.pid().await }).await }
    });
    cell.shutdown(Duration::from_secs(5)).await;
    match bounded("the waiting call", waiting).await.unwrap() {
        Err(CallError::ConnectionClosed { reason }) => {
            assert!(reason.contains("was shut down by the host"), "{reason}")
        }
        other => panic!("expected ConnectionClosed, got {other:?}"),
    }

    // Dropping the last handle shuts the cell down too.
    let cell = spawn("dropped", RestartPolicy::on_failure(5)).await;
    let follower = cell.following_client::<TestCellClient>();
    drop(cell);
    match bounded("the call", follower.call(|c| async move { c.pid().await })).await {
        Err(CallError::ConnectionClosed { reason }) => {
            assert!(reason.contains("'dropped' was shut down by the host"), "{reason}")
        }
        other => panic!("expected ConnectionClosed, got {other:?}"),
    }
}
