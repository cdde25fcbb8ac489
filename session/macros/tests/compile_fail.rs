//! Broken service traits fail to compile with errors at the offending
//! method, argument or type. Each case is a separate crate that depends
//! only on `osmos`; the expected messages are in `ui/*.stderr`
//! (regenerate with `TRYBUILD=overwrite`).

#[test]
fn broken_services_are_reported_where_they_break() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
