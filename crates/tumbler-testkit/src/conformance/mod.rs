//! The conformance cases, one `pub async fn` per promise, and the table of what each one
//! needs from a backend.
//!
//! Each case takes any [`Backend`] (`case(&backend).await`) and panics when the backend
//! breaks the promise its name states. [`CASES`] lists every case with the capabilities it
//! needs; a case whose backend lacks one of them says so on stderr and returns
//! ([`skips_for`] tells in advance which cases a set of capabilities skips).

use std::future::Future;
use std::time::Duration;

use tumbler::Capabilities;

use crate::backend::Backend;

mod basics;
mod deadlock;
mod delay;
mod errors;
mod fairness;
mod fencing;
mod modes;
mod multi_key;
mod owners;
mod retries;
mod support;
mod ttl;

pub use basics::{
    lost_signal_is_not_fired_while_held, panic_inside_under_releases, reentry_counts_levels,
    try_conflicts_with_holder_and_reports_busy, under_returns_the_value_and_releases,
    waiter_is_woken_when_holder_releases,
};
pub use deadlock::{
    two_holders_waiting_on_each_other_get_deadlock, two_owners_upgrading_against_each_other_get_deadlock,
};
pub use delay::{lock_delay_after_owner_death, lock_delay_does_not_follow_an_explicit_release};
pub use errors::{
    acquire_all_of_no_keys_is_rejected_and_changes_nothing, invalid_arguments_are_rejected_and_change_nothing,
    release_by_non_owner_is_rejected_and_changes_nothing,
};
pub use fairness::{
    dropped_waiter_passes_its_turn_to_the_next, queued_writer_is_not_starved_by_later_readers,
    timeout_leaves_holder_untouched_and_waiter_can_wait_again, waiters_are_granted_in_arrival_order,
};
pub use fencing::fencing_tokens_increase;
pub use modes::{
    exclusive_holder_asking_shared_is_granted_at_once, shared_exclusive_compatibility_matrix,
    shared_exclusive_semaphore_compatibility_matrix, shared_holder_upgrades_when_alone_and_waits_for_other_readers,
};
pub use multi_key::{
    acquire_all_of_a_repeated_key_waits_and_holds_it_once, multi_key_is_all_or_nothing,
    overlapping_multi_key_waiters_never_deadlock,
};
pub use owners::{
    every_guard_of_a_reentered_hold_sees_its_loss, goodbye_releases_everything_the_owner_holds,
    owner_death_releases_and_wakes_each_waiter_of_each_key,
};
pub use retries::{request_id_retry_does_not_count_twice, request_id_retry_joins_the_original_wait};
pub use ttl::{
    a_waiter_granted_on_release_counts_its_ttl_from_the_grant, reentry_extends_ttl_to_the_later_expiry,
    ttl_expiry_wakes_the_next_waiter, zero_ttl_is_invalid_argument,
};

/// A capability a case may need, as declared in [`Capabilities`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Capability {
    /// [`Capabilities::semaphores`].
    Semaphores,
    /// [`Capabilities::ttl`].
    Ttl,
    /// [`Capabilities::fencing_tokens`].
    FencingTokens,
    /// [`Capabilities::fifo`].
    Fifo,
    /// [`Capabilities::deadlock_detection`].
    DeadlockDetection,
    /// [`Capabilities::multi_key`].
    MultiKey,
    /// [`Capabilities::request_ids`].
    RequestIds,
    /// [`Capabilities::lock_delay`].
    LockDelay,
}

impl Capability {
    /// The field name in [`Capabilities`].
    pub fn name(self) -> &'static str {
        match self {
            Capability::Semaphores => "semaphores",
            Capability::Ttl => "ttl",
            Capability::FencingTokens => "fencing_tokens",
            Capability::Fifo => "fifo",
            Capability::DeadlockDetection => "deadlock_detection",
            Capability::MultiKey => "multi_key",
            Capability::RequestIds => "request_ids",
            Capability::LockDelay => "lock_delay",
        }
    }

    /// Whether `caps` declares it.
    pub fn declared_by(self, caps: &Capabilities) -> bool {
        match self {
            Capability::Semaphores => caps.semaphores,
            Capability::Ttl => caps.ttl,
            Capability::FencingTokens => caps.fencing_tokens,
            Capability::Fifo => caps.fifo,
            Capability::DeadlockDetection => caps.deadlock_detection,
            Capability::MultiKey => caps.multi_key,
            Capability::RequestIds => caps.request_ids,
            Capability::LockDelay => caps.lock_delay,
        }
    }
}

/// One case of the suite: its name (the name of its function and of its test) and the
/// capabilities it needs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Case {
    /// The case's function name.
    pub name: &'static str,
    /// What the backend must declare for the case to run.
    pub requires: &'static [Capability],
}

const fn case(name: &'static str, requires: &'static [Capability]) -> Case {
    Case { name, requires }
}

use Capability::{DeadlockDetection, FencingTokens, Fifo, LockDelay, MultiKey, RequestIds, Semaphores, Ttl};

/// Every case of the suite, in the order [`conformance_tests!`](crate::conformance_tests)
/// stamps them out.
pub const CASES: &[Case] = &[
    case("try_conflicts_with_holder_and_reports_busy", &[]),
    case("waiter_is_woken_when_holder_releases", &[]),
    case("under_returns_the_value_and_releases", &[]),
    case("panic_inside_under_releases", &[]),
    case("lost_signal_is_not_fired_while_held", &[]),
    case("reentry_counts_levels", &[]),
    case("shared_exclusive_compatibility_matrix", &[]),
    case("shared_exclusive_semaphore_compatibility_matrix", &[Semaphores]),
    case("exclusive_holder_asking_shared_is_granted_at_once", &[]),
    case("shared_holder_upgrades_when_alone_and_waits_for_other_readers", &[]),
    case("waiters_are_granted_in_arrival_order", &[Fifo]),
    case("queued_writer_is_not_starved_by_later_readers", &[Fifo]),
    case("timeout_leaves_holder_untouched_and_waiter_can_wait_again", &[]),
    case("dropped_waiter_passes_its_turn_to_the_next", &[]),
    case("multi_key_is_all_or_nothing", &[MultiKey]),
    case("acquire_all_of_a_repeated_key_waits_and_holds_it_once", &[MultiKey]),
    case("overlapping_multi_key_waiters_never_deadlock", &[MultiKey]),
    case("two_holders_waiting_on_each_other_get_deadlock", &[DeadlockDetection]),
    case("two_owners_upgrading_against_each_other_get_deadlock", &[DeadlockDetection]),
    case("ttl_expiry_wakes_the_next_waiter", &[Ttl]),
    case("a_waiter_granted_on_release_counts_its_ttl_from_the_grant", &[Ttl]),
    case("reentry_extends_ttl_to_the_later_expiry", &[Ttl]),
    case("zero_ttl_is_invalid_argument", &[Ttl]),
    case("fencing_tokens_increase", &[FencingTokens]),
    case("goodbye_releases_everything_the_owner_holds", &[]),
    case("owner_death_releases_and_wakes_each_waiter_of_each_key", &[]),
    case("every_guard_of_a_reentered_hold_sees_its_loss", &[]),
    case("release_by_non_owner_is_rejected_and_changes_nothing", &[]),
    case("invalid_arguments_are_rejected_and_change_nothing", &[Semaphores]),
    case("acquire_all_of_no_keys_is_rejected_and_changes_nothing", &[MultiKey]),
    case("request_id_retry_does_not_count_twice", &[RequestIds]),
    case("request_id_retry_joins_the_original_wait", &[RequestIds]),
    case("lock_delay_after_owner_death", &[LockDelay]),
    case("lock_delay_does_not_follow_an_explicit_release", &[LockDelay]),
];

/// The case called `name`, if there is one.
pub fn find_case(name: &str) -> Option<&'static Case> {
    CASES.iter().find(|c| c.name == name)
}

/// The capabilities `case` needs that `caps` does not declare.
pub fn missing(case: &Case, caps: &Capabilities) -> Vec<Capability> {
    case.requires.iter().copied().filter(|c| !c.declared_by(caps)).collect()
}

/// The names of the cases a backend declaring `caps` skips. Empty for
/// [`Capabilities::full`].
pub fn skips_for(caps: &Capabilities) -> Vec<&'static str> {
    CASES.iter().filter(|c| !missing(c, caps).is_empty()).map(|c| c.name).collect()
}

/// The line a case prints when it skips on a backend declaring `caps`, or `None` when it
/// runs.
///
/// # Panics
/// When `case` is not in [`CASES`] (a bug of the suite).
pub fn skip_message(case: &str, caps: &Capabilities) -> Option<String> {
    let info = find_case(case).unwrap_or_else(|| panic!("BUG: case {case} is not listed in CASES"));
    let lacks = missing(info, caps);
    if lacks.is_empty() {
        return None;
    }
    let names: Vec<&str> = lacks.iter().map(|c| c.name()).collect();
    Some(format!("SKIPPED {case}: backend {} lacks {}", caps.backend, names.join(", ")))
}

/// Whether `case` must skip on `backend`; if so, says so on stderr.
pub(crate) fn skipped<B: Backend>(backend: &B, case: &str) -> bool {
    match skip_message(case, &backend.capabilities()) {
        Some(line) => {
            eprintln!("{line}");
            true
        }
        None => false,
    }
}

/// Whether the `part` of `case` that needs `capability` must be left out on `backend`;
/// if so, says so on stderr (`SKIPPED <case> (<part>): backend <name> lacks <capability>`).
/// The rest of the case runs: these parts are extra checks of cases that need less.
pub(crate) fn part_skipped<B: Backend>(backend: &B, case: &str, part: &str, capability: Capability) -> bool {
    let caps = backend.capabilities();
    if capability.declared_by(&caps) {
        return false;
    }
    eprintln!("SKIPPED {case} ({part}): backend {} lacks {}", caps.backend, capability.name());
    true
}

/// How long a whole case may take before it counts as hung.
pub const CASE_DEADLINE: Duration = Duration::from_secs(60);

/// Runs one case body on a multi-threaded runtime with two workers, failing it when it
/// outlives [`CASE_DEADLINE`]. Used by [`conformance_tests!`](crate::conformance_tests).
///
/// # Panics
/// When the body panics (the case failed) or hangs.
pub fn run_case(name: &str, body: impl Future<Output = ()>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime for the conformance case");
    runtime.block_on(async {
        if tokio::time::timeout(CASE_DEADLINE, body).await.is_err() {
            panic!("conformance case {name} did not finish within {CASE_DEADLINE:?}: the backend hangs");
        }
    });
}

/// Checks that `stamped` (the cases a [`conformance_tests!`](crate::conformance_tests)
/// invocation runs) is exactly [`CASES`].
///
/// # Panics
/// When a case is missing or unknown.
pub fn assert_complete(stamped: &[&str]) {
    let listed: Vec<&str> = CASES.iter().map(|c| c.name).collect();
    let missing: Vec<&&str> = listed.iter().filter(|c| !stamped.contains(c)).collect();
    let unknown: Vec<&&str> = stamped.iter().filter(|c| !listed.contains(c)).collect();
    assert!(missing.is_empty() && unknown.is_empty(), "cases not stamped: {missing:?}; unknown cases: {unknown:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(backend: &'static str) -> Capabilities {
        Capabilities::none(backend)
    }

    #[test]
    fn full_capabilities_skip_nothing() {
        assert_eq!(skips_for(&Capabilities::full("mem")), Vec::<&str>::new());
        for case in CASES {
            assert_eq!(skip_message(case.name, &Capabilities::full("mem")), None);
        }
    }

    #[test]
    fn a_missing_capability_skips_exactly_the_cases_that_need_it() {
        let mut caps = Capabilities::full("pg");
        caps.ttl = false;
        assert_eq!(
            skips_for(&caps),
            [
                "ttl_expiry_wakes_the_next_waiter",
                "a_waiter_granted_on_release_counts_its_ttl_from_the_grant",
                "reentry_extends_ttl_to_the_later_expiry",
                "zero_ttl_is_invalid_argument"
            ]
        );
        assert_eq!(
            skip_message("ttl_expiry_wakes_the_next_waiter", &caps).as_deref(),
            Some("SKIPPED ttl_expiry_wakes_the_next_waiter: backend pg lacks ttl")
        );
    }

    #[test]
    fn no_capabilities_skip_every_gated_case_and_name_what_is_lacking() {
        let caps = none("bare");
        let gated: Vec<&str> = CASES.iter().filter(|c| !c.requires.is_empty()).map(|c| c.name).collect();
        assert_eq!(skips_for(&caps), gated);
        assert_eq!(
            skip_message("multi_key_is_all_or_nothing", &caps).as_deref(),
            Some("SKIPPED multi_key_is_all_or_nothing: backend bare lacks multi_key")
        );
        let both = Case { name: "x", requires: &[Semaphores, Ttl] };
        assert_eq!(missing(&both, &caps), [Semaphores, Ttl]);
    }

    #[test]
    fn case_names_are_unique() {
        for (i, case) in CASES.iter().enumerate() {
            assert!(CASES[..i].iter().all(|c| c.name != case.name), "{} listed twice", case.name);
        }
    }

    #[test]
    #[should_panic(expected = "cases not stamped")]
    fn an_incomplete_stamp_is_caught() {
        assert_complete(&["reentry_counts_levels"]);
    }
}
