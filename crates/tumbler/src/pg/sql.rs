//! The statements of the session-lock protocol, one per key form and mode, as constants
//! so that sqlx prepares each once per connection.

use sqlx::postgres::PgArguments;
use sqlx::Arguments;

use super::key::PgKey;

/// `pg_try_advisory_lock*` and the backend pid it ran on.
pub(crate) fn try_lock(key: PgKey, shared: bool) -> &'static str {
    match (key, shared) {
        (PgKey::Id(_), false) => "SELECT pg_try_advisory_lock($1), pg_backend_pid()",
        (PgKey::Id(_), true) => "SELECT pg_try_advisory_lock_shared($1), pg_backend_pid()",
        (PgKey::Pair(..), false) => "SELECT pg_try_advisory_lock($1, $2), pg_backend_pid()",
        (PgKey::Pair(..), true) => "SELECT pg_try_advisory_lock_shared($1, $2), pg_backend_pid()",
    }
}

/// `pg_advisory_lock*` (waits), answering the backend pid it ran on.
pub(crate) fn lock(key: PgKey, shared: bool) -> &'static str {
    match (key, shared) {
        (PgKey::Id(_), false) => "SELECT pg_backend_pid() FROM pg_advisory_lock($1)",
        (PgKey::Id(_), true) => "SELECT pg_backend_pid() FROM pg_advisory_lock_shared($1)",
        (PgKey::Pair(..), false) => "SELECT pg_backend_pid() FROM pg_advisory_lock($1, $2)",
        (PgKey::Pair(..), true) => "SELECT pg_backend_pid() FROM pg_advisory_lock_shared($1, $2)",
    }
}

/// `pg_advisory_unlock*`: whether a level was held and released.
pub(crate) fn unlock(key: PgKey, shared: bool) -> &'static str {
    match (key, shared) {
        (PgKey::Id(_), false) => "SELECT pg_advisory_unlock($1)",
        (PgKey::Id(_), true) => "SELECT pg_advisory_unlock_shared($1)",
        (PgKey::Pair(..), false) => "SELECT pg_advisory_unlock($1, $2)",
        (PgKey::Pair(..), true) => "SELECT pg_advisory_unlock_shared($1, $2)",
    }
}

/// Transaction-scoped locks: taken with the transaction, released at its end.
pub(crate) fn xact_lock(key: PgKey, try_only: bool) -> &'static str {
    match (key, try_only) {
        (PgKey::Id(_), false) => "SELECT true FROM pg_advisory_xact_lock($1)",
        (PgKey::Id(_), true) => "SELECT pg_try_advisory_xact_lock($1)",
        (PgKey::Pair(..), false) => "SELECT true FROM pg_advisory_xact_lock($1, $2)",
        (PgKey::Pair(..), true) => "SELECT pg_try_advisory_xact_lock($1, $2)",
    }
}

/// The arguments of a key: one `bigint`, or two `int`s, in the order of the statements
/// above.
pub(crate) fn key_args(key: PgKey) -> PgArguments {
    let mut args = PgArguments::default();
    let added = match key {
        PgKey::Id(id) => args.add(id),
        PgKey::Pair(a, b) => args.add(a).and_then(|()| args.add(b)),
    };
    added.expect("BUG: integers always encode");
    args
}
