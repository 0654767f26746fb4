//! Acquiring over HTTP: waits as long-polls, retries that never count twice, and grants
//! that are never lost to a dropped future.
//!
//! # Where an acquire can be dropped, and what then happens to a grant
//!
//! Each request runs in a task of its own ([`exchange`]), and the acquire future only
//! waits for its outcome. If the acquire future is dropped:
//!
//! - *before the answer starts to arrive*, the task drops the request: the connection
//!   closes and the server cancels the wait (DESIGN.md §4). But the server may have
//!   granted it an instant before it saw the connection close, its answer then lost on
//!   the way: so a little later ([`RECONCILE_AFTER`]) the task looks for that grant —
//!   only if the key's status shows this owner among its holders does it send the
//!   request again as a try with the *same request id*, which answers the original grant
//!   if there was one (or re-enters the owner's hold), and releases what it gets;
//! - *once it has started to arrive*, the task reads it to the end anyway, and releases a
//!   grant it carries, by fencing token, since no guard will stand for it;
//! - *between two requests* (a pause before a retry, the next long-poll of a long wait)
//!   nothing is granted to anyone.
//!
//! The outcome is turned into a guard in the same poll that receives it, so there is no
//! await point between a grant and its guard. A grant made in a session the owner no
//! longer has (after `goodbye`, or the owner's end) never becomes a guard: the acquire
//! fails with `session_expired` and the grant is released.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tumbler_core::{Mode, Wait};

use super::guard::RemoteGuard;
use super::http::{encode, read, transport, Failure};
use super::session::{Owner, Ticket};
use super::wire::{AcquireBody, HoldAnswer, HoldsAnswer};
use super::{ceil_ms, http::validate_key};
use crate::error::{Error, Result};
use crate::options::AcquireOptions;

/// The first pause before retrying a request that brought no answer; it doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(25);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How long after abandoning a request its possible grant is looked for: long enough for
/// the server to have seen the connection close, so the request is either cancelled or
/// granted by then.
const RECONCILE_AFTER: Duration = Duration::from_millis(50);

/// What finds, later, the grant of a request whose answer was lost: the request again as
/// a try, with the same request id.
#[derive(Clone)]
struct Probe {
    url: String,
    body: Vec<u8>,
    /// The key whose status tells whether the owner holds anything that could be the grant.
    key: String,
    generation: u64,
    multi: bool,
    mode: Mode,
}

/// Acquires `keys` (one, or several all-or-nothing when `multi`) for `owner`.
pub(super) async fn acquire(
    owner: &Arc<Owner>,
    keys: Vec<String>,
    multi: bool,
    options: AcquireOptions,
) -> Result<RemoteGuard> {
    let mode = options.mode_or_default();
    check(&keys, &options)?;
    let ttl_ms = options.ttl.map(ceil_ms);
    let request_id = options.request_id.clone().unwrap_or_else(|| format!("rq-{:032x}", rand::random::<u128>()).into());
    let ticket = owner.ticket().await?;
    let started = Instant::now();
    let deadline = match options.wait {
        Wait::Timeout(d) => Some(started + d),
        Wait::NoWait | Wait::Forever => None,
    };
    let http = &owner.http;
    let url = if multi { http.acquire_all_url() } else { http.lock_url(&keys[0], Some("acquire")) };
    let mut body = AcquireBody {
        keys: multi.then_some(keys.as_slice()),
        owner: owner.id.as_str(),
        session: &ticket.session,
        ttl_ms,
        mode: mode.name(),
        limit: mode.limit(),
        wait_ms: 0,
        request_id: &request_id,
    };
    let probe = Probe {
        url: url.clone(),
        body: encode(&body)?,
        key: keys[0].clone(),
        generation: ticket.generation,
        multi,
        mode,
    };
    let mut backoff = FIRST_BACKOFF;
    let mut retry_until: Option<Instant> = None;
    loop {
        // How long this request may wait on the server: a long wait is a series of
        // long-polls, each as long as the server allows, all with one request id.
        body.wait_ms = match options.wait {
            Wait::NoWait => 0,
            Wait::Timeout(_) => {
                let left = deadline.expect("BUG: a timeout has a deadline").saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout);
                }
                ceil_ms(left).min(http.max_wait_ms())
            }
            Wait::Forever => http.max_wait_ms(),
        };
        let wait_ms = body.wait_ms;
        let timeout = Duration::from_millis(wait_ms) + http.config.request_timeout;
        let request = http.request(Method::POST, &url, Some(&body), timeout)?;
        let sent = Instant::now();
        let outcome = tokio::select! {
            biased;
            () = owner.superseded(ticket.generation) => return Err(Error::SessionExpired),
            outcome = exchange(owner, request, probe.clone()) => outcome,
        };
        let failure = match outcome {
            Ok(grant) => return guard(owner, &ticket, keys, grant.take(), mode, options.ttl.map(|ttl| sent + ttl)),
            Err(failure) => failure,
        };
        match failure {
            Failure::Answer(Error::Timeout) => {
                let more = match deadline {
                    None => options.wait == Wait::Forever,
                    Some(d) => d.saturating_duration_since(Instant::now()) > Duration::from_millis(1),
                };
                if !more {
                    return Err(Error::Timeout);
                }
            }
            Failure::Answer(Error::InvalidArgument { field: "wait", .. })
                if wait_ms > 0 && http.shrink_max_wait(wait_ms) => {}
            failure if failure.is_transient() => {
                // The request may or may not have reached the server: retrying with the
                // same request id gets the original grant if there was one.
                let limit = match options.wait {
                    Wait::NoWait => Some(*retry_until.get_or_insert(Instant::now() + http.config.try_retry_window)),
                    Wait::Timeout(_) => deadline,
                    // Until the owner's lease is lost, which supersedes the ticket.
                    Wait::Forever => None,
                };
                if limit.is_some_and(|limit| Instant::now() + backoff > limit) {
                    // Giving up: the last request may have been granted all the same.
                    tokio::spawn(reconcile(owner.clone(), probe));
                    return Err(failure.into());
                }
                tokio::select! {
                    biased;
                    () = owner.superseded(ticket.generation) => return Err(Error::SessionExpired),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            failure => return Err(failure.into()),
        }
    }
}

/// Checks what needs no server: key names, the mode, the TTL and the wait bound, and
/// options the HTTP API cannot express.
fn check(keys: &[String], options: &AcquireOptions) -> Result<()> {
    if keys.is_empty() {
        return Err(Error::InvalidArgument { field: "keys", reason: "at least one key is required".into() });
    }
    for key in keys {
        validate_key(key)?;
    }
    options.mode_or_default().validate()?;
    if options.ttl.is_some_and(|ttl| ttl.is_zero()) {
        return Err(Error::InvalidArgument { field: "ttl", reason: "must be greater than zero".into() });
    }
    if options.wait == Wait::Timeout(Duration::ZERO) {
        return Err(Error::InvalidArgument { field: "wait", reason: "a zero timeout is a try: use no wait".into() });
    }
    if options.request_id.as_deref().is_some_and(str::is_empty) {
        return Err(Error::InvalidArgument { field: "request_id", reason: "must not be empty".into() });
    }
    if options.lock_delay.is_some() {
        // The server's lock-delay is configured per namespace, not per request.
        return Err(Error::NotSupported { operation: "lock_delay", backend: super::http::BACKEND });
    }
    Ok(())
}

/// Turns a grant into a guard, or releases it when its session is no longer the owner's.
fn guard(
    owner: &Arc<Owner>,
    ticket: &Ticket,
    keys: Vec<String>,
    answers: Vec<HoldAnswer>,
    mode: Mode,
    expires: Option<Instant>,
) -> Result<RemoteGuard> {
    if answers.len() != keys.len() || keys.iter().zip(&answers).any(|(key, answer)| *key != answer.key) {
        let asked: Vec<&str> = keys.iter().map(String::as_str).collect();
        let answered: Vec<&str> = answers.iter().map(|a| a.key.as_str()).collect();
        let message = format!("the lock server answered a grant of {answered:?} for {asked:?}");
        owner.release_orphan(answers, mode);
        return Err(Error::Internal(message));
    }
    match owner.register(ticket, &keys, &answers, mode, expires) {
        Some(holds) => Ok(RemoteGuard::new(owner.clone(), mode, holds)),
        None => {
            owner.release_orphan(answers, mode);
            Err(Error::SessionExpired)
        }
    }
}

/// A grant on its way from a request's task to its acquire. Dropped before the acquire
/// took it — the acquire future was dropped after the task sent it, before receiving it —
/// it releases the grant.
struct Delivery {
    owner: Arc<Owner>,
    mode: Mode,
    answers: Option<Vec<HoldAnswer>>,
}

impl Delivery {
    fn take(mut self) -> Vec<HoldAnswer> {
        self.answers.take().expect("BUG: a delivery is taken once")
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(answers) = self.answers.take() {
            self.owner.release_orphan(answers, self.mode);
        }
    }
}

/// Sends one acquire request in a task of its own and waits for its answer. When this
/// future is dropped before the answer starts to arrive, the request is dropped with it
/// (the server cancels the wait) and its grant, should the server have made one just
/// before, is looked for with `probe`; once the answer is arriving it is read to the end,
/// and a grant nobody takes is released (see [`Delivery`]).
async fn exchange(owner: &Arc<Owner>, request: reqwest::RequestBuilder, probe: Probe) -> Result<Delivery, Failure> {
    let (mut tx, rx) = oneshot::channel();
    let owner = owner.clone();
    let (multi, mode) = (probe.multi, probe.mode);
    tokio::spawn(async move {
        let response = tokio::select! {
            biased;
            response = request.send() => response,
            () = tx.closed() => {
                reconcile(owner, probe).await;
                return;
            }
        };
        let outcome = match response {
            Err(e) => Err(transport(e)),
            Ok(response) => read_grant(response, multi, mode).await,
        };
        // Sent to an acquire that is gone, the delivery is dropped here and releases.
        let _ = tx.send(outcome.map(|answers| Delivery { owner, mode, answers: Some(answers) }));
    });
    rx.await.unwrap_or_else(|_| Err(Failure::Transport("the request's task ended without an answer".into())))
}

/// Reads the answer to an acquire of one key or several.
async fn read_grant(response: reqwest::Response, multi: bool, mode: Mode) -> Result<Vec<HoldAnswer>, Failure> {
    if multi {
        read::<HoldsAnswer>(response, Some(mode)).await.map(|h| h.holds)
    } else {
        read::<HoldAnswer>(response, Some(mode)).await.map(|h| vec![h])
    }
}

/// Finds and releases the grant of an abandoned request, if the server made one. Looks
/// [`RECONCILE_AFTER`] the request was abandoned and once more a second later (should the
/// server have been slow to see the connection close), in the session the request was
/// made in (a session the owner no longer has ends its grants itself). A status read comes
/// first, so that a probe is sent only when the owner holds the key: then the probe, a try
/// with the original request id, answers the original grant, or re-enters the owner's hold
/// — one level either way, released at once (a grant already released answers as a repeat
/// of a level a guard stands for, and is left alone). Best effort: failures are not retried.
async fn reconcile(owner: Arc<Owner>, probe: Probe) {
    for pause in [RECONCILE_AFTER, Duration::from_secs(1)] {
        tokio::time::sleep(pause).await;
        if owner.generation() != Some(probe.generation) {
            return;
        }
        if !matches!(owner.holds_key(&probe.key).await, Ok(true)) {
            continue;
        }
        let http = &owner.http;
        let body = Some(probe.body.clone());
        let request = http.request_encoded(Method::POST, &probe.url, body, http.config.request_timeout);
        let Ok(response) = request.send().await else { continue };
        if let Ok(answers) = read_grant(response, probe.multi, probe.mode).await {
            owner.release_orphan(answers, probe.mode);
        }
    }
}
