//! The conformance suite on the PostgreSQL backend a second time, waiting by polling
//! `pg_try_advisory_lock` every 10 ms instead of blocking in PostgreSQL, on the
//! throw-away cluster.

use std::time::Duration;

use tumbler::pg::{capabilities, capabilities_with, WaitStrategy};
use tumbler_testkit::conformance::{skips_for, Capability, CASES};
use tumbler_testkit::PgBackend;

const POLL: WaitStrategy = WaitStrategy::Poll { interval: Duration::from_millis(10) };

tumbler_testkit::conformance_tests!(PgBackend::new(POLL).await);

/// Polling never waits inside PostgreSQL, so PostgreSQL's queue order and deadlock
/// detection do not apply: exactly the cases needing them skip, on top of those that
/// skip when blocking.
#[test]
fn polling_skips_only_the_fifo_and_deadlock_cases_more_than_blocking() {
    let blocking = skips_for(&capabilities());
    let polling = skips_for(&capabilities_with(POLL));
    let extra: Vec<&str> = polling.iter().copied().filter(|c| !blocking.contains(c)).collect();
    let expected: Vec<&str> = CASES
        .iter()
        .filter(|c| !blocking.contains(&c.name))
        .filter(|c| c.requires.iter().any(|r| matches!(r, Capability::Fifo | Capability::DeadlockDetection)))
        .map(|c| c.name)
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(extra, expected);
    assert!(blocking.iter().all(|c| polling.contains(c)), "polling runs a case blocking skips");
}
