//! What every handler shares: the engine, the store, the configuration, the clock that
//! turns engine instants into wall-clock milliseconds, the open sessions, and counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::watch;
use tumbler::mem::Engine;
use tumbler_core::{HolderStatus, Instant, KeyStatus};

use crate::api::error::ApiError;
use crate::config::ServerConfig;
use crate::key::LockKey;
use crate::metrics::Metrics;
use crate::store::{Change, HoldRecord, Marks, SessionRecord, Store};

/// Shared by all handlers; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// See [`AppState`].
pub struct Shared {
    /// The lock table: the same engine the in-process backend runs.
    pub engine: Engine<LockKey>,
    /// Where changes are written before answers are sent.
    pub store: Store,
    /// The configuration the server started with.
    pub config: ServerConfig,
    /// Engine instants as wall-clock time.
    pub clock: WallClock,
    /// Sessions this server opened (or restored) and believes open.
    pub sessions: Mutex<HashMap<u64, SessionRecord>>,
    /// The highest session id ever issued: a greater id was never issued (404), a smaller
    /// one that is not open has ended (410).
    pub last_session: AtomicU64,
    /// Event streams open now.
    pub streams: AtomicUsize,
    /// Prometheus counters.
    pub metrics: Metrics,
    /// Becomes `true` when the server begins shutting down: long-polls and streams end.
    pub stopping: watch::Receiver<bool>,
}

/// Maps the engine's monotonic instants to Unix milliseconds for answers and the store.
/// Expiry itself always runs on the monotonic clock; only what is shown uses this.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    base: Instant,
    base_unix_ms: u64,
}

impl WallClock {
    /// Pins engine instant `now` to the current wall-clock time.
    pub fn new(now: Instant) -> Self {
        let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        WallClock { base: now, base_unix_ms: unix_ms }
    }

    /// Unix milliseconds of engine instant `at`.
    pub fn unix_ms(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.base).as_millis() as u64;
        let before = self.base.saturating_duration_since(at).as_millis() as u64;
        (self.base_unix_ms + since).saturating_sub(before)
    }

    /// The engine instant of Unix milliseconds `unix_ms`, given the engine's `now`.
    pub fn instant(&self, unix_ms: u64, now: Instant) -> Instant {
        let now_ms = self.unix_ms(now);
        now + Duration::from_millis(unix_ms.saturating_sub(now_ms))
    }
}

impl Shared {
    /// Writes the current holds of `keys`, plus `extra` changes, before an answer is sent.
    /// `granted` is the highest fencing token the answer reveals (0 when none), so the
    /// store's high-water mark always covers every token a client has seen.
    ///
    /// # Errors
    /// 503 `unavailable` when the store cannot write.
    pub async fn persist(&self, keys: &[LockKey], extra: Vec<Change>, granted: u64) -> Result<(), ApiError> {
        if matches!(self.store, Store::Memory) {
            return Ok(());
        }
        let mut high = granted;
        let mut changes = extra;
        for key in keys {
            let holds: Vec<HoldRecord> = self
                .engine
                .status(key)
                .map(|status| status.holders.iter().map(|h| self.hold_record(h)).collect())
                .unwrap_or_default();
            high = high.max(holds.iter().map(|h| h.fencing_token).max().unwrap_or(0));
            changes.push(Change::Key { key: key.clone(), holds });
        }
        let marks = Marks {
            fencing_high_water: high,
            last_revision: self.engine.last_revision(),
            last_session: self.last_session.load(std::sync::atomic::Ordering::Acquire),
        };
        self.store.commit(changes, marks).await.map_err(|e| {
            tracing::error!(error = %e, "store write failed");
            ApiError::unavailable(format!("the store could not write: {e}"))
        })
    }

    /// A hold as the store keeps it.
    pub fn hold_record(&self, h: &HolderStatus) -> HoldRecord {
        HoldRecord {
            owner: h.holder.owner.as_str().to_owned(),
            mode: h.holder.mode,
            count: h.holder.count,
            fencing_token: h.holder.fencing_token,
            session: h.session.map(|s| s.0),
            expires_at_ms: h.expires_at.map(|at| self.clock.unix_ms(at)),
            request_ids: h.request_ids.iter().map(|id| id.to_string()).collect(),
        }
    }

    /// The status of `key`, or `None` when nobody holds it.
    pub fn held(&self, key: &LockKey) -> Option<KeyStatus> {
        self.engine.status(key).filter(|s| !s.holders.is_empty())
    }

    /// Whether the server is shutting down.
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Counts a stream as open, within the bound.
    ///
    /// # Errors
    /// 429 `limit_exceeded` when as many streams as allowed are open.
    pub fn open_stream(self: &Arc<Self>) -> Result<StreamSlot, ApiError> {
        let max = self.config.limits.max_event_streams;
        let mut current = self.streams.load(Ordering::Acquire);
        loop {
            if current >= max {
                return Err(ApiError::quota("event_streams", max));
            }
            match self.streams.compare_exchange(current, current + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(StreamSlot(self.clone())),
                Err(seen) => current = seen,
            }
        }
    }
}

/// An open event stream's place in the bound; freed on drop.
pub struct StreamSlot(Arc<Shared>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Completes once `stopping` turns `true` (or its sender is gone).
pub async fn stopped(stopping: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it before anything else awaits.
    let _ = stopping.wait_for(|s| *s).await.map(|_| ());
}
