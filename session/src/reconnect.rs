//! Reconnect over a stream link: a client that survives its peer going away.
//!
//! A [`Reconnecting`] client owns a way to connect (a Unix socket path, a TCP
//! address, or any function returning a [`Link`]), a [`SessionBuilder`] and a
//! [`RetryPolicy`]. A background task keeps one session up:
//!
//! - it connects and runs the handshake; a failure is retried after a backoff
//!   that starts at [`RetryPolicy::initial_backoff`] and doubles up to
//!   [`RetryPolicy::max_backoff`], at most [`RetryPolicy::max_attempts`]
//!   times in a row;
//! - when the session ends for any reason but this side's own
//!   [`close`](Reconnecting::close) (the peer went away, said goodbye, broke
//!   the link, timed out), it starts over;
//! - calls in flight when the session broke fail with the session's error
//!   (e.g. [`SessionError::Link`]): the peer may or may not have run them,
//!   so they are never replayed;
//! - [`connection`](Reconnecting::connection) (and the calls made through
//!   [`call`](Reconnecting::call) or a [`client`](Reconnecting::client))
//!   waits while a reconnection is under way, and fails with
//!   [`ReconnectError::GaveUp`] once the policy is exhausted, naming the
//!   attempts and the last error. A client that gave up stays failed.
//!
//! The client's session lives while the client does: dropping the last
//! clone of the `Reconnecting` stops the task and ends the session.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use facet::Facet;
use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use crate::error::{CallError, SessionError};
use crate::link::Link;
use crate::link::stream::{connect_tcp, connect_unix};
use crate::session::{CallOptions, Connection, SessionBuilder};

/// How a [`Reconnecting`] client retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Connection attempts in a row before giving up (at least 1).
    pub max_attempts: u32,
    /// Wait after the first failed attempt.
    pub initial_backoff: Duration,
    /// Longest wait between attempts (the wait doubles up to it).
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 10 attempts, waiting 50 ms, then twice as long each time up to 2 s.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// Why a [`Reconnecting`] client cannot give a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReconnectError {
    /// Every attempt the policy allows failed.
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// What the last attempt reported.
        last_error: String,
    },
    /// The client was closed with [`Reconnecting::close`].
    Closed {
        /// The reason given.
        reason: String,
    },
}

impl fmt::Display for ReconnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReconnectError::GaveUp { attempts, last_error } => write!(
                f,
                "could not reconnect after {attempts} attempts (the retry policy is exhausted); the last attempt failed with: {last_error}; check that the peer is running, or allow more attempts"
            ),
            ReconnectError::Closed { reason } => write!(f, "the reconnecting client was closed: {reason}"),
        }
    }
}

impl std::error::Error for ReconnectError {}

/// Where a [`Reconnecting`] client is.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ReconnectState {
    /// Connecting: attempt number `attempt` of the current round.
    Connecting {
        /// 1 for the first attempt of a round.
        attempt: u32,
        /// Why the previous attempt (or the previous session) failed.
        last_error: Option<String>,
    },
    /// Connected.
    Connected(Connection),
    /// Gave up or closed.
    Failed(ReconnectError),
}

type Connect =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Connection, String>> + Send>> + Send + Sync>;

/// A client that reconnects (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct Reconnecting {
    inner: Arc<Inner>,
}

struct Inner {
    state: watch::Sender<ReconnectState>,
    stop: Arc<Notify>,
    connects: Arc<AtomicU64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

impl fmt::Debug for Reconnecting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reconnecting")
            .field("state", &*self.inner.state.borrow())
            .field("connects", &self.connects())
            .finish()
    }
}

impl Reconnecting {
    /// A client of the peer listening on the Unix socket at `path`.
    pub fn unix(
        path: impl Into<PathBuf>,
        max_frame: usize,
        builder: SessionBuilder,
        policy: RetryPolicy,
    ) -> Self {
        let path = path.into();
        Self::new(
            move || {
                let path = path.clone();
                async move { connect_unix(&path, max_frame).await.map_err(io::Error::other) }
            },
            builder,
            policy,
        )
    }

    /// A client of the peer listening on TCP at `addr` (e.g. `"10.0.0.2:7000"`).
    pub fn tcp(
        addr: impl Into<String>,
        max_frame: usize,
        builder: SessionBuilder,
        policy: RetryPolicy,
    ) -> Self {
        let addr = addr.into();
        Self::new(
            move || {
                let addr = addr.clone();
                async move {
                    connect_tcp(addr.as_str(), max_frame)
                        .await
                        .map_err(io::Error::other)
                }
            },
            builder,
            policy,
        )
    }

    /// A client connecting with `connect` (called for every attempt), then
    /// running `builder`'s handshake as the initiator. Needs a tokio runtime.
    pub fn new<F, Fut, L>(connect: F, builder: SessionBuilder, policy: RetryPolicy) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<L>> + Send + 'static,
        L: Link,
    {
        let connect: Connect = Arc::new(move || {
            let link = connect();
            let builder = builder.clone();
            Box::pin(async move {
                let link = link.await.map_err(|e| e.to_string())?;
                builder.initiate(link).await.map_err(|e| e.to_string())
            })
        });
        let (state, _) = watch::channel(ReconnectState::Connecting {
            attempt: 1,
            last_error: None,
        });
        let stop = Arc::new(Notify::new());
        let connects = Arc::new(AtomicU64::new(0));
        tokio::spawn(keep_connected(
            connect,
            policy,
            state.clone(),
            stop.clone(),
            connects.clone(),
        ));
        Reconnecting {
            inner: Arc::new(Inner {
                state,
                stop,
                connects,
            }),
        }
    }

    /// Where the client is now.
    pub fn state(&self) -> ReconnectState {
        self.inner.state.borrow().clone()
    }

    /// Sessions established so far (1 after the first connection, 2 after
    /// the first reconnection, ...).
    pub fn connects(&self) -> u64 {
        self.inner.connects.load(Ordering::Relaxed)
    }

    /// Waits until `pred` holds for the state, and returns it.
    pub async fn wait_for(&self, pred: impl Fn(&ReconnectState) -> bool) -> ReconnectState {
        let mut rx = self.inner.state.subscribe();
        let r = rx.wait_for(|s| pred(s)).await.map(|s| s.clone());
        r.unwrap_or_else(|_| self.state())
    }

    /// The current connection, waiting for a (re)connection under way;
    /// fails once the policy is exhausted, or after [`close`](Self::close).
    pub async fn connection(&self) -> Result<Connection, ReconnectError> {
        let mut rx = self.inner.state.subscribe();
        loop {
            let state = rx.borrow_and_update().clone();
            match state {
                ReconnectState::Connected(c) if c.ended().is_none() => return Ok(c),
                ReconnectState::Failed(e) => return Err(e),
                _ => {}
            }
            if rx.changed().await.is_err() {
                return Err(ReconnectError::Closed {
                    reason: "the reconnecting task stopped".into(),
                });
            }
        }
    }

    /// A typed client on the current connection (see [`connection`](Self::connection)),
    /// e.g. `client::<CalculatorClient>()`.
    pub async fn client<C: From<Connection>>(&self) -> Result<C, ReconnectError> {
        self.connection().await.map(C::from)
    }

    /// Calls `method` on the current connection, waiting for a
    /// reconnection under way. If the policy is exhausted the call fails
    /// with [`CallError::Session`] of a [`SessionError::Link`] that says so.
    pub async fn call<A, T, E>(&self, method: u64, args: &A, options: CallOptions) -> Result<T, CallError<E>>
    where
        A: for<'f> Facet<'f>,
        T: Facet<'static> + Send + 'static,
        E: Facet<'static> + Send + 'static,
    {
        let conn = self.connection().await.map_err(|e| {
            CallError::Session(SessionError::Link {
                detail: e.to_string(),
            })
        })?;
        conn.call(method, args, options).await
    }

    /// Ends the session with a goodbye and stops reconnecting.
    pub async fn close(&self, reason: &str) {
        let previous = self
            .inner
            .state
            .send_replace(ReconnectState::Failed(ReconnectError::Closed {
                reason: reason.to_string(),
            }));
        self.inner.stop.notify_one();
        if let ReconnectState::Connected(c) = previous {
            c.goodbye(reason).await;
        }
    }
}

/// The background task: connects, waits for the session to end, reconnects.
async fn keep_connected(
    connect: Connect,
    policy: RetryPolicy,
    state: watch::Sender<ReconnectState>,
    stop: Arc<Notify>,
    connects: Arc<AtomicU64>,
) {
    let max_attempts = policy.max_attempts.max(1);
    let mut last_error: Option<String> = None;
    loop {
        let mut backoff = policy.initial_backoff;
        let mut attempt = 0;
        let conn = loop {
            attempt += 1;
            if matches!(*state.borrow(), ReconnectState::Failed(_)) {
                return;
            }
            state.send_replace(ReconnectState::Connecting {
                attempt,
                last_error: last_error.clone(),
            });
            let tried = tokio::select! {
                r = connect() => r,
                _ = stop.notified() => return,
            };
            match tried {
                Ok(c) => break c,
                Err(e) => {
                    debug!(attempt, "reconnect: attempt failed: {e}");
                    last_error = Some(e);
                }
            }
            if attempt >= max_attempts {
                let e = ReconnectError::GaveUp {
                    attempts: attempt,
                    last_error: last_error.clone().unwrap_or_default(),
                };
                warn!("reconnect: {e}");
                state.send_if_modified(|s| {
                    if matches!(s, ReconnectState::Failed(_)) {
                        return false;
                    }
                    *s = ReconnectState::Failed(e);
                    true
                });
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.notified() => return,
            }
            backoff = (backoff * 2).min(policy.max_backoff.max(policy.initial_backoff));
        };
        connects.fetch_add(1, Ordering::Relaxed);
        let published = state.send_if_modified(|s| {
            if matches!(s, ReconnectState::Failed(_)) {
                return false;
            }
            *s = ReconnectState::Connected(conn.clone());
            true
        });
        if !published {
            conn.goodbye("the reconnecting client was closed").await;
            return;
        }
        let why = tokio::select! {
            why = conn.closed() => why,
            _ = stop.notified() => {
                conn.goodbye("the reconnecting client was dropped").await;
                return;
            }
        };
        if let SessionError::Closed { .. } = why {
            // Ended by this side (close, or every handle dropped).
            return;
        }
        debug!("reconnect: the session ended ({why}); reconnecting");
        last_error = Some(why.to_string());
        drop(conn);
    }
}
