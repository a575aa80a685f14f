//! Any input is traffic for one engine (format: `Traffic::decode` in
//! `dataplane/tests/common/mod.rs`); processing it must not panic and must
//! keep the invariants the property test checks.

#![no_main]

// The harness is the test suite's; the frame builders in it serve only
// the corpus generator there.
#[allow(dead_code)]
#[path = "../../tests/common/mod.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (mode, traffic) = common::Traffic::decode(data);
    common::drive(mode, &traffic);
});
