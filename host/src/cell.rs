//! Cells: the builder, the handle, and the supervisor that watches each one.
//!
//! [`CellBuilder::spawn`] starts the first incarnation and a supervisor task
//! that waits on the cell's pidfd. When the process exits, the supervisor
//! first publishes the cell's next state (restarting, failed or stopped,
//! with the exit), then ends the session with [`SessionError::PeerDied`]
//! naming how it died (so every call and stream in flight fails at once with
//! that reason), marks the cell dead in the segment (waking every waiter),
//! and — if the [`RestartPolicy`] says so — starts a new incarnation after a
//! backoff. State first: a caller whose call failed and who then waits for
//! [`CellState::Running`] gets the next incarnation, never the dead one.
//! The [`CellHandle`] always speaks to the current incarnation; the typed
//! clients it hands out are bound to one, except a [`FollowingClient`].
//!
//! The supervisor also watches the session. A cell whose session ends while
//! its process lives on is of no use and may be hostile, so it does not keep
//! running: a cell that broke a protocol rule (the segment can no longer be
//! trusted) or went silent past the keepalive timeout is killed at once; a
//! cell whose session ended any other way (its goodbye, a link failure, a
//! violation it reports of the host) gets [`SESSION_END_GRACE`] to exit on
//! its own, then is killed. Either way the restart policy then applies, as
//! for any crash. [`CellHandle::last_session_end`] says why the session ended.
//!
//! Such a session fails its calls in flight itself, with its own reason,
//! before the process is gone: the state says `Running` until the process
//! exits (at once when killed, within [`SESSION_END_GRACE`] otherwise), and
//! a [`FollowingClient`] meanwhile waits rather than use that incarnation.
//!
//! The kill for a cell's fault comes before the cell can learn of the end:
//! the session's [`on_peer_fault`](osmos_session::SessionBuilder::on_peer_fault)
//! hook sends the SIGKILL the moment the session decides to end, before it
//! tells the cell (`ProtocolError`, goodbye) or lets go of the link (which
//! wakes the cell). A cell that would exit on its own once its session ends
//! therefore still ends killed, never "exited with status 0". The process
//! may then be gone before the session has recorded its end: the supervisor
//! ends it with the fault the hook recorded, not [`SessionError::PeerDied`].
//!
//! Restarts follow the [`RestartPolicy`]: at most `max_restarts` failures
//! in a row, each restart waiting twice as long as the one before; an
//! incarnation that runs for `reset_after` is healthy, and the count and
//! the backoff start over. A cell that crashes once an hour is restarted
//! forever; one that cannot stay up is given up on.
//!
//! The cell's stdout, stderr and log records pass one [`LogGate`] per cell,
//! across incarnations (see [`crate::logs`]).

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use osmos_session::{
    Connection, ConnectionAcceptor, Dispatcher, SessionConfig, SessionError, SessionStats, Target,
};
use osmos_shm::SegmentConfig;
use tokio::sync::watch;

use crate::error::{ExitInfo, HostError};
use crate::following::{CellSource, FollowingClient};
use crate::logs::{LogGate, LogLimits, LogStats};
use crate::output::StderrTail;
use crate::sandbox::{SandboxPolicy, SandboxReport};
use crate::spawn::{self, CellConfig, Incarnation};

mod supervisor;

/// How long a cell whose session ended (other than by a protocol violation,
/// a keepalive timeout or the host's own shutdown) may keep running before
/// it is killed.
pub const SESSION_END_GRACE: Duration = Duration::from_secs(1);

/// What to do when a cell exits on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Leave it stopped.
    Never,
    /// Restart it after a failure (non-zero exit or a signal), waiting
    /// `backoff`, then twice as long each time up to `max_backoff`, at most
    /// `max_restarts` times in a row: an incarnation that runs for
    /// `reset_after` resets both the count and the backoff.
    OnFailure {
        /// Restarts allowed in a row (without a healthy run between them)
        /// before giving up.
        max_restarts: u32,
        /// Wait before the first restart.
        backoff: Duration,
        /// Longest wait between restarts.
        max_backoff: Duration,
        /// How long an incarnation must run to count as healthy: the failure
        /// count and the backoff then start over.
        reset_after: Duration,
    },
}

impl RestartPolicy {
    /// Restart on failure up to `max_restarts` times in a row, starting with
    /// a 10 ms backoff (at most 5 s); a minute's run resets the count.
    pub fn on_failure(max_restarts: u32) -> Self {
        RestartPolicy::OnFailure {
            max_restarts,
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(5),
            reset_after: Duration::from_secs(60),
        }
    }

    /// The same policy with another healthy period (see `reset_after`);
    /// no effect on [`RestartPolicy::Never`].
    pub fn reset_after(mut self, healthy: Duration) -> Self {
        if let RestartPolicy::OnFailure { reset_after, .. } = &mut self {
            *reset_after = healthy;
        }
        self
    }
}

/// Where a cell is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CellState {
    /// Being started.
    Starting,
    /// Running, serving through its session.
    Running {
        /// The process id.
        pid: u32,
        /// Which incarnation: 0 for the first process, then one more for
        /// each restart (a client that saw incarnation `n` fail and waits
        /// for `> n` reaches a new process).
        incarnation: u32,
    },
    /// Its process exited; waiting to be started again.
    Restarting {
        /// How the last incarnation ended.
        last_exit: ExitInfo,
        /// Restarts so far.
        restarts: u32,
    },
    /// Stopped for good (shut down, or exited with no restart due).
    Stopped {
        /// How it ended.
        exit: ExitInfo,
    },
    /// The restart policy gave up (a remote cell: its session failed).
    Failed {
        /// Why.
        reason: String,
    },
    /// A remote cell, attached over the network ([`RemoteCell`](crate::RemoteCell)).
    Attached {
        /// Where it is reached.
        address: String,
    },
}

impl std::fmt::Display for CellState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CellState::Starting => f.write_str("starting"),
            CellState::Running { pid, incarnation } => {
                write!(f, "running as pid {pid} (incarnation {incarnation})")
            }
            CellState::Restarting { last_exit, restarts } => {
                write!(f, "restarting (it {last_exit}; {restarts} restarts so far)")
            }
            CellState::Stopped { exit } => write!(f, "stopped (it {exit})"),
            CellState::Failed { reason } => write!(f, "failed: {reason}"),
            CellState::Attached { address } => write!(f, "attached at {address}"),
        }
    }
}

/// Describes a cell to spawn.
pub struct CellBuilder {
    config: CellConfig,
    restart: RestartPolicy,
    log_limits: LogLimits,
}

impl CellBuilder {
    /// A cell running `program`, sandboxed by default, never restarted.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        let program = program.into();
        let name = program
            .file_name()
            .map_or_else(|| "cell".to_string(), |n| n.to_string_lossy().into_owned());
        CellBuilder {
            config: CellConfig {
                program,
                args: Vec::new(),
                name,
                env_allow: Vec::new(),
                env_set: Vec::new(),
                sandbox: SandboxPolicy::default(),
                segment: SegmentConfig::default(),
                session: SessionConfig::default(),
                sha256: None,
                serve: None,
                acceptor: None,
            },
            restart: RestartPolicy::Never,
            log_limits: LogLimits::default(),
        }
    }

    /// The cell's name (in logs, errors and its `OSMOS_CELL_NAME`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Adds a command-line argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.config.args.push(arg.into());
        self
    }

    /// Adds command-line arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.config.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Passes the host's value of the environment variable `key` through (the
    /// cell's environment is otherwise cleared).
    pub fn env_allow(mut self, key: impl Into<String>) -> Self {
        self.config.env_allow.push(key.into());
        self
    }

    /// Sets an environment variable in the cell.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.env_set.push((key.into(), value.into()));
        self
    }

    /// The lowest level of the cell's own tracing events it forwards to the
    /// host's tracing (`info` by default): sets the cell's
    /// [`OSMOS_LOG`](osmos_session::control::ENV_LOG). A cell's `debug!`
    /// lines reach the host only with `Level::DEBUG` or `Level::TRACE`.
    pub fn log_level(self, level: tracing::Level) -> Self {
        let level = level.as_str().to_ascii_lowercase();
        self.env(osmos_session::control::ENV_LOG, level)
    }

    /// The sandbox policy (on by default; [`SandboxPolicy::disabled`] to debug).
    pub fn sandbox(mut self, policy: SandboxPolicy) -> Self {
        self.config.sandbox = policy;
        self
    }

    /// The restart policy.
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Bounds on what the cell may put in the host's logs (its output lines
    /// and log records): rate, burst, line length; see [`LogLimits`].
    pub fn log_limits(mut self, limits: LogLimits) -> Self {
        self.log_limits = limits;
        self
    }

    /// The segment configuration.
    pub fn segment(mut self, config: SegmentConfig) -> Self {
        self.config.segment = config;
        self
    }

    /// The session configuration (its name is set to the cell's).
    pub fn session(mut self, config: SessionConfig) -> Self {
        self.config.session = config;
        self
    }

    /// Refuses to run the binary unless its sha256 is `hex_digest`.
    pub fn expect_sha256(mut self, hex_digest: impl Into<String>) -> Self {
        self.config.sha256 = Some(hex_digest.into());
        self
    }

    /// Serves `dispatcher` to the cell (services the cell may call).
    pub fn serve(mut self, dispatcher: Arc<dyn Dispatcher>) -> Self {
        self.config.serve = Some(dispatcher);
        self
    }

    /// Decides on the virtual connections the cell opens to the host (e.g.
    /// [`Routes::acceptor`](crate::Routes::acceptor), to let it reach other
    /// cells); without one, the host refuses them.
    pub fn accept_connections(mut self, acceptor: ConnectionAcceptor) -> Self {
        self.config.acceptor = Some(acceptor);
        self
    }

    /// Starts the cell: returns once it is running and has completed the handshake.
    pub async fn spawn(mut self) -> Result<CellHandle, HostError> {
        self.config.session.name = self.config.name.clone();
        let gate = Arc::new(LogGate::new(self.config.name.clone(), self.log_limits));
        let incarnation = spawn::start(&self.config, 0, &gate).await.map_err(|f| f.error)?;
        let (state, _) = watch::channel(CellState::Running {
            pid: incarnation.pid,
            incarnation: 0,
        });
        let inner = Arc::new(Inner {
            config: self.config,
            restart: self.restart,
            gate,
            state,
            current: Mutex::new(Some(incarnation)),
            last_end: Mutex::new(None),
            last_exit: Mutex::new(None),
            last_tail: Mutex::new(None),
            restarts: AtomicU32::new(0),
            in_a_row: AtomicU32::new(0),
            shutting_down: AtomicBool::new(false),
        });
        tokio::spawn(supervisor::supervise(inner.clone()));
        let owner = Arc::new(Owner { inner: inner.clone() });
        Ok(CellHandle { inner, _owner: owner })
    }
}

/// Shared by every clone of a [`CellHandle`]: when the last one is dropped,
/// the cell is killed and not restarted (the supervisor alone does not keep
/// a cell running).
struct Owner {
    inner: Arc<Inner>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        // ORDERING: Release pairs with the supervisor's Acquire loads of
        // `shutting_down` (`supervise`, `end_of_session`): a cell that dies
        // after this is seen as shut down, not restarted.
        self.inner.shutting_down.store(true, Ordering::Release);
        if let Some(pidfd) = self.inner.current(|i| i.pidfd.clone()) {
            spawn::signal(&pidfd, rustix::process::Signal::KILL);
        }
    }
}

pub(crate) struct Inner {
    config: CellConfig,
    restart: RestartPolicy,
    /// What passes from the cell's output and records to tracing, across incarnations.
    gate: Arc<LogGate>,
    state: watch::Sender<CellState>,
    /// The running incarnation, if any.
    current: Mutex<Option<Incarnation>>,
    /// Why the last incarnation's session ended (`None` while it runs).
    last_end: Mutex<Option<SessionError>>,
    /// How the last incarnation that ran ended.
    last_exit: Mutex<Option<ExitInfo>>,
    /// The stderr tail of the last incarnation that ended.
    last_tail: Mutex<Option<Arc<StderrTail>>>,
    /// Restarts in all.
    restarts: AtomicU32,
    /// Failures since the last healthy run (see [`RestartPolicy`]).
    in_a_row: AtomicU32,
    shutting_down: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl crate::following::Incarnations for Inner {
    fn name(&self) -> &str {
        Inner::name(self)
    }
    fn subscribe(&self) -> watch::Receiver<CellState> {
        Inner::subscribe(self)
    }
    fn live_connection(&self) -> Option<Connection> {
        Inner::live_connection(self)
    }
    fn latest_connection(&self) -> Option<Connection> {
        self.current(|i| i.conn.clone())
    }
    fn shut_down(&self) -> bool {
        Inner::shut_down(self)
    }
    fn restart_bound(&self) -> Duration {
        Inner::restart_bound(self)
    }
}

impl Inner {
    /// The cell's name.
    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    /// A receiver of the cell's state changes.
    pub(crate) fn subscribe(&self) -> watch::Receiver<CellState> {
        self.state.subscribe()
    }

    /// Whether the host shut the cell down (or dropped its last handle).
    pub(crate) fn shut_down(&self) -> bool {
        // ORDERING: Acquire pairs with the Release stores in `Owner::drop`
        // and `CellHandle::shutdown` (the flag is all they publish).
        self.shutting_down.load(Ordering::Acquire)
    }

    /// The running incarnation's root connection, unless there is none or
    /// its session has ended (the process may still be exiting).
    pub(crate) fn live_connection(&self) -> Option<Connection> {
        self.current(|i| i.conn.clone()).filter(|c| c.ended().is_none())
    }

    /// How long one restart may take at most: the policy's longest backoff
    /// plus the handshake timeout.
    pub(crate) fn restart_bound(&self) -> Duration {
        let backoff = match self.restart {
            RestartPolicy::OnFailure { max_backoff, .. } => max_backoff,
            RestartPolicy::Never => Duration::ZERO,
        };
        backoff + self.config.session.handshake_timeout
    }

    pub(crate) fn current<R>(&self, f: impl FnOnce(&Incarnation) -> R) -> Option<R> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(f)
    }
}

/// Traffic and lifecycle counters of a cell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CellStats {
    /// Times the cell was restarted.
    pub restarts: u32,
    /// Failures since the last healthy run (what the restart policy's
    /// limit counts).
    pub failures_in_a_row: u32,
    /// What the cell wrote to the host's logs, and what was dropped or
    /// refused (over all incarnations).
    pub logs: LogStats,
    /// The current incarnation's session counters (zero when not running).
    pub session: SessionStats,
}

/// A handle on a spawned cell. Cheap to clone. When the last clone is
/// dropped, the cell is killed (use [`CellHandle::shutdown`] for a graceful end).
#[derive(Clone)]
pub struct CellHandle {
    inner: Arc<Inner>,
    _owner: Arc<Owner>,
}

impl std::fmt::Debug for CellHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellHandle")
            .field("name", &self.inner.config.name)
            .field("state", &self.state())
            .finish()
    }
}

/// A reference to a cell that does not keep it running.
#[derive(Clone)]
pub(crate) struct WeakCell(Weak<Owner>);

impl WeakCell {
    /// The current incarnation's root connection, if the cell is still
    /// owned and running.
    pub(crate) fn connection(&self) -> Option<Connection> {
        self.0.upgrade().and_then(|o| o.inner.current(|i| i.conn.clone()))
    }
}

impl CellHandle {
    /// A reference that does not keep the cell running.
    pub(crate) fn downgrade(&self) -> WeakCell {
        WeakCell(Arc::downgrade(&self._owner))
    }

    /// The cell's name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// The current process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.inner.current(|i| i.pid)
    }

    /// The cell's state now.
    pub fn state(&self) -> CellState {
        self.inner.state.borrow().clone()
    }

    /// Waits until the state satisfies `pred` (e.g. running again after a
    /// restart) and returns it.
    pub async fn wait_for(&self, pred: impl Fn(&CellState) -> bool) -> CellState {
        let mut rx = self.inner.state.subscribe();
        let r = rx.wait_for(|s| pred(s)).await.map(|s| s.clone());
        r.unwrap_or_else(|_| self.state())
    }

    /// Why the session of the most recent incarnation ended: `None` while it
    /// runs (and before any incarnation ended). A cell killed for breaking a
    /// protocol rule (of the session, or of the link's framing) reports
    /// [`SessionError::Violation`] naming the rule here.
    pub fn last_session_end(&self) -> Option<SessionError> {
        self.inner
            .last_end
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The current incarnation's root connection.
    pub fn connection(&self) -> Result<Connection, HostError> {
        self.inner
            .current(|i| i.conn.clone())
            .ok_or_else(|| HostError::NotRunning {
                name: self.name().to_string(),
                state: self.state().to_string(),
            })
    }

    /// A typed client of the cell, e.g. `handle.client::<CalculatorClient>()`,
    /// that follows it across restarts: each call goes to the incarnation
    /// running when it is made; a call made while the cell restarts waits
    /// for the next one (bounded by the restart's longest time and by the
    /// call's timeout), or with [`CallOptions::fail_fast`](osmos_session::CallOptions::fail_fast)
    /// fails at once; a call in flight when the process died fails once
    /// with how it died (see [`following`](crate::following)). It does not
    /// keep the cell running. For a client bound to the current process
    /// alone, `XClient::new(handle.connection()?)`.
    ///
    /// Never fails today (the `Result` leaves room for a cell that can
    /// refuse clients).
    pub fn client<C: From<Target>>(&self) -> Result<C, HostError> {
        Ok(C::from(self.source().target()))
    }

    /// The source this cell's clients call through (see
    /// [`client`](Self::client)); [`CellSource::wait_at_most`] sets how
    /// long calls wait for a restarting cell.
    pub fn source(&self) -> CellSource {
        CellSource::new(self.inner.clone())
    }

    /// A client that follows the cell across restarts, handing out a typed
    /// client of the incarnation running now (see [`FollowingClient`]). It
    /// does not keep the cell running. [`client`](Self::client) follows
    /// restarts by itself; this is for code that wants to wait for the
    /// incarnation explicitly.
    pub fn following_client<C: From<Connection>>(&self) -> FollowingClient<C> {
        FollowingClient::new(self.source())
    }

    /// What the sandbox applied (and, best-effort, skipped) for the current incarnation.
    pub fn sandbox_report(&self) -> Option<SandboxReport> {
        self.inner.current(|i| i.report.clone())
    }

    /// The last lines the current incarnation (or, when none runs, the last
    /// one) wrote to stderr: at most 10 lines, 4 KiB, escaped.
    pub fn stderr_tail(&self) -> Vec<String> {
        self.inner
            .current(|i| i.stderr_tail.clone())
            .or_else(|| lock(&self.inner.last_tail).clone())
            .map(|t| t.lines())
            .unwrap_or_default()
    }

    /// How the last incarnation that ended ended (`None` before any did).
    pub fn last_exit(&self) -> Option<ExitInfo> {
        *lock(&self.inner.last_exit)
    }

    /// Counters.
    pub fn stats(&self) -> CellStats {
        CellStats {
            restarts: self.inner.restarts.load(Ordering::Relaxed),
            failures_in_a_row: self.inner.in_a_row.load(Ordering::Relaxed),
            logs: self.inner.gate.stats(),
            session: self.inner.current(|i| i.conn.stats()).unwrap_or_default(),
        }
    }

    /// Kills the current incarnation with SIGKILL (the restart policy then
    /// applies, as for any crash).
    pub fn kill(&self) {
        if let Some(pidfd) = self.inner.current(|i| i.pidfd.clone()) {
            spawn::signal(&pidfd, rustix::process::Signal::KILL);
        }
    }

    /// Shuts the cell down: goodbye, then up to `grace` for it to exit on its
    /// own, then SIGKILL. Returns how it ended (for a cell that had already
    /// stopped or failed, how its last incarnation ended).
    pub async fn shutdown(&self, grace: Duration) -> ExitInfo {
        // ORDERING: Release pairs with the supervisor's Acquire loads (see `Owner::drop`).
        self.inner.shutting_down.store(true, Ordering::Release);
        let current = self.inner.current(|i| (i.conn.clone(), i.pidfd.clone()));
        if let Some((conn, pidfd)) = current {
            let _ = tokio::time::timeout(grace, conn.goodbye("the host is shutting this cell down")).await;
            let stopped = |s: &CellState| matches!(s, CellState::Stopped { .. } | CellState::Failed { .. });
            if tokio::time::timeout(grace, self.wait_for(stopped)).await.is_err() {
                tracing::warn!(cell = %self.name(), "did not exit within {grace:?} of goodbye; killing it");
                spawn::signal(&pidfd, rustix::process::Signal::KILL);
            }
        }
        match self
            .wait_for(|s| matches!(s, CellState::Stopped { .. } | CellState::Failed { .. }))
            .await
        {
            CellState::Stopped { exit } => exit,
            _ => self.last_exit().unwrap_or(ExitInfo::Signaled(libc::SIGKILL)),
        }
    }
}
