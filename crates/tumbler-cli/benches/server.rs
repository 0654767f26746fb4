//! The lock server against its baselines, in one run (`cargo bench -p tumbler-cli --bench
//! server`; results and how to read them in `docs/BENCHMARKS.md`, "Lock server"). A plain
//! `main` that prints one table and the ratios the targets are judged by.
//!
//! At the same concurrency (`TUMBLER_BENCH_CLIENTS`, 64 by default), each rate measured
//! for `TUMBLER_BENCH_DURATION` (10 s) after `TUMBLER_BENCH_WARMUP` (1 s):
//!
//! 1. tumbler with `--store memory`: `distinct`, `hot` and `handoff`
//!    (`TUMBLER_BENCH_ROUNDS` hand-offs, 2000), exactly as `tumbler bench` runs them;
//! 2. the same with the SQLite store, in a temporary directory;
//! 3. the HTTP floor: a bare axum server answering `POST /` with a small JSON, driven by
//!    the same clients, two requests per pair;
//! 4. `pgbench` against the throw-away PostgreSQL of `tumbler_testkit::postgres`, with a
//!    script of `pg_advisory_lock` + `pg_advisory_unlock` on the client's own id
//!    (distinct) or on one constant id (hot): one transaction is one pair (its rate only:
//!    see [`run_pgbench`]). Once in pgbench's default query mode, the baseline the
//!    targets are judged by, and once with `-M prepared`, reported beside it (see
//!    [`QueryMode`]);
//! 5. PostgreSQL's blocking hand-off: one connection holds `pg_advisory_lock(1)`, another
//!    blocks on it (seen as an ungranted row in `pg_locks`), and the time from just before
//!    the holder's unlock to the waiter's lock returning is measured.
//!
//! The server runs as `tumbler serve` does by default (a worker per CPU, spinning 40 µs);
//! the clients run on `TUMBLER_BENCH_CLIENT_THREADS` threads (1), pgbench on two (`-j 2`,
//! its best here). `TUMBLER_BENCH_HTTP` (`raw`, the default, `hyper` or `reqwest`) picks the clients' HTTP
//! library. A missing `pgbench` or a PostgreSQL that cannot start fails the run: nothing is
//! skipped.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor as _, PgConnection};
use tumbler_bench::client::{HttpClient, Target};
use tumbler_bench::report::{self, Row};
use tumbler_bench::scenarios::{self, histogram, Load, Outcome};
use tumbler_bench::{run_scenarios, BenchRuntime, InProcessServer, Scenario};
use tumbler_server::StoreUrl;
use tumbler_testkit::postgres::{test_database, TestDatabase};

// The allocator of the `tumbler` binary, so that the in-process server (and the HTTP
// floor beside it) is measured as it ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The advisory-lock id of PostgreSQL's hot key and hand-off.
const PG_HOT_KEY: i64 = 1;

/// What the run is told by its environment.
struct Settings {
    load: Load,
    rounds: usize,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let clients: usize = env_or("TUMBLER_BENCH_CLIENTS", "64", |s| s.parse().map_err(|e| format!("{e}")))?;
        if clients == 0 {
            bail!("TUMBLER_BENCH_CLIENTS must be at least 1");
        }
        Ok(Settings {
            load: Load {
                clients,
                duration: env_or("TUMBLER_BENCH_DURATION", "10s", tumbler_bench::parse_positive_duration)?,
                warmup: env_or("TUMBLER_BENCH_WARMUP", "1s", tumbler_bench::parse_duration)?,
                http: env_or("TUMBLER_BENCH_HTTP", "raw", |s| s.parse::<HttpClient>().map_err(|e| e.to_string()))?,
                client_threads: env_or("TUMBLER_BENCH_CLIENT_THREADS", "1", |s| {
                    s.parse::<NonZeroUsize>().map_err(|e| format!("{s:?}: {e}"))
                })?,
            },
            rounds: env_or("TUMBLER_BENCH_ROUNDS", "2000", |s| match s.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("{s:?} is not a positive number")),
            })?,
        })
    }
}

/// The variable `name` parsed with `parse`, or `default` parsed when it is unset.
fn env_or<T>(name: &str, default: &str, parse: impl Fn(&str) -> Result<T, String>) -> anyhow::Result<T> {
    let value = std::env::var(name).unwrap_or_else(|_| default.to_owned());
    parse(value.trim()).map_err(|e| anyhow::anyhow!("{name}={value:?}: {e}"))
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("server bench: cannot start a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nserver bench FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let settings = Settings::from_env()?;
    // Checked first: a run that cannot finish should fail before spending a minute.
    let pgbench = find_pgbench()?;
    let db = test_database().await.context("the throw-away PostgreSQL for the baselines must start")?;
    let load = &settings.load;
    print_machine(&pgbench, db).await?;
    println!(
        "load: {} clients, one HTTP/1.1 keep-alive connection each ({:?}); {} s measured after {} s warm-up per rate; {} hand-offs",
        load.clients,
        load.http,
        load.duration.as_secs_f64(),
        load.warmup.as_secs_f64(),
        settings.rounds,
    );
    let serve = tumbler_server::ServerConfig::default();
    println!(
        "tumbler: as `tumbler serve` runs by default ({} workers, spin {:?}); clients on {} thread(s); pgbench -j {}",
        serve.workers,
        serve.spin,
        load.client_threads,
        pgbench_threads(load),
    );

    let mut rows = Vec::new();
    for store in ["memory", "sqlite"] {
        let dir = tempfile::tempdir().context("a temporary directory for the SQLite store")?;
        let url = match store {
            "memory" => StoreUrl::Memory,
            _ => StoreUrl::Sqlite(dir.path().join("bench.db")),
        };
        eprintln!("running tumbler ({store}) ...");
        let server = InProcessServer::start(url, None).await.with_context(|| format!("starting the {store} server"))?;
        let target = Target::resolve(&server.url()).await?;
        let measured = run_scenarios(&target, store, load, Scenario::All, settings.rounds).await;
        server.shutdown().await;
        rows.extend(measured.with_context(|| format!("tumbler with the {store} store"))?);
    }

    eprintln!("running the HTTP floor ...");
    rows.push(Row::of("floor (2 × POST /)", "axum", &http_floor(load).await.context("the HTTP floor")?));

    eprintln!("running pgbench ...");
    let scripts = tempfile::tempdir().context("a temporary directory for pgbench")?;
    let distinct = "SELECT pg_advisory_lock(:client_id);\nSELECT pg_advisory_unlock(:client_id);\n";
    let hot = format!("SELECT pg_advisory_lock({PG_HOT_KEY});\nSELECT pg_advisory_unlock({PG_HOT_KEY});\n");
    for mode in [QueryMode::Simple, QueryMode::Prepared] {
        for (name, script) in [("distinct", distinct), ("hot", hot.as_str())] {
            rows.push(run_pgbench(&pgbench, db, name, script, mode, scripts.path(), load).await?);
        }
    }
    eprintln!("running PostgreSQL's hand-off ...");
    let warmup = (settings.rounds / 20).max(1);
    let handoff = pg_handoff(db, settings.rounds, warmup).await.context("PostgreSQL's hand-off")?;
    rows.push(Row::of("handoff (pg_advisory_lock)", "postgresql", &handoff));

    println!("\n{}", report::table(&rows));
    print_ratios(&rows)?;
    println!("\ntotal run time: {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The machine
// ---------------------------------------------------------------------------------------

async fn print_machine(pgbench: &Path, db: &TestDatabase) -> anyhow::Result<()> {
    let cpus = tumbler_testkit::machine::cpus();
    let model = tumbler_testkit::machine::cpu_model();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut conn = connect(db).await?;
    let version: String = sqlx::query_scalar("SELECT version()").fetch_one(&mut conn).await?;
    let pgbench_version = tokio::process::Command::new(pgbench).arg("--version").output().await?;
    println!("machine: {cpus} CPUs ({model}); load average before the run: {}", load.trim());
    println!("  the load generator, the server under test and PostgreSQL share these CPUs");
    println!("postgresql: {version}");
    println!("pgbench: {} ({})", String::from_utf8_lossy(&pgbench_version.stdout).trim(), pgbench.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The HTTP floor
// ---------------------------------------------------------------------------------------

/// A bare axum server on its own runtime, answering `POST /` (reading the body) with a
/// small JSON; the same client loop as `distinct`, two requests per pair.
async fn http_floor(load: &Load) -> anyhow::Result<Outcome> {
    let runtime = BenchRuntime::new("floor", None)?;
    let addr = runtime
        .run(async {
            let app = axum::Router::new().route(
                "/",
                axum::routing::post(|body: axum::body::Bytes| async move {
                    drop(body);
                    axum::Json(serde_json::json!({ "count": 0 }))
                }),
            );
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
            let addr = listener.local_addr()?;
            tokio::spawn(async move { axum::serve(listener, app).await });
            std::io::Result::Ok(addr)
        })
        .await?
        .context("binding the floor server")?;
    let target = Target::resolve(&format!("http://{addr}")).await?;
    let load = load.clone();
    BenchRuntime::new("client", Some(load.client_threads))?
        .run(async move { scenarios::floor(&target, &load).await })
        .await?
}

// ---------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------

/// `pgbench` on PATH, else under `/usr/lib/postgresql/<highest version>/bin`.
fn find_pgbench() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join("pgbench")).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(Result::ok)
                .filter_map(|d| Some((d.file_name().to_str()?.parse().ok()?, d.path().join("bin/pgbench"))))
                .collect()
        })
        .unwrap_or_default();
    versioned.sort_by_key(|v| std::cmp::Reverse(v.0));
    on_path.into_iter().chain(versioned.into_iter().map(|(_, p)| p)).find(|p| p.is_file()).context(
        "pgbench was not found on PATH nor under /usr/lib/postgresql/<version>/bin. It is needed for the PostgreSQL \
         baselines; on Debian or Ubuntu install it with `apt-get install postgresql postgresql-client` (pgbench \
         ships in postgresql-<version>, the `pgbench` command in postgresql-client-common)",
    )
}

/// pgbench's threads (`-j`): two, its best on the 2-CPU machine of docs/BENCHMARKS.md
/// (one gave 36k prepared pairs/s on distinct keys against 57k with two), and never more
/// than its clients.
fn pgbench_threads(load: &Load) -> usize {
    load.clients.min(2)
}

/// How pgbench sends its statements (`-M`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum QueryMode {
    /// pgbench's default: each statement sent as text and parsed by the server every
    /// time, as most applications' drivers and ORMs send ad-hoc SQL. The issue's
    /// baseline figure ("about 41 k pairs/s" at 64 clients) is this mode's.
    Simple,
    /// Each statement parsed once per connection and then only bound and executed: the
    /// fastest PostgreSQL gets, reported beside the default as the stricter baseline.
    Prepared,
}

impl QueryMode {
    fn flag(self) -> &'static str {
        match self {
            QueryMode::Simple => "simple",
            QueryMode::Prepared => "prepared",
        }
    }

    /// The scenario name of a pgbench row in this mode.
    fn scenario(self, name: &str) -> String {
        match self {
            QueryMode::Simple => format!("pgbench {name}"),
            QueryMode::Prepared => format!("pgbench {name} -M prepared"),
        }
    }
}

/// `pgbench -n -f SCRIPT -c CLIENTS -j 2 -T SECONDS -M MODE` against `db`: its `tps`
/// line, one transaction being one pair.
///
/// No percentiles: PostgreSQL 15's pgbench reads its clock lazily (once per pass over its
/// clients), and at this load its per-transaction log (`-l`) records 0 µs for most
/// transactions, so its latencies are not comparable. Its mean is clients ÷ tps.
async fn run_pgbench(
    pgbench: &Path,
    db: &TestDatabase,
    name: &str,
    script: &str,
    mode: QueryMode,
    dir: &Path,
    load: &Load,
) -> anyhow::Result<Row> {
    let script_path = dir.join(format!("{name}.sql"));
    std::fs::write(&script_path, script).with_context(|| format!("writing {}", script_path.display()))?;
    let options = db.connect_options();
    let seconds = load.duration.as_secs_f64().ceil().max(1.0) as u64;
    let mut command = tokio::process::Command::new(pgbench);
    command
        .args(["-n", "-M", mode.flag(), "-f"])
        .arg(&script_path)
        .args(["-c", &load.clients.to_string(), "-j", &pgbench_threads(load).to_string(), "-T", &seconds.to_string()])
        .args(["-h", options.get_host(), "-p", &options.get_port().to_string(), "-U", options.get_username()])
        .arg(options.get_database().unwrap_or("postgres"))
        .current_dir(dir);
    if let Some(password) = reqwest::Url::parse(db.url()).ok().and_then(|u| u.password().map(str::to_owned)) {
        command.env("PGPASSWORD", password);
    }
    let output = command.output().await.with_context(|| format!("running {}", pgbench.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("pgbench {name} failed ({}):\n{stdout}{}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    let figure = |prefix: &str| {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(prefix)?.split_whitespace().next()?.parse::<f64>().ok())
            .with_context(|| format!("no `{prefix}` line in pgbench's output:\n{stdout}"))
    };
    let tps = figure("tps = ")?;
    let transactions = figure("number of transactions actually processed: ")?;
    Ok(Row {
        scenario: mode.scenario(name),
        target: "postgresql".to_owned(),
        clients: load.clients,
        pairs_per_sec: Some(tps),
        p50: None,
        p99: None,
        samples: transactions as u64,
    })
}

async fn connect(db: &TestDatabase) -> anyhow::Result<PgConnection> {
    use sqlx::Connection as _;
    PgConnection::connect_with(&db.connect_options()).await.context("connecting to the PostgreSQL baseline")
}

/// `rounds` hand-offs of `pg_advisory_lock(1)` from one connection to another, blocked in
/// `pg_advisory_lock` (after `warmup` unmeasured ones).
async fn pg_handoff(db: &TestDatabase, rounds: usize, warmup: usize) -> anyhow::Result<Outcome> {
    let pool = PgPoolOptions::new().max_connections(3).connect_with(db.connect_options()).await?;
    let mut holder = pool.acquire().await?;
    let mut waiter = pool.acquire().await?;
    let mut monitor = pool.acquire().await?;
    let waiter_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *waiter).await?;
    let lock = format!("SELECT pg_advisory_lock({PG_HOT_KEY})");
    let unlock = format!("SELECT pg_advisory_unlock({PG_HOT_KEY})");
    // Prepared once on each connection, as pgbench -M prepared does.
    for conn in [&mut holder, &mut waiter] {
        conn.prepare(lock.as_str()).await?;
        conn.prepare(unlock.as_str()).await?;
    }
    let mut latency = histogram();
    for round in 0..warmup + rounds {
        sqlx::query(&lock).execute(&mut *holder).await.context("the holder's lock")?;
        let queued = tokio::spawn({
            let lock = lock.clone();
            async move {
                let granted = sqlx::query(&lock).execute(&mut *waiter).await.map(drop);
                (waiter, granted, Instant::now())
            }
        });
        wait_until_blocked(&mut monitor, waiter_pid).await?;
        let released_at = Instant::now();
        sqlx::query(&unlock).execute(&mut *holder).await.context("the holder's unlock")?;
        let (back, granted, granted_at) = queued.await.context("the waiter's task panicked")?;
        waiter = back;
        granted.context("the waiter's lock")?;
        sqlx::query(&unlock).execute(&mut *waiter).await.context("the waiter's unlock")?;
        if round >= warmup {
            let nanos = granted_at.saturating_duration_since(released_at).as_nanos();
            latency.saturating_record(u64::try_from(nanos).unwrap_or(u64::MAX));
        }
    }
    Ok(Outcome { clients: 2, count: rounds as u64, window: None, latency })
}

/// Returns once backend `pid` waits for an advisory lock (an ungranted row in `pg_locks`).
async fn wait_until_blocked(monitor: &mut PgConnection, pid: i32) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = $1 AND NOT granted)",
        )
        .bind(pid)
        .fetch_one(&mut *monitor)
        .await?;
        if waiting {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the PostgreSQL waiter never blocked within 10 s");
        }
        tokio::task::yield_now().await;
    }
}

// ---------------------------------------------------------------------------------------
// Ratios
// ---------------------------------------------------------------------------------------

fn print_ratios(rows: &[Row]) -> anyhow::Result<()> {
    let find = |scenario: &str, target: &str| {
        rows.iter()
            .find(|r| r.scenario == scenario && r.target == target)
            .with_context(|| format!("BUG: no row {scenario} / {target}"))
    };
    let rate = |scenario: &str, target: &str| -> anyhow::Result<f64> {
        find(scenario, target)?.pairs_per_sec.with_context(|| format!("BUG: no rate for {scenario} / {target}"))
    };
    let p50 = |scenario: &str, target: &str| -> anyhow::Result<f64> {
        Ok(find(scenario, target)?.p50.with_context(|| format!("BUG: no p50 for {scenario} / {target}"))?.as_secs_f64())
    };
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    println!("ratios against the targets:");
    let distinct = rate("distinct", "memory")? / rate("pgbench distinct", "postgresql")?;
    println!(
        "  distinct (memory) pairs/s ÷ pgbench distinct tps  = {distinct:.2}  (target > 1: {})",
        verdict(distinct > 1.0)
    );
    let hot = rate("hot", "memory")? / rate("pgbench hot", "postgresql")?;
    println!("  hot (memory) pairs/s ÷ pgbench hot tps            = {hot:.2}  (target ≥ 2: {})", verdict(hot >= 2.0));
    let distinct = rate("distinct", "memory")? / rate("pgbench distinct -M prepared", "postgresql")?;
    let hot = rate("hot", "memory")? / rate("pgbench hot -M prepared", "postgresql")?;
    println!("  the same against pgbench -M prepared (the stricter baseline): distinct {distinct:.2}, hot {hot:.2}");
    let handoff = p50("handoff", "memory")? / p50("handoff (pg_advisory_lock)", "postgresql")?;
    println!(
        "  handoff (memory) p50 ÷ PostgreSQL hand-off p50    = {handoff:.2}  (target ≤ 1: {})",
        verdict(handoff <= 1.0)
    );
    let sqlite = rate("distinct", "sqlite")? / rate("distinct", "memory")?;
    println!(
        "  distinct sqlite ÷ memory pairs/s                  = {sqlite:.2}  (target ≥ 0.5: {})",
        verdict(sqlite >= 0.5)
    );
    let floor = rate("distinct", "memory")? / rate("floor (2 × POST /)", "axum")?;
    println!("  distinct (memory) ÷ HTTP floor pairs/s            = {floor:.2}  (context: the floor is HTTP alone)");
    Ok(())
}
