//! Time as a value: the core never reads a clock.

use std::ops::Add;
use std::time::Duration;

/// A point on the caller's monotonic clock, as the time elapsed since an epoch the caller
/// chose (for example the moment its lock table was created).
///
/// The core only compares and adds instants; it never reads a clock. Callers pass `now`
/// into every operation and ask [`crate::LockTable::next_deadline`] when to call back, so
/// tests can drive time by hand and a wall-clock jump can never end a lease early.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(Duration);

impl Instant {
    /// The epoch itself.
    pub const ZERO: Instant = Instant(Duration::ZERO);

    /// The instant `since_epoch` after the epoch.
    pub const fn from_epoch(since_epoch: Duration) -> Self {
        Instant(since_epoch)
    }

    /// The instant `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Instant(Duration::from_millis(ms))
    }

    /// Time elapsed from the epoch to this instant.
    pub const fn since_epoch(self) -> Duration {
        self.0
    }

    /// Time from `earlier` to `self`, or zero when `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    /// Adds a duration, saturating at the largest representable instant so that a huge
    /// TTL means "practically forever" instead of a panic.
    fn add(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_add(rhs))
    }
}
