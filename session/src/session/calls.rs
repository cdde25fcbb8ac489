//! The caller side: [`Connection::call`], the raw call path forwarders use,
//! and what waits for a response (the `pending` table, the memory of
//! cancelled requests, the guard that cancels a dropped call).

use crate::rules::Rule;
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use facet::Facet;
use tokio::sync::oneshot;

use super::channels::open_peer_channels;
use super::held;
use super::{Connection, Ids, Shared};
use crate::channel::{self, ChannelCore, End};
use crate::error::{CallError, SessionError, Violation, violation};
use crate::fast;
use crate::metadata::{ResponseMetadata, check_response_metadata};
use crate::service::ReplyOutcome;
use crate::wire::spliced::{Encode, Spliced};
use crate::wire::{Message, Metadata, Outcome};

/// How many cancelled requests a session remembers (see `State::cancelled`).
pub(super) const CANCELLED_MEMORY: usize = 4096;

/// An outgoing call waiting for its response.
pub(super) struct Pending {
    pub(super) conn: u64,
    pub(super) complete: Box<dyn PendingCall>,
    /// A deadline the driver's sweep enforces (the session's default, or a
    /// forwarded one): when, and the timeout it came from. Calls with a
    /// timeout of their own use a timer instead.
    pub(super) expires: Option<(Instant, Duration)>,
}

/// Completes a call (typed or raw) from a response, decoding in place in the driver
/// (so channels in the return value bind before later frames arrive).
pub(crate) trait PendingCall: Send {
    /// The response arrived, with its channels, metadata and outcome.
    /// `tail`: the end of the outcome's bytes, when the link held it apart.
    fn respond(
        self: Box<Self>,
        shared: &Arc<Shared>,
        channels: &[u64],
        metadata: Metadata,
        outcome: &Outcome<'_>,
        tail: Option<Vec<u8>>,
    );
    fn fail(self: Box<Self>, error: CallFailure);
}

/// A failure that ends a call without a response.
#[derive(Clone, Debug)]
pub(crate) enum CallFailure {
    Session(SessionError),
    ConnectionClosed(String),
    /// The deadline the driver's sweep enforces passed.
    DeadlineExceeded(Duration),
}

/// Fails every call whose sweep-enforced deadline passed (see
/// [`Pending::expires`]) and cancels it on the peer. The driver calls this
/// on every tick, so such a deadline is kept to within one tick.
pub(super) fn expire_calls(shared: &Arc<Shared>) {
    let now = Instant::now();
    let expired: Vec<(u64, Pending)> = {
        let mut s = shared.lock();
        let due: Vec<u64> = s
            .pending
            .iter()
            .filter(|(_, p)| p.expires.is_some_and(|(at, _)| at <= now))
            .map(|(&r, _)| r)
            .collect();
        due.into_iter()
            .filter_map(|r| {
                let p = s.pending.remove(&r)?;
                s.cancelled.insert(r);
                Some((r, p))
            })
            .collect()
    };
    for (request, p) in expired {
        shared.send_later(&Message::Cancel {
            conn: p.conn,
            request,
        });
        let after = p.expires.map_or(Duration::ZERO, |(_, t)| t);
        p.complete.fail(CallFailure::DeadlineExceeded(after));
    }
}

pub(super) fn on_response(
    shared: &Arc<Shared>,
    conn: u64,
    request: u64,
    channels: &[u64],
    metadata: Metadata,
    outcome: &Outcome<'_>,
    tail: Option<Vec<u8>>,
) -> Result<(), Violation> {
    check_response_metadata(&metadata).map_err(|e| {
        violation(
            Rule::ResponseMetadataBounded.name(),
            format!("the response to request {request}: {e}"),
        )
    })?;
    let pending = {
        let mut s = shared.lock();
        match s.pending.remove(&request) {
            Some(p) => p,
            None => {
                if s.cancelled.remove(request) {
                    return Ok(());
                }
                return Err(violation(
                    Rule::ResponseKnownRequest.name(),
                    format!("Response to request {request}, which is not in flight"),
                ));
            }
        }
    };
    if pending.conn != conn {
        return Err(violation(
            Rule::ResponseKnownRequest.name(),
            format!(
                "Response to request {request} on connection {conn}; it was made on {}",
                pending.conn
            ),
        ));
    }
    open_peer_channels(shared, channels)?;
    pending
        .complete
        .respond(shared, channels, metadata, outcome, tail);
    Ok(())
}

/// Options for one call.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// Fail with [`CallError::DeadlineExceeded`] (and cancel) after this
    /// long; `None`: the session's
    /// [`call_timeout`](crate::SessionConfig::call_timeout) (60 s by
    /// default). The deadline travels with the call: the handler sees it
    /// ([`CallContext::deadline`](crate::CallContext::deadline)) and is
    /// cancelled when it passes.
    pub timeout: Option<Duration>,
    /// Metadata sent with the call.
    pub metadata: Metadata,
    /// Where the metadata the call is answered with goes, if the caller
    /// wants it ([`with_response_metadata`](Self::with_response_metadata)).
    pub response_metadata: Option<ResponseMetadata>,
    /// For a client that follows a peer across replacements (a host's
    /// client of a cell that restarts): fail at once while the peer is
    /// being replaced, instead of waiting for the next one (see
    /// [`fail_fast`](Self::fail_fast)).
    pub fail_fast: bool,
}

impl CallOptions {
    /// Options with a timeout.
    pub fn timeout(timeout: Duration) -> Self {
        CallOptions {
            timeout: Some(timeout),
            ..Default::default()
        }
    }

    /// Options for a call that may take as long as it takes (no deadline,
    /// whatever the session's default): e.g. a call that streams for hours.
    pub fn no_deadline() -> Self {
        CallOptions::timeout(Duration::MAX)
    }

    /// Adds a metadata entry (the handler reads it from its
    /// [`CallContext`](crate::CallContext)).
    pub fn with_metadata(mut self, key: impl Into<String>, value: crate::wire::MetaValue) -> Self {
        self.metadata.push(crate::wire::MetaEntry {
            key: key.into(),
            value,
        });
        self
    }

    /// Has the metadata the call is answered with (the handler's
    /// [`CallContext::set_response_metadata`](crate::CallContext::set_response_metadata))
    /// put in `slot` (a handle on it: keep a clone to read it once the call
    /// returns).
    pub fn with_response_metadata(mut self, slot: &ResponseMetadata) -> Self {
        self.response_metadata = Some(slot.clone());
        self
    }

    /// Through a client that follows a peer across replacements (a host's
    /// [`CellHandle::client`](https://docs.rs/osmos-host) of a cell that
    /// restarts): while the peer is being replaced, fail at once with
    /// [`SessionError::PeerDied`](crate::SessionError::PeerDied) instead of
    /// waiting for the next one. Without it the call waits, at most the
    /// client's wait bound and at most its own timeout.
    pub fn fail_fast(mut self) -> Self {
        self.fail_fast = true;
        self
    }

    /// The timeout a call with these options gets: its own, else the
    /// session's default; none for [`no_deadline`](Self::no_deadline).
    fn effective_timeout(&self, session_default: Option<Duration>) -> Option<Duration> {
        self.timeout
            .or(session_default)
            .filter(|t| *t < Duration::from_secs(100 * 365 * 24 * 3600))
    }
}

/// The typed completion of one call.
struct TypedPending<T, E> {
    tx: oneshot::Sender<Result<T, CallError<E>>>,
    /// Where the response's metadata goes, if the caller wants it.
    metadata: Option<ResponseMetadata>,
}

impl<T, E> PendingCall for TypedPending<T, E>
where
    T: Facet<'static> + Send + 'static,
    E: Facet<'static> + Send + 'static,
{
    fn respond(
        self: Box<Self>,
        shared: &Arc<Shared>,
        channels: &[u64],
        metadata: Metadata,
        outcome: &Outcome<'_>,
        tail: Option<Vec<u8>>,
    ) {
        if let Some(slot) = &self.metadata {
            slot.fill(metadata);
        }
        let result = match outcome {
            Outcome::Ok(bytes) => {
                // A value with a direct codec holds no channel handles: it
                // needs no binding context.
                let direct = if tail.is_none() {
                    crate::fast::decode::<T>(bytes)
                } else {
                    None
                };
                let r = match direct {
                    Some(r) => r,
                    // Anything else may hold channel handles, which bind
                    // while it decodes.
                    None => {
                        channel::with_decode_context(shared, channels, || match tail {
                            None => crate::payload::decode_reflected::<T>(bytes),
                            Some(tail) => crate::fast::decode_split_or_join::<T>(bytes, tail),
                        })
                        .0
                    }
                };
                r.map_err(|detail| CallError::Decode { detail })
            }
            Outcome::UserError(bytes) => match match tail {
                None => crate::payload::decode_exact::<E>(bytes),
                Some(tail) => crate::fast::decode_split_or_join::<E>(bytes, tail),
            } {
                Ok(e) => Err(CallError::User(e)),
                Err(detail) => Err(CallError::Decode { detail }),
            },
            Outcome::UnknownMethod => Err(CallError::UnknownMethod {
                method: 0,
                name: None,
            }),
            Outcome::InvalidPayload(d) => Err(CallError::InvalidPayload { detail: d.clone() }),
            Outcome::Cancelled => Err(CallError::Cancelled),
            Outcome::Internal(d) => Err(CallError::Internal { detail: d.clone() }),
        };
        let tx = self.tx;
        held::complete(move || {
            let _ = tx.send(result);
        });
    }

    fn fail(self: Box<Self>, error: CallFailure) {
        let e = match error {
            CallFailure::Session(s) => CallError::Session(s),
            CallFailure::ConnectionClosed(reason) => CallError::ConnectionClosed { reason },
            CallFailure::DeadlineExceeded(after) => CallError::DeadlineExceeded { after },
        };
        let _ = self.tx.send(Err(e));
    }
}

/// Removes a call's pending entry and sends `Cancel` if the call's future is
/// dropped before its response arrived.
struct CallGuard {
    shared: Arc<Shared>,
    conn: u64,
    request: u64,
    armed: bool,
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
                s.cancelled.insert(self.request);
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
        let timeout = options.effective_timeout(self.shared.call_timeout);
        if let Some(slot) = &options.response_metadata {
            slot.clear();
        }
        let work = self.call_inner(method, args, options.metadata, options.response_metadata, timeout);
        match (timeout, options.timeout) {
            (None, _) => work.await,
            // A timeout of its own: a timer, to the millisecond.
            (Some(t), Some(_)) => match tokio::time::timeout(t, work).await {
                Ok(Err(CallError::Cancelled)) | Err(_) => Err(CallError::DeadlineExceeded { after: t }),
                Ok(r) => r,
            },
            // The session's default: enforced by the callee and by the
            // driver's periodic sweep, so the common call costs no timer
            // (registering one per call wakes the runtime's timer driver).
            (Some(t), None) => match work.await {
                Err(CallError::Cancelled) => Err(CallError::DeadlineExceeded { after: t }),
                r => r,
            },
        }
    }

    async fn call_inner<A, T, E>(
        &self,
        method: u64,
        args: &A,
        metadata: Metadata,
        answer_metadata: Option<ResponseMetadata>,
        timeout: Option<Duration>,
    ) -> Result<T, CallError<E>>
    where
        A: for<'f> Facet<'f>,
        T: Facet<'static> + Send + 'static,
        E: Facet<'static> + Send + 'static,
    {
        let shared = &self.shared;
        let encode = || {
            // Arguments of directly-coded types (numbers, strings, bytes)
            // are encoded straight from `args` into the frame. Such
            // arguments hold no channels.
            if let Some(value) = fast::direct(args) {
                return Ok((Args::Direct(value), Vec::new()));
            }
            let (encoded, channels) =
                channel::with_encode_context(shared, || crate::payload::encode_reflected(args));
            encoded.map(|args| (Args::Bytes(Cow::Owned(args)), channels))
        };
        let (tx, rx) = oneshot::channel();
        let complete = Box::new(TypedPending::<T, E> {
            tx,
            metadata: answer_metadata,
        });
        match self
            .call_with(method, metadata, timeout, encode, complete, rx)
            .await
        {
            Ok(Err(CallError::UnknownMethod { .. })) => Err(CallError::UnknownMethod { method, name: None }),
            Ok(r) => r,
            Err(Unanswered::Ended(why)) => Err(CallError::Session(why.unwrap_or(SessionError::Closed {
                reason: "closed".into(),
            }))),
            Err(Unanswered::ConnectionClosed) => Err(CallError::ConnectionClosed {
                reason: "the connection is closed".into(),
            }),
            Err(Unanswered::Encode(detail)) => Err(CallError::Encode { detail }),
            // A send that failed because the session ended (the peer died
            // mid-send): the session's reason.
            Err(Unanswered::Send(_)) if shared.ended().is_some() => Err(CallError::Session(
                shared.ended().unwrap_or(SessionError::Closed {
                    reason: "closed".into(),
                }),
            )),
            // Refused before sending (too large for the peer): the call's own fault.
            Err(Unanswered::Send(SessionError::Link { detail })) if !detail.contains("link") => {
                Err(CallError::Encode { detail })
            }
            Err(Unanswered::Send(e)) => Err(CallError::Session(e)),
        }
    }

    /// The one path of every call, typed or raw: waits for a slot under the
    /// peer's concurrency limit, encodes the arguments (`encode` gives the
    /// payload and the channels it lists), registers `complete` for the
    /// response, sends the call and waits for `answer`, which `complete`
    /// fulfils. Dropping the future cancels the call on the peer.
    async fn call_with<'a, R>(
        &self,
        method: u64,
        metadata: Metadata,
        timeout: Option<Duration>,
        encode: impl FnOnce() -> Result<(Args<'a>, Vec<u64>), String>,
        complete: Box<dyn PendingCall>,
        answer: oneshot::Receiver<R>,
    ) -> Result<R, Unanswered> {
        let shared = &self.shared;
        if let Some(e) = shared.ended() {
            return Err(Unanswered::Ended(Some(e)));
        }
        let _slot = shared
            .call_limit
            .acquire()
            .await
            .map_err(|_| Unanswered::Ended(shared.ended()))?;
        let (args, channels) = encode().map_err(Unanswered::Encode)?;
        let request = Ids::next(&shared.ids.next_request);
        shared.stats.calls_made.fetch_add(1, Ordering::Relaxed);
        {
            let mut s = shared.lock();
            if let Some(e) = &s.ended {
                return Err(Unanswered::Ended(Some(e.clone())));
            }
            if self.id != 0 && !s.conns.contains_key(&self.id) {
                return Err(Unanswered::ConnectionClosed);
            }
            s.pending.insert(
                request,
                Pending {
                    conn: self.id,
                    complete,
                    expires: timeout.and_then(|t| Some((Instant::now().checked_add(t)?, t))),
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
            // At least 1: 0 means no deadline.
            deadline_us: timeout.map_or(0, |t| u64::try_from(t.as_micros()).unwrap_or(u64::MAX).max(1)),
            metadata,
            channels,
            args: match &args {
                Args::Bytes(b) => b,
                Args::Direct(_) => &[],
            },
        };
        let spliced = match &args {
            Args::Direct(value) => Some(Spliced::value(&msg, value)),
            Args::Bytes(_) => None,
        };
        let out: &dyn Encode = match &spliced {
            Some(s) => s,
            None => &msg,
        };
        // Claim the receive side before the call goes out (see `here`), but
        // never hold it while waiting to send: the peer may be waiting for
        // us to read before it makes room.
        let mut claim = shared.claim_receiving();
        let sent = match claim {
            Some(_) => match shared.try_send_message(out) {
                Ok(true) => Ok(()),
                Ok(false) => {
                    claim = None;
                    shared.send(out).await
                }
                Err(e) => Err(e),
            },
            None => shared.send(out).await,
        };
        if let Message::Call { channels, .. } = &msg {
            shared.announce(channels);
        }
        if let Err(e) = sent {
            guard.armed = false;
            shared.lock().pending.remove(&request);
            // Let the receive side go: the peer's last frames tell why.
            drop(claim);
            return Err(Unanswered::Send(shared.send_failure(e).await));
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let result = shared
            .answer(answer, deadline, claim)
            .await
            .ok_or_else(|| Unanswered::Ended(shared.ended()));
        guard.armed = false;
        result
    }
}

/// A call's encoded arguments.
enum Args<'a> {
    /// Encoded, or given encoded (a raw call).
    Bytes(Cow<'a, [u8]>),
    /// Of a type with a direct codec: encoded straight from the value into
    /// the frame.
    Direct(fast::Direct<'a>),
}

/// Why a call ended without its answer; each front end ([`Connection::call`],
/// [`call_raw`]) words it its own way.
enum Unanswered {
    /// The session ended (`None`: it is gone without a recorded reason).
    Ended(Option<SessionError>),
    /// The call's connection is closed.
    ConnectionClosed,
    /// The arguments could not be encoded.
    Encode(String),
    /// Sending the call failed.
    Send(SessionError),
}

/// The answer to a raw call.
pub(crate) struct RawReply {
    /// How the call ended, payload untouched.
    pub outcome: ReplyOutcome,
    /// The channels the answer handed over, in list order, both ends held here.
    pub channels: Vec<Arc<ChannelCore>>,
    /// The answer's metadata (within the response bounds).
    pub metadata: Metadata,
}

/// Completes a raw call.
struct RawPending {
    tx: oneshot::Sender<Result<RawReply, String>>,
}

impl PendingCall for RawPending {
    fn respond(
        self: Box<Self>,
        shared: &Arc<Shared>,
        channels: &[u64],
        metadata: Metadata,
        outcome: &Outcome<'_>,
        tail: Option<Vec<u8>>,
    ) {
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
        let reply = RawReply {
            outcome: ReplyOutcome::from_wire_parts(outcome, tail),
            channels: cores,
            metadata,
        };
        let tx = self.tx;
        held::complete(move || {
            let _ = tx.send(Ok(reply));
        });
    }

    fn fail(self: Box<Self>, error: CallFailure) {
        let reason = match error {
            CallFailure::Session(e) => e.to_string(),
            CallFailure::ConnectionClosed(r) => format!("the connection was closed: {r}"),
            CallFailure::DeadlineExceeded(after) => {
                format!("the call did not complete within its deadline of {after:?}")
            }
        };
        let _ = self.tx.send(Err(reason));
    }
}

/// Calls `method` on `conn` with already-encoded `args` listing `channels`
/// (created with [`relay_channel`](super::relay_channel) on this session),
/// for forwarders: a forwarder never decodes a payload, it sends the caller's
/// encoded arguments on as they are, under a request id of its own on the
/// next session. Dropping the future cancels the call on the peer. Errors say
/// why the call could not complete.
pub(crate) async fn call_raw(
    conn: &Connection,
    method: u64,
    metadata: Metadata,
    channels: Vec<u64>,
    args: &[u8],
) -> Result<RawReply, String> {
    let encode = || Ok((Args::Bytes(Cow::Borrowed(args)), channels));
    let (tx, rx) = oneshot::channel();
    // A forwarded call keeps the deadline of the call it forwards.
    let timeout = crate::CallContext::current().and_then(|c| c.remaining());
    match conn
        .call_with(method, metadata, timeout, encode, Box::new(RawPending { tx }), rx)
        .await
    {
        Ok(r) => r,
        Err(Unanswered::Ended(why)) => {
            Err(why.map_or_else(|| "the session closed".to_string(), |e| e.to_string()))
        }
        Err(Unanswered::ConnectionClosed) => Err(format!("connection {} is closed", conn.id)),
        Err(Unanswered::Encode(detail)) => Err(detail),
        Err(Unanswered::Send(e)) => Err(e.to_string()),
    }
}
