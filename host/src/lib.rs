//! # osmos-host (not built yet)
//!
//! Will hold the host side of osmos: spawning sandboxed cell processes with a
//! fresh shared memory segment each, the bootstrap (inherited fds, cleared
//! environment), the sandbox (no_new_privs, namespaces, Landlock, seccomp,
//! rlimits), death detection through pidfds, restart policies and log
//! forwarding.
//!
//! This crate currently contains no code; nothing here is usable yet.
