//! A lock session: one dedicated PostgreSQL connection, the advisory locks it holds, and
//! the watch over its health.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio::sync::{Mutex, MutexGuard, Notify};
use tumbler_core::{Holder, LostReason, Mode, OwnerId, Wait};

use super::failure::{backend, classify, owner_of_pid, Failure};
use super::key::PgKey;
use super::sql;
use super::{PgConfig, WaitStrategy};
use crate::error::{Error, Result};
use crate::lost::{HoldId, OwnerSignals};

/// A statement that was abandoned mid-flight (its future dropped): PostgreSQL may still
/// be waiting for, or may have granted, the lock it asked for.
#[derive(Copy, Clone, Debug)]
struct Abandoned {
    key: PgKey,
    shared: bool,
    /// It was a blocking wait, which must be cancelled server-side before the connection
    /// can be used again.
    blocking: bool,
}

/// The connection and what must be cleaned up on it before its next statement.
struct Conn {
    conn: Option<PoolConnection<Postgres>>,
    abandoned: Option<Abandoned>,
}

/// One hold as this session counts it: PostgreSQL stacks advisory locks per session and
/// mode, and so does this map.
#[derive(Copy, Clone, Debug)]
struct HoldState {
    count: u32,
    /// Identifies this hold (from its first level to its last) for lost-hold signals.
    generation: u64,
}

#[derive(Default)]
struct Holds {
    map: HashMap<(PgKey, bool), HoldState>,
    next_generation: u64,
}

/// The shared state of one [`super::PgLocker`] and its guards.
pub(crate) struct Session {
    pool: PgPool,
    config: PgConfig,
    conn: Mutex<Conn>,
    pid: i32,
    owner: OwnerId,
    pub(crate) signals: Arc<OwnerSignals>,
    holds: parking_lot::Mutex<Holds>,
    lost: AtomicBool,
    /// A blocking wait is running on the connection.
    waiting: AtomicBool,
    /// The running wait is being cancelled on purpose (goodbye, close): it then fails with
    /// `session_expired`, as a wait cancelled by its owner's end does on every backend.
    interrupting: AtomicBool,
    /// Wakes a polling wait (which holds the connection between its attempts) so that it
    /// sees `interrupting` without sleeping out its interval.
    interrupt: Notify,
    health: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Marks the connection as needing clean-up if the statement it guards is abandoned.
struct InFlight<'a> {
    session: &'a Arc<Session>,
    conn: &'a mut Conn,
    armed: Option<Abandoned>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let Some(abandoned) = self.armed.take() else { return };
        self.conn.abandoned = Some(abandoned);
        // Clean up now rather than at the session's next statement: a blocking wait left
        // running would keep its row in pg_locks and could still be granted.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let session = self.session.clone();
            runtime.spawn(async move {
                let _ = session.lock_conn().await;
            });
        }
    }
}

impl Session {
    pub(crate) async fn open(pool: PgPool, config: PgConfig) -> Result<Arc<Session>> {
        let mut conn = pool.acquire().await.map_err(backend)?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await.map_err(backend)?;
        let session = Arc::new(Session {
            pool,
            config,
            conn: Mutex::new(Conn { conn: Some(conn), abandoned: None }),
            pid,
            owner: owner_of_pid(pid),
            signals: Arc::new(OwnerSignals::default()),
            holds: parking_lot::Mutex::new(Holds::default()),
            lost: AtomicBool::new(false),
            waiting: AtomicBool::new(false),
            interrupting: AtomicBool::new(false),
            interrupt: Notify::new(),
            health: parking_lot::Mutex::new(None),
        });
        if let Some(every) = session.config.health_check {
            let handle = tokio::spawn(watch_health(Arc::downgrade(&session), every));
            *session.health.lock() = Some(handle);
        }
        Ok(session)
    }

    pub(crate) fn owner(&self) -> &OwnerId {
        &self.owner
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    pub(crate) fn config(&self) -> &PgConfig {
        &self.config
    }

    fn lost_error(&self) -> Error {
        Error::Lost { reason: LostReason::ConnectionLost }
    }

    /// Records that the connection is gone: every hold is lost, and the connection is
    /// never used (nor silently replaced) again.
    fn mark_lost(&self) {
        if !self.lost.swap(true, Ordering::AcqRel) {
            self.signals.mark_all(LostReason::ConnectionLost);
            self.holds.lock().map.clear();
        }
    }

    /// Takes the connection for one operation, first cleaning up after an abandoned one.
    async fn lock_conn(self: &Arc<Self>) -> Result<MutexGuard<'_, Conn>> {
        let mut guard = self.conn.lock().await;
        if self.lost.load(Ordering::Acquire) || guard.conn.is_none() {
            guard.conn = None;
            return Err(self.lost_error());
        }
        if let Some(abandoned) = guard.abandoned.take() {
            if let Err(failure) = self.reconcile(&mut guard, abandoned).await {
                return Err(self.fail(&mut guard, failure));
            }
        }
        Ok(guard)
    }

    /// Turns a failure into the error to return, dropping the connection if it is lost.
    fn fail(&self, conn: &mut Conn, failure: Failure) -> Error {
        match failure {
            Failure::Statement(e) => e,
            Failure::ConnectionLost(e) => {
                self.mark_lost();
                if let Some(c) = conn.conn.take() {
                    // Never back into the pool: its session state is unknown.
                    drop(c.detach());
                }
                e
            }
        }
    }

    /// Brings PostgreSQL's view of this session back in line with ours after a statement
    /// was abandoned: cancels a wait still running, ends the transaction it ran in, and
    /// releases a lock that was granted to nobody.
    async fn reconcile(&self, conn: &mut Conn, abandoned: Abandoned) -> Result<(), Failure> {
        if abandoned.blocking {
            // From another connection: ours is busy with the wait until it is cancelled.
            sqlx::query("SELECT pg_cancel_backend($1)")
                .bind(self.pid)
                .execute(&self.pool)
                .await
                .map_err(|e| classify(e, self.pid))?;
        }
        let c = conn.conn.as_mut().expect("BUG: reconciling a closed session");
        // The abandoned statement's reply (or its cancellation error) is still to be read,
        // and sqlx may hand that error to the next statement: roll back until a ROLLBACK
        // itself succeeds, so the connection is surely out of any transaction.
        let mut attempts = 0;
        loop {
            match sqlx::query("ROLLBACK").execute(&mut **c).await {
                Ok(_) => break,
                Err(e) => match classify(e, self.pid) {
                    Failure::Statement(_) if attempts < 3 => attempts += 1,
                    failure => return Err(failure),
                },
            }
        }
        let known = self.holds.lock().map.get(&(abandoned.key, abandoned.shared)).map_or(0, |h| h.count);
        if known == 0 && self.pg_holds(c, abandoned.key, abandoned.shared).await? {
            sqlx::query_with(sql::unlock(abandoned.key, abandoned.shared), sql::key_args(abandoned.key))
                .execute(&mut **c)
                .await
                .map_err(|e| classify(e, self.pid))?;
        }
        Ok(())
    }

    /// Whether PostgreSQL lists this session as holding `key` in that mode.
    async fn pg_holds(&self, c: &mut PoolConnection<Postgres>, key: PgKey, shared: bool) -> Result<bool, Failure> {
        let (classid, objid, objsubid) = key.pg_locks_columns();
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND pid = pg_backend_pid() AND classid::bigint = $1 AND objid::bigint = $2 \
             AND objsubid = $3 AND mode = $4)",
        )
        .bind(classid)
        .bind(objid)
        .bind(objsubid)
        .bind(if shared { "ShareLock" } else { "ExclusiveLock" })
        .fetch_one(&mut **c)
        .await
        .map_err(|e| classify(e, self.pid))
    }

    /// The other sessions holding `key`, for a `busy` answer.
    async fn holders(&self, c: &mut PoolConnection<Postgres>, key: PgKey) -> Vec<Holder> {
        let (classid, objid, objsubid) = key.pg_locks_columns();
        let rows: Vec<(i32, String)> = sqlx::query_as(
            "SELECT pid, mode FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = $3 AND pid <> pg_backend_pid()",
        )
        .bind(classid)
        .bind(objid)
        .bind(objsubid)
        .fetch_all(&mut **c)
        .await
        .unwrap_or_default();
        rows.into_iter()
            .map(|(pid, mode)| Holder {
                owner: owner_of_pid(pid),
                mode: if mode == "ShareLock" { Mode::Shared } else { Mode::Exclusive },
                count: 1,
                fencing_token: 0,
            })
            .collect()
    }

    /// Checks that a statement ran on this session's own backend: behind a
    /// transaction-pooling proxy (PgBouncer) it may not have, and session locks would
    /// then be held by whichever client gets that backend next.
    fn check_pid(&self, pid: i32) -> Result<(), Failure> {
        if pid == self.pid {
            return Ok(());
        }
        Err(Failure::ConnectionLost(Error::NotSupported {
            operation: "session-level advisory locks through a transaction-pooling proxy (the backend \
                        process changed between statements); use transaction-scoped locks \
                        (tumbler::pg::serialize) instead",
            backend: "pg",
        }))
    }

    /// Acquires one level of `key`, waiting as `wait` says. Returns the hold's generation.
    pub(crate) async fn acquire(self: &Arc<Self>, key: PgKey, shared: bool, wait: Wait) -> Result<u64> {
        let mut guard = self.lock_conn().await?;
        let outcome = {
            let mut flight = InFlight { session: self, conn: &mut guard, armed: None };
            let outcome = self.acquire_on(&mut flight, key, shared, wait).await;
            flight.armed = None;
            outcome
        };
        match outcome {
            Ok(()) => Ok(self.count_level(key, shared)),
            Err(Failure::Statement(Error::Busy { .. })) => {
                let c = guard.conn.as_mut().expect("BUG: checked by lock_conn");
                let holders = self.holders(c, key).await;
                Err(Error::Busy { holders })
            }
            Err(failure) => Err(self.fail(&mut guard, failure)),
        }
    }

    async fn acquire_on(&self, flight: &mut InFlight<'_>, key: PgKey, shared: bool, wait: Wait) -> Result<(), Failure> {
        // Uncontended, one round trip: waiting strategies only matter when this fails.
        flight.armed = Some(Abandoned { key, shared, blocking: false });
        if self.try_once(flight.conn, key, shared).await? {
            return Ok(());
        }
        let holds_other_mode = self.holds.lock().map.contains_key(&(key, !shared));
        if wait == Wait::NoWait && holds_other_mode {
            // PostgreSQL lets a request by a session that already holds the key go ahead of
            // waiters that its hold blocks anyway — but only when the request waits: a
            // try answers false. A wait bounded to a millisecond gets the same answer as
            // our semantics, a grant unless another session's hold conflicts.
            flight.armed = Some(Abandoned { key, shared, blocking: true });
            let deadline = tokio::time::Instant::now() + Duration::from_millis(1);
            return match self.block(flight.conn, key, shared, Some(deadline)).await {
                Err(Failure::Statement(Error::Timeout)) => Err(Failure::Statement(Error::Busy { holders: Vec::new() })),
                other => other,
            };
        }
        let deadline = match wait {
            Wait::NoWait => return Err(Failure::Statement(Error::Busy { holders: Vec::new() })),
            Wait::Timeout(d) => Some(tokio::time::Instant::now() + d),
            Wait::Forever => None,
        };
        match self.config.wait {
            WaitStrategy::Block => {
                flight.armed = Some(Abandoned { key, shared, blocking: true });
                self.block(flight.conn, key, shared, deadline).await
            }
            WaitStrategy::Poll { interval } => loop {
                // A polling wait holds the connection between its attempts: it must give
                // way to goodbye and close itself, as a blocking wait is cancelled for them.
                let interrupted = self.interrupt.notified();
                if self.interrupting.load(Ordering::Acquire) {
                    return Err(Failure::Statement(Error::SessionExpired));
                }
                let now = tokio::time::Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    return Err(Failure::Statement(Error::Timeout));
                }
                let nap = deadline.map_or(interval, |d| interval.min(d - now));
                tokio::select! {
                    () = tokio::time::sleep(nap) => {}
                    () = interrupted => continue,
                }
                if self.try_once(flight.conn, key, shared).await? {
                    return Ok(());
                }
            },
        }
    }

    async fn try_once(&self, conn: &mut Conn, key: PgKey, shared: bool) -> Result<bool, Failure> {
        let c = conn.conn.as_mut().expect("BUG: checked by lock_conn");
        let (got, pid): (bool, i32) = sqlx::query_as_with(sql::try_lock(key, shared), sql::key_args(key))
            .fetch_one(&mut **c)
            .await
            .map_err(|e| classify(e, self.pid))?;
        self.check_pid(pid)?;
        Ok(got)
    }

    /// Waits in PostgreSQL, bounded by `lock_timeout` set for this transaction only, so
    /// the session's own setting is back in force afterwards whatever happens.
    async fn block(
        &self,
        conn: &mut Conn,
        key: PgKey,
        shared: bool,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(), Failure> {
        let c = conn.conn.as_mut().expect("BUG: checked by lock_conn");
        let timeout = match deadline {
            None => "0".to_owned(),
            Some(d) => {
                let left = d.saturating_duration_since(tokio::time::Instant::now());
                // lock_timeout 0 means "no timeout": never round a short wait down to it.
                format!("{}ms", left.as_millis().max(1))
            }
        };
        let classify = |e| classify(e, self.pid);
        sqlx::query("BEGIN").execute(&mut **c).await.map_err(classify)?;
        self.waiting.store(true, Ordering::Release);
        let waited = async {
            sqlx::query("SELECT set_config('lock_timeout', $1, true)").bind(&timeout).execute(&mut **c).await?;
            let pid: i32 =
                sqlx::query_scalar_with(sql::lock(key, shared), sql::key_args(key)).fetch_one(&mut **c).await?;
            Ok::<_, sqlx::Error>(pid)
        }
        .await;
        self.waiting.store(false, Ordering::Release);
        match waited {
            Ok(pid) => {
                sqlx::query("COMMIT").execute(&mut **c).await.map_err(classify)?;
                self.check_pid(pid)
            }
            Err(e) => {
                let mut failure = classify(e);
                if let Failure::ConnectionLost(_) = failure {
                    return Err(failure);
                }
                if self.interrupting.load(Ordering::Acquire) {
                    failure = Failure::Statement(Error::SessionExpired);
                }
                sqlx::query("ROLLBACK").execute(&mut **c).await.map_err(classify)?;
                if let Failure::Statement(Error::Timeout) = failure {
                    // PostgreSQL can grant at the very instant the timeout fires; a lock
                    // granted to a request that reports failure would be held by nobody.
                    let known = self.holds.lock().map.get(&(key, shared)).map_or(0, |h| h.count);
                    if known == 0 && self.pg_holds(c, key, shared).await? {
                        sqlx::query_with(sql::unlock(key, shared), sql::key_args(key))
                            .execute(&mut **c)
                            .await
                            .map_err(classify)?;
                    }
                }
                Err(failure)
            }
        }
    }

    fn count_level(&self, key: PgKey, shared: bool) -> u64 {
        let mut holds = self.holds.lock();
        let holds = &mut *holds;
        let state = holds.map.entry((key, shared)).or_insert_with(|| {
            holds.next_generation += 1;
            HoldState { count: 0, generation: holds.next_generation }
        });
        state.count = state.count.checked_add(1).expect("lock count overflow");
        if state.count > 1 {
            // A re-entry: another guard already stands for this hold.
            self.signals.add_sibling(Self::hold_id(state.generation));
        }
        state.generation
    }

    /// Releases one level of `key` held in a hold of `generation`.
    pub(crate) async fn release(self: &Arc<Self>, key: PgKey, shared: bool, generation: u64) -> Result<()> {
        if self.hold_generation(key, shared) != Some(generation) {
            return Err(Error::NotHeld);
        }
        let mut guard = self.lock_conn().await?;
        let c = guard.conn.as_mut().expect("BUG: checked by lock_conn");
        let released = sqlx::query_scalar_with::<_, bool, _>(sql::unlock(key, shared), sql::key_args(key))
            .fetch_one(&mut **c)
            .await;
        match released {
            Ok(true) => {
                let mut holds = self.holds.lock();
                if let Some(state) = holds.map.get_mut(&(key, shared)) {
                    state.count -= 1;
                    if state.count == 0 {
                        holds.map.remove(&(key, shared));
                    }
                }
                Ok(())
            }
            Ok(false) => Err(Error::NotHeld),
            Err(e) => {
                let failure = classify(e, self.pid);
                Err(self.fail(&mut guard, failure))
            }
        }
    }

    pub(crate) fn hold_generation(&self, key: PgKey, shared: bool) -> Option<u64> {
        self.holds.lock().map.get(&(key, shared)).map(|h| h.generation)
    }

    /// The signal id of a hold.
    pub(crate) fn hold_id(generation: u64) -> HoldId {
        (generation, 0)
    }

    /// Takes the connection even from a wait in progress, which is cancelled (it fails
    /// with `session_expired`).
    async fn interrupt_and_lock(self: &Arc<Self>) -> Result<MutexGuard<'_, Conn>> {
        self.interrupting.store(true, Ordering::Release);
        let guard = loop {
            if let Ok(guard) = self.conn.try_lock() {
                break guard;
            }
            if self.waiting.load(Ordering::Acquire) {
                let _ = sqlx::query("SELECT pg_cancel_backend($1)").bind(self.pid).execute(&self.pool).await;
            }
            self.interrupt.notify_waiters();
            match tokio::time::timeout(Duration::from_millis(50), self.conn.lock()).await {
                Ok(guard) => break guard,
                Err(_) => continue,
            }
        };
        self.interrupting.store(false, Ordering::Release);
        drop(guard);
        self.lock_conn().await
    }

    /// Releases every advisory lock of the session and cancels its wait, if one is
    /// running. Returns how many holds ended.
    pub(crate) async fn goodbye(self: &Arc<Self>) -> Result<usize> {
        let mut guard = self.interrupt_and_lock().await?;
        let c = guard.conn.as_mut().expect("BUG: checked by lock_conn");
        if let Err(e) = sqlx::query("SELECT pg_advisory_unlock_all()").execute(&mut **c).await {
            let failure = classify(e, self.pid);
            return Err(self.fail(&mut guard, failure));
        }
        let ended: Vec<HoldState> = self.holds.lock().map.drain().map(|(_, h)| h).collect();
        for hold in &ended {
            self.signals.mark(Self::hold_id(hold.generation), LostReason::Goodbye);
        }
        Ok(ended.len())
    }

    /// Ends the session: cancels a running wait, releases everything (its guards are
    /// told), and gives the connection back to the pool when it can prove the session
    /// clean, otherwise closes it.
    pub(crate) async fn close(self: &Arc<Self>) {
        if let Some(handle) = self.health.lock().take() {
            handle.abort();
        }
        let conn = match self.interrupt_and_lock().await {
            Ok(mut guard) => guard.conn.take(),
            Err(_) => None,
        };
        self.end_holds();
        if let Some(conn) = conn {
            finish(conn).await;
        }
    }

    /// Ends the session from a synchronous drop: in the background when a runtime is at
    /// hand, otherwise by closing the connection at once.
    pub(crate) fn end_in_background(self: &Arc<Self>) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let session = self.clone();
                runtime.spawn(async move { session.close().await });
            }
            Err(_) => {
                if let Ok(mut guard) = self.conn.try_lock() {
                    if let Some(conn) = guard.conn.take() {
                        drop(conn.detach());
                    }
                }
                self.end_holds();
            }
        }
    }

    /// Marks the session closed and every hold as ended with its owner.
    fn end_holds(&self) {
        self.lost.store(true, Ordering::Release);
        let ended: Vec<HoldState> = self.holds.lock().map.drain().map(|(_, h)| h).collect();
        for hold in ended {
            self.signals.mark(Self::hold_id(hold.generation), LostReason::OwnerEnded);
        }
    }

    /// The last resort when the session itself is dropped: by then the owner's end has
    /// already taken the connection (see [`Session::end_in_background`]); if it has not,
    /// closing the socket makes PostgreSQL release every lock of the session.
    fn close_now(&mut self) {
        if let Some(handle) = self.health.lock().take() {
            handle.abort();
        }
        if let Some(conn) = self.conn.get_mut().conn.take() {
            drop(conn.detach());
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close_now();
    }
}

/// Releases a connection's advisory locks and returns it to the pool, or closes it when
/// its state cannot be proven clean.
async fn finish(mut conn: PoolConnection<Postgres>) {
    let clean = async {
        // Out of any transaction an abandoned statement may have left open (a no-op
        // otherwise), then free of session locks, and proven so by pg_locks.
        sqlx::query("ROLLBACK").execute(&mut *conn).await?;
        sqlx::query("SELECT pg_advisory_unlock_all()").execute(&mut *conn).await?;
        sqlx::query_scalar::<_, bool>(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())",
        )
        .fetch_one(&mut *conn)
        .await
    }
    .await;
    if !matches!(clean, Ok(true)) {
        let _ = conn.close().await;
    }
}

/// Watches a session's connection: a statement on it when it is idle, a look at
/// `pg_stat_activity` from another connection when it is busy waiting. A dead connection
/// fires the lost signal of every guard of the session.
async fn watch_health(session: Weak<Session>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(session) = session.upgrade() else { return };
        if session.lost.load(Ordering::Acquire) {
            return;
        }
        let alive = match session.conn.try_lock() {
            Ok(mut guard) => match guard.conn.as_mut() {
                Some(c) => match tokio::time::timeout(every, sqlx::query("SELECT 1").execute(&mut **c)).await {
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) => match classify(e, session.pid) {
                        Failure::ConnectionLost(_) => {
                            session.fail(&mut guard, classify(sqlx::Error::WorkerCrashed, session.pid));
                            false
                        }
                        Failure::Statement(_) => true,
                    },
                    // No answer within a whole interval: the connection is not usable.
                    Err(_) => {
                        session.fail(&mut guard, classify(sqlx::Error::WorkerCrashed, session.pid));
                        false
                    }
                },
                None => false,
            },
            Err(_) => sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                .bind(session.pid)
                .fetch_one(&session.pool)
                .await
                .unwrap_or(true),
        };
        if !alive {
            session.mark_lost();
            return;
        }
    }
}
