//! # osmos: shared-memory RPC between a host and its sandboxed plugins
//!
//! A **host** spawns plugin processes (**cells**), each in a sandbox with a
//! sealed shared-memory segment of its own, and calls the services they
//! serve; a cell can call services of the host. This crate is the one
//! dependency a host or a cell needs: it re-exports the session API at its
//! root, the host API as [`host`] (feature `host`), the cell SDK as [`cell`]
//! (feature `cell`), [`facet`] (the reflection every argument, value and
//! error type implements), and the [`#[osmos::service]`](macro@service)
//! attribute that turns a trait into a typed client and a dispatcher.
//!
//! ## A host and a cell
//!
//! One program serves as both: run by a host, it is the cell; run by hand,
//! it is the host and spawns itself as a cell. A host also needs a tokio
//! runtime (`tokio = { version = "1", features = ["rt-multi-thread", "macros"] }`);
//! a cell does not ([`cell::run`] starts its own).
//!
//! ```no_run
//! use osmos::Facet;
//!
//! /// Why a word was refused. Types sent over osmos derive `Facet`;
//! /// `crate = osmos::facet` lets the derive work without a direct `facet`
//! /// dependency.
//! #[derive(Debug, Facet)]
//! #[facet(crate = osmos::facet)]
//! pub struct Refused {
//!     /// Why.
//!     pub reason: String,
//! }
//!
//! impl std::fmt::Display for Refused {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
//!         write!(f, "refused: {}", self.reason)
//!     }
//! }
//!
//! /// How loud to shout. Enums need an explicit `repr` for facet.
//! #[derive(Debug, Clone, Copy, Facet)]
//! #[facet(crate = osmos::facet)]
//! #[repr(u8)]
//! pub enum Volume {
//!     /// Upper case.
//!     Loud,
//!     /// Upper case and three exclamation marks.
//!     Louder,
//! }
//!
//! /// What the cell serves.
//! #[osmos::service]
//! pub trait Shout {
//!     /// Shouts `word`, or refuses an empty one.
//!     async fn shout(&self, word: &str, volume: Volume) -> Result<String, Refused>;
//!     /// Counts the characters of `words`.
//!     async fn count(&self, words: &[String]) -> u64;
//! }
//!
//! struct Cell;
//!
//! impl Shout for Cell {
//!     async fn shout(&self, word: &str, volume: Volume) -> Result<String, Refused> {
//!         if word.is_empty() {
//!             return Err(Refused { reason: "nothing to shout".into() });
//!         }
//!         Ok(match volume {
//!             Volume::Loud => word.to_uppercase(),
//!             Volume::Louder => format!("{}!!!", word.to_uppercase()),
//!         })
//!     }
//!     async fn count(&self, words: &[String]) -> u64 {
//!         words.iter().map(|w| w.chars().count() as u64).sum()
//!     }
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Started by a host (it passes `OSMOS_*` variables and fds): serve.
//!     if std::env::var_os(osmos::control::ENV_CELL_NAME).is_some() {
//!         osmos::cell::run("shout: shouts words", || ShoutDispatcher::new(Cell));
//!     }
//!     // Run by hand: be the host, and spawn this same program as the cell.
//!     let runtime = tokio::runtime::Runtime::new()?;
//!     runtime.block_on(async {
//!         let me = std::env::current_exe()?;
//!         let cell = osmos::host::CellBuilder::new(me).name("shout").spawn().await?;
//!         let shout: ShoutClient = cell.client()?;
//!         println!("{}", shout.shout("hello", Volume::Louder).await?);
//!         match shout.shout("", Volume::Loud).await {
//!             Err(osmos::CallError::User(refused)) => println!("refused: {}", refused.reason),
//!             other => println!("unexpected: {other:?}"),
//!         }
//!         let words = ["a".to_string(), "bcd".to_string()];
//!         println!("{} characters", shout.count(&words).await?);
//!         cell.shutdown(std::time::Duration::from_secs(5)).await;
//!         Ok(())
//!     })
//! }
//! ```
//!
//! ## In one process, over an in-memory link
//!
//! The same client and dispatcher work over any link; tests use the
//! in-memory one:
//!
//! ```
//! # #[osmos::service]
//! # /// Adds.
//! # pub trait Adder {
//! #     /// Adds.
//! #     async fn add(&self, a: u32, b: u32) -> u64;
//! # }
//! # struct Impl;
//! # impl Adder for Impl {
//! #     async fn add(&self, a: u32, b: u32) -> u64 { u64::from(a) + u64::from(b) }
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use osmos::SessionBuilder;
//!
//! let (client_end, server_end) = osmos::link::memory::pair(1 << 20, 64);
//! let (server, client) = tokio::join!(
//!     SessionBuilder::new().serve(AdderDispatcher::new(Impl)).accept(server_end),
//!     SessionBuilder::new().initiate(client_end),
//! );
//! let (_server, adder) = (server.unwrap(), AdderClient::new(client.unwrap()));
//! assert_eq!(adder.add(2, 3).await.unwrap(), 5);
//! # });
//! ```
//!
//! ## Types on the wire
//!
//! Arguments, values and errors are [`Facet`] types, encoded with postcard.
//! In a crate that depends on `osmos` and not on `facet`, write
//! `#[derive(osmos::Facet)]` with `#[facet(crate = osmos::facet)]` (the
//! derive otherwise names `::facet`). Enums, fieldless or not, need an
//! explicit `#[repr(u8)]` (or `#[repr(C)]`). Typed channels ([`Tx`],
//! [`Rx`], made by [`Connection::channel`]) may be passed as arguments and
//! returned.
//!
//! ## Features
//!
//! `host` ([`host`], the sandbox and the cell supervisor) and `cell`
//! ([`cell`]) are both on by default. A crate that is only a cell can use
//! `default-features = false, features = ["cell"]` to leave the host's
//! sandbox dependencies out.
//!
//! The lower layers have their own docs: `osmos-shm` (segments, rings,
//! doorbells) and [`session`] (the protocol, links and the state machine).

// Lets code generated by `#[osmos::service]` name `::osmos` inside this crate too.
extern crate self as osmos;

pub use facet;
pub use facet::Facet;
/// Defines a service from a trait of `async fn`s: the trait, a typed client
/// and a dispatcher. See the [`osmos_macros` documentation](macro@osmos_macros::service).
pub use osmos_macros::service;
/// The session layer as a whole: links, the wire format, `service!` (the
/// `macro_rules` predecessor of [`macro@service`]), the control contract.
pub use osmos_session as session;
pub use osmos_session::{
    CallError, CallOptions, ChannelError, ChannelId, Connection, ConnectionAcceptor, Dispatch, Dispatcher,
    Forward, Link, Reconnecting, RetryPolicy, Role, Router, RouterBuilder, Rx, ServiceInfo, SessionBuilder,
    SessionConfig, SessionError, SessionStats, Tunnel, TunnelEnd, Tx, control, link, method_id,
};

/// The host side: spawn sandboxed cells and call them (`osmos-host`).
#[cfg(feature = "host")]
pub use osmos_host as host;

/// The cell side: serve a service from a cell's `main` (`osmos-plugin-sdk`).
#[cfg(feature = "cell")]
pub use osmos_plugin_sdk as cell;

#[doc(hidden)]
pub use osmos_session::__private;
