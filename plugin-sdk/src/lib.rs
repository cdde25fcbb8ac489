//! # osmos-plugin-sdk (not built yet)
//!
//! Will hold the cell side of osmos: reading the bootstrap from inherited
//! fds and `OSMOS_*` variables, attaching to the segment, serving a service
//! from a cell binary's `main`, and exiting cleanly when the host says
//! goodbye or dies.
//!
//! This crate currently contains no code; nothing here is usable yet.
