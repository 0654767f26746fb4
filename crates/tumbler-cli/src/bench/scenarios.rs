//! The scenarios: what each client sends, and what is measured.
//!
//! - [`distinct`]: every client takes and releases a key of its own; no two requests ever
//!   want the same key.
//! - [`hot`]: every client takes and releases the same key, waiting for it (long-poll).
//! - [`handoff`]: two clients; one holds a key, the other is queued on it, and the time
//!   from the release being sent to the queued acquire's answer arriving is measured.
//! - [`floor`]: the same client loop against any server's `POST /`, two requests per pair:
//!   what HTTP alone costs, for comparison.
//!
//! Throughput counts the pairs that *end* inside the measured window (after the warm-up,
//! before the deadline), so pairs straddling either edge neither inflate nor deflate it in
//! a steady state; the latency histogram holds the same pairs.

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use hyper::body::Bytes;

use crate::client::{Conn, HttpClient, Target};

/// The namespace every scenario uses.
pub const NAMESPACE: &str = "bench";
/// The TTL of every hold taken (a crashed run's holds expire on their own).
pub const TTL_MS: u64 = 60_000;
/// The long-poll bound of the waiting acquires (`hot`, `handoff`).
pub const WAIT_MS: u64 = 30_000;

/// How much load, for how long.
#[derive(Clone, Debug)]
pub struct Load {
    /// Concurrent clients, each with a connection of its own.
    pub clients: usize,
    /// The measured window.
    pub duration: Duration,
    /// Run before the measured window, not counted (connections warm, caches full).
    pub warmup: Duration,
    /// The HTTP library.
    pub http: HttpClient,
    /// The threads the clients run on.
    pub client_threads: NonZeroUsize,
}

/// What a scenario measured.
#[derive(Debug)]
pub struct Outcome {
    /// Concurrent clients.
    pub clients: usize,
    /// Pairs (or hand-offs) measured.
    pub count: u64,
    /// The window they were counted in; `None` for [`handoff`], which is not a rate.
    pub window: Option<Duration>,
    /// Their latencies, in nanoseconds.
    pub latency: Histogram<u64>,
}

impl Outcome {
    /// Pairs per second, for rate scenarios.
    pub fn pairs_per_sec(&self) -> Option<f64> {
        self.window.map(|w| self.count as f64 / w.as_secs_f64())
    }

    /// The latency at quantile `q` (0.5 for the median).
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_nanos(self.latency.value_at_quantile(q))
    }
}

/// An empty latency histogram: 1 ns to 10 minutes, 3 significant digits.
///
/// # Panics
/// Never: the bounds are valid constants.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("BUG: constant histogram bounds are valid")
}

/// The two requests of one pair, as a client sends them again and again.
#[derive(Clone, Debug)]
pub struct PairPlan {
    /// The first request: path and JSON body.
    pub first: (String, Bytes),
    /// The second request.
    pub second: (String, Bytes),
}

fn lock_path(key: &str, action: &str) -> String {
    format!("/v1/namespaces/{NAMESPACE}/locks/{key}/{action}")
}

fn acquire_body(owner: &str, wait_ms: u64) -> Bytes {
    let wait = if wait_ms > 0 { format!(",\"wait_ms\":{wait_ms}") } else { String::new() };
    Bytes::from(format!("{{\"owner\":\"{owner}\",\"ttl_ms\":{TTL_MS}{wait}}}"))
}

fn release_body(owner: &str) -> Bytes {
    Bytes::from(format!("{{\"owner\":\"{owner}\"}}"))
}

/// Client `i` of [`distinct`]: key `k{i}`, owner `c{i}`, a try.
pub fn distinct_plan(i: usize) -> PairPlan {
    let (key, owner) = (format!("k{i}"), format!("c{i}"));
    PairPlan {
        first: (lock_path(&key, "acquire"), acquire_body(&owner, 0)),
        second: (lock_path(&key, "release"), release_body(&owner)),
    }
}

/// Client `i` of [`hot`]: key `hot`, owner `c{i}`, waiting up to [`WAIT_MS`].
pub fn hot_plan(i: usize) -> PairPlan {
    let owner = format!("c{i}");
    PairPlan {
        first: (lock_path("hot", "acquire"), acquire_body(&owner, WAIT_MS)),
        second: (lock_path("hot", "release"), release_body(&owner)),
    }
}

/// Any client of [`floor`]: `POST /` twice with a body the size of a release.
pub fn floor_plan(_: usize) -> PairPlan {
    let request = ("/".to_owned(), release_body("c0"));
    PairPlan { first: request.clone(), second: request }
}

/// Every client loops on its own key: acquire (a try) + release. Pairs/s and the pair's
/// latency.
///
/// # Errors
/// When a client cannot connect, or any answer is not 200.
pub async fn distinct(target: &Target, load: &Load) -> anyhow::Result<Outcome> {
    drive(target, load, distinct_plan).await
}

/// Every client loops on one key: acquire waiting up to [`WAIT_MS`] + release. Pairs/s
/// and the pair's latency (queueing included).
///
/// # Errors
/// When a client cannot connect, or any answer is not 200 (a wait that times out too).
pub async fn hot(target: &Target, load: &Load) -> anyhow::Result<Outcome> {
    drive(target, load, hot_plan).await
}

/// The HTTP floor: the same loop, `POST /` twice per pair, against a trivial server.
///
/// # Errors
/// When a client cannot connect, or any answer is not 200.
pub async fn floor(target: &Target, load: &Load) -> anyhow::Result<Outcome> {
    drive(target, load, floor_plan).await
}

/// Runs `load.clients` clients, client `i` sending `plan(i)` in a loop, through the
/// warm-up and the measured window.
///
/// # Errors
/// When a client cannot connect, or any answer is not 200.
pub async fn drive(target: &Target, load: &Load, plan: impl Fn(usize) -> PairPlan) -> anyhow::Result<Outcome> {
    if load.clients == 0 {
        bail!("at least one client is needed");
    }
    // Connect everyone first, so that no connection setup is timed.
    let mut conns = Vec::with_capacity(load.clients);
    for i in 0..load.clients {
        conns.push(Conn::connect(target, load.http).await.with_context(|| format!("client {i}"))?);
    }
    let from = Instant::now() + load.warmup;
    let until = from + load.duration;
    let tasks: Vec<_> =
        conns.into_iter().enumerate().map(|(i, conn)| tokio::spawn(client_loop(conn, plan(i), from, until))).collect();
    let mut latency = histogram();
    let mut count = 0;
    for (i, task) in futures::future::join_all(tasks).await.into_iter().enumerate() {
        let (pairs, histogram) =
            task.with_context(|| format!("client {i} panicked"))?.with_context(|| format!("client {i}"))?;
        count += pairs;
        latency.add(histogram).context("BUG: histograms of equal bounds add up")?;
    }
    Ok(Outcome { clients: load.clients, count, window: Some(load.duration), latency })
}

/// One client's loop: sends pairs until `until`, and counts those ending in `[from, until]`.
async fn client_loop(
    mut conn: Conn,
    plan: PairPlan,
    from: Instant,
    until: Instant,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let mut latency = histogram();
    let mut pairs = 0;
    loop {
        let started = Instant::now();
        if started >= until {
            break;
        }
        conn.post(&plan.first.0, plan.first.1.clone()).await?.ok(&plan.first.0)?;
        conn.post(&plan.second.0, plan.second.1.clone()).await?.ok(&plan.second.0)?;
        let ended = Instant::now();
        if ended >= from && ended <= until {
            pairs += 1;
            latency.saturating_record(nanos(ended - started));
        }
    }
    Ok((pairs, latency))
}

/// Two clients hand one key over `rounds` times (after `warmup` unmeasured rounds): the
/// holder takes it, the waiter asks for it with a long-poll, the holder polls the key's
/// status until it shows one waiter, then stamps the time and releases; the waiter stamps
/// the time its grant arrives. A sample is the difference: the release's request, the
/// server's hand-over, and the grant's answer.
///
/// # Errors
/// When a client cannot connect, or any answer is not what the hand-off expects.
pub async fn handoff(target: &Target, rounds: usize, warmup: usize, http: HttpClient) -> anyhow::Result<Outcome> {
    let mut holder = Conn::connect(target, http).await.context("the holder")?;
    let mut waiter = Conn::connect(target, http).await.context("the waiter")?;
    let status_path = format!("/v1/namespaces/{NAMESPACE}/locks/handoff");
    let (hold, wait) = (handoff_plan("holder", 0), handoff_plan("waiter", WAIT_MS));
    let mut latency = histogram();
    for round in 0..warmup + rounds {
        holder.post(&hold.first.0, hold.first.1.clone()).await?.ok("the holder's acquire")?;
        let queued = tokio::spawn({
            let (path, body) = wait.first.clone();
            async move {
                let reply = waiter.post(&path, body).await;
                let granted_at = Instant::now();
                (waiter, reply, granted_at)
            }
        });
        wait_for_one_waiter(&mut holder, &status_path).await?;
        let released_at = Instant::now();
        holder.post(&hold.second.0, hold.second.1.clone()).await?.ok("the holder's release")?;
        let (back, reply, granted_at) = queued.await.context("the waiter's task panicked")?;
        waiter = back;
        reply?.ok("the waiter's acquire")?;
        waiter.post(&wait.second.0, wait.second.1.clone()).await?.ok("the waiter's release")?;
        if round >= warmup {
            latency.saturating_record(nanos(granted_at.saturating_duration_since(released_at)));
        }
    }
    Ok(Outcome { clients: 2, count: rounds as u64, window: None, latency })
}

fn handoff_plan(owner: &str, wait_ms: u64) -> PairPlan {
    PairPlan {
        first: (lock_path("handoff", "acquire"), acquire_body(owner, wait_ms)),
        second: (lock_path("handoff", "release"), release_body(owner)),
    }
}

/// Polls the key's status until it shows exactly one waiter (for at most 10 s).
async fn wait_for_one_waiter(conn: &mut Conn, path: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = conn.get(path).await?.ok("the hand-off key's status")?;
        let status: serde_json::Value =
            serde_json::from_slice(&reply.body).context("the hand-off key's status is not JSON")?;
        match status.get("waiters").and_then(serde_json::Value::as_u64) {
            Some(1) => return Ok(()),
            Some(0) => {}
            other => bail!("the hand-off key shows {other:?} waiters; expected 0 or 1 (is another bench running?)"),
        }
        if Instant::now() > deadline {
            bail!("the waiter was never queued on the hand-off key within 10 s");
        }
        tokio::task::yield_now().await;
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_name_the_paths_and_bodies_of_the_api() {
        let plan = distinct_plan(7);
        assert_eq!(plan.first.0, "/v1/namespaces/bench/locks/k7/acquire");
        assert_eq!(&plan.first.1[..], br#"{"owner":"c7","ttl_ms":60000}"#);
        assert_eq!(plan.second.0, "/v1/namespaces/bench/locks/k7/release");
        assert_eq!(&plan.second.1[..], br#"{"owner":"c7"}"#);
        let hot = hot_plan(3);
        assert_eq!(hot.first.0, "/v1/namespaces/bench/locks/hot/acquire");
        assert_eq!(&hot.first.1[..], br#"{"owner":"c3","ttl_ms":60000,"wait_ms":30000}"#);
    }

    #[test]
    fn rates_are_pairs_over_the_window() {
        let outcome = Outcome { clients: 1, count: 500, window: Some(Duration::from_secs(2)), latency: histogram() };
        assert_eq!(outcome.pairs_per_sec(), Some(250.0));
    }
}
