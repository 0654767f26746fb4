//! The conformance suite on the PostgreSQL backend, blocking in PostgreSQL (the default
//! strategy), on the throw-away cluster.

use tumbler::pg::WaitStrategy;
use tumbler_testkit::conformance::skips_for;
use tumbler_testkit::PgBackend;

tumbler_testkit::conformance_tests!(PgBackend::new(WaitStrategy::Block).await);

#[test]
fn pg_skips_exactly_what_postgresql_cannot_offer() {
    let mut skipped = skips_for(&tumbler::pg::capabilities());
    skipped.sort_unstable();
    // TTLs, fencing tokens, semaphores, retry ids and lock-delay: nothing else.
    let mut expected = vec![
        "a_waiter_granted_on_release_counts_its_ttl_from_the_grant",
        "fencing_tokens_increase",
        "invalid_arguments_are_rejected_and_change_nothing",
        "lock_delay_after_owner_death",
        "lock_delay_does_not_follow_an_explicit_release",
        "reentry_extends_ttl_to_the_later_expiry",
        "request_id_retry_does_not_count_twice",
        "request_id_retry_joins_the_original_wait",
        "shared_exclusive_semaphore_compatibility_matrix",
        "ttl_expiry_wakes_the_next_waiter",
        "zero_ttl_is_invalid_argument",
    ];
    expected.sort_unstable();
    assert_eq!(skipped, expected);
}
