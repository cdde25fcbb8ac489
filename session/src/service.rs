//! Services: a trait defined once gives a typed client and a dispatcher.
//!
//! The `#[osmos::service]` attribute (crate `osmos-macros`) turns a trait of
//! `async fn`s into: the trait itself (implement it to serve), a client whose
//! methods make calls, and a dispatcher that decodes the arguments and runs
//! the implementation. What its generated code calls is here ([`call`],
//! [`decode_args`], [`Dispatcher`], ...). Method ids are stable 64-bit hashes
//! of `"Service.method"` ([`method_id`]), so a method keeps its id across
//! builds and reorderings, and two services on one connection do not collide.

use std::future::Future;
use std::pin::Pin;

use facet::Facet;

use crate::wire::Metadata;

/// The method every session answers itself on every connection: the list of
/// services served there ([`Connection::services`](crate::Connection::services)).
pub const DESCRIBE_METHOD: u64 = method_id("osmos", "describe");

/// One service a peer serves on a connection, as
/// [`Connection::services`](crate::Connection::services) reports it.
#[derive(Facet, Clone, Debug, PartialEq, Eq)]
pub struct ServiceDescription {
    /// The service's name, e.g. `"Calculator"`.
    pub name: String,
    /// Its methods' names.
    pub methods: Vec<String>,
}

/// The stable id of method `method` of service `service`: 64-bit FNV-1a of
/// `"service.method"`.
pub const fn method_id(service: &str, method: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let parts = [service.as_bytes(), b".", method.as_bytes()];
    let mut p = 0;
    while p < parts.len() {
        let bytes = parts[p];
        let mut i = 0;
        while i < bytes.len() {
            h ^= bytes[i] as u64;
            h = h.wrapping_mul(PRIME);
            i += 1;
        }
        p += 1;
    }
    h
}

/// How a handler's call ended, as the session answers it: the owned form of
/// [`Outcome`](crate::wire::Outcome).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyOutcome {
    /// The encoded return value.
    Ok(Vec<u8>),
    /// The encoded service error.
    UserError(Vec<u8>),
    /// No such method (a forwarder relays the callee's answer).
    UnknownMethod,
    /// The arguments did not decode (a forwarder relays the callee's answer).
    InvalidPayload(String),
    /// The call was cancelled (a forwarder relays the callee's answer).
    Cancelled,
    /// The handler or the callee failed.
    Internal(String),
}

impl ReplyOutcome {
    /// The wire form, borrowing the bytes.
    pub fn as_wire(&self) -> crate::wire::Outcome<'_> {
        use crate::wire::Outcome;
        match self {
            ReplyOutcome::Ok(b) => Outcome::Ok(b),
            ReplyOutcome::UserError(b) => Outcome::UserError(b),
            ReplyOutcome::UnknownMethod => Outcome::UnknownMethod,
            ReplyOutcome::InvalidPayload(d) => Outcome::InvalidPayload(d.clone()),
            ReplyOutcome::Cancelled => Outcome::Cancelled,
            ReplyOutcome::Internal(d) => Outcome::Internal(d.clone()),
        }
    }

    /// The owned form of a wire outcome.
    pub fn from_wire(outcome: &crate::wire::Outcome<'_>) -> ReplyOutcome {
        ReplyOutcome::from_wire_parts(outcome, None)
    }

    /// [`from_wire`](Self::from_wire) for an outcome whose bytes end with
    /// `tail`, held apart by the link.
    pub(crate) fn from_wire_parts(outcome: &crate::wire::Outcome<'_>, tail: Option<Vec<u8>>) -> ReplyOutcome {
        use crate::wire::Outcome;
        let join = |b: &[u8]| match &tail {
            None => b.to_vec(),
            Some(t) => [b, t].concat(),
        };
        match outcome {
            Outcome::Ok(b) => ReplyOutcome::Ok(join(b)),
            Outcome::UserError(b) => ReplyOutcome::UserError(join(b)),
            Outcome::UnknownMethod => ReplyOutcome::UnknownMethod,
            Outcome::InvalidPayload(d) => ReplyOutcome::InvalidPayload(d.clone()),
            Outcome::Cancelled => ReplyOutcome::Cancelled,
            Outcome::Internal(d) => ReplyOutcome::Internal(d.clone()),
        }
    }
}

/// A handler's result, encoded by the session (with channels in it handed
/// over to the peer).
pub trait ReplyValue: Send {
    /// Encodes the value: `(is_user_error, bytes)`, or why it could not be encoded.
    fn encode_reply(self: Box<Self>) -> Result<(bool, Vec<u8>), String>;

    /// The outcome to answer with. The default wraps
    /// [`encode_reply`](ReplyValue::encode_reply); a forwarder overrides it
    /// to relay the callee's protocol outcomes as they are.
    fn into_outcome(self: Box<Self>) -> ReplyOutcome {
        match self.encode_reply() {
            Ok((false, bytes)) => ReplyOutcome::Ok(bytes),
            Ok((true, bytes)) => ReplyOutcome::UserError(bytes),
            Err(detail) => ReplyOutcome::Internal(detail),
        }
    }

    /// The encoded value in two pieces, when it ends in a large `Vec<u8>` or
    /// `String`: `(is_user_error, head, tail)`, the encoding being
    /// `head ++ tail` and `tail` those bytes, borrowed from the value. The
    /// session then copies them once, straight into the frame. `None` (the
    /// default) has the session call
    /// [`into_outcome`](ReplyValue::into_outcome).
    fn split_reply(&self) -> Option<(bool, Vec<u8>, &[u8])> {
        None
    }

    /// Sends the value written straight into the frame, when its type has
    /// a direct codec (an integer, a bool, a string, bytes, a tuple of
    /// them): calls `send` with `(is_user_error, the encoding's length, a
    /// writer of the encoding)` and returns what it returned (whether it
    /// sent). `None` (the default): the session uses
    /// [`split_reply`](ReplyValue::split_reply) or
    /// [`into_outcome`](ReplyValue::into_outcome).
    fn send_direct(&self, send: &mut DirectSend<'_>) -> Option<bool> {
        let _ = send;
        None
    }
}

/// What [`ReplyValue::send_direct`] calls: `(is_user_error, len, write)`,
/// `write` filling exactly `len` bytes; returns whether it sent.
pub type DirectSend<'a> = dyn FnMut(bool, usize, &(dyn Fn(&mut [u8]) + Sync)) -> bool + 'a;

impl<T, E> ReplyValue for Result<T, E>
where
    T: for<'f> Facet<'f> + Send,
    E: for<'f> Facet<'f> + Send,
{
    fn encode_reply(self: Box<Self>) -> Result<(bool, Vec<u8>), String> {
        match *self {
            Ok(v) => crate::payload::encode_value(&v).map(|b| (false, b)),
            Err(e) => crate::payload::encode_value(&e).map(|b| (true, b)),
        }
    }

    fn split_reply(&self) -> Option<(bool, Vec<u8>, &[u8])> {
        let (is_error, split) = match self {
            Ok(v) => (false, crate::fast::split(v, crate::fast::SPLIT_AT_LEAST)?),
            Err(e) => (true, crate::fast::split(e, crate::fast::SPLIT_AT_LEAST)?),
        };
        Some((is_error, split.head, split.tail))
    }

    fn send_direct(&self, send: &mut DirectSend<'_>) -> Option<bool> {
        let (is_error, value) = match self {
            Ok(v) => (false, crate::fast::direct(v)?),
            Err(e) => (true, crate::fast::direct(e)?),
        };
        Some(send(is_error, value.len(), &|buf: &mut [u8]| {
            value.write_to(buf);
        }))
    }
}

/// A running handler: resolves to its reply.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Box<dyn ReplyValue>> + Send>>;

/// What a dispatcher makes of one call.
pub enum Dispatch {
    /// Run this handler.
    Run(HandlerFuture),
    /// No such method here.
    UnknownMethod,
    /// The arguments did not decode as the method's argument types.
    InvalidPayload(String),
}

/// What a dispatcher serves: its service's name and its methods' names and
/// ids. Lets a [`Router`](crate::Router) index methods and report collisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// The service's name, e.g. `"Calculator"`.
    pub name: &'static str,
    /// Every method: its name and its id ([`method_id`]).
    pub methods: &'static [(&'static str, u64)],
}

/// Serves calls on a connection.
pub trait Dispatcher: Send + Sync + 'static {
    /// Decodes the arguments of `method` (synchronously: channel handles in
    /// them bind now) and returns the handler to run.
    fn dispatch(&self, method: u64, metadata: &Metadata, args: &[u8]) -> Dispatch;

    /// [`dispatch`](Dispatcher::dispatch) for arguments as they arrived,
    /// which may hold a large trailing byte string apart ([`Args`]). The
    /// session calls this one. The default joins the pieces (a copy when
    /// they are apart) and calls `dispatch`; the `#[osmos::service]`
    /// dispatchers decode the pieces with [`Args::decode`], moving the bytes
    /// into the argument instead.
    fn dispatch_args(&self, method: u64, metadata: &Metadata, args: Args<'_>) -> Dispatch {
        self.dispatch(method, metadata, &args.joined())
    }

    /// The service and methods this dispatcher serves, if it knows them
    /// statically (the `#[osmos::service]` dispatchers do).
    fn describe(&self) -> Option<ServiceInfo> {
        None
    }

    /// Every service this dispatcher serves (a [`Router`](crate::Router)
    /// lists its routes'); the default is [`describe`](Dispatcher::describe)'s
    /// one. What [`Connection::services`](crate::Connection::services) shows
    /// the peer.
    fn describe_all(&self) -> Vec<ServiceInfo> {
        self.describe().into_iter().collect()
    }

    /// Called once when a virtual connection the peer opened is accepted
    /// with this dispatcher. `conn` does not keep the connection alive.
    /// Forwarders use it to tie the connection's life to the one they
    /// forward to.
    fn connection_accepted(&self, conn: &crate::Connection) {
        let _ = conn;
    }
}

/// A call's encoded arguments as they arrived. When the call's last
/// argument is a large byte string (`Vec<u8>`, `String`) the link may have
/// copied those bytes out on their own; [`decode`](Args::decode) then moves
/// them into the argument instead of copying them again. Either way the
/// encoding is [`head`](Args::head) followed by the tail, byte for byte.
#[derive(Debug)]
pub struct Args<'a> {
    head: &'a [u8],
    tail: Option<Vec<u8>>,
}

impl<'a> Args<'a> {
    /// Arguments that arrived in one piece.
    pub fn whole(bytes: &'a [u8]) -> Self {
        Args {
            head: bytes,
            tail: None,
        }
    }

    /// Arguments whose encoding is `head` followed by `tail`.
    pub fn split(head: &'a [u8], tail: Vec<u8>) -> Self {
        Args {
            head,
            tail: Some(tail),
        }
    }

    /// The encoding's first piece (all of it, unless a tail is held apart).
    pub fn head(&self) -> &'a [u8] {
        self.head
    }

    /// The encoding's length in bytes.
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.as_ref().map_or(0, Vec::len)
    }

    /// Whether the encoding is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole encoding in one buffer (copied only if it is in pieces).
    pub fn joined(&self) -> std::borrow::Cow<'a, [u8]> {
        match &self.tail {
            None => std::borrow::Cow::Borrowed(self.head),
            Some(t) => std::borrow::Cow::Owned([self.head, t].concat()),
        }
    }

    /// Decodes the arguments as [`decode_args`] does, moving a tail held
    /// apart into the value where the type's last element is that byte
    /// string.
    pub fn decode<A: Facet<'static>>(self) -> Result<A, String> {
        match self.tail {
            None => decode_args(self.head),
            Some(tail) => crate::fast::decode_split_or_join(self.head, tail),
        }
    }
}

/// Decodes arguments for a dispatcher.
///
/// Refuses trailing bytes: a payload encoded for other argument types is
/// reported as invalid rather than misread.
pub fn decode_args<A: Facet<'static>>(args: &[u8]) -> Result<A, String> {
    crate::payload::decode_exact(args)
}

/// A `Result`, however it is spelled: lets the `#[osmos::service]` attribute
/// find the value and error types of a method that returns an alias such as
/// `type MyResult<T> = Result<T, MyError>`, which a macro cannot see through.
pub trait IsResult {
    /// The value type (`T` of `Result<T, E>`).
    type Ok;
    /// The error type (`E` of `Result<T, E>`).
    type Err;
    /// The value as a plain `Result`.
    fn into_result(self) -> Result<Self::Ok, Self::Err>;
}

impl<T, E> IsResult for Result<T, E> {
    type Ok = T;
    type Err = E;
    fn into_result(self) -> Result<T, E> {
        self
    }
}

/// Nothing at run time: a generated dispatcher names each argument type
/// here, spanned at the argument, so that a type without a facet shape
/// (`SystemTime`, a struct without `#[derive(Facet)]`) is reported at the
/// argument that holds it.
#[doc(hidden)]
pub const fn crosses<T: Facet<'static>>() {}

/// Makes a call for a client generated by `#[osmos::service]`: the
/// [`Connection::call`](crate::Connection::call) of `service.method` on the
/// connection its [`Target`](crate::Target) names now, with the bounds written here so that a type that
/// cannot cross a link is reported against this stable signature. The first
/// call of each method on a session carries the method's schema, which the
/// peer's dispatcher checks; a mismatch fails the call with
/// [`CallError::SchemaMismatch`](crate::CallError::SchemaMismatch), an
/// unknown method with its name.
pub async fn call<A, T, E>(
    target: &crate::Target,
    service: &'static str,
    method: &'static str,
    id: u64,
    args: &A,
    options: crate::CallOptions,
) -> Result<T, crate::CallError<E>>
where
    A: for<'f> Facet<'f>,
    T: Facet<'static> + Send + 'static,
    E: Facet<'static> + Send + 'static,
{
    let mut options = options;
    let to = target.resolve(&mut options).await?;
    to.finish(call_on(&to.conn, service, method, id, args, options).await)
}

/// [`call`] on one connection.
async fn call_on<A, T, E>(
    conn: &crate::Connection,
    service: &'static str,
    method: &'static str,
    id: u64,
    args: &A,
    mut options: crate::CallOptions,
) -> Result<T, crate::CallError<E>>
where
    A: for<'f> Facet<'f>,
    T: Facet<'static> + Send + 'static,
    E: Facet<'static> + Send + 'static,
{
    use crate::CallError;
    let checking = conn.schema_unchecked(id);
    if checking {
        options.metadata.push(crate::wire::MetaEntry {
            key: crate::schema::SCHEMA_KEY.into(),
            value: crate::wire::MetaValue::Str(crate::schema::method_schema::<A, T, E>()),
        });
    }
    let r = conn.call(id, args, options).await;
    if checking && !matches!(r, Ok(_) | Err(CallError::User(_))) {
        // Not known to be checked: the next call carries the schema again.
        conn.forget_schema(id);
    }
    match r {
        Err(CallError::UnknownMethod { method: m, .. }) => Err(CallError::UnknownMethod {
            method: m,
            name: Some(format!("{service}.{method}")),
        }),
        Err(CallError::InvalidPayload { detail }) if detail.starts_with(crate::schema::MISMATCH) => {
            Err(CallError::SchemaMismatch {
                method: format!("{service}.{method}"),
                detail,
            })
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_in_two_pieces_move_their_bytes_into_the_value() {
        let data = vec![9u8; 10_000];
        for enc in [
            crate::payload::encode_value(&(data.clone(),)).unwrap(),
            crate::payload::encode_value(&(7u32, data.clone())).unwrap(),
        ] {
            let at = enc.len() - data.len();
            let tail = enc[at..].to_vec();
            let ptr = tail.as_ptr();
            let args = Args::split(&enc[..at], tail);
            assert_eq!((args.len(), &*args.joined()), (enc.len(), &enc[..]));
            let got: Vec<u8> = if at > 2 {
                args.decode::<(u32, Vec<u8>)>().unwrap().1
            } else {
                args.decode::<(Vec<u8>,)>().unwrap().0
            };
            assert_eq!(got, data);
            assert_eq!(got.as_ptr(), ptr, "moved, not copied");
        }
        // Another type decodes from the joined bytes, errors included.
        let enc = crate::payload::encode_value(&(vec![3u16; 5000],)).unwrap();
        let at = enc.len() - 5000;
        let split = || Args::split(&enc[..at], enc[at..].to_vec());
        assert_eq!(split().decode::<(Vec<u16>,)>().unwrap().0, vec![3u16; 5000]);
        assert_eq!(
            split().decode::<(String,)>().map(|s| s.0.len()),
            decode_args::<(String,)>(&enc).map(|s| s.0.len())
        );
        assert!(split().decode::<(u8,)>().is_err());
        assert!(Args::whole(&enc).decode::<(u8,)>().is_err());
    }
}
