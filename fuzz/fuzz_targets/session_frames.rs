//! Fuzz target `session_frames`: the body is `osmos_tests::fuzz::session_frames`, which the
//! stable test `tests/fuzz.rs` also runs over the committed corpus.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| osmos_tests::fuzz::session_frames(data));
