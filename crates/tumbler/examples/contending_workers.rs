//! Contending workers: a small bank whose tellers move money between accounts under
//! Tumbler locks, with an auditor reading every balance under shared locks.
//!
//! Each transfer locks its two accounts at once with `under_all` (all or nothing, so two
//! tellers moving money in opposite directions never deadlock), reads both balances,
//! yields mid-transaction to invite interleaving, and writes them back. The auditor takes
//! shared locks on all accounts and checks that the money adds up; a queued teller is
//! never starved by it. At the end the total must be unchanged.
//!
//! Run it with `cargo run -p tumbler --example contending_workers [tellers] [transfers]`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use tumbler::mem::MemLocks;
use tumbler::{AcquireOptions, LockerExt};

const ACCOUNTS: u32 = 8;
const START_BALANCE: i64 = 1_000;

#[tokio::main]
async fn main() -> tumbler::Result<()> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("arguments are numbers"));
    let tellers = args.next().unwrap_or(16);
    let transfers = args.next().unwrap_or(2_000);

    let locks: MemLocks<String> = MemLocks::new();
    // The "database": deliberately unprotected by anything but Tumbler.
    let balances: Arc<Mutex<HashMap<String, i64>>> =
        Arc::new(Mutex::new((0..ACCOUNTS).map(|i| (account(i), START_BALANCE)).collect()));

    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..tellers {
        let teller = locks.owner();
        let balances = balances.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..transfers {
                let (from, to, amount) = {
                    let mut rng = rand::thread_rng();
                    let from = rng.gen_range(0..ACCOUNTS);
                    let to = (from + rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
                    (account(from), account(to), rng.gen_range(1..50))
                };
                let keys = vec![from.clone(), to.clone()];
                teller
                    .under_all(keys, AcquireOptions::exclusive().forever(), async {
                        let (a, b) = {
                            let db = balances.lock();
                            (db[&from], db[&to])
                        };
                        tokio::task::yield_now().await;
                        let mut db = balances.lock();
                        db.insert(from.clone(), a - amount);
                        db.insert(to.clone(), b + amount);
                    })
                    .await?;
            }
            Ok::<_, tumbler::Error>(())
        }));
    }

    let auditor = locks.owner();
    let audit_balances = balances.clone();
    let audits = tokio::spawn(async move {
        let mut audits = 0u32;
        loop {
            let keys: Vec<String> = (0..ACCOUNTS).map(account).collect();
            let total = auditor
                .under_all(keys, AcquireOptions::shared().timeout(Duration::from_secs(10)), async {
                    audit_balances.lock().values().sum::<i64>()
                })
                .await?;
            assert_eq!(total, i64::from(ACCOUNTS) * START_BALANCE, "money appeared or vanished");
            audits += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
            if audits >= 50 {
                return Ok::<_, tumbler::Error>(audits);
            }
        }
    });

    for task in tasks {
        task.await.expect("teller panicked")?;
    }
    let audits = audits.await.expect("auditor panicked")?;
    let elapsed = started.elapsed();
    let total: i64 = balances.lock().values().sum();
    let moves = tellers * transfers;
    println!(
        "{tellers} tellers made {moves} transfers in {elapsed:.2?} ({:.0} transfers/s)",
        moves as f64 / elapsed.as_secs_f64()
    );
    println!("{audits} audits under shared locks all balanced; final total {total}");
    assert_eq!(total, i64::from(ACCOUNTS) * START_BALANCE);
    Ok(())
}

fn account(i: u32) -> String {
    format!("account:{i}")
}
