//! Virtual connections: opening one ([`Connection::open`]), accepting or
//! rejecting the peer's, and closing them (either side; calls in flight on
//! a closed connection fail and its handlers are aborted).

use crate::rules::Rule;
use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::debug;

use super::calls::{CallFailure, Pending};
use super::{Connection, Ids, Shared, liveness};
use crate::control::META_CALLER;
use crate::error::{CallError, SessionError, Violation, violation};
use crate::service::Dispatcher;
use crate::wire::{Message, MetaValue, Metadata};

/// Most virtual connections open at once in a session.
const MAX_CONNECTIONS: usize = 4096;

/// One connection's local state.
pub(super) struct ConnState {
    pub(super) dispatcher: Option<Arc<dyn Dispatcher>>,
    /// Who calls on it, as the peer said when it opened it (only if this
    /// side trusts the peer to say: [`SessionBuilder::trust_peer_caller`](crate::SessionBuilder::trust_peer_caller)).
    pub(super) caller: Option<Arc<str>>,
}

/// The caller the peer names in a connection's open `metadata`, if this
/// side believes it (see [`CallContext::caller`](crate::CallContext::caller)).
fn trusted_caller(shared: &Shared, metadata: &Metadata) -> Option<Arc<str>> {
    if !shared.trust_peer_caller {
        return None;
    }
    match &metadata.iter().find(|m| m.key == META_CALLER)?.value {
        MetaValue::Str(name) => Some(Arc::from(name.as_str())),
        _ => {
            debug!(session = %shared.name, "ignoring a {META_CALLER} that is not a string");
            None
        }
    }
}

pub(super) fn on_connection_open(
    shared: &Arc<Shared>,
    conn: u64,
    metadata: &Metadata,
) -> Result<(), Violation> {
    if !shared.ids.is_peers(conn) {
        return Err(violation(
            Rule::IdParity.name(),
            format!("connection id {conn} does not have the opener's parity"),
        ));
    }
    {
        let s = shared.lock();
        if s.conns.contains_key(&conn) {
            return Err(violation(
                Rule::ConnUnique.name(),
                format!("connection {conn} is already open"),
            ));
        }
        if s.conns.len() >= MAX_CONNECTIONS {
            return Err(violation(
                Rule::ConnLimit.name(),
                format!(
                    "connection {conn} would be connection number {}, over the limit of {MAX_CONNECTIONS}",
                    s.conns.len() + 1
                ),
            ));
        }
    }
    let decision = match &shared.acceptor {
        None => Err("this side accepts no virtual connections".to_string()),
        Some(a) => a(metadata),
    };
    match decision {
        Ok(dispatcher) => {
            shared.lock().conns.insert(
                conn,
                ConnState {
                    dispatcher: dispatcher.clone(),
                    caller: trusted_caller(shared, metadata),
                },
            );
            shared.send_later(&Message::ConnectionAccept {
                conn,
                metadata: vec![],
            });
            if let Some(d) = dispatcher {
                d.connection_accepted(&Connection::unguarded(shared.clone(), conn));
            }
        }
        Err(reason) => shared.send_later(&Message::ConnectionReject { conn, reason }),
    }
    Ok(())
}

pub(super) fn on_connection_answer(
    shared: &Arc<Shared>,
    conn: u64,
    answer: Result<Metadata, String>,
) -> Result<(), Violation> {
    let Some(waiter) = shared.lock().opening.remove(&conn) else {
        return Err(violation(
            Rule::ConnKnown.name(),
            format!("answer for connection {conn}, which we are not opening"),
        ));
    };
    if let Err(answer) = waiter.send(answer) {
        // The opener stopped waiting (its `open` future was dropped): close
        // what nobody will use, so neither side keeps it.
        const WHY: &str = "the opener stopped waiting for this connection";
        match answer {
            Ok(_) => {
                close_connection(shared, conn, WHY.to_string());
                shared.send_later(&Message::ConnectionClose {
                    conn,
                    reason: WHY.to_string(),
                });
            }
            Err(_) => {
                let removed = shared.lock().conns.remove(&conn);
                drop(removed);
            }
        }
    }
    Ok(())
}

/// Forgets a connection: fails our calls on it, aborts its handlers.
pub(super) fn close_connection(shared: &Arc<Shared>, conn: u64, reason: String) {
    // Dropped after the lock: a dispatcher may hold connection handles.
    let removed;
    let (pending, serving) = {
        let mut s = shared.lock();
        removed = s.conns.remove(&conn);
        s.conn_watch.closed(conn, &reason);
        let ids: Vec<u64> = s
            .pending
            .iter()
            .filter(|(_, p)| p.conn == conn)
            .map(|(id, _)| *id)
            .collect();
        let pending: Vec<Pending> = ids.iter().filter_map(|id| s.pending.remove(id)).collect();
        // The peer may have answered before it learned of the close.
        for &id in &ids {
            s.cancelled.insert(id);
        }
        let keys: Vec<(u64, u64)> = s.serving.keys().filter(|(c, _)| *c == conn).copied().collect();
        let serving: Vec<_> = keys.iter().filter_map(|k| s.serving.remove(k)).collect();
        (pending, serving)
    };
    for p in pending {
        p.complete.fail(CallFailure::ConnectionClosed(reason.clone()));
    }
    for h in serving.into_iter().flatten() {
        h.abort();
    }
    drop(removed);
    liveness::end_if_unused(shared);
}

/// Forgets a virtual connection whose `open` was dropped before its
/// `ConnectionOpen` was sent.
struct UnsentOpen {
    shared: Arc<Shared>,
    conn: u64,
    armed: bool,
}

impl Drop for UnsentOpen {
    fn drop(&mut self) {
        if self.armed {
            let removed = {
                let mut s = self.shared.lock();
                s.opening.remove(&self.conn);
                s.conns.remove(&self.conn)
            };
            drop(removed);
        }
    }
}

impl Connection {
    /// Opens a virtual connection on this session. `dispatcher` serves the
    /// peer's calls on it (if any). Fails with the peer's reason if refused.
    pub async fn open(
        &self,
        metadata: Metadata,
        dispatcher: Option<Arc<dyn Dispatcher>>,
    ) -> Result<Connection, CallError<String>> {
        let shared = &self.shared;
        let conn = Ids::next(&shared.ids.next_conn);
        let (tx, rx) = oneshot::channel();
        {
            // Registered before the peer can answer: its close may follow
            // its accept before this task runs again.
            let mut s = shared.lock();
            s.opening.insert(conn, tx);
            s.conns.insert(
                conn,
                ConnState {
                    dispatcher,
                    caller: None,
                },
            );
        }
        // Dropped before the open went out: forget the connection (a frame is
        // sent whole or not at all, so the peer never heard of it). Once it
        // is out, an answer nobody waits for closes it (see
        // `on_connection_answer`).
        let mut unsent = UnsentOpen {
            shared: shared.clone(),
            conn,
            armed: true,
        };
        // (A dispatcher removed here is dropped after the lock: it may hold
        // connection handles.)
        let sent = shared.send(&Message::ConnectionOpen { conn, metadata }).await;
        unsent.armed = false;
        if let Err(e) = sent {
            let removed = {
                let mut s = shared.lock();
                s.opening.remove(&conn);
                s.conns.remove(&conn)
            };
            drop(removed);
            return Err(CallError::Session(e));
        }
        let answer = rx.await;
        match answer {
            Ok(Ok(_)) => Ok(Connection::guarded(shared.clone(), conn)),
            Ok(Err(reason)) => {
                let removed = shared.lock().conns.remove(&conn);
                drop(removed);
                Err(CallError::User(reason))
            }
            Err(_) => {
                let removed = shared.lock().conns.remove(&conn);
                drop(removed);
                Err(CallError::Session(shared.ended().unwrap_or(
                    SessionError::Closed {
                        reason: "closed".into(),
                    },
                )))
            }
        }
    }

    /// Closes this virtual connection (the peer is told; calls in flight on
    /// it fail). Closing the root connection ends the session.
    pub async fn close(&self, reason: &str) {
        if self.id == 0 {
            self.goodbye(reason).await;
            return;
        }
        if self.shared.lock().conns.contains_key(&self.id) {
            close_connection(&self.shared, self.id, format!("closed here: {reason}"));
            let _ = self
                .shared
                .send(&Message::ConnectionClose {
                    conn: self.id,
                    reason: reason.to_string(),
                })
                .await;
        }
    }
}
