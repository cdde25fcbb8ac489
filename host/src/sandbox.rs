//! The cell sandbox (being built).
