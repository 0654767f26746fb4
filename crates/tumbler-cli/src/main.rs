//! The `tumbler` command: `tumbler serve` runs the lock server.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tumbler_server::{ServerConfig, StoreUrl};

#[derive(Parser)]
#[command(name = "tumbler", version, about = "Fair, fenced, re-entrant locks for any language")]
struct Cli {
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
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { listen, store } => serve(ServerConfig { listen, store, ..ServerConfig::default() }).await,
    }
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
