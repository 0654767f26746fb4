//! The lock table of Tumbler: every rule of its lock semantics, decided in one place.
//!
//! A key design decision: this crate is a pure, deterministic state machine. It does no
//! I/O, spawns nothing, reads no clock and never blocks. Callers pass the current
//! [`Instant`] into every operation and receive [`Effects`]: requests to wake, guards to
//! tell about lost holds, events to publish, and the next deadline at which to call
//! [`LockTable::tick`]. The in-process backend, the PostgreSQL-backed server and the tests
//! all drive this same code, so the semantics exist once.
//!
//! # What it guarantees
//!
//! - **Modes.** [`Mode::Exclusive`], [`Mode::Shared`] and [`Mode::Semaphore`] with a
//!   per-key limit, with re-entry by the same [`OwnerId`] counted per mode, and
//!   conversion between modes (a shared holder asking exclusive is granted once it is the
//!   only holder; it goes ahead of queued non-holders).
//! - **Fairness.** Each key has a FIFO queue; a request is granted only when compatible
//!   with the holds and with every earlier queued request of another owner, so a queued
//!   writer is never starved by a stream of readers.
//! - **No lost wake-up.** After every operation, no queued request could be granted.
//! - **Multi-key.** [`Acquire::all`] is all-or-nothing. Queues are ordered by one global
//!   arrival sequence ([`RequestId`]), so multi-key waiters never wait on each other in a
//!   cycle through the queues alone.
//! - **Deadlock.** A request whose queueing would close a cycle of owners waiting on each
//!   other fails at once with [`Error::Deadlock`] naming the cycle, and changes nothing.
//! - **Time.** TTL holds, wait bounds, session leases and lock-delays run on the caller's
//!   monotonic clock.
//! - **Fencing.** Every new hold gets a token greater than any earlier token of its key.
//! - **Failure changes nothing.** An operation that returns an error leaves the table as
//!   it was.
//!
//! # Sharding
//!
//! A table is a [`Coordinator`] plus [`Shard`]s, one per slice of the key space. Hot
//! single-key operations that need no queue run on one shard alone
//! ([`Shard::try_acquire`], [`Shard::try_release`]); everything else runs on the
//! coordinator with all shards. [`LockTable`] bundles both for single-threaded callers;
//! a concurrent caller keeps the shards behind separate locks.

mod config;
mod coordinator;
mod effects;
mod error;
mod event;
mod handoff;
mod hash;
mod index;
mod key;
mod layout;
mod mode;
mod namespaces;
mod owner;
mod request;
mod session;
mod shard;
mod table;
mod time;

pub use config::{Config, Limits};
pub use coordinator::{Coordinator, HolderStatus, KeyStatus};
pub use effects::{Effects, Lost, LostReason, Wake};
pub use error::{Error, Holder, Result};
pub use event::{Event, EventKind, EventLog, TooOld};
pub use handoff::{HandOff, Released};
pub use key::{validate_name, validate_namespace, Key, MAX_NAMESPACE_CHARS, MAX_NAME_BYTES};
pub use layout::Layout;
pub use mode::Mode;
pub use owner::{OwnerId, MAX_OWNER_CHARS};
pub use request::{Acquire, Acquired, Grant, Granted, RequestId, Wait};
pub use session::{SessionId, SessionInfo};
pub use shard::{Escalate, RestoredHold, Shard, Shards, REMEMBERED_REQUEST_IDS};
pub use table::LockTable;
pub use time::Instant;
