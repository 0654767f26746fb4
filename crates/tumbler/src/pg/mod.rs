//! The PostgreSQL backend: advisory locks, done right.
//!
//! What go-pglock, PormG's `with_advisory_lock` and GameServer.Lock's `serialize` give
//! their users, without their sharp edges. Here PostgreSQL's own lock manager decides who
//! holds a lock (it is the one backend where `tumbler-core` does not): its FIFO queues,
//! its deadlock detection (after `deadlock_timeout`), its stacking of session locks.
//!
//! # Session-level locks
//!
//! [`PgLocks::owner`] takes a dedicated connection from your pool; the [`PgLocker`] it
//! returns is one owner (one PostgreSQL session, `pg-<backend pid>`): exclusive and shared
//! locks, try / wait / wait with a timeout, stacking (n acquires need n releases per
//! mode). Dropping the last clone of the locker releases everything and gives the
//! connection back to the pool — or closes it when the session cannot be proven clean.
//!
//! * A connection that holds locks is never silently reconnected: if it dies, every guard
//!   of the session reports [`LostReason::ConnectionLost`](crate::LostReason) through
//!   [`LockGuard::lost`], found by any failed statement or by a
//!   health check every [`PgConfig::health_check`].
//! * Waiting is [`WaitStrategy::Block`] (in PostgreSQL, bounded by `lock_timeout` set for
//!   that statement's transaction only; a dropped waiting future cancels the wait with
//!   `pg_cancel_backend`) or [`WaitStrategy::Poll`] (`pg_try_advisory_lock` in a loop).
//!   A timeout is [`Error::Timeout`](crate::Error), a PostgreSQL deadlock
//!   [`Error::Deadlock`](crate::Error) naming the backends of the cycle; a lock granted at
//!   the instant a wait timed out is found in `pg_locks` and released.
//! * Behind a transaction-pooling proxy (PgBouncer), session locks cannot work: every
//!   statement checks it ran on the session's own backend, and refuses otherwise, pointing
//!   to [`serialize`].
//!
//! # Transaction-scoped locks
//!
//! [`serialize`] runs a closure inside a transaction that holds `pg_advisory_xact_lock`,
//! so its queries run under the lock; commit on `Ok`, rollback on `Err` or panic.
//!
//! # Keys
//!
//! [`PgKey`]: a `bigint`, an `(int, int)` pair, a string hashed by [`hash_key`], or a
//! `(namespace, id)` pair through a [`Namespaces`] registry.
//!
//! # What PostgreSQL does not offer
//!
//! No TTLs, no fencing tokens (guards report 0), no semaphores, no retry ids, no
//! lock-delay: [`Capabilities`] says so, and asking for them is
//! [`Error::NotSupported`](crate::Error).

mod failure;
mod guard;
mod key;
mod session;
mod sql;
mod xact;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;
use sqlx::PgPool;
use tumbler_core::{Mode, Wait};

pub use guard::PgGuard;
pub use key::{hash_key, hash_namespace, Namespaces, PgKey};
use session::Session;
pub use xact::{serialize, serialize_timeout, try_serialize};

use crate::error::{Error, Result};
use crate::locker::{Capabilities, LockGuard, Locker};
use crate::options::AcquireOptions;

/// What the PostgreSQL backend offers with the default [`WaitStrategy::Block`]:
/// PostgreSQL's FIFO queues, deadlock detection and stacking, and all-or-nothing
/// multi-key locking; no TTLs, fencing tokens, semaphores, retry ids or lock-delay.
pub fn capabilities() -> Capabilities {
    capabilities_with(WaitStrategy::Block)
}

/// What the PostgreSQL backend offers when it waits as `wait` says. With
/// [`WaitStrategy::Poll`] no request ever waits inside PostgreSQL, so neither its queue
/// order (FIFO) nor its deadlock detection applies.
pub fn capabilities_with(wait: WaitStrategy) -> Capabilities {
    let blocks = wait == WaitStrategy::Block;
    Capabilities { fifo: blocks, deadlock_detection: blocks, multi_key: true, ..Capabilities::none("pg") }
}

/// How a session waits for a lock it cannot take at once.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Wait inside PostgreSQL (`pg_advisory_lock`): granted the moment the lock is free,
    /// in PostgreSQL's queue order. The default.
    #[default]
    Block,
    /// Retry `pg_try_advisory_lock` every `interval` (PormG's `:poll`): no statement stays
    /// open while waiting, at the cost of latency and fairness — waiters are not granted
    /// in arrival order, and sessions polling for each other's keys are no deadlock to
    /// PostgreSQL: they wait until their timeouts (see [`capabilities_with`]).
    Poll {
        /// Time between attempts.
        interval: Duration,
    },
}

/// Configuration of [`PgLocks`].
#[derive(Clone, Debug)]
pub struct PgConfig {
    /// How to wait.
    pub wait: WaitStrategy,
    /// How often to check that a session's connection is alive (`None`: only failed
    /// statements reveal a dead connection).
    pub health_check: Option<Duration>,
}

impl Default for PgConfig {
    fn default() -> Self {
        PgConfig { wait: WaitStrategy::Block, health_check: Some(Duration::from_secs(5)) }
    }
}

/// Advisory locks of one PostgreSQL database. Cheap to clone.
#[derive(Clone)]
pub struct PgLocks {
    pool: PgPool,
    config: PgConfig,
}

impl fmt::Debug for PgLocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgLocks").field("config", &self.config).finish()
    }
}

impl PgLocks {
    /// Locks over `pool`, with the default configuration.
    pub fn new(pool: PgPool) -> Self {
        PgLocks::with_config(pool, PgConfig::default())
    }

    /// Locks over `pool`, configured.
    pub fn with_config(pool: PgPool, config: PgConfig) -> Self {
        PgLocks { pool, config }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// What these locks offer, given their waiting strategy ([`capabilities_with`]).
    pub fn capabilities(&self) -> Capabilities {
        capabilities_with(self.config.wait)
    }

    /// A new owner: takes a dedicated connection from the pool for its session.
    ///
    /// # Errors
    /// A backend error when no connection can be had.
    pub async fn owner(&self) -> Result<PgLocker> {
        let session = Session::open(self.pool.clone(), self.config.clone()).await?;
        Ok(PgLocker { life: Arc::new(Life { session: session.clone() }), session })
    }
}

/// One PostgreSQL session holding advisory locks: one owner. Clones share the session;
/// it ends when the last clone is dropped (or [`PgLocker::close`] is called).
///
/// The session's statements run one at a time: while one of its acquires waits, its
/// other operations wait too.
#[derive(Clone)]
pub struct PgLocker {
    session: Arc<Session>,
    life: Arc<Life>,
}

/// The session's life: dropped with the last [`PgLocker`] clone (guards do not keep it),
/// and that ends the session — its locks are released even while guards still exist,
/// which then report them lost.
struct Life {
    session: Arc<Session>,
}

impl Drop for Life {
    fn drop(&mut self) {
        self.session.end_in_background();
    }
}

impl fmt::Debug for PgLocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgLocker").field("owner", self.session.owner()).finish()
    }
}

impl PgLocker {
    /// The backend process id of the session.
    pub fn backend_pid(&self) -> i32 {
        self.session.pid()
    }

    /// Ends the session now: releases everything, and returns the connection to the pool
    /// when it can prove the session clean (otherwise closes it). Other clones of this
    /// locker can no longer be used.
    pub async fn close(self) {
        self.life.session.close().await;
    }

    fn check_options(options: &AcquireOptions) -> Result<bool> {
        let unsupported = |operation| Err(Error::NotSupported { operation, backend: "pg" });
        if options.ttl.is_some() {
            return unsupported("ttl");
        }
        if options.request_id.is_some() {
            return unsupported("request_id");
        }
        if options.lock_delay.is_some() {
            return unsupported("lock_delay");
        }
        match options.mode_or_default() {
            Mode::Exclusive => Ok(false),
            Mode::Shared => Ok(true),
            Mode::Semaphore { .. } => unsupported("semaphore"),
        }
    }

    fn guard(&self, shared: bool, keys: SmallVec<[(PgKey, u64); 1]>) -> PgGuard {
        PgGuard { session: self.session.clone(), shared, keys, released: false }
    }
}

impl Locker for PgLocker {
    type Key = PgKey;
    type Guard = PgGuard;

    fn capabilities(&self) -> Capabilities {
        capabilities_with(self.session.config().wait)
    }

    fn owner_id(&self) -> &str {
        self.session.owner().as_str()
    }

    async fn acquire(&self, key: PgKey, options: AcquireOptions) -> Result<PgGuard> {
        let shared = Self::check_options(&options)?;
        let generation = self.session.acquire(key, shared, options.wait).await?;
        Ok(self.guard(shared, SmallVec::from_buf([(key, generation)])))
    }

    /// Locks the keys one by one in a fixed order (sorted), so two sessions locking
    /// overlapping sets never wait on each other in a cycle; on failure the keys taken so
    /// far are released, so the call holds all of them or none.
    async fn acquire_all(&self, mut keys: Vec<PgKey>, options: AcquireOptions) -> Result<PgGuard> {
        let shared = Self::check_options(&options)?;
        keys.sort_unstable();
        keys.dedup();
        if keys.is_empty() {
            return Err(Error::InvalidArgument { field: "keys", reason: "at least one key is required".into() });
        }
        let deadline = match options.wait {
            Wait::Timeout(d) => Some(tokio::time::Instant::now() + d),
            _ => None,
        };
        let mut guard = self.guard(shared, SmallVec::new());
        for key in keys {
            let wait = match deadline {
                Some(d) => match d.saturating_duration_since(tokio::time::Instant::now()) {
                    left if left.is_zero() => Err(Error::Timeout),
                    left => Ok(Wait::Timeout(left)),
                },
                None => Ok(options.wait),
            };
            let taken = match wait {
                Ok(wait) => self.session.acquire(key, shared, wait).await,
                Err(e) => Err(e),
            };
            match taken {
                Ok(generation) => guard.keys.push((key, generation)),
                Err(e) => {
                    // Release the keys taken so far: all or none.
                    let _ = guard.release().await;
                    return Err(e);
                }
            }
        }
        Ok(guard)
    }

    async fn goodbye(&self) -> Result<usize> {
        self.session.goodbye().await
    }
}
