//! The caller side: [`Connection::call`], the raw call path forwarders use,
//! and what waits for a response (the `pending` table, the memory of
//! cancelled requests, the guard that cancels a dropped call).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use facet::Facet;
use tokio::sync::oneshot;

use super::channels::open_peer_channels;
use super::{Connection, Ids, Shared, State};
use crate::channel;
use crate::error::{CallError, SessionError, Violation, violation};
use crate::wire::{Message, Metadata, Outcome};

/// How many cancelled requests a session remembers (see `State::cancelled`).
const CANCELLED_MEMORY: usize = 4096;

/// An outgoing call waiting for its response.
pub(super) struct Pending {
    pub(super) conn: u64,
    pub(super) complete: Box<dyn PendingCall>,
}

/// Completes a typed call from a response, decoding in place in the driver
/// (so channels in the return value bind before later frames arrive).
pub(crate) trait PendingCall: Send {
    fn respond(self: Box<Self>, shared: &Arc<Shared>, channels: &[u64], outcome: &Outcome<'_>);
    fn fail(self: Box<Self>, error: CallFailure);
}

/// A failure that ends a call without a response.
#[derive(Clone, Debug)]
pub(crate) enum CallFailure {
    Session(SessionError),
    ConnectionClosed(String),
}

/// Remembers that request `id` was cancelled (or its connection closed), so
/// a response crossing the cancel is dropped quietly.
pub(super) fn forget_request(s: &mut State, id: u64) {
    if s.cancelled.insert(id) {
        s.cancelled_order.push_back(id);
        if s.cancelled_order.len() > CANCELLED_MEMORY
            && let Some(old) = s.cancelled_order.pop_front()
        {
            s.cancelled.remove(&old);
        }
    }
}

pub(super) fn on_response(
    shared: &Arc<Shared>,
    conn: u64,
    request: u64,
    channels: &[u64],
    outcome: &Outcome<'_>,
) -> Result<(), Violation> {
    let pending = {
        let mut s = shared.lock();
        match s.pending.remove(&request) {
            Some(p) => p,
            None => {
                if s.cancelled.remove(&request) {
                    return Ok(());
                }
                return Err(violation(
                    "response.known-request",
                    format!("Response to request {request}, which is not in flight"),
                ));
            }
        }
    };
    if pending.conn != conn {
        return Err(violation(
            "response.known-request",
            format!(
                "Response to request {request} on connection {conn}; it was made on {}",
                pending.conn
            ),
        ));
    }
    open_peer_channels(shared, channels)?;
    pending.complete.respond(shared, channels, outcome);
    Ok(())
}

/// Options for one call.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// Fail with [`CallError::DeadlineExceeded`] (and cancel) after this long.
    pub timeout: Option<Duration>,
    /// Metadata sent with the call.
    pub metadata: Metadata,
}

impl CallOptions {
    /// Options with a timeout.
    pub fn timeout(timeout: Duration) -> Self {
        CallOptions {
            timeout: Some(timeout),
            ..Default::default()
        }
    }
}

/// The typed completion of one call.
struct TypedPending<T, E> {
    tx: oneshot::Sender<Result<T, CallError<E>>>,
}

impl<T, E> PendingCall for TypedPending<T, E>
where
    T: Facet<'static> + Send + 'static,
    E: Facet<'static> + Send + 'static,
{
    fn respond(self: Box<Self>, shared: &Arc<Shared>, channels: &[u64], outcome: &Outcome<'_>) {
        let result = match outcome {
            Outcome::Ok(bytes) => {
                let (r, _) =
                    channel::with_decode_context(shared, channels, || channel::decode_exact::<T>(bytes));
                r.map_err(|detail| CallError::Decode { detail })
            }
            Outcome::UserError(bytes) => match channel::decode_exact::<E>(bytes) {
                Ok(e) => Err(CallError::User(e)),
                Err(detail) => Err(CallError::Decode { detail }),
            },
            Outcome::UnknownMethod => Err(CallError::UnknownMethod { method: 0 }),
            Outcome::InvalidPayload(d) => Err(CallError::InvalidPayload { detail: d.clone() }),
            Outcome::Cancelled => Err(CallError::Cancelled),
            Outcome::Internal(d) => Err(CallError::Internal { detail: d.clone() }),
        };
        let _ = self.tx.send(result);
    }

    fn fail(self: Box<Self>, error: CallFailure) {
        let e = match error {
            CallFailure::Session(s) => CallError::Session(s),
            CallFailure::ConnectionClosed(reason) => CallError::ConnectionClosed { reason },
        };
        let _ = self.tx.send(Err(e));
    }
}

/// Removes a call's pending entry and sends `Cancel` if the call's future is
/// dropped before its response arrived.
pub(super) struct CallGuard {
    pub(super) shared: Arc<Shared>,
    pub(super) conn: u64,
    pub(super) request: u64,
    pub(super) armed: bool,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let was_pending = {
            let mut s = self.shared.lock();
            let was = s.pending.remove(&self.request).is_some();
            if was {
                forget_request(&mut s, self.request);
            }
            was
        };
        if was_pending {
            self.shared.send_later(&Message::Cancel {
                conn: self.conn,
                request: self.request,
            });
        }
    }
}

impl Connection {
    /// Calls `method` with `args`, waiting for the response. Calls beyond the
    /// peer's concurrency limit wait for a slot. Dropping the returned future
    /// cancels the call on the peer.
    pub async fn call<A, T, E>(&self, method: u64, args: &A, options: CallOptions) -> Result<T, CallError<E>>
    where
        A: for<'f> Facet<'f>,
        T: Facet<'static> + Send + 'static,
        E: Facet<'static> + Send + 'static,
    {
        let work = self.call_inner(method, args, options.metadata);
        match options.timeout {
            None => work.await,
            Some(t) => match tokio::time::timeout(t, work).await {
                Ok(r) => r,
                Err(_) => Err(CallError::DeadlineExceeded { after: t }),
            },
        }
    }

    async fn call_inner<A, T, E>(&self, method: u64, args: &A, metadata: Metadata) -> Result<T, CallError<E>>
    where
        A: for<'f> Facet<'f>,
        T: Facet<'static> + Send + 'static,
        E: Facet<'static> + Send + 'static,
    {
        let shared = &self.shared;
        if let Some(e) = shared.ended() {
            return Err(CallError::Session(e));
        }
        let _slot = shared.call_limit.clone().acquire_owned().await.map_err(|_| {
            CallError::Session(shared.ended().unwrap_or(SessionError::Closed {
                reason: "closed".into(),
            }))
        })?;
        let (encoded, channels) = channel::with_encode_context(shared, || channel::encode_value(args));
        let args = encoded.map_err(|detail| CallError::Encode { detail })?;
        let request = Ids::next(&shared.ids.next_request);
        shared.stats.calls_made.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut s = shared.lock();
            if let Some(e) = &s.ended {
                return Err(CallError::Session(e.clone()));
            }
            if self.id != 0 && !s.conns.contains_key(&self.id) {
                return Err(CallError::ConnectionClosed {
                    reason: "the connection is closed".into(),
                });
            }
            s.pending.insert(
                request,
                Pending {
                    conn: self.id,
                    complete: Box::new(TypedPending::<T, E> { tx }),
                },
            );
        }
        let mut guard = CallGuard {
            shared: shared.clone(),
            conn: self.id,
            request,
            armed: true,
        };
        let msg = Message::Call {
            conn: self.id,
            request,
            method,
            metadata,
            channels,
            args: &args,
        };
        let sent = shared.send(&msg).await;
        if let Message::Call { channels, .. } = &msg {
            shared.announce(channels);
        }
        if let Err(e) = sent {
            guard.armed = false;
            shared.lock().pending.remove(&request);
            return Err(match e {
                SessionError::Link { detail } if !detail.contains("link") => CallError::Encode { detail },
                e => CallError::Session(e),
            });
        }
        let result = rx.await.unwrap_or_else(|_| {
            Err(CallError::Session(shared.ended().unwrap_or(
                SessionError::Closed {
                    reason: "closed".into(),
                },
            )))
        });
        guard.armed = false;
        match result {
            Err(CallError::UnknownMethod { .. }) => Err(CallError::UnknownMethod { method }),
            r => r,
        }
    }
}
