//! Fuzz target `wire_decode`: the body is `osmos_tests::fuzz::wire_decode`, which the
//! stable test `tests/fuzz.rs` also runs over the committed corpus.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| osmos_tests::fuzz::wire_decode(data));
