//! Where a typed client sends its calls: one connection, or whichever
//! connection a [`Follow`] source names when the call is made.
//!
//! A [`Connection`] belongs to one session. A client that must outlive one
//! (a host's client of a cell that restarts, where each incarnation has its
//! own session) holds a source instead: at each call the source gives the
//! connection of the peer running now, waiting a bounded time while it is
//! being replaced. A call through a client on a fixed connection pays
//! nothing for this (a match on the target).

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{CallError, CallOptions, Connection, SessionError};

/// Why a [`Follow`] source could not name a connection to call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unreachable {
    /// The peer is being replaced and no new one ran within the wait; the
    /// text says which peer, its state and how long the call waited. A
    /// call reports it as [`SessionError::PeerDied`].
    Replacing(String),
    /// The peer is gone for good (stopped, given up on); the text says
    /// which and why. A call reports it as
    /// [`CallError::ConnectionClosed`].
    Gone(String),
}

impl<E> From<Unreachable> for CallError<E> {
    fn from(e: Unreachable) -> Self {
        match e {
            Unreachable::Replacing(detail) => CallError::Session(SessionError::PeerDied { detail }),
            Unreachable::Gone(reason) => CallError::ConnectionClosed { reason },
        }
    }
}

/// The future [`Follow::current`] returns.
pub type Current<'a> = Pin<Box<dyn Future<Output = Result<Connection, Unreachable>> + Send + 'a>>;

/// A source of the connection to call now, for clients that outlive one
/// session (see the module docs). `osmos-host` implements it for a cell's
/// incarnations.
pub trait Follow: Send + Sync + std::fmt::Debug + 'static {
    /// The connection of the peer running now. While the peer is being
    /// replaced, waits at most `wait` for the next one (`Duration::ZERO`:
    /// fail at once).
    fn current(&self, wait: Duration) -> Current<'_>;

    /// The running peer's connection, without waiting; `None` while none
    /// runs.
    fn latest(&self) -> Option<Connection>;

    /// How long a call waits for a peer being replaced, unless its options
    /// say otherwise ([`CallOptions::fail_fast`], a shorter timeout).
    fn max_wait(&self) -> Duration;
}

/// Where a generated client (`XClient`) sends its calls; see the module
/// docs. Made from a [`Connection`] (`.into()`) or with
/// [`Target::following`].
#[derive(Clone, Debug)]
pub struct Target(Kind);

#[derive(Clone, Debug)]
enum Kind {
    Fixed(Connection),
    Following { source: Arc<dyn Follow> },
}

impl From<Connection> for Target {
    fn from(conn: Connection) -> Self {
        Target(Kind::Fixed(conn))
    }
}

impl Target {
    /// A target that asks `source` for the connection at each call.
    pub fn following(source: Arc<dyn Follow>) -> Target {
        Target(Kind::Following { source })
    }

    /// The connection calls go to now, without waiting: the fixed one, or
    /// the source's current one. While the source has none (its peer is
    /// being replaced), a connection whose session has ended, holding
    /// nothing: channels opened on it fail. Open channels and call back on
    /// it; a call through the client itself finds the current connection
    /// on its own.
    pub fn connection(&self) -> Connection {
        match &self.0 {
            Kind::Fixed(conn) => conn.clone(),
            Kind::Following { source } => source.latest().unwrap_or_else(|| {
                Connection::ended_with(SessionError::PeerDied {
                    detail: format!("no peer runs now ({source:?}); it is being replaced or has stopped"),
                })
            }),
        }
    }

    /// Whether calls follow a source (rather than one connection).
    pub fn is_following(&self) -> bool {
        matches!(self.0, Kind::Following { .. })
    }

    /// The connection to call now, and `options` adjusted for the wait: a
    /// call that waited for a peer being replaced has that much less of
    /// its own timeout left.
    pub(crate) async fn resolve<E>(&self, options: &mut CallOptions) -> Result<Resolved<'_>, CallError<E>> {
        let source = match &self.0 {
            Kind::Fixed(conn) => {
                return Ok(Resolved {
                    conn: Cow::Borrowed(conn),
                    timeout: None,
                });
            }
            Kind::Following { source, .. } => source,
        };
        let wait = if options.fail_fast {
            Duration::ZERO
        } else {
            options
                .timeout
                .map_or(source.max_wait(), |t| t.min(source.max_wait()))
        };
        let started = Instant::now();
        let timeout = options.timeout;
        let conn = match source.current(wait).await {
            Ok(conn) => conn,
            // The call's own deadline passed first.
            Err(Unreachable::Replacing(_)) if !options.fail_fast && timeout.is_some_and(|t| t <= wait) => {
                return Err(CallError::DeadlineExceeded {
                    after: timeout.unwrap_or(wait),
                });
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(t) = timeout {
            let left = t.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(CallError::DeadlineExceeded { after: t });
            }
            options.timeout = Some(left);
        }
        Ok(Resolved {
            conn: Cow::Owned(conn),
            timeout,
        })
    }
}

/// The connection a call goes to ([`Target::resolve`]).
pub(crate) struct Resolved<'a> {
    pub(crate) conn: Cow<'a, Connection>,
    /// The call's own timeout before the wait for the peer, if any.
    timeout: Option<Duration>,
}

impl Resolved<'_> {
    /// The call's result, a missed deadline reported against the whole
    /// timeout (the deadline counts from when the call was made).
    pub(crate) fn finish<T, E>(&self, r: Result<T, CallError<E>>) -> Result<T, CallError<E>> {
        match (r, self.timeout) {
            (Err(CallError::DeadlineExceeded { .. }), Some(after)) => {
                Err(CallError::DeadlineExceeded { after })
            }
            (r, _) => r,
        }
    }
}
