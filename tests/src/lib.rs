//! # osmos-tests (not built yet)
//!
//! Will hold the cross-process integration, crash, chaos, hostile-cell and
//! sandbox tests of osmos, with the test cell binaries they spawn.
//! The shared-memory core's own cross-process and hostile-input tests live
//! in `shm/tests/`.
//!
//! This crate currently contains no code.
