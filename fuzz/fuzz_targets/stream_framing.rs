//! Fuzz target `stream_framing`: the body is `osmos_tests::fuzz::stream_framing`, which the
//! stable test `tests/fuzz.rs` also runs over the committed corpus.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| osmos_tests::fuzz::stream_framing(data));
