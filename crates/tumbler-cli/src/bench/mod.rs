//! `tumbler bench`: a load generator for the lock server, and the pieces
//! `benches/server.rs` uses to compare it with its baselines.
//!
//! A key design decision: **every client is one HTTP/1.1 keep-alive connection with one
//! request in flight**, the way a service instance holding a connection to the lock server
//! behaves, and the way `pgbench` clients each hold one PostgreSQL connection. So
//! `--clients 64` means 64 connections and at most 64 requests in flight, and a pair's
//! latency is two full round trips through the server.
//!
//! Without `--url`, the server is started in-process on `127.0.0.1:0` with the store
//! given, on a tokio runtime of its own ([`ServerRuntime`]), so that its tasks and the
//! clients' do not share run queues, much as with a separate process. They do share the
//! machine's CPUs: on a small machine the load generator takes a large part of them, and
//! the figures are those of the pair, not of the server alone.
//!
//! The scenarios are described in [`scenarios`]; the table in [`report`].

pub mod client;
pub mod report;
pub mod scenarios;

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use anyhow::Context as _;
use tumbler_server::{ServerConfig, StoreUrl};

use self::client::{HttpClient, Target};
use self::report::Row;
use self::scenarios::Load;

/// Which scenarios `tumbler bench` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Every client on a key of its own: acquire + release.
    Distinct,
    /// Every client on one key: acquire waiting (long-poll) + release.
    Hot,
    /// Two clients: release → grant latency of a queued waiter.
    Handoff,
    /// All three, in that order.
    All,
}

/// The arguments of `tumbler bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// A running server to load (`http://HOST:PORT`). Without it, a server is started
    /// in-process on 127.0.0.1 with `--store`.
    #[arg(long, conflicts_with = "store")]
    pub url: Option<String>,
    /// The store of the in-process server: `memory`, or `sqlite:PATH`.
    #[arg(long, default_value = "memory")]
    pub store: StoreUrl,
    /// Worker threads of the in-process server (as many as CPUs by default, as `tumbler
    /// serve`).
    #[arg(long, conflicts_with = "url")]
    pub server_workers: Option<NonZeroUsize>,
    /// Threads the clients run on. One by default: a client's work per request is small,
    /// and where the server shares the machine every thread more takes CPU from it.
    #[arg(long, default_value = "1")]
    pub client_threads: NonZeroUsize,
    /// Concurrent clients, each with a keep-alive connection of its own.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub clients: u16,
    /// How long each of `distinct` and `hot` is measured (`500ms`, `10s`, `1m`).
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub duration: Duration,
    /// Load before each measured window, not counted.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// What to run.
    #[arg(long, value_enum, default_value = "all")]
    pub scenario: Scenario,
    /// Measured hand-offs of the `handoff` scenario (after 5% more, unmeasured).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// The HTTP library of the clients.
    #[arg(long, value_enum, default_value = "raw")]
    pub http: HttpClient,
}

/// Runs `tumbler bench`: starts the server unless given `--url`, runs the scenarios and
/// prints the table.
///
/// # Errors
/// When the server cannot be started or reached, or a request fails.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let load = Load {
        clients: usize::from(args.clients),
        duration: args.duration,
        warmup: args.warmup,
        http: args.http,
        client_threads: args.client_threads,
    };
    let (server, url, target_name) = match &args.url {
        Some(url) => (None, url.clone(), url.clone()),
        None => {
            let server = InProcessServer::start(args.store.clone(), args.server_workers).await?;
            let url = server.url();
            (Some(server), url, store_name(&args.store).to_owned())
        }
    };
    let target = Target::resolve(&url).await?;
    println!(
        "tumbler bench: {} clients ({:?}, on {} thread(s)), {} s measured after {} s of warm-up, against {target_name} ({})",
        load.clients,
        load.http,
        load.client_threads,
        load.duration.as_secs_f64(),
        load.warmup.as_secs_f64(),
        target.url(),
    );
    let outcome = run_scenarios(&target, &target_name, &load, args.scenario, args.rounds as usize).await;
    if let Some(server) = server {
        server.shutdown().await;
    }
    print!("{}", report::table(&outcome?));
    Ok(())
}

/// Runs `which` of the scenarios against `target`, one after the other, with the clients
/// on a runtime of `load.client_threads` threads; one row each.
///
/// # Errors
/// When a scenario fails.
pub async fn run_scenarios(
    target: &Target,
    target_name: &str,
    load: &Load,
    which: Scenario,
    rounds: usize,
) -> anyhow::Result<Vec<Row>> {
    let (target, target_name, load) = (target.clone(), target_name.to_owned(), load.clone());
    let clients = BenchRuntime::new("client", Some(load.client_threads))?;
    clients
        .run(async move {
            let mut rows = Vec::new();
            if matches!(which, Scenario::Distinct | Scenario::All) {
                let outcome = scenarios::distinct(&target, &load).await.context("scenario distinct")?;
                rows.push(Row::of("distinct", &target_name, &outcome));
            }
            if matches!(which, Scenario::Hot | Scenario::All) {
                let outcome = scenarios::hot(&target, &load).await.context("scenario hot")?;
                rows.push(Row::of("hot", &target_name, &outcome));
            }
            if matches!(which, Scenario::Handoff | Scenario::All) {
                let warmup = (rounds / 20).max(1);
                let outcome =
                    scenarios::handoff(&target, rounds, warmup, load.http).await.context("scenario handoff")?;
                rows.push(Row::of("handoff", &target_name, &outcome));
            }
            Ok(rows)
        })
        .await?
}

/// `memory` or `sqlite`, for tables.
pub fn store_name(store: &StoreUrl) -> &'static str {
    match store {
        StoreUrl::Memory => "memory",
        StoreUrl::Sqlite(_) => "sqlite",
    }
}

/// A tokio runtime of its own, for a server under test or for the load generator's
/// clients, so that the two run on separate worker threads and run queues, as they would
/// in separate processes.
pub struct BenchRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl BenchRuntime {
    /// Starts a runtime whose threads are named after `role`, with `workers` worker
    /// threads (as many as the machine's CPUs when `None`).
    ///
    /// # Errors
    /// When the runtime's threads cannot be started.
    pub fn new(role: &str, workers: Option<NonZeroUsize>) -> anyhow::Result<BenchRuntime> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(workers) = workers {
            builder.worker_threads(workers.get());
        }
        let runtime = builder
            .thread_name(format!("bench-{role}"))
            .enable_all()
            .build()
            .with_context(|| format!("starting the {role} runtime"))?;
        Ok(BenchRuntime { runtime: Some(runtime) })
    }

    /// Runs `future` on this runtime (anything it spawns stays there) and returns its
    /// output.
    ///
    /// # Errors
    /// When `future` panics.
    pub async fn run<F>(&self, future: F) -> anyhow::Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let runtime = self.runtime.as_ref().context("BUG: the runtime is only taken on drop")?;
        runtime.spawn(future).await.context("a task on a bench runtime panicked")
    }
}

impl Drop for BenchRuntime {
    fn drop(&mut self) {
        // Not `drop(runtime)`, which would block inside the caller's runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A lock server started in-process on `127.0.0.1:0`, on a [`BenchRuntime`] of its own.
pub struct InProcessServer {
    runtime: BenchRuntime,
    server: tumbler_server::RunningServer,
}

impl InProcessServer {
    /// Starts a server with `store` (for SQLite, the file is created as needed) and
    /// `workers` threads serving connections (as many as CPUs when `None`), otherwise as
    /// `tumbler serve` starts it.
    ///
    /// # Errors
    /// When the store cannot be opened or no port can be bound.
    pub async fn start(store: StoreUrl, workers: Option<NonZeroUsize>) -> anyhow::Result<InProcessServer> {
        let runtime = BenchRuntime::new("server", None)?;
        let defaults = ServerConfig::default();
        let workers = workers.unwrap_or(defaults.workers);
        let config = ServerConfig { listen: SocketAddr::from(([127, 0, 0, 1], 0)), store, workers, ..defaults };
        let server = runtime.run(tumbler_server::spawn(config)).await?.context("starting the lock server")?;
        Ok(InProcessServer { runtime, server })
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Stops it gracefully (flushing its store), then its runtime.
    pub async fn shutdown(self) {
        let InProcessServer { runtime, server } = self;
        if let Err(e) = runtime.run(server.shutdown()).await {
            eprintln!("tumbler bench: the server did not shut down cleanly: {e:#}");
        }
    }
}

/// A duration like `500ms`, `10s` or `2m`.
///
/// # Errors
/// When `text` is not a whole number followed by `ms`, `s` or `m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 40us, 500ms, 10s or 2m");
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    match unit {
        "us" | "µs" => Ok(Duration::from_micros(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// [`parse_duration`], failing unless the duration is positive.
///
/// # Errors
/// As [`parse_duration`], and for a zero duration.
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(format!("{text:?}: the duration must be more than zero"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_their_unit() {
        assert_eq!(parse_duration("40us"), Ok(Duration::from_micros(40)));
        assert_eq!(parse_duration("40µs"), Ok(Duration::from_micros(40)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "10", "s", "1.5s", "10h", "-1s", "18446744073709551615m"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
        assert!(parse_positive_duration("0s").is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_scenario_runs_against_an_in_process_server_with_every_client() {
        for http in [HttpClient::Raw, HttpClient::Hyper, HttpClient::Reqwest] {
            let server = InProcessServer::start(StoreUrl::Memory, None).await.expect("a server");
            let target = Target::resolve(&server.url()).await.expect("its address");
            let load = Load {
                clients: 4,
                duration: Duration::from_millis(200),
                warmup: Duration::from_millis(50),
                http,
                client_threads: NonZeroUsize::MIN,
            };
            let rows = run_scenarios(&target, "memory", &load, Scenario::All, 20).await.expect("the scenarios");
            server.shutdown().await;
            let names: Vec<&str> = rows.iter().map(|r| r.scenario.as_str()).collect();
            assert_eq!(names, ["distinct", "hot", "handoff"], "{http:?}");
            for row in &rows {
                assert!(row.samples > 0 && row.p50.is_some(), "{http:?}: {row:?}");
            }
            assert_eq!(rows[2].samples, 20, "{http:?}");
        }
    }
}
