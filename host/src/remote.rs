//! Remote cells: plugins that run on another machine (or were started by
//! hand), reached over mutual TLS, with a session that survives broken
//! connections.
//!
//! The cell is started with the plugin SDK's remote mode (`--listen
//! tcp:0.0.0.0:7000 --credentials DIR`, see `osmos_plugin_sdk::remote`).
//! The host attaches with a [`RemoteCellBuilder`]:
//!
//! 1. [`osmos_session::tls::pair`] generates both sides' credentials once;
//!    the cell's half is copied to the cell's machine
//!    ([`CellCredentials::write_dir`](osmos_session::tls::CellCredentials::write_dir)),
//!    the host keeps its own. Each side pins the other's certificate: a peer
//!    without it never reaches the session, and nothing travels in clear.
//! 2. Over TLS runs a stable conduit ([`osmos_session::link::stable`]): a
//!    connection that breaks is reconnected and the session resumed, with
//!    nothing lost; calls, channels and tunnels carry on.
//! 3. The session's handshake checks the protocol version, and each
//!    method's first call its schema, as for a local cell.
//!
//! The [`RemoteCell`] handle speaks like a [`CellHandle`](crate::CellHandle):
//! `client`, `connection`, `state`, `wait_for`, `stats`, `last_session_end`,
//! `shutdown`. Its state is [`CellState::Attached`] while the session runs
//! (including while the conduit resumes), then [`CellState::Stopped`] with
//! [`ExitInfo::Detached`] (after a shutdown or the cell's goodbye) or
//! [`CellState::Failed`] (the session failed: the cell restarted, resuming
//! was impossible). With a [`RestartPolicy`](crate::RestartPolicy)
//! ([`RemoteCellBuilder::restart`]) the handle attaches again instead
//! ([`CellState::Restarting`] meanwhile), so a cell restarted by its own
//! supervisor is reached again; clients made before then belong to the old
//! session (make new ones). There is no process here to kill.
//!
//! The cell's tracing events arrive over the session ([`osmos_session::control::CellLogs`])
//! and reach this process's tracing as a local cell's do: target
//! [`CELL_TARGET`](crate::CELL_TARGET), escaped, rate-limited per cell
//! ([`LogLimits`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use osmos_session::control::{CellLogs, CellLogsDispatcher, LogRecord, MAX_LOG_BATCH};
use osmos_session::link::stable::{StableConfig, StableLink, StableMonitor, StableStatus, Transport};
use osmos_session::tls::{HostCredentials, TlsConnector};
use osmos_session::{Connection, Dispatcher, Router, SessionBuilder, SessionConfig, SessionError, Target};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::watch;

use crate::cell::{CellState, CellStats, RestartPolicy};
use crate::error::{ExitInfo, HostError};
use crate::following::CellSource;
use crate::logs::{Kind, LogGate, LogLimits};

/// Where a remote cell listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteAddr {
    /// `HOST:PORT`.
    Tcp(String),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl std::fmt::Display for RemoteAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteAddr::Tcp(a) => write!(f, "tcp:{a}"),
            RemoteAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Describes a remote cell to attach to.
pub struct RemoteCellBuilder {
    addr: RemoteAddr,
    credentials: HostCredentials,
    name: String,
    session: SessionConfig,
    stable: StableConfig,
    serve: Option<Arc<dyn Dispatcher>>,
    log_limits: LogLimits,
    restart: RestartPolicy,
}

impl std::fmt::Debug for RemoteCellBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCellBuilder")
            .field("addr", &self.addr)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl RemoteCellBuilder {
    /// A cell listening on TCP at `addr` (`HOST:PORT`), reached with `credentials`.
    pub fn tcp(addr: impl Into<String>, credentials: HostCredentials) -> Self {
        Self::new(RemoteAddr::Tcp(addr.into()), credentials)
    }

    /// A cell listening on the Unix socket at `path`.
    pub fn unix(path: impl Into<PathBuf>, credentials: HostCredentials) -> Self {
        Self::new(RemoteAddr::Unix(path.into()), credentials)
    }

    fn new(addr: RemoteAddr, credentials: HostCredentials) -> Self {
        RemoteCellBuilder {
            name: addr.to_string(),
            addr,
            credentials,
            session: SessionConfig::default(),
            stable: StableConfig::default(),
            serve: None,
            log_limits: LogLimits::default(),
            restart: RestartPolicy::Never,
        }
    }

    /// What to do when the session fails for good (the cell restarted, or
    /// the conduit could not resume): with [`RestartPolicy::OnFailure`], attach
    /// again after its backoff, counting failed attempts against
    /// `max_restarts` (a session that lasted `reset_after` starts the count
    /// over). Default: [`RestartPolicy::Never`]. A goodbye from either side
    /// is not a failure.
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// The name the host gives the cell (logs, errors, `CallContext::caller`
    /// on the host's side). Default: its address.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The session's configuration (keepalive, limits, deadlines).
    pub fn session(mut self, config: SessionConfig) -> Self {
        self.session = config;
        self
    }

    /// The conduit's configuration (replay buffer, retry policy, heartbeat).
    pub fn stable(mut self, config: StableConfig) -> Self {
        self.stable = config;
        self
    }

    /// Services the host exposes to the cell on the root connection.
    pub fn serve(mut self, dispatcher: Arc<dyn Dispatcher>) -> Self {
        self.serve = Some(dispatcher);
        self
    }

    /// Bounds on what the cell may put in the host's logs.
    pub fn log_limits(mut self, limits: LogLimits) -> Self {
        self.log_limits = limits;
        self
    }

    /// Connects (mutual TLS, then the conduit's handshake, then the
    /// session's), retrying per the conduit's retry policy.
    ///
    /// Fails with [`HostError::Attach`] when the cell cannot be reached, or
    /// either side refuses the other's certificate (the error says which),
    /// and with [`HostError::Handshake`] when the session's handshake fails
    /// (e.g. another protocol version).
    pub async fn attach(self) -> Result<RemoteCell, HostError> {
        let RemoteCellBuilder {
            addr,
            credentials,
            name,
            mut session,
            stable,
            serve,
            log_limits,
            restart,
        } = self;
        let attach_error = |detail: String| HostError::Attach {
            name: name.clone(),
            address: addr.to_string(),
            detail,
        };
        let tls = TlsConnector::new(&credentials.identity, &credentials.cell)
            .map_err(|e| attach_error(format!("bad credentials: {e}")))?;
        let gate = Arc::new(LogGate::new(name.clone(), log_limits));
        let logs: Arc<dyn Dispatcher> = CellLogsDispatcher::new(LogSink { gate: gate.clone() });
        let root =
            match serve {
                Some(user) => Router::builder().route(user).route(logs).build().map_err(|e| {
                    attach_error(format!("the services to expose clash with the log sink: {e}"))
                })?,
                None => logs,
            };
        session.name = name.clone();
        let attacher = Attacher {
            name: name.clone(),
            addr: addr.clone(),
            tls,
            stable,
            session,
            root,
        };
        let current = attacher.attach().await?;
        let (state, _) = watch::channel(CellState::Attached {
            address: addr.to_string(),
        });
        let inner = Arc::new(RemoteInner {
            name,
            attacher,
            restart,
            current: Mutex::new(current),
            gate,
            state,
            last_end: Mutex::new(None),
            restarts: AtomicU32::new(0),
            shutting_down: AtomicBool::new(false),
        });
        tokio::spawn(watch_session(inner.clone()));
        let owner = Arc::new(Owner { inner: inner.clone() });
        Ok(RemoteCell { inner, _owner: owner })
    }
}

/// How to attach (again): everything but the cell's state.
struct Attacher {
    name: String,
    addr: RemoteAddr,
    tls: TlsConnector,
    stable: StableConfig,
    session: SessionConfig,
    root: Arc<dyn Dispatcher>,
}

impl Attacher {
    /// How long one attach may take at most: the TLS and conduit handshakes
    /// (each bounded by the conduit's handshake timeout) and the session's.
    fn handshake_bound(&self) -> Duration {
        self.stable.handshake_timeout * 2 + self.session.handshake_timeout
    }

    /// Mutual TLS, the conduit's handshake, the session's.
    async fn attach(&self) -> Result<(Connection, StableMonitor), HostError> {
        let attach_error = |detail: String| HostError::Attach {
            name: self.name.clone(),
            address: self.addr.to_string(),
            detail,
        };
        let timeout = self.stable.handshake_timeout;
        let (tls, target) = (self.tls.clone(), self.addr.clone());
        let connect = move || {
            let (tls, target) = (tls.clone(), target.clone());
            async move {
                let secured = tokio::time::timeout(timeout, async {
                    match &target {
                        RemoteAddr::Tcp(a) => {
                            let s = TcpStream::connect(a.as_str()).await?;
                            s.set_nodelay(true)?;
                            Ok(Transport::new(tls.connect(s).await.map_err(|e| e.into_io())?))
                        }
                        RemoteAddr::Unix(p) => {
                            let s = UnixStream::connect(p).await?;
                            Ok(Transport::new(tls.connect(s).await.map_err(|e| e.into_io())?))
                        }
                    }
                })
                .await;
                secured.unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no TLS handshake within {timeout:?}"),
                    ))
                })
            }
        };
        let link = StableLink::connect(connect, self.stable.clone())
            .await
            .map_err(|e| attach_error(e.to_string()))?;
        let monitor = link.monitor();
        let conn = SessionBuilder::new()
            .config(self.session.clone())
            .serve(self.root.clone())
            .initiate(link)
            .await
            .map_err(|error| HostError::Handshake {
                name: self.name.clone(),
                error,
                exit: None,
                stderr_tail: String::new(),
            })?;
        Ok((conn, monitor))
    }
}

/// Re-emits a remote cell's records through its gate.
struct LogSink {
    gate: Arc<LogGate>,
}

impl CellLogs for LogSink {
    async fn records(&self, batch: Vec<LogRecord>) -> Result<(), String> {
        for rec in batch.iter().take(MAX_LOG_BATCH) {
            if self.gate.try_admit(Kind::Record).is_ok() {
                crate::records::emit(self.gate.name(), rec);
            }
        }
        if batch.len() > MAX_LOG_BATCH {
            self.gate.refused(false);
        }
        Ok(())
    }
}

struct RemoteInner {
    name: String,
    attacher: Attacher,
    restart: RestartPolicy,
    /// The current session and its conduit.
    current: Mutex<(Connection, StableMonitor)>,
    gate: Arc<LogGate>,
    state: watch::Sender<CellState>,
    last_end: Mutex<Option<SessionError>>,
    /// Re-attaches after a failed session.
    restarts: AtomicU32,
    shutting_down: AtomicBool,
}

impl RemoteInner {
    fn current(&self) -> (Connection, StableMonitor) {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl crate::following::Incarnations for RemoteInner {
    fn name(&self) -> &str {
        &self.name
    }
    fn subscribe(&self) -> watch::Receiver<CellState> {
        self.state.subscribe()
    }
    fn live_connection(&self) -> Option<Connection> {
        Some(self.current().0).filter(|c| c.ended().is_none())
    }
    fn latest_connection(&self) -> Option<Connection> {
        self.live_connection()
    }
    fn shut_down(&self) -> bool {
        // ORDERING: Acquire pairs with the Release stores of `shutdown` and
        // `Owner::drop`.
        self.shutting_down.load(Ordering::Acquire)
    }
    fn restart_bound(&self) -> Duration {
        let backoff = match self.restart {
            RestartPolicy::OnFailure { max_backoff, .. } => max_backoff,
            RestartPolicy::Never => Duration::ZERO,
        };
        backoff + self.attacher.handshake_bound()
    }
}

/// Publishes the state when a session ends, and attaches again after a
/// failure if the restart policy says so.
async fn watch_session(inner: Arc<RemoteInner>) {
    let mut in_a_row = 0u32;
    loop {
        let (conn, _) = inner.current();
        let attached_at = tokio::time::Instant::now();
        let end = conn.closed().await;
        tracing::info!(cell = %inner.name, "the remote cell's session ended: {end}");
        *inner.last_end.lock().unwrap_or_else(|p| p.into_inner()) = Some(end.clone());
        // ORDERING: Acquire pairs with the Release store of `shutdown` and `Owner::drop`.
        let ours = inner.shutting_down.load(Ordering::Acquire);
        if ours || matches!(end, SessionError::Goodbye { .. } | SessionError::Closed { .. }) {
            inner.state.send_replace(CellState::Stopped {
                exit: ExitInfo::Detached,
            });
            return;
        }
        let RestartPolicy::OnFailure {
            max_restarts,
            backoff,
            max_backoff,
            reset_after,
        } = inner.restart
        else {
            inner.state.send_replace(CellState::Failed {
                reason: end.to_string(),
            });
            return;
        };
        if attached_at.elapsed() >= reset_after {
            in_a_row = 0;
        }
        let mut wait = backoff;
        let mut last = end.to_string();
        loop {
            in_a_row += 1;
            if in_a_row > max_restarts {
                inner.state.send_replace(CellState::Failed {
                    reason: format!(
                        "gave up attaching again after {max_restarts} attempts in a row; the last: {last}"
                    ),
                });
                return;
            }
            inner.state.send_replace(CellState::Restarting {
                last_exit: ExitInfo::Detached,
                restarts: inner.restarts.load(Ordering::Relaxed),
            });
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(max_backoff);
            if inner.shutting_down.load(Ordering::Acquire) {
                inner.state.send_replace(CellState::Stopped {
                    exit: ExitInfo::Detached,
                });
                return;
            }
            match inner.attacher.attach().await {
                Ok(current) => {
                    *inner.current.lock().unwrap_or_else(|p| p.into_inner()) = current;
                    inner.restarts.fetch_add(1, Ordering::Relaxed);
                    *inner.last_end.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    inner.state.send_replace(CellState::Attached {
                        address: inner.attacher.addr.to_string(),
                    });
                    tracing::info!(cell = %inner.name, "attached again");
                    break;
                }
                Err(e) => {
                    tracing::warn!(cell = %inner.name, "attaching again failed: {e}");
                    last = e.to_string();
                }
            }
        }
    }
}

/// A handle on an attached remote cell. Cheap to clone; when the last clone
/// is dropped the session ends (the cell is told goodbye).
#[derive(Clone)]
pub struct RemoteCell {
    inner: Arc<RemoteInner>,
    _owner: Arc<Owner>,
}

/// Shared by every clone of a [`RemoteCell`]: the last one dropped says
/// goodbye to the cell.
struct Owner {
    inner: Arc<RemoteInner>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        // ORDERING: Release pairs with `watch_session`'s Acquire loads.
        self.inner.shutting_down.store(true, Ordering::Release);
        let (conn, _) = self.inner.current();
        if conn.ended().is_none()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                conn.goodbye("the host dropped its last handle on this cell")
                    .await
            });
        }
    }
}

impl std::fmt::Debug for RemoteCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCell")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .finish()
    }
}

impl RemoteCell {
    /// The cell's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The cell's state now.
    pub fn state(&self) -> CellState {
        self.inner.state.borrow().clone()
    }

    /// Waits until the state satisfies `pred`, and returns it.
    pub async fn wait_for(&self, pred: impl Fn(&CellState) -> bool) -> CellState {
        let mut rx = self.inner.state.subscribe();
        let r = rx.wait_for(|s| pred(s)).await.map(|s| s.clone());
        r.unwrap_or_else(|_| self.state())
    }

    /// The conduit's status: connected, or resuming after a break.
    pub fn link_status(&self) -> StableStatus {
        self.inner.current().1.status()
    }

    /// How many times the current session's conduit resumed after its
    /// connection broke.
    pub fn link_resumes(&self) -> u64 {
        self.inner.current().1.resumes()
    }

    /// Why the session ended (`None` while it runs).
    pub fn last_session_end(&self) -> Option<SessionError> {
        self.inner
            .last_end
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The session's root connection.
    pub fn connection(&self) -> Result<Connection, HostError> {
        let (conn, _) = self.inner.current();
        if conn.ended().is_some() {
            return Err(HostError::NotRunning {
                name: self.name().to_string(),
                state: self.state().to_string(),
            });
        }
        Ok(conn)
    }

    /// A typed client, e.g. `cell.client::<CalculatorClient>()`, that
    /// follows the cell across re-attaches: each call goes to the session
    /// current when it is made, and a call made while the host attaches
    /// again waits for it (bounded like a spawned cell's, see
    /// [`CellHandle::client`](crate::CellHandle::client)). For a client
    /// bound to the current session alone, `XClient::new(cell.connection()?)`.
    pub fn client<C: From<Target>>(&self) -> Result<C, HostError> {
        Ok(C::from(CellSource::new(self.inner.clone()).target()))
    }

    /// Counters: re-attaches after a failed session (`restarts`), what the
    /// cell logged, and the current session's counters. Resumes of the
    /// conduit are [`link_resumes`](Self::link_resumes).
    pub fn stats(&self) -> CellStats {
        CellStats {
            restarts: self.inner.restarts.load(Ordering::Relaxed),
            failures_in_a_row: 0,
            logs: self.inner.gate.stats(),
            session: self.inner.current().0.stats(),
        }
    }

    /// Says goodbye and waits up to `grace` for the session to end. Returns
    /// [`ExitInfo::Detached`]: the cell's process is not ours to watch.
    pub async fn shutdown(&self, grace: Duration) -> ExitInfo {
        // ORDERING: Release pairs with `watch_session`'s Acquire loads.
        self.inner.shutting_down.store(true, Ordering::Release);
        let (conn, _) = self.inner.current();
        let _ = tokio::time::timeout(grace, conn.goodbye("the host is shutting this cell down")).await;
        let ended = |s: &CellState| matches!(s, CellState::Stopped { .. } | CellState::Failed { .. });
        let _ = tokio::time::timeout(grace, self.wait_for(ended)).await;
        ExitInfo::Detached
    }
}
