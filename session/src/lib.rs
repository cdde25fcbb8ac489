//! # osmos-session: one RPC session state machine over any link
//!
//! The transport-agnostic session layer of osmos (in progress).
//!
//! - [`wire`]: the messages, as facet types encoded with facet-postcard.
//! - [`link`]: the [`Link`](link::Link) trait every transport implements.
//!
//! Still to come: the session state machine (handshake, connections, calls,
//! cancellation, deadlines, keepalive), typed channels with flow control,
//! service definitions, and the shm link.

pub mod link;
pub mod wire;
