//! # osmos-benches: how fast osmos is, as ratios against floors
//!
//! The measurements behind `cargo run --release -p osmos-benches --bin
//! osmos-bench`. This machine's absolute speed drifts 2× within minutes, so
//! every figure is printed beside a floor measured in the same run:
//!
//! - [`floor`]: two-process ping-pong over a bare osmos-shm segment (pure
//!   spin, futex parking, osmos's adaptive wait strategy) and a raw
//!   shared-ring copy of 64 KiB frames, with no session on top; and
//!   ([`floor::uds`]) every session workload over a raw blocking Unix socket
//!   between two processes, the figure each shm row is also compared to;
//! - [`cases`]: the session over the shm link between the host and a real
//!   sandboxed cell process (spawned with `osmos_host::CellBuilder`), and over
//!   in-process Unix-stream and memory links: `add` round trips, byte echoes,
//!   streaming, concurrency, many cells, idle CPU, spawn → first reply and
//!   SIGKILL → in-flight error;
//! - [`report`]: result rows, the table and the `--json` document;
//! - [`ctxsw`]: context switches per call, all threads of both processes;
//! - [`service`]: the `Bench` service the cells serve;
//! - [`sys`]: affinity, `uname`, per-process CPU time, re-executing this
//!   program with a segment at fd 3.
//!
//! The report binary is its own second process: it serves [`service::Bench`]
//! through `osmos_plugin_sdk::run` when started as a cell, and runs the floor
//! peer when started with `--floor-child`.
//!
//! The same cases also run under criterion (`cargo bench -p osmos-benches`,
//! `benches/cases.rs`), with the report binary as the cell: criterion gives
//! per-case statistics and the change since the last run, the report gives
//! the floors and ratios.

pub mod cases;
pub mod ctxsw;
pub mod floor;
pub mod network;
pub mod report;
pub mod service;
pub mod sys;
