//! Fencing tokens.

use tumbler::{AcquireOptions, LockGuard, Locker, LostReason};

use super::support::{acquire, join, ok, owner, release, spawn_acquire, within, Keys, TTL};
use super::support::{assert_waiting, Guard};
use super::{part_skipped, skipped, Capability};
use crate::backend::Backend;

/// Remembers the highest token seen, as a fenced resource does, and checks that each new
/// hold's token is above it.
struct Fence {
    highest: u64,
}

impl Fence {
    fn admit(&mut self, token: u64, what: &str) {
        assert!(token > self.highest, "{what}: token {token} is not greater than the highest seen, {}", self.highest);
        self.highest = token;
    }
}

/// Successive holds of a key get strictly increasing fencing tokens — whether granted at
/// once, after a wait, side by side as shared holds, or after the previous holder died
/// or expired — and a re-entry keeps the token of the hold it enters.
pub async fn fencing_tokens_increase<B: Backend>(backend: &B) {
    const CASE: &str = "fencing_tokens_increase";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let k = keys.key("k");
    let mut fence = Fence { highest: 0 };
    let (a, b) = (owner(backend).await, owner(backend).await);

    let first = acquire(&*a, &k, AcquireOptions::exclusive(), "a's acquire").await;
    fence.admit(first.fencing_token(), "a's first hold");
    let again = acquire(&*a, &k, AcquireOptions::exclusive(), "a's re-entry").await;
    assert_eq!(again.fencing_token(), first.fencing_token(), "a re-entry keeps the token of its hold");
    assert_eq!(again.fencing_tokens(), vec![first.fencing_token()], "fencing_tokens() of a single key");
    release(again, "a's release of the re-entry").await;
    release(first, "a's release").await;

    let second = acquire(&*b, &k, AcquireOptions::exclusive(), "b's acquire after a").await;
    fence.admit(second.fencing_token(), "b's hold after a's");
    // Granted after a wait.
    let waiter = spawn_acquire(&a, &k, AcquireOptions::exclusive().forever());
    assert_waiting(backend, &waiter, "a's wait while b holds").await;
    release(second, "b's release").await;
    let waited: Guard<B> = ok("a's wait", join(waiter, "a's wait").await);
    fence.admit(waited.fencing_token(), "a's hold granted after a wait");
    release(waited, "a's release").await;

    // Side by side: each new shared hold gets its own, greater token.
    let read_a = acquire(&*a, &k, AcquireOptions::shared(), "a's shared").await;
    fence.admit(read_a.fencing_token(), "a's shared hold");
    let read_b = acquire(&*b, &k, AcquireOptions::shared(), "b's shared").await;
    fence.admit(read_b.fencing_token(), "b's shared hold next to a's");
    release(read_a, "a's release of shared").await;
    release(read_b, "b's release of shared").await;

    // After the previous holder died.
    let doomed = owner(backend).await;
    let dead_hold = acquire(&*doomed, &k, AcquireOptions::exclusive(), "the doomed owner's acquire").await;
    fence.admit(dead_hold.fencing_token(), "the doomed owner's hold");
    drop(doomed);
    let after_death = {
        let b = b.clone();
        let k = k.clone();
        within("b's wait after the holder died", async move {
            b.acquire(k, AcquireOptions::exclusive().timeout(std::time::Duration::from_secs(5))).await
        })
        .await
    };
    let after_death = ok("b's acquire after the holder died", after_death);
    fence.admit(after_death.fencing_token(), "b's hold after the holder died");
    release(after_death, "b's release").await;
    drop(dead_hold);

    // After the previous hold expired.
    if !part_skipped(backend, CASE, "after an expiry", Capability::Ttl) {
        let expiring = acquire(&*a, &k, AcquireOptions::exclusive().ttl(TTL), "a's acquire with a TTL").await;
        fence.admit(expiring.fencing_token(), "a's TTL hold");
        assert_eq!(within("a's TTL hold expiring", expiring.lost()).await, LostReason::Expired);
        let after_expiry = acquire(&*b, &k, AcquireOptions::exclusive(), "b's acquire after the expiry").await;
        fence.admit(after_expiry.fencing_token(), "b's hold after a's expired");
        release(after_expiry, "b's release").await;
    }

    // Through a multi-key grant: one token per key, each above that key's previous one.
    if !part_skipped(backend, CASE, "through a multi-key grant", Capability::MultiKey) {
        let other = keys.key("other");
        let solo = acquire(&*a, &other, AcquireOptions::exclusive(), "a's hold of the other key").await;
        let mut other_fence = Fence { highest: 0 };
        other_fence.admit(solo.fencing_token(), "the other key's first hold");
        release(solo, "a's release of the other key").await;
        let both = ok(
            "b's acquire_all",
            within("b's acquire_all", b.acquire_all(vec![k.clone(), other.clone()], AcquireOptions::exclusive())).await,
        );
        let tokens = both.fencing_tokens();
        assert_eq!(tokens.len(), 2, "one token per key, in the order asked: {tokens:?}");
        fence.admit(tokens[0], "b's multi-key hold of the first key");
        other_fence.admit(tokens[1], "b's multi-key hold of the other key");
        release(both, "b's release of both").await;
    }
}
