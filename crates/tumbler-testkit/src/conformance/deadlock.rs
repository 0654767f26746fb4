//! Cycles of owners waiting on each other end in a `deadlock` error, never in a hang.

use std::sync::Arc;

use tokio::task::JoinHandle;
use tumbler::{AcquireOptions, Error, LockGuard, Locker};

use super::skipped;
use super::support::{acquire, assert_free, assert_waiting, join, owner, Keys};
use crate::backend::Backend;

/// How one side of a would-be deadlock ended.
#[derive(Debug)]
enum Outcome {
    /// Its wait was granted (after the other side gave up).
    Granted,
    /// Its wait failed with `deadlock` naming this cycle.
    Deadlock(Vec<String>),
}

/// Starts `me`, holding `mine`, waiting for `wanted`: on `deadlock` it lets `mine` go (as
/// a caller should); on a grant it releases both.
fn contend<L: Locker + 'static>(
    me: &Arc<L>,
    mine: L::Guard,
    wanted: L::Key,
    options: AcquireOptions,
) -> JoinHandle<Outcome> {
    let me = me.clone();
    tokio::spawn(async move {
        match me.acquire(wanted, options).await {
            Ok(granted) => {
                let _ = granted.release().await;
                let _ = mine.release().await;
                Outcome::Granted
            }
            Err(Error::Deadlock { cycle }) => {
                drop(mine);
                Outcome::Deadlock(cycle.iter().map(|o| o.as_str().to_owned()).collect())
            }
            Err(e) => panic!("{}: expected a grant or deadlock, got {e:?}", me.owner_id()),
        }
    })
}

/// Checks that exactly one side failed with `deadlock` naming both owners, and the other
/// was granted.
fn assert_one_deadlock(outcomes: [(&str, Outcome); 2]) {
    let deadlocked: Vec<_> = outcomes.iter().filter(|(_, o)| matches!(o, Outcome::Deadlock(_))).collect();
    assert_eq!(deadlocked.len(), 1, "exactly one side must get deadlock: {outcomes:?}");
    let granted = outcomes.iter().filter(|(_, o)| matches!(o, Outcome::Granted)).count();
    assert_eq!(granted, 1, "the other side must be granted once the loser lets go: {outcomes:?}");
    if let (_, Outcome::Deadlock(cycle)) = deadlocked[0] {
        for (id, _) in &outcomes {
            assert!(cycle.iter().any(|o| o == id), "the deadlock must name the cycle, {id} missing: {cycle:?}");
        }
    }
}

/// A holds x and waits for y while B holds y and waits for x: one of them fails with
/// `deadlock` naming both, and once it lets its lock go the other is granted.
pub async fn two_holders_waiting_on_each_other_get_deadlock<B: Backend>(backend: &B) {
    const CASE: &str = "two_holders_waiting_on_each_other_get_deadlock";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let (x, y) = (keys.key("x"), keys.key("y"));
    let (a, b) = (owner(backend).await, owner(backend).await);

    let holds_x = acquire(&*a, &x, AcquireOptions::exclusive(), "a's hold of x").await;
    let holds_y = acquire(&*b, &y, AcquireOptions::exclusive(), "b's hold of y").await;
    let a_waits = contend(&a, holds_x, y.clone(), AcquireOptions::exclusive().forever());
    assert_waiting(backend, &a_waits, "a's wait for y while b holds it").await;
    let b_waits = contend(&b, holds_y, x.clone(), AcquireOptions::exclusive().forever());
    let a_outcome = join(a_waits, "a's wait for y").await;
    let b_outcome = join(b_waits, "b's wait for x").await;
    assert_one_deadlock([(a.owner_id(), a_outcome), (b.owner_id(), b_outcome)]);

    let checker = owner(backend).await;
    assert_free(&*checker, &x, "x after both sides finished").await;
    assert_free(&*checker, &y, "y after both sides finished").await;
}

/// Two shared holders that both ask to upgrade to exclusive wait on each other: one of
/// them fails with `deadlock`, and once it lets its shared hold go the other's upgrade
/// is granted.
pub async fn two_owners_upgrading_against_each_other_get_deadlock<B: Backend>(backend: &B) {
    const CASE: &str = "two_owners_upgrading_against_each_other_get_deadlock";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let k = keys.key("k");
    let (a, b) = (owner(backend).await, owner(backend).await);

    let a_reads = acquire(&*a, &k, AcquireOptions::shared(), "a's shared").await;
    let b_reads = acquire(&*b, &k, AcquireOptions::shared(), "b's shared").await;
    let a_upgrades = contend(&a, a_reads, k.clone(), AcquireOptions::exclusive().forever());
    assert_waiting(backend, &a_upgrades, "a's upgrade while b reads").await;
    let b_upgrades = contend(&b, b_reads, k.clone(), AcquireOptions::exclusive().forever());
    let a_outcome = join(a_upgrades, "a's upgrade").await;
    let b_outcome = join(b_upgrades, "b's upgrade").await;
    assert_one_deadlock([(a.owner_id(), a_outcome), (b.owner_id(), b_outcome)]);

    let checker = owner(backend).await;
    assert_free(&*checker, &k, "the key after both sides finished").await;
}
