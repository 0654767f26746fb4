//! Tumbler's lock server: the HTTP API of DESIGN.md §4 over the same engine as the
//! in-process backend (`tumbler::mem::Engine`), with sessions, long-poll waits, SSE watch,
//! persistence (`--store memory` or `sqlite:PATH`) and Prometheus metrics.
//!
//! The server decides nothing itself: every lock decision is `tumbler-core`'s. It parses,
//! validates, calls the engine, writes the outcome to the store, and answers.

pub mod api;
pub mod config;
pub mod key;
pub mod metrics;
pub mod openapi;
mod server;
pub mod state;
pub mod store;
mod workers;

pub use config::{ServerConfig, ServerLimits};
pub use key::LockKey;
pub use server::{spawn, RunningServer, ServerError};
pub use store::{Store, StoreUrl};
