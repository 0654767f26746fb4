//! The keys-per-namespace bound under threads racing on different shards: single-key
//! operations decide it in their own shard, with no central lock, so these check that the
//! shared count is exact (never past the bound, every place given back).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tumbler::mem::Engine;
use tumbler_core::{Acquire, Config, Error, Key, Limits, OwnerId, Wait};

const MAX: usize = 8;
const NAMESPACES: [&str; 2] = ["left", "right"];

fn engine() -> Engine<Key> {
    let limits = Limits { max_keys_per_namespace: Some(MAX), ..Limits::default() };
    Engine::new(Config { limits, shards: 16, ..Config::for_keys() })
}

fn key(ns: &str, i: usize) -> Key {
    Key::new(ns, format!("k{i}")).expect("a valid key")
}

/// Takes every key it can of `ns` (out of `3 * MAX` names), one try each; returns how many.
async fn fill(engine: &Engine<Key>, ns: &str, owner: &OwnerId) -> usize {
    let mut granted = 0;
    for i in 0..3 * MAX {
        match engine.acquire(Acquire::new(key(ns, i), owner.clone())).await {
            Ok(_) => granted += 1,
            Err(Error::LimitExceeded { limit, max }) => assert_eq!((limit, max), ("keys_per_namespace", MAX as u64)),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    granted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_grants_never_pass_the_bound_and_every_place_comes_back() {
    let engine = Arc::new(engine());
    // Which keys of each namespace are held right now, as the tasks see their grants.
    let held: Arc<Mutex<[HashSet<usize>; 2]>> = Arc::default();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (engine, held) = (engine.clone(), held.clone());
            tokio::spawn(async move {
                let owner = OwnerId::new(format!("t{t}")).expect("a valid owner");
                for round in 0..2_000usize {
                    let n = (t * 7 + round * 13) % NAMESPACES.len();
                    let i = (t * 31 + round * 17) % (3 * MAX);
                    // Some waits, some multi-key requests, the rest tries: every path that
                    // creates a key's state takes a place.
                    let mut req = match round % 5 {
                        0 => Acquire::all(
                            [key(NAMESPACES[n], i), key(NAMESPACES[n], (i + 1) % (3 * MAX))],
                            owner.clone(),
                        ),
                        _ => Acquire::new(key(NAMESPACES[n], i), owner.clone()),
                    };
                    if round % 3 == 0 {
                        req = req.wait(Wait::Timeout(Duration::from_millis(2)));
                    }
                    let keys: Vec<Key> = req.keys.iter().cloned().collect();
                    match engine.acquire(req).await {
                        Ok(_) => {
                            {
                                let mut held = held.lock().expect("not poisoned");
                                for k in &keys {
                                    let i: usize = k.name()[1..].parse().expect("k<i>");
                                    held[n].insert(i);
                                }
                                assert!(held[n].len() <= MAX, "{} keys held in {}", held[n].len(), NAMESPACES[n]);
                            }
                            tokio::task::yield_now().await;
                            let mut held = held.lock().expect("not poisoned");
                            for k in &keys {
                                let i: usize = k.name()[1..].parse().expect("k<i>");
                                held[n].remove(&i);
                                engine.release(k, &owner, None, None).expect("the holder releases");
                            }
                        }
                        Err(Error::LimitExceeded { .. } | Error::Busy { .. } | Error::Timeout) => {}
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("no panic");
    }
    // Everything is free again: each namespace has exactly its bound to give.
    let owner = OwnerId::new("filler").expect("a valid owner");
    for ns in NAMESPACES {
        assert_eq!(fill(&engine, ns, &owner).await, MAX, "{ns}: every place came back");
    }
}
