//! Tumbler's conformance suite: the behaviour every lock backend must show, written once
//! against the [`Locker`](tumbler::Locker) trait.
//!
//! A key design decision: a case knows nothing about the backend it tests. It reaches the
//! backend only through [`Backend`] — "give me a new owner", "name a key", "what can you
//! do" — and observes only what the `Locker` trait lets any caller observe (grants, errors,
//! fencing tokens, lost signals, how long things take). So a case that passes on the
//! in-process backend states a promise that the PostgreSQL backend and the HTTP client
//! must keep too, and a backend that breaks it fails the same named test.
//!
//! # Running the suite against a backend
//!
//! Implement [`Backend`] and stamp out one test per case with [`conformance_tests!`], in
//! a test file of the backend's crate:
//!
//! ```
//! use tumbler::mem::{MemLocker, MemLocks};
//! use tumbler::Capabilities;
//! use tumbler_testkit::Backend;
//!
//! /// The backend under test; here the in-process one with keys in a namespace of its own.
//! struct Namespaced(MemLocks<String>);
//!
//! impl Backend for Namespaced {
//!     type Locker = MemLocker<String>;
//!
//!     async fn owner(&self) -> MemLocker<String> {
//!         self.0.owner()
//!     }
//!
//!     fn key(&self, name: &str) -> String {
//!         format!("conformance/{name}")
//!     }
//!
//!     fn capabilities(&self) -> Capabilities {
//!         Capabilities::full("namespaced-mem")
//!     }
//! }
//!
//! tumbler_testkit::conformance_tests!(Namespaced(MemLocks::new()));
//! # fn main() {}
//! ```
//!
//! Each case becomes its own test named after the case, run on a fresh backend in a
//! multi-threaded tokio runtime with two workers. The cases use real time (a TTL is
//! 150 ms, a wait bound a few hundred) because backends involve real I/O, and every wait is
//! bounded by a generous safety deadline, so a broken backend fails instead of hanging.
//!
//! # What a case guarantees about itself
//!
//! - **Explicit skips.** A case that needs a capability the backend does not declare in
//!   its [`Capabilities`](tumbler::Capabilities) prints
//!   `SKIPPED <case>: backend <name> lacks <capability>` to stderr and returns; it never
//!   passes silently by testing less. [`conformance::skips_for`] lists what a set of
//!   capabilities skips, so a backend can assert that it skips only what it should. A few
//!   cases that need nothing carry an extra check that does (the `under_all` half of
//!   `under_returns_the_value_and_releases`, say); that part alone is left out, with a
//!   `SKIPPED <case> (<part>): …` line.
//! - **Isolation.** Every key a case uses is unique to that call (a process-wide counter
//!   and the case name), so cases may run in parallel on one backend.
//! - **Facts as names.** A case's name states the promise it checks, as the tests of
//!   tokio's `sync_rwlock.rs` do.

mod backend;
pub mod conformance;
pub mod machine;
mod mem;
#[cfg(feature = "postgres")]
mod pg;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "remote")]
mod remote;

pub use backend::Backend;
pub use mem::MemBackend;
#[cfg(feature = "postgres")]
pub use pg::PgBackend;
#[cfg(feature = "remote")]
pub use remote::RemoteBackend;

/// Stamps out one `#[test]` per conformance case for the backend that `$make` builds.
///
/// `$make` is an expression evaluated inside the test's async context (it may `.await`),
/// once per case, giving a fresh [`Backend`] each time. Each test runs its case on a
/// multi-threaded tokio runtime with two workers — what
/// `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` builds — under an overall
/// deadline, so the calling crate needs no tokio dependency of its own. One more test,
/// `conformance_suite_is_complete`, fails if a case of [`conformance::CASES`] is missing
/// from this list.
///
/// ```
/// tumbler_testkit::conformance_tests!(tumbler_testkit::MemBackend::new());
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            try_conflicts_with_holder_and_reports_busy,
            waiter_is_woken_when_holder_releases,
            under_returns_the_value_and_releases,
            panic_inside_under_releases,
            lost_signal_is_not_fired_while_held,
            reentry_counts_levels,
            shared_exclusive_compatibility_matrix,
            shared_exclusive_semaphore_compatibility_matrix,
            exclusive_holder_asking_shared_is_granted_at_once,
            shared_holder_upgrades_when_alone_and_waits_for_other_readers,
            waiters_are_granted_in_arrival_order,
            queued_writer_is_not_starved_by_later_readers,
            timeout_leaves_holder_untouched_and_waiter_can_wait_again,
            dropped_waiter_passes_its_turn_to_the_next,
            multi_key_is_all_or_nothing,
            acquire_all_of_a_repeated_key_waits_and_holds_it_once,
            overlapping_multi_key_waiters_never_deadlock,
            two_holders_waiting_on_each_other_get_deadlock,
            two_owners_upgrading_against_each_other_get_deadlock,
            ttl_expiry_wakes_the_next_waiter,
            a_waiter_granted_on_release_counts_its_ttl_from_the_grant,
            reentry_extends_ttl_to_the_later_expiry,
            zero_ttl_is_invalid_argument,
            fencing_tokens_increase,
            goodbye_releases_everything_the_owner_holds,
            owner_death_releases_and_wakes_each_waiter_of_each_key,
            every_guard_of_a_reentered_hold_sees_its_loss,
            release_by_non_owner_is_rejected_and_changes_nothing,
            invalid_arguments_are_rejected_and_change_nothing,
            acquire_all_of_no_keys_is_rejected_and_changes_nothing,
            request_id_retry_does_not_count_twice,
            request_id_retry_joins_the_original_wait,
            lock_delay_after_owner_death,
            lock_delay_does_not_follow_an_explicit_release,
        );
    };
    (@cases $make:expr; $($case:ident),+ $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::run_case(stringify!($case), async {
                    let backend = $make;
                    $crate::conformance::$case(&backend).await;
                });
            }
        )+

        #[test]
        fn conformance_suite_is_complete() {
            $crate::conformance::assert_complete(&[$(stringify!($case)),+]);
        }
    };
}
