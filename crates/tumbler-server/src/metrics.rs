//! Prometheus metrics: counters of what the lock table did, gauges read from it at
//! scrape time, and a histogram of request latency per route. One registry per server
//! (no process-global recorder), so servers in one process never mix their figures.

use std::sync::atomic::{AtomicI64, AtomicU64};

use parking_lot::Mutex;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tumbler::mem::EngineStats;

/// The label of the latency histogram: method and route template.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// HTTP method.
    pub method: &'static str,
    /// The matched route template (`/v1/namespaces/{ns}/locks/{key}/acquire`), never
    /// the raw path, so that keys do not explode the label space.
    pub route: String,
}

impl RouteLabels {
    /// The labels of a request to `method` on the route template `route`.
    pub fn new(method: &axum::http::Method, route: Option<&str>) -> Self {
        use axum::http::Method;
        let method = match *method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::DELETE => "DELETE",
            // No route takes any other method: all such requests are answered 405.
            _ => "OTHER",
        };
        RouteLabels { method, route: route.unwrap_or("unmatched").to_owned() }
    }
}

/// The server's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Grants (new holds and re-entries), counted from the event stream.
    pub acquisitions: Counter<u64, AtomicU64>,
    /// Releases of a level, counted from the event stream.
    pub releases: Counter<u64, AtomicU64>,
    /// Acquires that asked to wait (`wait_ms > 0`).
    pub waits: Counter<u64, AtomicU64>,
    /// Waits that ran out.
    pub timeouts: Counter<u64, AtomicU64>,
    /// Requests failed with `deadlock`.
    pub deadlocks: Counter<u64, AtomicU64>,
    /// Holds ended by their TTL or their session's lease.
    pub expirations: Counter<u64, AtomicU64>,
    held: Gauge<i64, AtomicI64>,
    waiters: Gauge<i64, AtomicI64>,
    sessions: Gauge<i64, AtomicI64>,
    /// Request latency, by route.
    pub latency: Family<RouteLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric under the `tumbler_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tumbler");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            acquisitions: Counter::default(),
            releases: Counter::default(),
            waits: Counter::default(),
            timeouts: Counter::default(),
            deadlocks: Counter::default(),
            expirations: Counter::default(),
            held: Gauge::default(),
            waiters: Gauge::default(),
            sessions: Gauge::default(),
            // 50 µs to ≈ 1.6 ks: lock answers are fast, long-polls are long.
            latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_05, 2.0, 26))),
        };
        registry.register("acquisitions", "Grants: new holds and re-entries", m.acquisitions.clone());
        registry.register("releases", "Released levels", m.releases.clone());
        registry.register("waits", "Acquires that asked to wait", m.waits.clone());
        registry.register("timeouts", "Waits that ran out", m.timeouts.clone());
        registry.register("deadlocks", "Requests failed with deadlock", m.deadlocks.clone());
        registry.register("expirations", "Holds ended by TTL or session lease", m.expirations.clone());
        registry.register("held_locks", "Holds (key, owner, mode) now", m.held.clone());
        registry.register("waiters", "Requests waiting now", m.waiters.clone());
        registry.register("sessions", "Open sessions", m.sessions.clone());
        registry.register("request_duration_seconds", "Request latency by route", m.latency.clone());
        *m.registry.lock() = registry;
        m
    }

    /// The Prometheus text exposition, with the gauges set from `stats` first.
    pub fn render(&self, stats: EngineStats) -> String {
        self.held.set(stats.holds as i64);
        self.waiters.set(stats.waiting as i64);
        self.sessions.set(stats.sessions as i64);
        let mut out = String::new();
        encode(&mut out, &self.registry.lock()).expect("writing to a String cannot fail");
        out
    }
}
