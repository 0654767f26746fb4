//! What the suite needs from a backend under test.

use std::future::Future;
use std::time::Duration;

use tumbler::{Capabilities, Locker};

/// A lock backend under test: a factory of owners on one shared lock space.
///
/// Every call of [`Backend::owner`] must give a *new* owner (a new session, connection or
/// transaction id) on the same lock space, so owners made by one `Backend` contend with
/// each other. Dropping every clone of an owner (or the only one) must end it as the
/// backend's owner death does (Elixir's dead process, a closed PostgreSQL connection, an
/// ended server session).
pub trait Backend: Send + Sync + 'static {
    /// The owner handle.
    type Locker: Locker + 'static;

    /// A new owner.
    fn owner(&self) -> impl Future<Output = Self::Locker> + Send;

    /// The key called `name`. Names are printable ASCII of at most 200 bytes, unique per
    /// case call; a backend maps them into its key space (a namespace of its own, a hash).
    fn key(&self, name: &str) -> <Self::Locker as Locker>::Key;

    /// What the backend can do; the suite skips, explicitly, the cases that need more.
    fn capabilities(&self) -> Capabilities;

    /// How long to let a spawned request reach the backend and queue before the case
    /// relies on it waiting (cases have no way to observe a queue through the trait). The
    /// default suits in-process and loopback backends; a backend with slower round trips
    /// raises it.
    fn settle(&self) -> Duration {
        Duration::from_millis(60)
    }
}
