//! # osmos-host (in progress)
//!
//! Will hold the host side of osmos: spawning sandboxed cell processes with a
//! fresh shared memory segment each, the bootstrap (inherited fds, cleared
//! environment), death detection through pidfds, restart policies and log
//! forwarding.
//!
//! - [`sandbox`]: the sandbox applied to a cell between fork and exec.

pub mod sandbox;
