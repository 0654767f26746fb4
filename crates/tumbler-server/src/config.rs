//! The server's configuration: where it listens, where it keeps its state, its bounds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use crate::store::StoreUrl;

/// Bounds on what clients may ask for. Exceeding one is a clear error, never a crash or
/// unbounded memory; `None` means unbounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest request body, in bytes (413 `limit_exceeded` beyond).
    pub max_body_bytes: usize,
    /// Longest long-poll `wait_ms` (400 `invalid_argument` beyond).
    pub max_wait_ms: u64,
    /// Longest `ttl_ms` of a hold or a session (400 `invalid_argument` beyond).
    pub max_ttl_ms: u64,
    /// Keys one multi-key acquire may name.
    pub max_keys_per_request: usize,
    /// Holds one session may have (429 `limit_exceeded`).
    pub max_holds_per_session: Option<usize>,
    /// Requests that may wait on one key (429 `limit_exceeded`).
    pub max_waiters_per_key: Option<usize>,
    /// Keys with holds or waiters in one namespace (429 `limit_exceeded`).
    pub max_keys_per_namespace: Option<usize>,
    /// Sessions open at once (429 `limit_exceeded`).
    pub max_sessions: Option<usize>,
    /// Event streams open at once (429 `limit_exceeded`).
    pub max_event_streams: usize,
    /// Largest page of a listing.
    pub max_page: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_body_bytes: 64 * 1024,
            max_wait_ms: 600_000,
            max_ttl_ms: 24 * 3600 * 1000,
            max_keys_per_request: 64,
            max_holds_per_session: Some(10_000),
            max_waiters_per_key: Some(10_000),
            max_keys_per_namespace: Some(1_000_000),
            max_sessions: Some(100_000),
            max_event_streams: 1024,
            max_page: 1000,
        }
    }
}

/// Everything `tumbler serve` can be told.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// Where to keep state.
    pub store: StoreUrl,
    /// Bounds.
    pub limits: ServerLimits,
    /// How often ended sessions are looked for and written to the store.
    pub sweep_every: Duration,
    /// Per-namespace lock-delay (Chubby, Consul): a key of the namespace freed by expiry
    /// or by its session's end — not by a release — stays unclaimable this long, for
    /// resources that cannot check fencing tokens.
    pub lock_delays: HashMap<String, Duration>,
    /// Threads serving connections, each a single-threaded runtime that owns the
    /// connections dealt to it (one per CPU by default; see `workers.rs` for why).
    pub workers: NonZeroUsize,
    /// How long a worker keeps polling its connections after bytes last arrived on one,
    /// before its thread sleeps (zero: never spin). Saves a sleep and a wake-up per request
    /// when requests follow each other closely, as on a hot key; see `workers.rs`.
    pub spin: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            store: StoreUrl::default_sqlite(),
            limits: ServerLimits::default(),
            sweep_every: Duration::from_secs(1),
            lock_delays: HashMap::new(),
            workers: std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
            spin: Duration::from_micros(40),
        }
    }
}

impl ServerConfig {
    /// For tests: 127.0.0.1 on a free port, the memory store, default bounds, two workers
    /// (so that hand-offs between connections of different workers are exercised).
    pub fn for_tests() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            store: StoreUrl::Memory,
            workers: NonZeroUsize::new(2).expect("2 is not 0"),
            ..ServerConfig::default()
        }
    }
}
