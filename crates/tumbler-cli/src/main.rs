//! The `tumbler` command: `tumbler serve` runs the lock server.

mod limits;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use limits::LimitArgs;
use tumbler_server::{ServerConfig, StoreUrl};

// A server answering tens of thousands of requests a second allocates and frees small
// buffers on every one of them across threads; mimalloc's thread-local free lists make
// that markedly cheaper than glibc's allocator (measured in docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "tumbler", version, about = "Fair, fenced, re-entrant locks for any language")]
struct Cli {
    /// Log one JSON object per line (for log collectors) instead of text. `RUST_LOG`
    /// sets the level (`info` by default; `debug` logs every request).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the lock server until SIGTERM or Ctrl-C.
    Serve {
        /// Where to listen. Loopback by default: the server has no authentication yet.
        #[arg(long, default_value = "127.0.0.1:7878")]
        listen: SocketAddr,
        /// Where to keep state: `memory`, or `sqlite:PATH`.
        #[arg(long, default_value = "sqlite:./tumbler-data/tumbler.db")]
        store: StoreUrl,
        /// A lock-delay for a namespace, `NAMESPACE=DURATION` (e.g. `payments=5s`, `jobs=500ms`):
        /// its keys freed by expiry or session end stay unclaimable that long. Repeatable.
        #[arg(long = "lock-delay", value_parser = parse_lock_delay)]
        lock_delays: Vec<(String, Duration)>,
        /// Threads serving connections (one per CPU by default). Each owns the connections
        /// dealt to it, so a hand-off wakes only the thread of the connection granted.
        #[arg(long)]
        workers: Option<NonZeroUsize>,
        /// How long a worker keeps polling its connections after a request arrives before
        /// it sleeps (`40us` by default, `0us` never): saves a wake-up per request when
        /// requests follow closely, as on a contended key.
        #[arg(long, value_parser = tumbler_bench::parse_duration)]
        spin: Option<Duration>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Drives load at a lock server (one started in-process, or `--url`) and prints
    /// throughput and latency percentiles per scenario.
    Bench(tumbler_bench::BenchArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if cli.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    match cli.command {
        Command::Serve { listen, store, lock_delays, workers, spin, limits } => {
            let defaults = ServerConfig::default();
            let lock_delays = lock_delays.into_iter().collect();
            let workers = workers.unwrap_or(defaults.workers);
            let spin = spin.unwrap_or(defaults.spin);
            let limits = limits.limits();
            serve(ServerConfig { listen, store, lock_delays, workers, spin, limits, ..defaults }).await
        }
        Command::Bench(args) => match tumbler_bench::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tumbler bench: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `NAMESPACE=DURATION`, the duration in `ms`, `s` or `m`.
fn parse_lock_delay(text: &str) -> Result<(String, Duration), String> {
    let (namespace, duration) = text.split_once('=').ok_or("expected NAMESPACE=DURATION, e.g. jobs=5s")?;
    tumbler_core::validate_namespace(namespace).map_err(|e| e.to_string())?;
    Ok((namespace.to_owned(), tumbler_bench::parse_duration(duration)?))
}

async fn serve(config: ServerConfig) -> ExitCode {
    let store = config.store.clone();
    let server = match tumbler_server::spawn(config).await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(url = %server.url(), ?store, "serving; stop with Ctrl-C or SIGTERM");
    shutdown_signal().await;
    tracing::info!("shutting down: answering what is in flight, then flushing the store");
    server.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Completes on Ctrl-C, or on SIGTERM where there is one.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_delays_parse_with_their_unit() {
        assert_eq!(parse_lock_delay("jobs=500ms"), Ok(("jobs".to_owned(), Duration::from_millis(500))));
        assert_eq!(parse_lock_delay("a.b-c=5s"), Ok(("a.b-c".to_owned(), Duration::from_secs(5))));
        assert_eq!(parse_lock_delay("x=2m"), Ok(("x".to_owned(), Duration::from_secs(120))));
        for bad in ["jobs", "jobs=", "jobs=5", "jobs=5h", "jobs=s", "bad ns=5s", "=5s", "x=18446744073709551615m"] {
            assert!(parse_lock_delay(bad).is_err(), "{bad} should be refused");
        }
    }
}
