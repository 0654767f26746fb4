//! A pool of N resources shared by many workers, as N lock keys ("slots").
//!
//! PostgreSQL has no semaphores, so a pool of three licences (printers, API tokens, ...) is
//! three exclusive keys, `(namespace, slot)` pairs here. A worker tries each slot without
//! waiting and takes the first free one; when all are busy it waits a moment in
//! PostgreSQL's queue of one slot (woken the moment that slot frees), then looks at all of
//! them again. The invariant: never more than three in use, never one slot twice.
//!
//! Run it with `cargo run -p tumbler --features postgres --example pg_resource_pool`; it
//! uses `DATABASE_URL` when set, otherwise a throw-away PostgreSQL cluster.

mod pg_support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_support::BoxError;
use tokio::task::JoinSet;
use tumbler::pg::{Namespaces, PgGuard, PgKey, PgLocker, PgLocks};
use tumbler::{AcquireOptions, Error, LockGuard, Locker, LockerExt};

const SLOTS: usize = 3;
const WORKERS: usize = 8;
const JOBS_PER_WORKER: usize = 3;
/// How long a worker waits on one busy slot before looking at all of them again.
const WAIT_ROUND: Duration = Duration::from_millis(25);

/// What the workers saw, shared for the checks.
#[derive(Default)]
struct Usage {
    occupied: [AtomicBool; SLOTS],
    uses: [AtomicUsize; SLOTS],
    in_use: AtomicUsize,
    max_in_use: AtomicUsize,
    waited: AtomicUsize,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let pool = pg_support::database("pg_resource_pool", WORKERS as u32 + 4).await?;
    let locks = PgLocks::new(pool);
    let namespaces = Namespaces::new().register("printer-slots", 1)?;
    let slots: Vec<PgKey> = (0..SLOTS as i32).map(|i| namespaces.key("printer-slots", i)).collect::<Result<_, _>>()?;

    // A semaphore is what one would ask for; PostgreSQL cannot give one, and says so.
    let probe = locks.owner().await?;
    match probe.acquire(slots[0], AcquireOptions::semaphore(SLOTS as u32)).await {
        Err(e @ Error::NotSupported { .. }) => println!("semaphore(3): {e} — hence {SLOTS} slot keys"),
        other => panic!("the pg backend has no semaphores, yet got {other:?}"),
    }
    probe.close().await;

    let usage = Arc::new(Usage::default());
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for worker in 0..WORKERS {
        let locker = locks.owner().await?;
        let (slots, usage) = (slots.clone(), usage.clone());
        workers.spawn(async move {
            for job in 0..JOBS_PER_WORKER {
                let (slot, guard) = take_slot(&locker, &slots, worker, &usage).await?;
                // Inside the pool: check and count.
                assert!(!usage.occupied[slot].swap(true, Ordering::SeqCst), "slot {slot} taken twice");
                let now = usage.in_use.fetch_add(1, Ordering::SeqCst) + 1;
                usage.max_in_use.fetch_max(now, Ordering::SeqCst);
                usage.uses[slot].fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30 + 10 * ((worker + job) % 4) as u64)).await;
                usage.in_use.fetch_sub(1, Ordering::SeqCst);
                usage.occupied[slot].store(false, Ordering::SeqCst);
                guard.release().await?;
            }
            Ok::<_, BoxError>(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }

    let uses: Vec<usize> = usage.uses.iter().map(|u| u.load(Ordering::SeqCst)).collect();
    let max_in_use = usage.max_in_use.load(Ordering::SeqCst);
    println!(
        "{WORKERS} workers ran {} jobs on {SLOTS} slots in {} ms: uses per slot {uses:?}, \
         at most {max_in_use} in use at once; {} times a worker found every slot busy and waited",
        WORKERS * JOBS_PER_WORKER,
        started.elapsed().as_millis(),
        usage.waited.load(Ordering::SeqCst)
    );
    assert_eq!(uses.iter().sum::<usize>(), WORKERS * JOBS_PER_WORKER);
    assert!(max_in_use <= SLOTS, "{max_in_use} slots in use at once");
    assert_eq!(max_in_use, SLOTS, "with {WORKERS} workers every slot should have been in use at once");
    println!("ok: never more than {SLOTS} in use, never one slot twice");
    Ok(())
}

/// Takes a free slot: tries each (starting at a different one per worker, to spread the
/// load), and when all are busy waits a moment for one, then tries them all again.
async fn take_slot(
    locker: &PgLocker,
    slots: &[PgKey],
    worker: usize,
    usage: &Usage,
) -> tumbler::Result<(usize, PgGuard)> {
    let mut round = worker;
    loop {
        for i in 0..slots.len() {
            let slot = (worker + i) % slots.len();
            if let Some(guard) = locker.try_lock(slots[slot]).await? {
                return Ok((slot, guard));
            }
        }
        usage.waited.fetch_add(1, Ordering::SeqCst);
        round += 1;
        let slot = round % slots.len();
        match locker.acquire(slots[slot], AcquireOptions::exclusive().timeout(WAIT_ROUND)).await {
            Ok(guard) => return Ok((slot, guard)),
            Err(Error::Timeout) => continue,
            Err(e) => return Err(e),
        }
    }
}
