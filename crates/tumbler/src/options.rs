//! How to acquire: mode, wait policy, TTL, retry id.

use std::sync::Arc;
use std::time::Duration;

use tumbler_core::{Mode, Wait};

/// Options of one acquire. Start from [`AcquireOptions::exclusive`] (or `shared`,
/// `semaphore`) and chain the rest:
///
/// ```
/// use std::time::Duration;
/// use tumbler::AcquireOptions;
///
/// let opts = AcquireOptions::shared().timeout(Duration::from_secs(2)).ttl(Duration::from_secs(30));
/// ```
///
/// The default is an exclusive try: no wait, no TTL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcquireOptions {
    /// The mode (default exclusive).
    pub mode: Option<Mode>,
    /// How long to wait (default: not at all).
    pub wait: Wait,
    /// Time to live of the hold, where the backend supports TTLs.
    pub ttl: Option<Duration>,
    /// Retry de-duplication id, where the backend supports it.
    pub request_id: Option<Arc<str>>,
    /// Lock-delay after the hold ends without a release, where supported.
    pub lock_delay: Option<Duration>,
}

impl AcquireOptions {
    /// An exclusive try.
    pub fn exclusive() -> Self {
        AcquireOptions { mode: Some(Mode::Exclusive), ..Self::default() }
    }

    /// A shared try.
    pub fn shared() -> Self {
        AcquireOptions { mode: Some(Mode::Shared), ..Self::default() }
    }

    /// A semaphore try: at most `limit` owners at once.
    pub fn semaphore(limit: u32) -> Self {
        AcquireOptions { mode: Some(Mode::Semaphore { limit }), ..Self::default() }
    }

    /// The mode, exclusive unless set.
    pub fn mode_or_default(&self) -> Mode {
        self.mode.unwrap_or(Mode::Exclusive)
    }

    /// Sets the mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Fails at once with `busy` when the lock is not free (the default).
    pub fn no_wait(mut self) -> Self {
        self.wait = Wait::NoWait;
        self
    }

    /// Waits at most `d`, then fails with `timeout`.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.wait = Wait::Timeout(d);
        self
    }

    /// Waits as long as it takes.
    pub fn forever(mut self) -> Self {
        self.wait = Wait::Forever;
        self
    }

    /// Sets the time to live of the hold.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets a retry de-duplication id.
    pub fn request_id(mut self, id: impl Into<Arc<str>>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// Sets a lock-delay for when the hold ends by expiry or owner death.
    pub fn lock_delay(mut self, delay: Duration) -> Self {
        self.lock_delay = Some(delay);
        self
    }
}
