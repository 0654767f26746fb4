//! The in-process backend: keyed locks shared by the tasks of one process.
//!
//! [`MemLocks`] is the lock table (clone it to share it); each [`MemLocker`] made from it
//! is one owner. Keys may be any `Hash + Eq + Clone + Send + Sync` value.
//!
//! ```
//! use tumbler::mem::MemLocks;
//! use tumbler::{AcquireOptions, LockGuard, Locker, LockerExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> tumbler::Result<()> {
//! let locks = MemLocks::new();
//! let alice = locks.owner();
//! let bob = locks.owner();
//!
//! let guard = alice.lock("inventory:42").await?;
//! assert!(bob.try_lock("inventory:42").await?.is_none());
//! println!("fencing token {}", guard.fencing_token());
//! drop(guard);
//!
//! let total = bob.under("inventory:42", AcquireOptions::exclusive(), async { 40 + 2 }).await?;
//! assert_eq!(total, 42);
//! # Ok(()) }
//! ```
//!
//! # Owner death
//!
//! When the last clone of a [`MemLocker`] is dropped, its owner ends: everything it holds
//! is released (even through guards that still exist, which then report
//! [`LockGuard::lost`](crate::LockGuard::lost)) and its waits are cancelled — the Elixir
//! `Mutex` rule that a dead process holds nothing.

mod engine;
mod locker;
mod wait;

pub use engine::{Engine, EngineStats, Watch, DEFAULT_SHARDS, EVENT_BUFFER};
pub use locker::{MemGuard, MemLocker, MemLocks};
