//! The conformance suite on the PostgreSQL backend, blocking in PostgreSQL (the default
//! strategy), on the throw-away cluster.

use tumbler::pg::WaitStrategy;
use tumbler_testkit::conformance::skips_for;
use tumbler_testkit::{Backend, PgBackend};

tumbler_testkit::conformance_tests!(PgBackend::new(WaitStrategy::Block).await);

#[test]
fn pg_skips_only_what_postgresql_cannot_offer() {
    let caps = tumbler::pg::capabilities();
    let skipped = skips_for(&caps);
    for case in &skipped {
        assert!(
            !case.contains("arrival_order") && !case.contains("deadlock") && !case.contains("multi_key"),
            "{case} should run on PostgreSQL"
        );
    }
    // The shared/exclusive and multi-key halves of cases that also test semaphores run.
    for case in ["shared_exclusive_compatibility_matrix", "acquire_all_of_no_keys_is_rejected_and_changes_nothing"] {
        assert!(!skipped.contains(&case), "{case} should run on PostgreSQL");
    }
    let _ = PgBackend::new;
    let _: fn(&PgBackend) -> _ = <PgBackend as Backend>::capabilities;
}
