//! The serving side: the peer's calls, dispatched to the connection's
//! dispatcher and polled once in place; handlers that wait run as tasks a
//! `Cancel` can abort; their responses go out at once, from the handler's
//! task, or through the outbox, and stay counted in `serving` until written.

use crate::rules::Rule;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use super::channels::{abandon_unbound, open_peer_channels};
use super::outbound::Answered;
use super::{Connection, Shared};
use crate::channel;
use crate::context::CallContext;
use crate::error::{Violation, violation};
use crate::metadata::{Answering, check_response_metadata};
use crate::service::{Dispatch, HandlerFuture, ReplyOutcome, ReplyValue};
use crate::wire::spliced::{Body, Spliced};
use crate::wire::{Message, Metadata, Outcome};

/// A call the peer made, as it arrived.
pub(super) struct IncomingCall<'a> {
    pub(super) conn: u64,
    pub(super) request: u64,
    pub(super) method: u64,
    /// Microseconds the caller waits (0: no deadline).
    pub(super) deadline_us: u64,
    pub(super) metadata: &'a Metadata,
    pub(super) channels: &'a [u64],
    /// The encoded arguments (a large trailing byte string may be apart).
    pub(super) args: crate::service::Args<'a>,
}

pub(super) fn on_call(shared: &Arc<Shared>, call: IncomingCall<'_>) -> Result<(), Violation> {
    let IncomingCall {
        conn,
        request,
        method,
        deadline_us,
        metadata,
        channels,
        args,
    } = call;
    if !shared.ids.is_peers(request) {
        return Err(violation(
            Rule::IdParity.name(),
            format!("request id {request} does not have the caller's parity"),
        ));
    }
    let (dispatcher, caller) = {
        let s = shared.lock();
        let Some(c) = s.conns.get(&conn) else {
            if s.conn_watch.recently_closed(conn) {
                // Sent before the peer learned of our close, which fails the
                // call there; its channels are refused.
                drop(s);
                open_peer_channels(shared, channels)?;
                abandon_unbound(shared, channels, &[]);
                return Ok(());
            }
            return Err(violation(
                Rule::ConnKnown.name(),
                format!("Call on connection {conn}, which is not open"),
            ));
        };
        if s.serving.contains_key(&(conn, request)) {
            return Err(violation(
                Rule::RequestUnique.name(),
                format!("request {request} is already in flight"),
            ));
        }
        if s.serving.len() >= shared.ours.max_concurrent_requests as usize {
            return Err(violation(
                Rule::RequestLimit.name(),
                format!(
                    "request {request} would be call number {} in flight, over our max_concurrent_requests of {}",
                    s.serving.len() + 1,
                    shared.ours.max_concurrent_requests
                ),
            ));
        }
        (c.dispatcher.clone(), c.caller.clone())
    };
    open_peer_channels(shared, channels)?;
    if method == crate::service::DESCRIBE_METHOD {
        abandon_unbound(shared, channels, &[]);
        describe(shared, conn, request, dispatcher.as_deref());
        return Ok(());
    }
    let dispatch = match &dispatcher {
        None => Dispatch::UnknownMethod,
        Some(d) => {
            let (r, bound) =
                channel::with_decode_context(shared, channels, || d.dispatch_args(method, metadata, args));
            abandon_unbound(shared, channels, &bound);
            r
        }
    };
    if dispatcher.is_none() {
        abandon_unbound(shared, channels, &[]);
    }
    let respond = |outcome: Outcome<'_>| {
        shared.send_later(&Message::Response {
            conn,
            request,
            metadata: vec![],
            channels: vec![],
            outcome,
        });
    };
    match dispatch {
        Dispatch::UnknownMethod => respond(Outcome::UnknownMethod),
        Dispatch::InvalidPayload(detail) => respond(Outcome::InvalidPayload(detail)),
        Dispatch::Run(mut handler) => {
            shared.stats.calls_served.fetch_add(1, Ordering::Relaxed);
            let deadline =
                std::time::Instant::now().checked_add(std::time::Duration::from_micros(deadline_us));
            let deadline = deadline.filter(|_| deadline_us > 0);
            // The context's response-metadata slot is made only if the
            // handler needs it; its answer takes the entries from the
            // context polled (copies share the slot).
            let mut ctx = Some(CallContext {
                conn: Connection::unguarded(shared.clone(), conn),
                method,
                metadata: metadata.clone(),
                deadline,
                caller,
                answer: Answering::open(),
            });
            // Most handlers answer without waiting: poll once here, and such a
            // call costs no task at all. A handler that waits moves to its
            // own task, where a Cancel can abort it, and so can its deadline.
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match catch_poll(&mut handler, &mut ctx, &mut cx) {
                Poll::Ready(reply) => answer(shared, conn, request, reply, answered_metadata(&ctx)),
                Poll::Pending => {
                    let sh = shared.clone();
                    // The entry goes in before the task can finish (it takes
                    // the same lock to remove it).
                    let mut s = shared.lock();
                    let task = tokio::spawn(async move {
                        let run = std::future::poll_fn(|cx| catch_poll(&mut handler, &mut ctx, cx));
                        let reply = match deadline {
                            None => run.await,
                            Some(d) => match tokio::time::timeout_at(d.into(), run).await {
                                Ok(reply) => reply,
                                // The caller has stopped waiting: the
                                // handler is dropped (cancelled) here.
                                Err(_) => Err(ReplyOutcome::Cancelled),
                            },
                        };
                        // Done (or cancelled): what it held goes before the answer.
                        drop(handler);
                        let metadata = answered_metadata(&ctx);
                        // Still counted while the response waits for room:
                        // a peer that does not read runs into request.limit.
                        let live = sh.lock().serving.contains_key(&(conn, request));
                        if live {
                            send_response(&sh, conn, request, reply, metadata).await;
                        }
                    });
                    if s.ended.is_none() && s.conns.contains_key(&conn) {
                        s.serving.insert((conn, request), Some(task.abort_handle()));
                    } else {
                        // Closed (or ended) since the call arrived: nobody
                        // would ever abort this handler.
                        task.abort();
                    }
                }
            }
        }
    }
    Ok(())
}

/// The response metadata a handler's context collected, for its answer
/// (later sets are refused).
fn answered_metadata(ctx: &Option<CallContext>) -> Metadata {
    ctx.as_ref().map_or_else(Metadata::new, |c| c.answer.take())
}

/// Answers the built-in describe call: the services served on `conn`.
fn describe(shared: &Arc<Shared>, conn: u64, request: u64, dispatcher: Option<&dyn crate::Dispatcher>) {
    let services: Vec<crate::service::ServiceDescription> = dispatcher
        .map(|d| d.describe_all())
        .unwrap_or_default()
        .into_iter()
        .map(|s| crate::service::ServiceDescription {
            name: s.name.to_string(),
            methods: s.methods.iter().map(|(m, _)| m.to_string()).collect(),
        })
        .collect();
    let reply: Box<dyn ReplyValue> = Box::new(Ok::<_, String>(services));
    answer(shared, conn, request, Ok(reply), Metadata::new());
}

/// What a handler ended with: its reply, or the outcome that answers the
/// call instead (a panic, a passed deadline).
type Reply = Result<Box<dyn ReplyValue>, ReplyOutcome>;

/// An encoded reply: how the call ended, as the session answers it.
type EncodedReply = ReplyOutcome;

/// Polls a handler, turning a panic into an error reply that carries the
/// panic's message (and the handler's streams into resets).
fn catch_poll(
    handler: &mut HandlerFuture,
    ctx: &mut Option<CallContext>,
    cx: &mut std::task::Context<'_>,
) -> Poll<Reply> {
    let r = CallContext::polling(ctx, || {
        channel::poll_catching_panics(handler, cx, |payload| {
            format!("the handler panicked: {}", panic_message(&*payload))
        })
    });
    match r {
        Ok(Poll::Ready(reply)) => Poll::Ready(Ok(reply)),
        Ok(Poll::Pending) => Poll::Pending,
        Err(why) => Poll::Ready(Err(ReplyOutcome::Internal(why))),
    }
}

/// The message a panic carried (`panic!("...")` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(a panic without a message)"
    }
}

/// Encodes a handler's reply (binding the channels in it) and sends it:
/// `(channels in it, whether it was sent)`.
fn encode_reply(shared: &Arc<Shared>, reply: Reply) -> (EncodedReply, Vec<u64>) {
    match reply {
        Ok(value) => channel::with_encode_context(shared, || value.into_outcome()),
        Err(outcome) => (outcome, Vec::new()),
    }
}

fn response<'a>(
    conn: u64,
    request: u64,
    encoded: &'a EncodedReply,
    channels: Vec<u64>,
    metadata: Metadata,
) -> Message<'a> {
    let outcome = encoded.as_wire();
    Message::Response {
        conn,
        request,
        metadata,
        channels,
        outcome,
    }
}

/// Answers a call from the driver: at once if the link has room, else from a
/// task that waits for it. Channels in the reply are announced only once the
/// response is sent, so their items cannot overtake it.
fn answer(shared: &Arc<Shared>, conn: u64, request: u64, reply: Reply, metadata: Metadata) {
    if let Ok(value) = &reply
        && answered_in_place(shared, conn, request, &**value, &metadata)
    {
        return;
    }
    let (encoded, channels) = encode_reply(shared, reply);
    let (encoded, channels, metadata) = sendable_reply(shared, conn, request, encoded, channels, metadata);
    let msg = response(conn, request, &encoded, channels, metadata);
    let len = msg.encoded_len();
    if shared.check_sendable(msg.kind(), len).is_ok() {
        let fill = |buf: &mut [u8]| {
            msg.write_to(buf);
        };
        match shared.try_send_now(len, &fill) {
            Ok(true) => {
                if let Message::Response { channels, .. } = &msg {
                    shared.announce(channels);
                }
                return;
            }
            Ok(false) => {}
            Err(_) => return,
        }
    }
    // No room now: the response waits in the outbox, and the call stays
    // counted in `serving` until the writer has written it.
    let Message::Response { channels, .. } = &msg else {
        return;
    };
    let answered = Answered {
        conn,
        request,
        channels: channels.clone(),
    };
    {
        let mut s = shared.lock();
        if s.ended.is_some() {
            return;
        }
        s.serving.insert((conn, request), None);
    }
    let overtakes = answered.channels.is_empty();
    shared.enqueue(msg.to_vec(), Some(answered), overtakes);
}

/// Answers at once with the value written straight into the frame, with no
/// buffer of its own: its large last element copied from the value (see
/// [`ReplyValue::split_reply`]), or the whole value by its direct codec
/// (most results: a number, a string, bytes; see
/// [`ReplyValue::send_direct`]). `false` when the reply is neither, or
/// cannot go at once, or breaks a limit: the caller then answers the usual
/// way (which says why).
fn answered_in_place(
    shared: &Arc<Shared>,
    conn: u64,
    request: u64,
    value: &dyn ReplyValue,
    metadata: &Metadata,
) -> bool {
    if let Some((is_error, head, tail)) = value.split_reply() {
        let body = Body::Parts { head: &head, tail };
        return answered_spliced(shared, conn, request, metadata, is_error, body);
    }
    let sent = value.send_direct(&mut |is_error, len, write| {
        let body = Body::Written { len, write };
        answered_spliced(shared, conn, request, metadata, is_error, body)
    });
    sent == Some(true)
}

/// Sends the response with `payload` spliced into it, if the link has room
/// now and the metadata may go.
fn answered_spliced(
    shared: &Arc<Shared>,
    conn: u64,
    request: u64,
    metadata: &Metadata,
    is_error: bool,
    payload: Body<'_>,
) -> bool {
    if check_response_metadata(metadata).is_err() {
        return false;
    }
    let msg = Message::Response {
        conn,
        request,
        metadata: metadata.clone(),
        channels: vec![],
        outcome: if is_error {
            Outcome::UserError(&[])
        } else {
            Outcome::Ok(&[])
        },
    };
    matches!(shared.try_send_message(&Spliced::with(&msg, payload)), Ok(true))
}

/// Answers a call from the handler's task, waiting for link room.
async fn send_response(shared: &Arc<Shared>, conn: u64, request: u64, reply: Reply, metadata: Metadata) {
    let (encoded, channels) = encode_reply(shared, reply);
    let (encoded, channels, metadata) = sendable_reply(shared, conn, request, encoded, channels, metadata);
    let msg = response(conn, request, &encoded, channels, metadata);
    // The call stops counting against request.limit as its response is
    // written, not after: the peer may send its next call the moment it
    // reads this one's answer.
    let written = || {
        shared.lock().serving.remove(&(conn, request));
    };
    match shared.send_then(&msg, &written).await {
        Ok(()) => {
            if let Message::Response { channels, .. } = &msg {
                shared.announce(channels);
            }
        }
        // Not written (too large for the link, or the session ended): the
        // call is over all the same.
        Err(_) => written(),
    }
}

/// A reply too large for the link or the peer is answered with an error
/// that says so (a response that cannot be sent would leave the caller
/// waiting, or end the session); so is one whose metadata passes the
/// response bounds (only a forwarder relaying a bad hop could build one).
fn sendable_reply(
    shared: &Shared,
    conn: u64,
    request: u64,
    encoded: EncodedReply,
    channels: Vec<u64>,
    metadata: Metadata,
) -> (EncodedReply, Vec<u64>, Metadata) {
    if let Err(e) = check_response_metadata(&metadata) {
        return (ReplyOutcome::Internal(e.to_string()), Vec::new(), Metadata::new());
    }
    let len = response(conn, request, &encoded, channels.clone(), metadata.clone()).encoded_len();
    let max = shared.max_message();
    if len <= max {
        return (encoded, channels, metadata);
    }
    let why = format!(
        "the handler's result and response metadata encode to {len} bytes, over this session's {max}-byte message limit; return large data through a channel (Tx/Rx)"
    );
    (ReplyOutcome::Internal(why), Vec::new(), Metadata::new())
}
