//! # osmos-benches (not built yet)
//!
//! Will hold the osmos benchmarks and the comparison report binary, which
//! prints every figure beside a floor measured in the same run.
//!
//! This crate currently contains no code.
