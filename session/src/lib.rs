//! # osmos-session (not built yet)
//!
//! Will hold the transport-agnostic RPC session layer of osmos: the wire
//! types (encoded with facet-postcard), the `Link` trait and its three links
//! (in-memory, Unix/TCP byte stream, and shared memory over `osmos-shm`), and
//! one session state machine over all of them — handshake, root and virtual
//! connections, calls with cancellation and deadlines, typed streaming
//! channels with per-channel credit, keepalive and goodbye — plus service
//! definitions that give a typed client and a dispatcher.
//!
//! This crate currently contains no code; nothing here is usable yet.
