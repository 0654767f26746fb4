//! The HTTP client as a [`Backend`] under test, against a real lock server spawned
//! in-process.

use std::time::Duration;

use tumbler::remote::{RemoteConfig, RemoteLocker, RemoteLocks};
use tumbler::Capabilities;
use tumbler_server::{RunningServer, ServerConfig};

use crate::backend::Backend;

/// The namespace the conformance suite's keys live in.
const NAMESPACE: &str = "conformance";

/// The remote backend under test: a `tumbler-server` listening on a free port of
/// 127.0.0.1 with the memory store, and a [`RemoteLocks`] of one namespace on it; each
/// [`Backend::owner`] is a new [`RemoteLocks::owner`] (a new server session). The server
/// runs until [`RemoteBackend::shutdown`] or the end of the runtime it was spawned on.
pub struct RemoteBackend {
    server: RunningServer,
    locks: RemoteLocks,
}

impl std::fmt::Debug for RemoteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteBackend").field("url", &self.server.url()).field("locks", &self.locks).finish()
    }
}

impl RemoteBackend {
    /// A fresh server with the test configuration ([`ServerConfig::for_tests`]) and a client
    /// with the default one.
    ///
    /// # Panics
    /// When the server cannot start: remote tests never skip.
    pub async fn new() -> Self {
        RemoteBackend::with_config(ServerConfig::for_tests(), RemoteConfig::default()).await
    }

    /// A fresh server configured by `server` (listening where it says: keep port 0 on
    /// 127.0.0.1 for tests), and a client configured by `client`.
    ///
    /// # Panics
    /// When the server cannot start or the client configuration is invalid.
    pub async fn with_config(server: ServerConfig, client: RemoteConfig) -> Self {
        let server = tumbler_server::spawn(server).await.expect("the lock server for tests must start");
        let locks = RemoteLocks::with_config(&server.url(), NAMESPACE, client).expect("a valid client configuration");
        RemoteBackend { server, locks }
    }

    /// The client's locks.
    pub fn locks(&self) -> &RemoteLocks {
        &self.locks
    }

    /// The server's base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Stops the server gracefully (long-polls end with `503`).
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

impl Backend for RemoteBackend {
    type Locker = RemoteLocker;

    async fn owner(&self) -> RemoteLocker {
        self.locks.owner().await.expect("opening a session on the lock server")
    }

    fn key(&self, name: &str) -> String {
        name.to_owned()
    }

    fn capabilities(&self) -> Capabilities {
        tumbler::remote::capabilities()
    }

    /// A loopback round trip, plus the server's bookkeeping: a little more than in-process.
    fn settle(&self) -> Duration {
        Duration::from_millis(100)
    }
}
