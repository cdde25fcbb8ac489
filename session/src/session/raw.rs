//! Calls and channels as raw bytes, for forwarders (see `forward.rs`).
//!
//! A forwarder never decodes a payload: it sends the caller's encoded
//! arguments on as they are, under a request id of its own on the next
//! session, and relays the answer back. Channel handles inside payloads are
//! positions in the message's channel list (see `channel.rs`), so remapping
//! channel ids only touches that list. A relayed channel holds both its ends
//! here: whichever way items flow, a relay task moves them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use super::calls::{CallFailure, CallGuard, Pending, PendingCall};
use super::{Connection, Ids, Shared};
use crate::channel::{ChannelCore, ChannelError, End};
use crate::link::CreditMode;
use crate::service::ReplyOutcome;
use crate::wire::{Message, Metadata, Outcome};

/// The answer to a raw call.
pub(crate) struct RawReply {
    /// How the call ended, payload untouched.
    pub outcome: ReplyOutcome,
    /// The channels the answer handed over, in list order, both ends held here.
    pub channels: Vec<Arc<ChannelCore>>,
}

/// Completes a raw call.
struct RawPending {
    tx: oneshot::Sender<Result<RawReply, String>>,
}

impl PendingCall for RawPending {
    fn respond(self: Box<Self>, shared: &Arc<Shared>, channels: &[u64], outcome: &Outcome<'_>) {
        let mut cores = Vec::with_capacity(channels.len());
        for &id in channels {
            // The driver opened every listed channel before answering.
            let Some(core) = shared.channel_core(id) else {
                let _ = self
                    .tx
                    .send(Err(format!("channel {id} of the answer is not open")));
                return;
            };
            core.attach(End::Tx);
            core.attach(End::Rx);
            if let Err(e) = core.init_credit(shared.our_initial_credit(), false) {
                let _ = self.tx.send(Err(e));
                return;
            }
            cores.push(core);
        }
        let _ = self.tx.send(Ok(RawReply {
            outcome: ReplyOutcome::from_wire(outcome),
            channels: cores,
        }));
    }

    fn fail(self: Box<Self>, error: CallFailure) {
        let reason = match error {
            CallFailure::Session(e) => e.to_string(),
            CallFailure::ConnectionClosed(r) => format!("the connection was closed: {r}"),
        };
        let _ = self.tx.send(Err(reason));
    }
}

impl Shared {
    /// The largest message the peer accepts on this link, in bytes.
    pub(crate) fn max_message(&self) -> usize {
        (self.peer.max_payload as usize).min(self.max_frame)
    }
}

/// The session behind a connection handle.
pub(crate) fn shared(conn: &Connection) -> &Arc<Shared> {
    &conn.shared
}

/// Calls `method` on `conn` with already-encoded `args` listing `channels`
/// (created with [`relay_channel`] on this session). Dropping the future
/// cancels the call on the peer. Errors say why the call could not complete.
pub(crate) async fn call_raw(
    conn: &Connection,
    method: u64,
    metadata: Metadata,
    channels: Vec<u64>,
    args: &[u8],
) -> Result<RawReply, String> {
    let shared = &conn.shared;
    if let Some(e) = shared.ended() {
        return Err(e.to_string());
    }
    let _slot = shared.call_limit.clone().acquire_owned().await.map_err(|_| {
        shared
            .ended()
            .map_or_else(|| "the session closed".to_string(), |e| e.to_string())
    })?;
    let request = Ids::next(&shared.ids.next_request);
    shared.stats.calls_made.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    {
        let mut s = shared.lock();
        if let Some(e) = &s.ended {
            return Err(e.to_string());
        }
        if conn.id != 0 && !s.conns.contains_key(&conn.id) {
            return Err(format!("connection {} is closed", conn.id));
        }
        s.pending.insert(
            request,
            Pending {
                conn: conn.id,
                complete: Box::new(RawPending { tx }),
            },
        );
    }
    let mut guard = CallGuard {
        shared: shared.clone(),
        conn: conn.id,
        request,
        armed: true,
    };
    let msg = Message::Call {
        conn: conn.id,
        request,
        method,
        metadata,
        channels,
        args,
    };
    let sent = shared.send(&msg).await;
    if let Message::Call { channels, .. } = &msg {
        shared.announce(channels);
    }
    if let Err(e) = sent {
        guard.armed = false;
        shared.lock().pending.remove(&request);
        return Err(e.to_string());
    }
    let r = rx.await.unwrap_or_else(|_| {
        Err(shared
            .ended()
            .map_or_else(|| "the session closed".to_string(), |e| e.to_string()))
    });
    guard.armed = false;
    r
}

/// Creates a channel on `shared`'s session to relay one the other session
/// listed: both ends held here, credit set up before it is announced.
pub(crate) fn relay_channel(shared: &Arc<Shared>) -> Result<Arc<ChannelCore>, ChannelError> {
    let core = shared.alloc_channel()?;
    core.attach(End::Tx);
    core.attach(End::Rx);
    core.init_credit(shared.our_initial_credit(), true)
        .map_err(|detail| ChannelError::Encode { detail })?;
    Ok(core)
}

/// Why channels cannot be relayed on this session, if they cannot: on a
/// shared credit table, a relay does not know which way a channel flows, so
/// both sides must start every channel with the same credit.
pub(crate) fn relay_unsupported(shared: &Shared) -> Option<String> {
    match &shared.credit {
        CreditMode::SharedTable(..) if shared.ours.initial_credit != shared.peer.initial_credit => {
            Some(format!(
                "cannot forward channels over session '{}': on a shared-memory link both sides must announce the same initial_credit (this side {}, the peer {})",
                shared.name, shared.ours.initial_credit, shared.peer.initial_credit
            ))
        }
        _ => None,
    }
}
