//! Tumbler: fair, fenced, re-entrant locks with one set of semantics — in-process, on
//! PostgreSQL, or through a lock server any language can call.
//!
//! A key design decision: no backend decides who holds a lock on its own. Every rule
//! (modes, re-entry, FIFO fairness, deadlock detection, TTLs, fencing tokens) is decided
//! by `tumbler-core`'s lock table, except in the PostgreSQL backend, where PostgreSQL's
//! own lock manager decides. Backends translate; the [`Locker`] trait is what they share,
//! and the conformance suite in `tumbler-testkit` holds every backend to it.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tumbler::mem::MemLocks;
//! use tumbler::{AcquireOptions, LockGuard, Locker, LockerExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> tumbler::Result<()> {
//! let locks = MemLocks::new();
//! let worker = locks.owner();
//! let guard = worker.acquire("report:2026-11", AcquireOptions::exclusive().timeout(Duration::from_secs(5))).await?;
//! // Hand the token to the storage you write to, so a stale holder can be refused.
//! let token = guard.fencing_token();
//! tokio::select! {
//!     reason = guard.lost() => eprintln!("lock lost ({reason:?}), stopping"),
//!     () = async { /* the work */ } => {}
//! }
//! guard.release().await?;
//! # let _ = token; Ok(()) }
//! ```
//!
//! # Backends
//!
//! - [`mem`]: in-process, sharded, waiters woken by notification.
//! - `pg` (feature `postgres`): PostgreSQL advisory locks, session- and transaction-scoped.

mod error;
mod helpers;
mod locker;
mod lost;
pub mod mem;
mod options;
#[cfg(feature = "postgres")]
pub mod pg;
#[cfg(feature = "remote")]
pub mod remote;

pub use error::{Error, Result};
pub use helpers::LockerExt;
pub use locker::{Capabilities, LockGuard, Locker};
pub use lost::{HoldId, OwnerSignals};
pub use options::AcquireOptions;
pub use tumbler_core::{Key, LostReason, Mode, OwnerId, Wait};

/// The README's example, compiled and run as a doc test so it cannot go stale.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
