//! # osmos-session: one RPC session state machine over any link
//!
//! The transport-agnostic session layer of osmos. How the pieces fit:
//!
//! - [`wire`]: every message, as facet types encoded with facet-postcard.
//! - [`link`]: the [`Link`] trait every transport implements, and the
//!   in-memory and Unix/TCP stream links.
//! - `session/`: the state machine. [`SessionBuilder`] runs the handshake
//!   over a link and spawns the driver task; [`Connection`] is the handle for
//!   calls, channels and virtual connections.
//! - `channel/`: typed [`Tx<T>`] / [`Rx<T>`] channels with per-channel
//!   credit, passed inside call arguments and results.
//! - `service.rs`: [`service!`] turns a trait into a typed client and a
//!   [`Dispatcher`]; method ids are stable hashes ([`method_id`]).
//! - [`Router`] (`router.rs`): several services on one connection.
//! - [`Forward`] (`forward.rs`): a transparent proxy between two connections,
//!   relaying calls, answers, cancels and channels without decoding payloads.
//! - [`Tunnel`] (`tunnel.rs`): a pair of channels as a tokio byte stream.
//! - [`Reconnecting`] (`reconnect.rs`): a client that reconnects over a
//!   stream link with a [`RetryPolicy`].
//! - [`control`]: the bootstrap contract between a host and its cells.
//! - [`error`]: [`SessionError`] (why a session ended) and [`CallError`]
//!   (why a call failed, with the service's own error kept apart from
//!   protocol failures).
//!
//! A session needs a tokio runtime: the driver and the handlers run as tasks.

mod channel;
pub mod control;
pub mod error;
mod fast;
mod forward;
pub mod link;
mod payload;
mod reconnect;
mod router;
mod service;
mod session;
mod tunnel;
pub mod wire;

pub use channel::{ChannelError, ChannelId, Rx, Tx};
pub use error::{CallError, SessionError};
pub use forward::Forward;
pub use link::{CreditMode, Link, LinkError, LinkRx, LinkTx, SendPermit};
pub use reconnect::{ReconnectError, ReconnectState, Reconnecting, RetryPolicy};
pub use router::{RouteConflict, Router, RouterBuilder};
pub use service::{
    Dispatch, Dispatcher, HandlerFuture, ReplyOutcome, ReplyValue, ServiceInfo, decode_args, method_id,
};
pub use session::{
    CallOptions, Connection, ConnectionAcceptor, Role, SessionBuilder, SessionConfig, SessionStats,
};
pub use tunnel::{TUNNEL_CHUNK, Tunnel, TunnelEnd};
