//! Configuration of a lock table: its bounds, and whether it records events.

/// Bounds that keep a table's memory and work finite. Exceeding one fails the request
/// with `limit_exceeded` and changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Keys one acquire may name.
    pub max_keys_per_request: usize,
    /// Requests that may wait on one key at once.
    pub max_waiters_per_key: Option<usize>,
    /// Holds (key, owner, mode) that one session may have.
    pub max_holds_per_session: Option<usize>,
    /// Keys with holds or waiters in one namespace (needs [`Config::namespace_of`]).
    pub max_keys_per_namespace: Option<usize>,
    /// Sessions open at once.
    pub max_sessions: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_keys_per_request: 1024,
            max_waiters_per_key: None,
            max_holds_per_session: None,
            max_keys_per_namespace: None,
            max_sessions: None,
        }
    }
}

/// How a table behaves.
#[derive(Clone, Debug)]
pub struct Config<K> {
    /// Its bounds.
    pub limits: Limits,
    /// Whether operations report [`crate::Event`]s in their effects. Off, the table does
    /// no event work at all (the in-process backend turns it on only for watchers).
    pub record_events: bool,
    /// How many shards the table's keys are spread over (at least 1, at most
    /// [`crate::Layout::MAX_SHARDS`]).
    pub shards: usize,
    /// Which namespace a key belongs to, for per-namespace limits.
    pub namespace_of: Option<fn(&K) -> &str>,
}

impl<K> Default for Config<K> {
    fn default() -> Self {
        Config { limits: Limits::default(), record_events: true, shards: 1, namespace_of: None }
    }
}

impl Config<crate::Key> {
    /// A configuration for the `(namespace, name)` key space, with per-namespace limits
    /// counted by the key's namespace.
    pub fn for_keys() -> Self {
        Config { namespace_of: Some(crate::Key::namespace), ..Config::default() }
    }
}
