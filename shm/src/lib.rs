//! # osmos-shm: the shared-memory transport core of osmos
//!
//! Building blocks for moving frames between a host and one cell process
//! through a shared memory segment, with no async runtime and no allocation
//! on the hot path. The session layer (`osmos-session`) runs its protocol on
//! top; this crate knows nothing of sessions.
//!
//! How the pieces fit:
//!
//! - [`Segment`] (`segment.rs`): a sealed memfd mapped by both processes. The
//!   host [`create`](Segment::create)s it from a [`SegmentConfig`] and keeps
//!   its own [`Layout`] (`layout.rs`); the cell [`attach`](Segment::attach)es
//!   from the inherited fd and validates the header.
//! - Frame rings (`ring/`): one SPSC ring of variable-length frames per
//!   direction, [`FrameProducer`] / [`FrameConsumer`]; a consumer takes
//!   one frame at a time or a run of small ones at once ([`FrameRun`]).
//! - Slot pools (`pool.rs`): per direction, fixed-size slots owned by the
//!   sender ([`SlotWriter`]) for payloads too large to go inline; the frame
//!   carries a [`SlotRef`], the receiver ([`SlotReader`]) returns slots
//!   through a release queue.
//! - Channel credit (`credit.rs`): per channel `granted_total` / `sent_total`
//!   counters ([`CreditTable`], [`CreditSender`], [`CreditReceiver`]).
//! - Doorbells (`doorbell.rs`, `futex.rs`): futex words with a parked flag,
//!   so a busy pair makes no system calls; every blocking operation waits
//!   through one loop with a bounded spin/yield phase ([`WaitStrategy`]).
//! - Liveness (`liveness.rs`): each side's state word; marking a side dead
//!   wakes every sleeper, and waits return [`Error::PeerGone`].
//! - Reactor wakeups (`wake.rs`): a doorbell's waiter may sleep in an async
//!   runtime's reactor instead of on the futex ([`PARKED_REACTOR`]); the
//!   ringer then writes a byte into the segment's wake socket pair
//!   ([`WakePair`]), whose end the waiting side registers with its reactor
//!   ([`Liveness::wake_fd`]). No helper thread sits between a ring and the
//!   task that waits for it.
//! - [`Endpoint`] (`endpoint.rs`): one side's bundle, with a message-level
//!   [`FrameSender`] / [`FrameReceiver`] that picks inline or slot transport.
//! - Handles into the mapping (`pinned.rs`): every handle on a structure in
//!   the segment (a ring's or pool's control block, a doorbell, the credit
//!   table and each channel's entry, the liveness words) is built on one
//!   internal type, `Pinned<T>`: a `&T` that carries a clone of what keeps
//!   the mapping alive instead of a lifetime. Its one `unsafe` constructor
//!   states what the memory must be; projecting it to a part (an entry, a
//!   doorbell) is safe, and it is `Send + Sync` exactly when `&T` is. The
//!   frame and slot bytes are not structures but byte windows the peer
//!   writes freely, copied in and out (`SharedBytes` in `sync/`), never
//!   borrowed.
//!
//! ## Trust
//!
//! Everything the peer writes is hostile input. Each side keeps its own
//! positions, generations and credit counts privately and only *publishes*
//! them; whatever it reads from the peer (a position, a frame header, a slot
//! reference, a counter, a release) is copied out once, validated, then used.
//! A broken rule is an [`Error::Violation`] naming the [`Rule`], never a
//! panic, a hang or an out-of-bounds access.
//!
//! ## Loom
//!
//! Built with `RUSTFLAGS="--cfg osmos_loom"`, the crate swaps its atomics,
//! futex and shared bytes for loom's (see `sync/`), and the models in
//! `loom_models.rs` check the ring, the slot pool, the credit counters, the
//! doorbell and the death wakeup, and the reactor half of the doorbell and of
//! the credit counters (an async waiter's mark, re-check and wake). The segment and endpoint (memfd, mmap) are
//! not built under loom.

#![cfg_attr(osmos_loom, allow(dead_code, unused_imports))]

mod copy;
mod credit;
mod doorbell;
mod error;
mod futex;
mod layout;
mod liveness;
mod pinned;
mod pool;
mod ring;
mod sync;
mod wake;

#[cfg(not(osmos_loom))]
mod endpoint;
#[cfg(not(osmos_loom))]
mod segment;

#[cfg(all(test, osmos_loom))]
mod loom_models;
#[cfg(all(test, not(osmos_loom)))]
mod test_support;

pub use copy::copy_bytes;
pub use credit::{CreditReceiver, CreditSender, CreditTable, GrantWake};
pub use doorbell::{BellWatcher, Doorbell, WaitStrategy};
pub use error::{Error, Result, Rule, Violation};
#[cfg(not(osmos_loom))]
pub use futex::OsFutex;
#[cfg(not(osmos_loom))]
pub use futex::past_next_tick;
pub use futex::{FALLBACK_SLICE, Futex, FutexWait};
pub use layout::{
    ClassLayout, Direction, FORMAT_VERSION, FRAME_HEADER, Layout, MAGIC, MAX_SLOT_CLASSES, PoolLayout,
    RingLayout, SegmentConfig, SlotClass,
};
pub use liveness::{Liveness, PeerCpu, PeerState, Side};
pub use pool::{HeldSlot, SlotGrant, SlotReader, SlotRef, SlotWriter};
pub use ring::{FrameConsumer, FrameGrant, FrameKind, FrameProducer, FrameRun, FrameView};
#[cfg(not(osmos_loom))]
pub use wake::{Drained, WakePair, drain_link, drain_local, lazy_drain_limit};
pub use wake::{PARKED_FUTEX, PARKED_REACTOR};

#[cfg(not(osmos_loom))]
pub use endpoint::{Copied, Endpoint, FrameReceiver, FrameSender, Message};
#[cfg(not(osmos_loom))]
pub use segment::{REQUIRED_SEALS, Segment};
