//! Forwarding: a transparent proxy between two connections.
//!
//! A [`Forward`] is a [`Dispatcher`] that serves a connection by passing every
//! call on to another connection — typically of another session (a host
//! bridging two cells, or a proxy bridging a client and a server). It never
//! decodes a payload:
//!
//! - **calls** go out under a request id of the forwarder's own on the target
//!   session, with the caller's method id, metadata and encoded arguments
//!   unchanged; the **answer** comes back with its outcome as it was, so a
//!   user error, an unknown method, an undecodable payload or a cancellation
//!   reaches the caller as if it had called the target itself, with the
//!   answer's metadata unchanged;
//! - **cancels**: dropping or cancelling the call on the caller's side
//!   aborts the forwarding handler, which cancels the call on the target;
//! - **channels** listed in a call or an answer are remapped: the forwarder
//!   opens a channel of its own on the other session for each, and a relay
//!   moves items, closes and resets between the two, whichever way they flow.
//!   Payload handles are positions in the message's channel list, so the
//!   payload needs no rewriting. Credit is end to end: the relay grants the
//!   sender more only as it hands items on, and hands them on only as the
//!   receiver grants, so a slow receiver stalls the sender through the
//!   forwarder, which holds at most one window per channel;
//! - **closing**: when the target connection closes (or its session ends),
//!   the forwarded connection is closed with that reason; when the forwarded
//!   connection closes, a target connection the forwarder opened for it
//!   ([`Forward::open_on`]) is closed too. Calls in flight fail with the
//!   reason.
//!
//! The host decides who reaches what: the acceptor of the caller's session
//! (see [`SessionBuilder::accept_connections`](crate::SessionBuilder::accept_connections))
//! returns a `Forward` only for the connections it allows, and refuses the
//! others with its reason.
//!
//! One `Forward` serves one connection: create one per accepted connection.
//! It may also serve a root connection ([`SessionBuilder::serve`](crate::SessionBuilder::serve)),
//! e.g. in a proxy process; there is nothing to close there when the target
//! goes away, so calls fail with the target's reason instead.
//!
//! On a shared-memory link a relay cannot learn a channel's direction from
//! the credit table, so forwarding channels there needs both sides of that
//! session to announce the same `initial_credit` (the default); otherwise a
//! call with channels fails with a message saying so.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::watch;
use tracing::debug;

use crate::channel::{self, ChannelCore, ChannelError, End};
use crate::service::{Dispatch, Dispatcher, HandlerFuture, ReplyOutcome, ReplyValue};
use crate::session::{self, Connection, RawReply, Shared};
use crate::wire::{Message, Metadata};

/// Where calls go.
#[derive(Clone)]
enum Target {
    /// Not there yet (being opened).
    Pending,
    /// Calls go here.
    Ready(Connection),
    /// It could not be reached, or it closed: why.
    Gone(String),
}

/// Forwards every call on the connection it serves to a target connection
/// (see the module docs).
pub struct Forward {
    me: Weak<Forward>,
    target: watch::Sender<Target>,
    /// For [`Forward::open_on`]: the session to open the target on, and the
    /// metadata to open it with; taken when opening starts.
    open: Mutex<Option<(Connection, Metadata)>>,
    /// The forwarded connection, once accepted.
    source: OnceLock<Connection>,
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = match &*self.target.borrow() {
            Target::Pending => "pending".to_string(),
            Target::Ready(c) => format!("{c:?}"),
            Target::Gone(why) => format!("gone: {why}"),
        };
        f.debug_struct("Forward").field("target", &target).finish()
    }
}

impl Forward {
    fn with(target: Target, open: Option<(Connection, Metadata)>) -> Arc<Forward> {
        Arc::new_cyclic(|me| Forward {
            me: me.clone(),
            target: watch::Sender::new(target),
            open: Mutex::new(open),
            source: OnceLock::new(),
        })
    }

    /// Forwards to `target`, an open connection (a root connection, or a
    /// virtual connection shared by several forwarders). The forwarded
    /// connection closes when `target` does; closing it leaves `target` open.
    pub fn to(target: Connection) -> Arc<Forward> {
        Self::with(Target::Ready(target), None)
    }

    /// Opens a virtual connection on `session` with `metadata` (when the
    /// forwarded connection is accepted, or at the first call) and forwards
    /// to it; closing either closes the other. If the target's side refuses
    /// the connection, the forwarded connection is closed with its reason.
    pub fn open_on(session: Connection, metadata: Metadata) -> Arc<Forward> {
        Self::with(Target::Pending, Some((session, metadata)))
    }

    /// Starts opening the target, if that is still to do.
    fn start_opening(&self) {
        let Some((session, metadata)) = self.open.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let this = self.me.clone();
        tokio::spawn(async move {
            let opened = session.open(metadata, None).await;
            let Some(this) = this.upgrade() else { return };
            match opened {
                Ok(conn) => {
                    this.target.send_replace(Target::Ready(conn.clone()));
                    this.tie(conn, true);
                }
                Err(e) => {
                    let why = format!("the connection to forward to could not be opened: {e}");
                    this.target.send_replace(Target::Gone(why.clone()));
                    if let Some(src) = this.source.get() {
                        src.close(&why).await;
                    }
                }
            }
        });
    }

    /// Ties the forwarded connection's life to `target`'s once both exist;
    /// `owned`: the target was opened for it, and closes with it.
    fn tie(&self, target: Connection, owned: bool) {
        let Some(source) = self.source.get().cloned() else {
            return;
        };
        let state = self.target.clone();
        tokio::spawn(async move {
            tokio::select! {
                why = target.connection_closed() => {
                    let why = format!("the connection it forwards to closed: {why}");
                    debug!("forward: {why}");
                    state.send_replace(Target::Gone(why.clone()));
                    source.close(&why).await;
                }
                why = source.connection_closed() => {
                    debug!("forward: the forwarded connection closed: {why}");
                    let why = format!("the forwarded connection closed: {why}");
                    state.send_replace(Target::Gone(why.clone()));
                    if owned {
                        target.close(&why).await;
                    }
                }
            }
        });
    }
}

impl Dispatcher for Forward {
    fn dispatch(&self, method: u64, metadata: &Metadata, args: &[u8]) -> Dispatch {
        // Take the listed channels now, while the call is being decoded:
        // items that follow the call are queued on them, not lost.
        let taken = channel::bind_listed_for_relay();
        self.start_opening();
        Dispatch::Run(forward_call(
            self.target.subscribe(),
            taken,
            method,
            metadata.clone(),
            args.to_vec(),
        ))
    }

    fn connection_accepted(&self, conn: &Connection) {
        let _ = self.source.set(conn.clone());
        let ready = match &*self.target.borrow() {
            Target::Ready(t) => Some(t.clone()),
            _ => None,
        };
        match ready {
            Some(t) => self.tie(t, false),
            None => self.start_opening(),
        }
    }
}

/// The call's channels not (yet) relayed: reset if the call ends without
/// relaying them (an error, or the caller cancelled).
struct Unrelayed {
    shared: Arc<Shared>,
    cores: Vec<Arc<ChannelCore>>,
    relayed: usize,
}

impl Drop for Unrelayed {
    fn drop(&mut self) {
        for c in &self.cores[self.relayed..] {
            reset(
                &self.shared,
                c,
                "the forwarded call ended before this channel was relayed",
            );
        }
    }
}

/// Forwards one call.
fn forward_call(
    mut target: watch::Receiver<Target>,
    taken: Result<(Arc<Shared>, Vec<Arc<ChannelCore>>), String>,
    method: u64,
    metadata: Metadata,
    args: Vec<u8>,
) -> HandlerFuture {
    Box::pin(async move {
        let reply = async {
            let (source, cores) =
                taken.map_err(|e| format!("the forwarder could not take the call's channels: {e}"))?;
            let mut incoming = Unrelayed {
                shared: source.clone(),
                cores,
                relayed: 0,
            };
            let target = match target
                .wait_for(|t| !matches!(t, Target::Pending))
                .await
                .map(|t| t.clone())
            {
                Ok(Target::Ready(c)) => c,
                Ok(Target::Gone(why)) => return Err(why),
                _ => return Err("the forwarder was dropped".to_string()),
            };
            let to = session::shared(&target).clone();
            if !incoming.cores.is_empty() {
                for s in [&source, &to] {
                    if let Some(why) = session::relay_unsupported(s) {
                        return Err(why);
                    }
                }
            }
            // Remap the call's channels onto the target's session.
            let mut outs = Vec::with_capacity(incoming.cores.len());
            while incoming.relayed < incoming.cores.len() {
                let out = session::relay_channel(&to)
                    .map_err(|e| format!("the forwarder could not open a channel on the target: {e}"))?;
                outs.push(out.clone());
                relay(
                    source.clone(),
                    incoming.cores[incoming.relayed].clone(),
                    to.clone(),
                    out,
                );
                incoming.relayed += 1;
            }
            let ids = outs.iter().map(|c| c.id).collect();
            let answered = session::call_raw(&target, method, metadata, ids, &args).await;
            let RawReply {
                outcome,
                channels,
                metadata: answer_metadata,
            } = match answered {
                Ok(r) => r,
                Err(e) => {
                    let why = format!("the forwarded call failed: {e}");
                    // The target may never have heard of these channels:
                    // end them here only; their relays tell the caller.
                    for out in outs {
                        out.on_reset(why.clone());
                        to.retire_channel(out.id);
                    }
                    return Err(why);
                }
            };
            // The answer's metadata goes back as it came (the handler's
            // context is current while this future is polled).
            if let Some(ctx) = crate::CallContext::current() {
                ctx.relay_response_metadata(answer_metadata);
            }
            // Remap the answer's channels onto the caller's session.
            let mut answer = Unrelayed {
                shared: to.clone(),
                cores: channels,
                relayed: 0,
            };
            let mut back = Vec::with_capacity(answer.cores.len());
            while answer.relayed < answer.cores.len() {
                let out = session::relay_channel(&source)
                    .map_err(|e| format!("the forwarder could not open a channel back to the caller: {e}"))?;
                back.push(out.id);
                relay(
                    to.clone(),
                    answer.cores[answer.relayed].clone(),
                    source.clone(),
                    out,
                );
                answer.relayed += 1;
            }
            Ok((outcome, back))
        }
        .await;
        let reply = match reply {
            Ok((outcome, channels)) => Forwarded { outcome, channels },
            Err(why) => Forwarded {
                outcome: ReplyOutcome::Internal(why),
                channels: Vec::new(),
            },
        };
        Box::new(reply) as Box<dyn ReplyValue>
    })
}

/// A forwarded answer: the target's outcome, and the caller-side channels.
struct Forwarded {
    outcome: ReplyOutcome,
    channels: Vec<u64>,
}

impl ReplyValue for Forwarded {
    fn encode_reply(self: Box<Self>) -> Result<(bool, Vec<u8>), String> {
        match self.into_outcome() {
            ReplyOutcome::Ok(b) => Ok((false, b)),
            ReplyOutcome::UserError(b) => Ok((true, b)),
            other => Err(format!("{other:?}")),
        }
    }

    fn into_outcome(self: Box<Self>) -> ReplyOutcome {
        for &id in &self.channels {
            if let Err(e) = channel::list_for_relay(id) {
                return ReplyOutcome::Internal(e);
            }
        }
        self.outcome
    }
}

/// Relays channel `a` (on session `sa`) and channel `b` (on session `sb`)
/// both ways.
fn relay(sa: Arc<Shared>, a: Arc<ChannelCore>, sb: Arc<Shared>, b: Arc<ChannelCore>) {
    tokio::spawn(pump(sa.clone(), a.clone(), sb.clone(), b.clone()));
    tokio::spawn(pump(sb, b, sa, a));
}

/// Moves what arrives on `from` to `to` until either ends.
async fn pump(sfrom: Arc<Shared>, from: Arc<ChannelCore>, sto: Arc<Shared>, to: Arc<ChannelCore>) {
    loop {
        match from.next_item(None).await {
            Ok(Some((bytes, grant))) => {
                if let Some(g) = grant {
                    // Best effort: if that session is gone, so is the sender.
                    let _ = sfrom
                        .send(&Message::GrantCredit {
                            channel: from.id,
                            bytes: g,
                        })
                        .await;
                }
                if let Some(why) = channel::never_sendable(&sto, bytes.len() as u64) {
                    let why = format!("a relayed item of {why} (the next hop)");
                    reset(&sfrom, &from, &why);
                    reset(&sto, &to, &why);
                    return;
                }
                match to.take_credit(bytes.len() as u64).await {
                    Ok(()) => {}
                    Err(ChannelError::PeerBrokeProtocol { rule, detail }) => {
                        sto.fail_violation(rule, detail.clone());
                        reset(
                            &sfrom,
                            &from,
                            &format!("the next hop broke protocol rule [{rule}]: {detail}"),
                        );
                        return;
                    }
                    Err(e) => {
                        reset(&sfrom, &from, &reason(e));
                        return;
                    }
                }
                // A split item goes on in its two pieces, not joined first.
                let (head, tail) = bytes.parts();
                let sent = channel::send_item(&sto, to.id, head, tail).await;
                if let Err(e) = sent {
                    reset(&sfrom, &from, &format!("the next hop's session ended: {e}"));
                    return;
                }
            }
            Ok(None) => {
                // The sender closed: so does the relay, on the other side.
                if !to.sent_terminal() {
                    let finished = to.end_local(End::Tx);
                    let _ = sto.send(&Message::Close { channel: to.id }).await;
                    if finished {
                        sto.retire_channel(to.id);
                    }
                }
                return;
            }
            Err(e) => {
                reset(&sto, &to, &reason(e));
                return;
            }
        }
    }
}

fn reason(e: ChannelError) -> String {
    match e {
        ChannelError::Reset { reason } => reason,
        e => e.to_string(),
    }
}

/// Resets a relayed channel on its session (once), and wakes the relay's
/// other pump.
fn reset(shared: &Arc<Shared>, core: &Arc<ChannelCore>, why: &str) {
    if !core.sent_terminal() {
        shared.send_later(&Message::Reset {
            channel: core.id,
            reason: why.to_string(),
        });
        if core.end_local(End::Rx) {
            shared.retire_channel(core.id);
        }
    }
    core.on_reset(why.to_string());
}
