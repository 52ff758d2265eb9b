//! Compile-time behaviour of `#[consumer]`: what it accepts (`ui/pass`, which
//! also run) and the error it gives for each mistake (`ui/fail`).
//!
//! Regenerate the expected errors with
//! `TRYBUILD=overwrite cargo test -p hutch-rs-macros --test ui`, then read them.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
