//! Starting and stopping the server: restore from the store, listen, run the background
//! tasks, shut down gracefully.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{broadcast::error::RecvError, watch};
use tokio::task::JoinHandle;
use tumbler::mem::{Engine, DEFAULT_SHARDS};
use tumbler_core::{Config, Event, EventKind, Limits, OwnerId, RestoredHold, SessionId};

use crate::api;
use crate::config::ServerConfig;
use crate::key::LockKey;
use crate::metrics::Metrics;
use crate::state::{AppState, Shared, WallClock};
use crate::store::{Change, Snapshot, Store, StoreError};
use crate::workers;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The threads that serve connections could not be started.
    #[error("cannot start the server's workers: {source}")]
    Workers {
        /// Why.
        source: std::io::Error,
    },
}

/// A server running in the background (see [`spawn`]).
pub struct RunningServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    state: AppState,
}

impl RunningServer {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, ends long-polls and event streams (503 / end of stream), answers
    /// what is in flight, flushes and closes the store.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.state.store.close().await;
    }
}

/// Opens the store, restores what it holds, binds `config.listen` and serves in the
/// background until [`RunningServer::shutdown`].
///
/// # Errors
/// When the store cannot be opened or read, or the address cannot be bound.
pub async fn spawn(config: ServerConfig) -> Result<RunningServer, ServerError> {
    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| ServerError::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind { addr: config.listen, source })?;
    let store = Store::open(&config.store).await?;
    let snapshot = store.load().await?;
    let (stop, stopping) = watch::channel(false);
    let state = build(config, store, snapshot, stopping.clone());
    let background = tokio::spawn(keep_store(state.clone(), stopping.clone()));
    let app = api::router(state.clone());
    let workers = workers::start(state.config.workers, state.config.spin, listener, app, &stopping)
        .map_err(|source| ServerError::Workers { source })?;
    let final_state = state.clone();
    let task = tokio::spawn(async move {
        workers.join().await;
        let _ = background.await;
        // Every request is answered now (waits cut short by the shutdown among them): write
        // what they left, so that the next run starts after the last revision given out.
        write_ended(&final_state, Vec::new(), true).await;
    });
    tracing::info!(%addr, "tumbler is listening");
    Ok(RunningServer { addr, stop, task, state })
}

/// Builds the shared state: an engine that continues the stored revisions and tokens, with
/// the stored sessions (fresh leases) and holds put back.
fn build(config: ServerConfig, store: Store, snapshot: Snapshot, stopping: watch::Receiver<bool>) -> AppState {
    let limits = &config.limits;
    let core = Config {
        limits: Limits {
            max_keys_per_request: limits.max_keys_per_request,
            max_waiters_per_key: limits.max_waiters_per_key,
            max_holds_per_session: limits.max_holds_per_session,
            max_keys_per_namespace: limits.max_keys_per_namespace,
            max_sessions: limits.max_sessions,
        },
        record_events: true,
        shards: DEFAULT_SHARDS,
        namespace_of: Some(LockKey::namespace),
    };
    let engine = Engine::continuing(core, snapshot.marks.last_revision);
    engine.raise_fencing_floor(snapshot.marks.fencing_high_water);
    let clock = WallClock::new(engine.now());
    let mut sessions = HashMap::new();
    let mut last_session = snapshot.marks.last_session;
    engine.raise_session_floor(last_session);
    for record in snapshot.sessions {
        engine.restore_session(SessionId(record.id), Duration::from_millis(record.ttl_ms.max(1)));
        last_session = last_session.max(record.id);
        sessions.insert(record.id, record);
    }
    let now = engine.now();
    let now_ms = clock.unix_ms(now);
    let mut restored = 0;
    for (key, holds) in snapshot.keys {
        for hold in holds {
            if hold.expires_at_ms.is_some_and(|at| at <= now_ms)
                || hold.session.is_some_and(|s| !sessions.contains_key(&s))
            {
                continue;
            }
            let Ok(owner) = OwnerId::new(&hold.owner) else { continue };
            let back = RestoredHold {
                owner,
                mode: hold.mode,
                count: hold.count,
                fencing_token: hold.fencing_token,
                session: hold.session.map(SessionId),
                expires_at: hold.expires_at_ms.map(|at| clock.instant(at, now)),
                // The namespace's lock-delay as configured now, as a new grant would get it.
                lock_delay: config.lock_delays.get(key.namespace()).copied(),
                request_ids: hold.request_ids.iter().map(|id| Arc::from(id.as_str())).collect(),
            };
            match engine.restore_hold(&key, &back) {
                Ok(()) => restored += 1,
                Err(e) => tracing::warn!(?key, error = %e, "a stored hold could not be restored"),
            }
        }
    }
    if restored > 0 || !sessions.is_empty() {
        tracing::info!(holds = restored, sessions = sessions.len(), "restored from the store");
    }
    AppState(Arc::new(Shared {
        engine,
        store,
        config,
        clock,
        sessions: Mutex::new(sessions),
        last_session: AtomicU64::new(last_session),
        streams: AtomicUsize::new(0),
        metrics: Metrics::new(),
        stopping,
    }))
}

/// How long [`keep_store`] lets events gather after one arrives, before it takes them all:
/// far below any TTL, and far below the time the engine's event buffer takes to fill
/// ([`tumbler::mem::EVENT_BUFFER`] events) at any rate the server reaches.
const EVENT_BATCH_WINDOW: Duration = Duration::from_millis(10);

/// Writes what changes without a request to answer — holds that expire, sessions whose
/// lease runs out, the revisions of cancelled waits — and counts events for the metrics.
/// Ends when the server stops; the last pass is made once every request is answered (see
/// [`spawn`]).
async fn keep_store(state: AppState, mut stopping: watch::Receiver<bool>) {
    let Some(Ok((_, mut rx))) = state.engine.watch(state.engine.last_revision()) else { return };
    let mut sweep = tokio::time::interval(state.config.sweep_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut expired: Vec<LockKey> = Vec::new();
        // Revisions of events no handler writes (a wait given up) must still reach the
        // store, or a restarted server would number later events with them again.
        let mut unwritten = false;
        tokio::select! {
            received = rx.recv() => match received {
                Ok(event) => {
                    take(&state, event, &mut expired, &mut unwritten);
                    // Let events gather before taking them: waking this task once per
                    // event costs a thread wake-up per lock operation under load, while
                    // the expiries it writes and the counts it keeps can be that late.
                    tokio::time::sleep(EVENT_BATCH_WINDOW).await;
                    while let Ok(more) = rx.try_recv() {
                        take(&state, more, &mut expired, &mut unwritten);
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    // Some expiries may be among the missed events: rewrite every key (the
                    // metrics counters just miss those events).
                    if !matches!(state.store, Store::Memory) {
                        tracing::warn!(missed, "the store writer fell behind the event stream; rewriting every held key");
                        expired = state.engine.held_keys(|_| true);
                    }
                }
                Err(RecvError::Closed) => return,
            },
            _ = sweep.tick() => {}
            _ = crate::state::stopped(&mut stopping) => return,
        }
        expired.sort();
        expired.dedup();
        write_ended(&state, expired, unwritten).await;
    }
}

/// Writes the current holds of `keys` and closes ended sessions in the store; with
/// `marks`, writes the marks (the last revision) even when nothing else changed.
async fn write_ended(state: &AppState, keys: Vec<LockKey>, marks: bool) {
    let closed: Vec<Change> = api::ended_sessions(state).into_iter().map(Change::SessionClosed).collect();
    if keys.is_empty() && closed.is_empty() && !marks {
        return;
    }
    if let Err(e) = state.persist(&keys, closed, 0).await {
        tracing::error!(error = e.message, "could not write expired holds and sessions");
    }
}

/// Counts `event`, and notes what the store must be told of it: the key of an expiry, and
/// that a cancellation's revision is not yet written.
fn take(state: &AppState, event: Event<LockKey>, expired: &mut Vec<LockKey>, unwritten: &mut bool) {
    count(state, event.kind);
    match event.kind {
        EventKind::Expired => expired.push(event.key),
        EventKind::Cancelled => *unwritten = true,
        EventKind::Acquired | EventKind::Released => {}
    }
}

fn count(state: &AppState, kind: EventKind) {
    match kind {
        EventKind::Acquired => state.metrics.acquisitions.inc(),
        EventKind::Released => state.metrics.releases.inc(),
        EventKind::Expired => state.metrics.expirations.inc(),
        EventKind::Cancelled => 0,
    };
}
