//! Liveness by handles: a connection lives while someone holds it.
//!
//! Every [`Connection`] this side creates for itself (the root connection
//! from the handshake, and each virtual connection it [`open`]s) shares one
//! [`Guard`] among its clones. When the last clone is dropped:
//!
//! - for a virtual connection, the connection is closed here (its calls in
//!   flight fail) and the peer is told with `ConnectionClose`;
//! - for the root connection, the session is marked released, and ends with
//!   a `Goodbye` as soon as no virtual connection is open any more (opened by
//!   either side: a connection the peer opened and this side serves keeps
//!   the session up until it closes).
//!
//! Handles given to dispatchers ([`Dispatcher::connection_accepted`]) do not
//! count: a connection the peer opened lives until either side closes it.
//!
//! [`open`]: Connection::open
//! [`Dispatcher::connection_accepted`]: crate::Dispatcher::connection_accepted

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::connections::close_connection;
use super::{Connection, Shared};
use crate::error::SessionError;
use crate::wire::Message;

/// Why a session whose handles were all dropped ended.
const UNUSED: &str = "every handle on the session was dropped and no virtual connection is open";

/// Shared by the clones of one connection handle; dropping the last one
/// releases the connection.
pub(crate) struct Guard {
    shared: Arc<Shared>,
    conn: u64,
}

impl Guard {
    pub(super) fn new(shared: Arc<Shared>, conn: u64) -> Self {
        Guard { shared, conn }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let shared = &self.shared;
        if self.conn == 0 {
            shared.lock().root_released = true;
            end_if_unused(shared);
            return;
        }
        let open = {
            let s = shared.lock();
            s.ended.is_none() && s.conns.contains_key(&self.conn)
        };
        if open {
            let reason = "the last handle on it was dropped";
            shared.send_later(&Message::ConnectionClose {
                conn: self.conn,
                reason: reason.to_string(),
            });
            // Also ends the session if this was what kept it up.
            close_connection(shared, self.conn, format!("closed here: {reason}"));
        }
    }
}

/// Ends the session if its root was released and no virtual connection is
/// open or being opened: says goodbye first (from a task, when a runtime is
/// at hand; a drop may happen outside one).
pub(super) fn end_if_unused(shared: &Arc<Shared>) {
    let unused = {
        let s = shared.lock();
        s.ended.is_none() && s.root_released && s.conns.len() <= 1 && s.opening.is_empty()
    };
    if !unused {
        return;
    }
    let why = SessionError::Closed {
        reason: UNUSED.to_string(),
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            let shared = shared.clone();
            rt.spawn(async move {
                let bye = Message::Goodbye {
                    reason: UNUSED.to_string(),
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), shared.send(&bye)).await;
                shared.end(why);
            });
        }
        Err(_) => shared.end(why),
    }
}

/// How many closed connections' reasons are remembered.
const REMEMBERED: usize = 256;

/// Waiters for connections' closes, and the reasons of recent closes.
#[derive(Default)]
pub(super) struct ConnWatch {
    waiters: HashMap<u64, watch::Sender<Option<String>>>,
    recent: VecDeque<(u64, String)>,
}

impl ConnWatch {
    /// Connection `conn` closed because of `reason`.
    pub(super) fn closed(&mut self, conn: u64, reason: &str) {
        if let Some(w) = self.waiters.remove(&conn) {
            w.send_replace(Some(reason.to_string()));
        }
        self.recent.push_back((conn, reason.to_string()));
        if self.recent.len() > REMEMBERED {
            self.recent.pop_front();
        }
    }

    fn subscribe(&mut self, conn: u64) -> watch::Receiver<Option<String>> {
        self.waiters
            .entry(conn)
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// Whether `conn` was closed recently (late traffic for it is expected).
    pub(super) fn recently_closed(&self, conn: u64) -> bool {
        self.recent.iter().any(|(c, _)| *c == conn)
    }

    /// Why closed connection `conn` closed, if remembered.
    fn reason(&self, conn: u64) -> String {
        self.recent
            .iter()
            .rev()
            .find(|(c, _)| *c == conn)
            .map_or_else(|| format!("connection {conn} is closed"), |(_, r)| r.clone())
    }
}

/// Waits until `conn` closes (or its session ends) and returns why.
pub(super) async fn connection_closed(conn: &Connection) -> String {
    let shared = &conn.shared;
    let mut ended = shared.ended.subscribe();
    if conn.id == 0 {
        super::wait_ended(&mut ended).await;
        return ended_reason(shared);
    }
    let mut closed = {
        let mut s = shared.lock();
        if let Some(e) = &s.ended {
            return e.to_string();
        }
        if !s.conns.contains_key(&conn.id) {
            return s.conn_watch.reason(conn.id);
        }
        s.conn_watch.subscribe(conn.id)
    };
    tokio::select! {
        r = closed.wait_for(Option::is_some) => match r {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => format!("connection {} is closed", conn.id),
        },
        _ = super::wait_ended(&mut ended) => ended_reason(shared),
    }
}

fn ended_reason(shared: &Shared) -> String {
    shared
        .ended()
        .map_or_else(|| "the session was dropped".to_string(), |e| e.to_string())
}
