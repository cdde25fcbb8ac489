//! The supervisor: one task per cell that waits on the running
//! incarnation's pidfd and on its session, publishes what became of the
//! cell, ends the dead incarnation's session, and restarts it as the
//! [`RestartPolicy`] says (see the module docs of `cell.rs` for the policy
//! and the order of these steps).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use osmos_session::SessionError;
use osmos_shm::Side;
use rustix::process::Signal;

use super::{CellState, Inner, RestartPolicy, SESSION_END_GRACE, lock};
use crate::error::{ExitInfo, HostError};
use crate::spawn;

/// Watches the cell's process; restarts it as the policy says.
pub(super) async fn supervise(inner: Arc<Inner>) {
    let name = inner.config.name.clone();
    let first_backoff = match inner.restart {
        RestartPolicy::OnFailure { backoff, .. } => backoff,
        RestartPolicy::Never => Duration::ZERO,
    };
    let mut backoff = first_backoff;
    loop {
        let Some((pidfd, pid, conn)) = inner.current(|i| (i.pidfd.clone(), i.pid, i.conn.clone())) else {
            return;
        };
        *lock(&inner.last_end) = None;
        let ended = async {
            tokio::select! {
                exit = spawn::wait_exit(&pidfd) => exit,
                why = conn.closed() => end_of_session(&inner, pid, &pidfd, why).await,
            }
        };
        tokio::pin!(ended);
        let exit = match inner.restart {
            RestartPolicy::OnFailure { reset_after, .. } => tokio::select! {
                exit = &mut ended => exit,
                () = tokio::time::sleep(reset_after) => {
                    if inner.in_a_row.swap(0, Ordering::Relaxed) > 0 || backoff != first_backoff {
                        tracing::debug!(cell = %name, pid, "ran healthily for {reset_after:?}: the restart count and backoff start over");
                    }
                    backoff = first_backoff;
                    ended.await
                }
            },
            RestartPolicy::Never => ended.await,
        };
        let mut exit = exit;
        let detail = format!("cell '{name}' (pid {pid}) {exit}");
        *lock(&inner.last_exit) = Some(exit);
        let dead = lock(&inner.current).take();
        // The state changes first, the calls in flight fail after: a caller
        // whose call failed and who then waits for `Running` gets the next
        // incarnation, never this one (and a `FollowingClient` waits for it).
        let next = after_exit(&inner, exit, true);
        match &next {
            CellState::Stopped { .. } => tracing::info!(cell = %name, "{detail}"),
            CellState::Failed { reason } => {
                tracing::warn!(cell = %name, "{detail}");
                tracing::error!(cell = %name, "{reason}");
            }
            _ => tracing::warn!(cell = %name, "{detail}"),
        }
        // Why the session ends, if it has not yet: the cell's fault when the
        // session's hook killed it for one (the process may be gone before
        // the session has recorded that end), else its death.
        let why = dead.as_ref().map(|inc| {
            inc.conn
                .ended()
                .or_else(|| inc.condemned.get().cloned())
                .unwrap_or_else(|| SessionError::PeerDied {
                    detail: detail.clone(),
                })
        });
        if let Some(inc) = &dead {
            // What a caller woken by the new state may ask about: as it will
            // be once the session is ended below.
            *lock(&inner.last_end) = why.clone();
            *lock(&inner.last_tail) = Some(inc.stderr_tail.clone());
        }
        inner.state.send_replace(next.clone());
        if let (Some(inc), Some(why)) = (dead, why) {
            inc.conn.terminate(why);
            inc.liveness.mark_dead(Side::Cell);
            *lock(&inner.last_end) = inc.conn.ended();
        }
        let RestartPolicy::OnFailure { max_backoff, .. } = inner.restart else {
            return;
        };
        if !matches!(next, CellState::Restarting { .. }) {
            return;
        }
        loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(max_backoff);
            // ORDERING: Acquire pairs with the Release stores in `Owner::drop`
            // and `CellHandle::shutdown` (the flag is all they publish).
            if inner.shutting_down.load(Ordering::Acquire) {
                inner.state.send_replace(CellState::Stopped { exit });
                return;
            }
            let restarts = inner.restarts.fetch_add(1, Ordering::Relaxed);
            inner.in_a_row.fetch_add(1, Ordering::Relaxed);
            match spawn::start(&inner.config, restarts + 1, &inner.gate).await {
                Ok(inc) => {
                    tracing::info!(cell = %name, pid = inc.pid, restarts = restarts + 1, "restarted");
                    // Store the incarnation before announcing it: a caller
                    // woken by the state change must find it.
                    let pid = inc.pid;
                    *lock(&inner.current) = Some(inc);
                    inner.state.send_replace(CellState::Running {
                        pid,
                        incarnation: restarts + 1,
                    });
                    break;
                }
                Err(failure) => {
                    tracing::warn!(cell = %name, "restart failed: {}", failure.error);
                    if let Some(tail) = failure.stderr_tail {
                        *lock(&inner.last_tail) = Some(tail);
                    }
                    if let HostError::Handshake { exit: Some(e), .. } = failure.error {
                        exit = e;
                        *lock(&inner.last_exit) = Some(e);
                    }
                    let next = after_exit(&inner, exit, false);
                    if let CellState::Failed { reason } = &next {
                        tracing::error!(cell = %name, "{reason}");
                    }
                    let again = matches!(next, CellState::Restarting { .. });
                    inner.state.send_replace(next);
                    if !again {
                        return;
                    }
                }
            }
        }
    }
}

/// What becomes of a cell whose incarnation ended with `exit` (`started`:
/// after its handshake; a start that failed is a failure whatever its exit
/// status): stopped (it was shut down, exited with status 0 after starting,
/// or is never restarted), failed (the policy's restarts in a row are
/// spent), or restarting.
fn after_exit(inner: &Inner, exit: ExitInfo, started: bool) -> CellState {
    // ORDERING: Acquire pairs with the Release stores in `Owner::drop` and
    // `CellHandle::shutdown` (the flag is all they publish).
    if inner.shutting_down.load(Ordering::Acquire) || (started && exit.success()) {
        return CellState::Stopped { exit };
    }
    let RestartPolicy::OnFailure { max_restarts, .. } = inner.restart else {
        return CellState::Stopped { exit };
    };
    let in_a_row = inner.in_a_row.load(Ordering::Relaxed);
    if in_a_row >= max_restarts {
        return CellState::Failed {
            reason: format!(
                "gave up after {in_a_row} restarts in a row without a healthy run; the last incarnation {exit}"
            ),
        };
    }
    CellState::Restarting {
        last_exit: exit,
        restarts: inner.restarts.load(Ordering::Relaxed),
    }
}

/// The session of a cell (pid `pid`) ended with `why` while its process
/// runs: kills it, at once or after [`SESSION_END_GRACE`] (see the module
/// docs), and returns how it exited.
async fn end_of_session(inner: &Inner, pid: u32, pidfd: &spawn::Pidfd, why: SessionError) -> ExitInfo {
    let name = &inner.config.name;
    match &why {
        // A protocol violation or a keepalive timeout: the session's
        // `on_peer_fault` hook killed the cell already, before the session
        // told it anything (see `spawn::start`); this kill is a no-op then.
        _ if why.is_peer_fault() => {
            tracing::debug!(cell = %name, pid, "{why}; the cell was killed for it");
            spawn::signal(pidfd, Signal::KILL);
        }
        // The host's own shutdown, however the session then ended (the
        // cell's goodbye, or its link closing as it exits): `shutdown` gives
        // the grace it was asked for.
        // ORDERING: as in `supervise`.
        _ if inner.shutting_down.load(Ordering::Acquire) => {
            tracing::debug!(cell = %name, pid, "session ended during shutdown: {why}");
        }
        _ => {
            // A cell may end its session and exit on its own; how it exits
            // says whether that was a failure (the supervisor logs it).
            tracing::debug!(cell = %name, pid, "session ended: {why}; waiting for the process to exit");
            match tokio::time::timeout(SESSION_END_GRACE, spawn::wait_exit(pidfd)).await {
                // It exited (and was reaped) within the grace.
                Ok(exit) => return exit,
                Err(_) => {
                    tracing::warn!(
                        cell = %name,
                        pid,
                        "session ended ({why}), but the process was still running {SESSION_END_GRACE:?} later; killing it"
                    );
                    spawn::signal(pidfd, Signal::KILL);
                }
            }
        }
    }
    spawn::wait_exit(pidfd).await
}
