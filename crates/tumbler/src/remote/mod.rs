//! The lock server's HTTP client: a [`Locker`] over `tumbler-server` (DESIGN.md §4).
//!
//! [`RemoteLocks`] names a server and a namespace and shares one connection pool; each
//! [`RemoteLocker`] made from it is one owner, with an owner id *and* a server session of
//! its own, opened when the owner is made and kept alive in the background. Keys are
//! `String` names within the namespace. The server decides everything (modes, re-entry,
//! FIFO queues, deadlocks, TTLs, fencing tokens) with the same engine as the in-process
//! backend; this client translates, waits, and tells guards when their holds end.
//!
//! ```no_run
//! use std::time::Duration;
//! use tumbler::remote::RemoteLocks;
//! use tumbler::{AcquireOptions, LockGuard, Locker};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> tumbler::Result<()> {
//! let locks = RemoteLocks::new("http://127.0.0.1:7878", "billing")?;
//! let worker = locks.owner().await?;
//! let guard = worker.acquire("invoice:42".to_owned(), AcquireOptions::exclusive().timeout(Duration::from_secs(5))).await?;
//! tokio::select! {
//!     reason = guard.lost() => eprintln!("lock lost ({reason:?}), stopping"),
//!     () = async { /* the work, fenced with guard.fencing_token() */ } => {}
//! }
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! # Sessions and owner death
//!
//! Every hold belongs to the owner's session, TTL holds too, so an owner that dies holds
//! nothing: dropping the last clone of a [`RemoteLocker`] closes its session (a `DELETE`,
//! sent in the background) and the server releases all its holds and cancels its waits. A
//! process that dies without closing stops its keep-alives, and the server ends the
//! session when its lease ([`RemoteConfig::session_ttl`]) runs out. The client renews the
//! lease every third of its TTL and tells every guard when it is lost
//! ([`RemoteGuard`] lists the reasons).
//!
//! # Waiting
//!
//! A try is one request (`wait_ms` 0). A wait is a long-poll: the server answers when the
//! request is granted or its bound runs out, and wakes it by notification, never by
//! polling. The server bounds a long-poll ([`RemoteConfig::max_wait`] must not exceed its
//! bound; a longer one is refused, and the client then halves its bound and goes on), so
//! a longer wait — and a wait forever — is a series of long-polls with one request id:
//! should a poll's answer be lost, its retry gets the original grant rather than a second
//! level. Between two polls the request leaves the server's queue for an instant: FIFO
//! order holds within each poll, i.e. for waits up to the server's bound (10 minutes by
//! default). Requests that bring no answer (connection failures, `503`) are retried with
//! the same request id: a wait for as long as its bound allows, a wait forever for as long
//! as the owner's lease lasts, a try for [`RemoteConfig::try_retry_window`].
//!
//! # Cancel safety
//!
//! Dropping an acquire future withdraws the request (the server sees the connection close
//! and cancels the wait). A grant raced by the drop is released: one whose answer had
//! started to arrive is read and released; one the server made an instant before it saw
//! the connection close, whose answer was lost, is looked for 50 ms and 1 s later (a status
//! read, then the request again as a try with the same request id, which answers the
//! original grant) and released. Should a server see the close later still, that grant
//! lasts until the owner's session ends.
//!
//! # What the HTTP API does not offer
//!
//! Lock-delay is configured per namespace on the server, not per request:
//! [`AcquireOptions::lock_delay`] is [`Error::NotSupported`], and [`capabilities`] says so.
//! Key names are those of DESIGN.md §2 except `.` and `..`, which no URL can carry as a
//! path segment.

mod acquire;
mod guard;
mod http;
mod session;
mod wire;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use guard::RemoteGuard;
use http::Http;
use session::Owner;
use tumbler_core::OwnerId;

use crate::error::{Error, Result};
use crate::locker::{Capabilities, Locker};
use crate::options::AcquireOptions;

/// What the remote backend offers: everything the server's engine does, except what the
/// HTTP API cannot express or a real network cannot promise.
///
/// - `lock_delay`: **off**. The server applies lock-delay per namespace, from its own
///   configuration (`tumbler serve --lock-delay NS=DUR`); an acquire cannot ask for one.
/// - `virtual_time`: **off**. Waits happen on the server, in real time, over real sockets;
///   tokio's paused clock cannot drive them.
/// - `fifo`: on. The server's queues are FIFO; a wait longer than the server's long-poll
///   bound re-enters the queue at each new poll (see "Waiting" above).
/// - `deadlock_detection`, `semaphores`, `ttl`, `fencing_tokens`, `multi_key`: on, decided
///   by the server's engine and carried by the API as they are.
/// - `request_ids`: on. The server answers a retried request id with the original grant;
///   the client relies on it for its own retries.
pub fn capabilities() -> Capabilities {
    Capabilities { lock_delay: false, virtual_time: false, ..Capabilities::full("remote") }
}

/// Rounds a duration up to whole milliseconds, at least one (a wire bound of 0 means
/// "no wait", and a TTL of 0 is invalid).
pub(crate) fn ceil_ms(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

/// How the client talks to the server. Start from [`RemoteConfig::default`] and set what
/// differs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RemoteConfig {
    /// The lease of each owner's session: the server ends the session (releasing its holds)
    /// this long after the last keep-alive. The client renews it every third of this, and
    /// reports its holds lost when renewals have failed for this long. Default 10 s.
    pub session_ttl: Duration,
    /// Bound on a request that does not wait (and added to a long-poll's own bound).
    /// Default 10 s.
    pub request_timeout: Duration,
    /// Bound on opening a connection. Default 5 s.
    pub connect_timeout: Duration,
    /// The longest long-poll to ask for; at most the server's bound (`max_wait_ms`,
    /// 10 minutes by default). Default 10 minutes.
    pub max_wait: Duration,
    /// How long a try keeps retrying when it gets no answer (connection failures, `503`).
    /// Default 2 s.
    pub try_retry_window: Duration,
    /// A label for the sessions, shown by the server in listings and logs.
    pub label: Option<String>,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            session_ttl: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_wait: Duration::from_secs(600),
            try_retry_window: Duration::from_secs(2),
            label: None,
        }
    }
}

/// Locks of one namespace on one lock server. Cheap to clone: clones share the connection
/// pool and configuration.
#[derive(Clone)]
pub struct RemoteLocks {
    http: Arc<Http>,
}

impl fmt::Debug for RemoteLocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteLocks")
            .field("base_url", &self.http.base())
            .field("namespace", &self.http.namespace())
            .finish()
    }
}

impl RemoteLocks {
    /// Locks of `namespace` on the server at `base_url` (`http://HOST:PORT`, optionally with
    /// a path prefix), with the default configuration. Nothing is sent yet.
    ///
    /// # Errors
    /// `invalid_argument` naming `base_url` (not an `http://` URL) or `namespace`.
    pub fn new(base_url: &str, namespace: &str) -> Result<Self> {
        RemoteLocks::with_config(base_url, namespace, RemoteConfig::default())
    }

    /// As [`RemoteLocks::new`], configured.
    ///
    /// # Errors
    /// As [`RemoteLocks::new`]; `invalid_argument` naming `session_ttl` when it is below
    /// 10 ms.
    pub fn with_config(base_url: &str, namespace: &str, config: RemoteConfig) -> Result<Self> {
        if config.session_ttl < Duration::from_millis(10) {
            return Err(Error::InvalidArgument { field: "session_ttl", reason: "must be at least 10 ms".into() });
        }
        Ok(RemoteLocks { http: Arc::new(Http::new(base_url, namespace, config)?) })
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        self.http.base()
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        self.http.namespace()
    }

    /// What the remote backend offers ([`capabilities`]).
    pub fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    /// A new owner with a generated id (`remote-` and 32 random hex digits), in a new
    /// session. Must be called within a tokio runtime (the keep-alive runs there).
    ///
    /// # Errors
    /// When the session cannot be opened: backend errors for an unreachable server, or the
    /// server's refusal (`limit_exceeded` when it has too many sessions).
    pub async fn owner(&self) -> Result<RemoteLocker> {
        let id = OwnerId::new(format!("remote-{:032x}", rand::random::<u128>())).expect("BUG: generated ids are valid");
        self.make_owner(id).await
    }

    /// A new owner with a given id (GS2's transaction id), in a new session of its own.
    /// Its acquires re-enter holds of that id made in the same session; the server refuses
    /// (`invalid_argument` naming `session`) a key the id holds in another session, so do
    /// not make two live owners with one id.
    ///
    /// # Errors
    /// `invalid_argument` for a malformed id; as [`RemoteLocks::owner`].
    pub async fn owner_named(&self, id: &str) -> Result<RemoteLocker> {
        self.make_owner(OwnerId::new(id)?).await
    }

    async fn make_owner(&self, id: OwnerId) -> Result<RemoteLocker> {
        let owner = Owner::open(self.http.clone(), id).await?;
        Ok(RemoteLocker { life: Arc::new(Life { owner: owner.clone() }), owner })
    }
}

/// The owner's life: dropped with the last [`RemoteLocker`] clone (guards do not keep it),
/// and that ends the owner.
struct Life {
    owner: Arc<Owner>,
}

impl Drop for Life {
    fn drop(&mut self) {
        self.owner.end_in_background();
    }
}

/// One owner on the lock server: an owner id and a session. Clones are the same owner.
///
/// When the last clone is dropped the owner ends: its session is closed in the background
/// (with a tokio runtime at hand; otherwise the server ends it when its lease runs out),
/// which releases everything it holds and cancels its waits; its guards, if any are left,
/// report [`LostReason::OwnerEnded`](crate::LostReason).
#[derive(Clone)]
pub struct RemoteLocker {
    owner: Arc<Owner>,
    life: Arc<Life>,
}

impl fmt::Debug for RemoteLocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteLocker").field("owner", &self.owner.id).field("session", &self.session_id()).finish()
    }
}

impl RemoteLocker {
    /// This owner's id.
    pub fn id(&self) -> &OwnerId {
        &self.owner.id
    }

    /// The id of the owner's current session (`goodbye` moves the owner to a new one), or
    /// `None` once the owner ended.
    pub fn session_id(&self) -> Option<String> {
        self.owner.session_id()
    }

    /// Why the owner ended, if it did: its session was ended by the server
    /// (`session_ended`), its lease ran out unrenewed (`connection_lost`), or it was closed.
    /// An ended owner's acquires fail with `session_expired`; make a new owner.
    pub fn ended(&self) -> Option<crate::LostReason> {
        self.owner.ended()
    }

    /// Ends the owner now and waits until the server closed its session (releasing its
    /// holds and cancelling its waits). Other clones of this locker can no longer acquire.
    ///
    /// # Errors
    /// Backend failures; the session then ends when its lease runs out.
    pub async fn close(self) -> Result<()> {
        self.life.owner.close().await
    }
}

impl Locker for RemoteLocker {
    type Key = String;
    type Guard = RemoteGuard;

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    fn owner_id(&self) -> &str {
        self.owner.id.as_str()
    }

    async fn acquire(&self, key: String, options: AcquireOptions) -> Result<RemoteGuard> {
        acquire::acquire(&self.owner, vec![key], false, options).await
    }

    /// Acquires every key in one request, all or nothing (the server decides). A key named
    /// twice counts once; the guard's keys and tokens follow the first occurrences.
    async fn acquire_all(&self, keys: Vec<String>, options: AcquireOptions) -> Result<RemoteGuard> {
        let mut unique: Vec<String> = Vec::with_capacity(keys.len());
        for key in keys {
            if !unique.contains(&key) {
                unique.push(key);
            }
        }
        acquire::acquire(&self.owner, unique, true, options).await
    }

    /// Releases every hold of the owner (each explicitly, so no lock-delay starts), cancels
    /// its waits (they fail with `session_expired`), and moves the owner to a new session
    /// — the old one is closed, which ends anything a release missed. Acquires started
    /// while it runs begin in the new session. Returns how many holds ended.
    ///
    /// # Errors
    /// Backend failures. When the new session cannot be opened nothing changed; when the
    /// old one cannot be closed its holds were still released and its waits cancelled
    /// here, and the server ends it when its lease runs out.
    async fn goodbye(&self) -> Result<usize> {
        self.owner.goodbye().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_to_whole_milliseconds() {
        assert_eq!(ceil_ms(Duration::from_millis(150)), 150);
        assert_eq!(ceil_ms(Duration::from_micros(150_001)), 151);
        assert_eq!(ceil_ms(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_ms(Duration::ZERO), 1);
        assert_eq!(ceil_ms(Duration::MAX), u64::MAX);
    }

    #[test]
    fn only_lock_delay_and_virtual_time_are_off() {
        let caps = capabilities();
        assert_eq!(caps, Capabilities { lock_delay: false, virtual_time: false, ..Capabilities::full("remote") });
        assert_eq!(caps.backend, "remote");
    }

    #[test]
    fn a_too_short_session_ttl_is_refused() {
        let config = RemoteConfig { session_ttl: Duration::from_millis(5), ..RemoteConfig::default() };
        let e = RemoteLocks::with_config("http://127.0.0.1:1", "ns", config).expect_err("too short");
        assert!(matches!(e, Error::InvalidArgument { field: "session_ttl", .. }), "{e:?}");
    }
}
