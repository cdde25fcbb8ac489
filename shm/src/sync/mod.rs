//! The one place that chooses between `std` and `loom` primitives.
//!
//! Every other module imports atomics, fences, spin hints, the futex backend
//! and the shared byte area from here, never from `std::sync::atomic`
//! directly, so that `RUSTFLAGS="--cfg osmos_loom"` swaps the whole crate onto
//! loom's model-checked versions. Under loom:
//!
//! - atomics and fences are loom's, so every interleaving and every weak
//!   memory outcome loom knows is explored;
//! - [`SharedBytes`] is an array of `loom::cell::UnsafeCell<u8>`, so reading a
//!   byte whose write does not happen-before the read is reported as a
//!   causality violation (this is what gives the ring and pool models teeth);
//! - the futex is a condition-variable stand-in with the same "compare, then
//!   sleep atomically" contract, so a lost wakeup shows up as a deadlock.

#[cfg(not(osmos_loom))]
mod std_impl;
#[cfg(not(osmos_loom))]
pub(crate) use std_impl::*;

#[cfg(osmos_loom)]
mod loom_impl;
#[cfg(osmos_loom)]
pub(crate) use loom_impl::*;
