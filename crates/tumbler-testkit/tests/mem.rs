//! The conformance suite on the in-process backend, which declares every capability and
//! so must run every case.

use tumbler_testkit::conformance::skips_for;
use tumbler_testkit::{Backend, MemBackend};

tumbler_testkit::conformance_tests!(MemBackend::new());

#[test]
fn mem_skips_no_case() {
    assert_eq!(skips_for(&MemBackend::new().capabilities()), Vec::<&str>::new());
}
