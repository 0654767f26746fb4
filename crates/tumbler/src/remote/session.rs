//! One owner's life on the server: its session lease and the keep-alive that renews it,
//! the holds it knows it has, and the watch over their TTLs.
//!
//! The owner's state changes under one lock, and every change that ends what the owner
//! had — `goodbye` moving it to a fresh session, its end, the loss of its lease — bumps a
//! *generation*. Acquires carry the generation they started in and give up with
//! `session_expired` when it changes, so nothing granted in an ended session ever turns
//! into a guard.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use reqwest::Method;
use serde_json::Value;
use tokio::sync::{watch, RwLock};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tumbler_core::{LostReason, Mode, OwnerId};

use super::http::{Failure, Http};
use super::wire::{
    CountAnswer, HoldAnswer, OpenSession, RefreshAnswer, RefreshBody, ReleaseBody, SessionAnswer, StatusAnswer,
};
use crate::error::{Error, Result};
use crate::lost::{HoldId, OwnerSignals};

/// A session lease as the client knows it.
#[derive(Clone, Debug)]
struct Lease {
    id: String,
    /// When the last successful open or keep-alive was *sent*: the server's lease runs
    /// from a later instant, so `renewed + ttl` is a conservative end.
    renewed: Instant,
    ttl: Duration,
}

impl Lease {
    fn until(&self) -> Instant {
        self.renewed + self.ttl
    }
}

/// A hold of the owner, by key and mode kind (an owner may hold a key in several modes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct HoldKey {
    key: String,
    kind: &'static str,
}

/// What the owner knows of one of its holds.
#[derive(Debug)]
struct Hold {
    /// Names the hold in [`OwnerSignals`]: unique per owner (fencing tokens are unique per
    /// key only).
    local: u64,
    token: u64,
    mode: Mode,
    /// Levels held, as the server last said.
    count: u32,
    /// Live guards standing for the hold.
    guards: usize,
    /// A conservative local expiry for TTL holds (the instant the granting request was
    /// sent, plus the TTL).
    expires: Option<Instant>,
    watcher: Option<AbortHandle>,
}

struct State {
    lease: Option<Lease>,
    /// Why the owner ended, once it has.
    ended: Option<LostReason>,
    generation: u64,
    holds: HashMap<HoldKey, Hold>,
    next_hold: u64,
}

/// The session an acquire runs in.
#[derive(Clone, Debug)]
pub(super) struct Ticket {
    pub session: String,
    pub generation: u64,
}

/// One key of a guard: the hold it stands for.
#[derive(Clone, Debug)]
pub(super) struct Held {
    pub key: String,
    pub token: u64,
    pub local: u64,
}

impl Held {
    pub(super) fn hold_id(&self) -> HoldId {
        hold_id(self.local)
    }
}

fn hold_id(local: u64) -> HoldId {
    (local, 0)
}

/// One owner: its id, its session, its holds, and the signals its guards wait on.
pub(super) struct Owner {
    pub(super) http: Arc<Http>,
    pub(super) id: OwnerId,
    pub(super) signals: OwnerSignals,
    state: Mutex<State>,
    generation: watch::Sender<u64>,
    /// Held for writing while `goodbye` moves the owner to a new session, so that acquires
    /// starting meanwhile begin in the new one.
    switching: RwLock<()>,
    keepalive: Mutex<Option<AbortHandle>>,
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owner").field("id", &self.id).field("session", &self.session_id()).finish()
    }
}

/// Opens a session on the server.
async fn open_session(http: &Http) -> Result<Lease> {
    let ttl_ms = u64::try_from(http.config.session_ttl.as_millis()).unwrap_or(u64::MAX);
    let body = OpenSession { ttl_ms, label: http.config.label.as_deref() };
    let sent = Instant::now();
    let answer: SessionAnswer = http.call(Method::POST, &http.sessions_url(), Some(&body)).await?;
    Ok(Lease { id: answer.id, renewed: sent, ttl: Duration::from_millis(answer.ttl_ms.min(ttl_ms)) })
}

/// Ends a session on the server; one that is already gone counts as ended.
async fn close_session(http: &Http, id: &str) -> Result<()> {
    match http.call::<(), Value>(Method::DELETE, &http.session_url(id), None).await {
        Ok(_) | Err(Failure::Answer(Error::SessionExpired | Error::NotHeld)) => Ok(()),
        Err(failure) => Err(failure.into()),
    }
}

/// Ends a session in the background, if a runtime is at hand.
fn close_in_background(http: &Arc<Http>, id: String) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let http = http.clone();
        runtime.spawn(async move {
            let _ = close_session(&http, &id).await;
        });
    }
}

impl Owner {
    /// Opens a session for owner `id` and starts keeping it alive.
    pub(super) async fn open(http: Arc<Http>, id: OwnerId) -> Result<Arc<Owner>> {
        let lease = open_session(&http).await?;
        let owner = Arc::new(Owner {
            http,
            id,
            signals: OwnerSignals::default(),
            state: Mutex::new(State {
                lease: Some(lease),
                ended: None,
                generation: 0,
                holds: HashMap::new(),
                next_hold: 0,
            }),
            generation: watch::channel(0).0,
            switching: RwLock::new(()),
            keepalive: Mutex::new(None),
        });
        let task = tokio::spawn(keep_alive(Arc::downgrade(&owner)));
        *owner.keepalive.lock() = Some(task.abort_handle());
        Ok(owner)
    }

    /// The current session's id, unless the owner ended.
    pub(super) fn session_id(&self) -> Option<String> {
        self.state.lock().lease.as_ref().map(|l| l.id.clone())
    }

    /// The generation of the owner's current session, unless the owner ended.
    pub(super) fn generation(&self) -> Option<u64> {
        let state = self.state.lock();
        state.ended.is_none().then_some(state.generation)
    }

    /// Whether the server lists this owner among the holders of `key`.
    pub(super) async fn holds_key(&self, key: &str) -> Result<bool, Failure> {
        let url = self.http.lock_url(key, None);
        match self.http.call::<(), StatusAnswer>(Method::GET, &url, None).await {
            Ok(status) => Ok(status.holders.iter().any(|h| h.owner == self.id.as_str())),
            Err(Failure::Answer(Error::NotHeld)) => Ok(false),
            Err(failure) => Err(failure),
        }
    }

    /// Why the owner ended, if it did.
    pub(super) fn ended(&self) -> Option<LostReason> {
        self.state.lock().ended
    }

    /// The session to start an acquire in (waiting for a `goodbye` in progress to finish).
    ///
    /// # Errors
    /// `session_expired` once the owner ended.
    pub(super) async fn ticket(&self) -> Result<Ticket> {
        let _switch = self.switching.read().await;
        let state = self.state.lock();
        match (&state.lease, state.ended) {
            (Some(lease), None) => Ok(Ticket { session: lease.id.clone(), generation: state.generation }),
            _ => Err(Error::SessionExpired),
        }
    }

    /// Completes once the session of `generation` is no longer the owner's (replaced by
    /// `goodbye`, or ended).
    pub(super) async fn superseded(&self, generation: u64) {
        let mut changes = self.generation.subscribe();
        // The sender lives as long as `self`, so this only returns on a change.
        let _ = changes.wait_for(|current| *current != generation).await;
    }

    fn bump(&self, state: &mut State) {
        state.generation += 1;
        self.generation.send_replace(state.generation);
    }

    /// Records the holds of a grant made in `ticket`'s session, as one guard's. `None`
    /// when that session is no longer the owner's: the grant ended with it (or will, once
    /// the server ends the session), and must not become a guard.
    pub(super) fn register(
        self: &Arc<Self>,
        ticket: &Ticket,
        keys: &[String],
        answers: &[HoldAnswer],
        mode: Mode,
        expires: Option<Instant>,
    ) -> Option<Vec<Held>> {
        let mut state = self.state.lock();
        if state.ended.is_some() || state.generation != ticket.generation {
            return None;
        }
        let state = &mut *state;
        let mut held = Vec::with_capacity(keys.len());
        for (key, answer) in keys.iter().zip(answers) {
            let hk = HoldKey { key: key.clone(), kind: mode.name() };
            let known = state.holds.get(&hk).is_some_and(|h| h.token == answer.fencing_token);
            if !known {
                if let Some(old) = state.holds.remove(&hk) {
                    // The server gave a new token: the hold this owner knew ended — unseen,
                    // if the owner believed it still had levels of it.
                    let lost = (old.count > 0).then(|| ended_reason(&old, state.ended));
                    self.forget_hold(&old, lost);
                }
                state.next_hold += 1;
                state.holds.insert(
                    hk.clone(),
                    Hold {
                        local: state.next_hold,
                        token: answer.fencing_token,
                        mode,
                        count: 0,
                        guards: 0,
                        expires,
                        watcher: None,
                    },
                );
            }
            let hold = state.holds.get_mut(&hk).expect("BUG: the hold was just found or inserted");
            if hold.guards > 0 {
                // A re-entry or a retried grant: another guard already stands for this hold.
                self.signals.add_sibling(hold_id(hold.local));
            }
            hold.guards += 1;
            hold.count = answer.count;
            if known {
                // Re-entry keeps the later expiry; a hold without a TTL never expires.
                hold.expires = match (hold.expires, expires) {
                    (Some(old), Some(new)) => Some(old.max(new)),
                    _ => None,
                };
            }
            if hold.expires.is_some() && hold.watcher.is_none() {
                hold.watcher =
                    Some(tokio::spawn(watch_expiry(Arc::downgrade(self), hk.clone(), hold.local)).abort_handle());
            }
            held.push(Held { key: key.clone(), token: answer.fencing_token, local: hold.local });
        }
        Some(held)
    }

    fn forget_hold(&self, hold: &Hold, lost: Option<LostReason>) {
        if let Some(watcher) = &hold.watcher {
            watcher.abort();
        }
        if let Some(reason) = lost {
            self.signals.mark(hold_id(hold.local), reason);
        }
    }

    /// A guard of `holds` is gone: the holds it was the last guard of are forgotten once
    /// the server holds no level of them.
    pub(super) fn guard_gone(&self, holds: &[Held], mode: Mode) {
        {
            let mut state = self.state.lock();
            for held in holds {
                let hk = HoldKey { key: held.key.clone(), kind: mode.name() };
                if let Some(hold) = state.holds.get_mut(&hk).filter(|h| h.local == held.local) {
                    hold.guards = hold.guards.saturating_sub(1);
                    if hold.guards == 0 && hold.count == 0 {
                        let hold = state.holds.remove(&hk).expect("BUG: the hold was just found");
                        self.forget_hold(&hold, None);
                    }
                }
            }
        }
        self.signals.forget(holds.iter().map(Held::hold_id));
    }

    /// The server says `held`'s hold is gone. If the owner believed it held, the hold ended
    /// without a release: it is marked lost (and `lost` is returned); otherwise it was
    /// released through another guard of it (`not_held`).
    fn hold_gone(&self, held: &Held, mode: Mode) -> Error {
        let mut state = self.state.lock();
        let hk = HoldKey { key: held.key.clone(), kind: mode.name() };
        match state.holds.get(&hk).filter(|h| h.local == held.local) {
            Some(hold) if hold.count > 0 => {
                let reason = ended_reason(hold, state.ended);
                let hold = state.holds.remove(&hk).expect("BUG: the hold was just found");
                drop(state);
                self.forget_hold(&hold, Some(reason));
                Error::Lost { reason }
            }
            _ => Error::NotHeld,
        }
    }

    /// Releases one level of `held`'s hold on the server, naming it by its fencing token.
    pub(super) async fn release_level(&self, held: &Held, mode: Mode) -> Result<u32> {
        let body =
            ReleaseBody { owner: self.id.as_str(), mode: mode.name(), limit: mode.limit(), fencing_token: held.token };
        let url = self.http.lock_url(&held.key, Some("release"));
        match self.http.call::<_, CountAnswer>(Method::POST, &url, Some(&body)).await {
            Ok(CountAnswer { count }) => {
                let mut state = self.state.lock();
                let hk = HoldKey { key: held.key.clone(), kind: mode.name() };
                if let Some(hold) = state.holds.get_mut(&hk).filter(|h| h.local == held.local) {
                    hold.count = count;
                }
                Ok(count)
            }
            Err(Failure::Answer(Error::NotHeld | Error::NotOwner)) => Err(self.hold_gone(held, mode)),
            Err(failure) => Err(failure.into()),
        }
    }

    /// Extends the TTL of `held`'s hold to `ttl` from now (never shortens it).
    pub(super) async fn refresh(self: &Arc<Self>, held: &Held, mode: Mode, ttl: Duration) -> Result<()> {
        let ttl_ms = super::ceil_ms(ttl);
        let body = RefreshBody { owner: self.id.as_str(), ttl_ms, mode: mode.name(), limit: mode.limit() };
        let url = self.http.lock_url(&held.key, Some("refresh"));
        let sent = Instant::now();
        match self.http.call::<_, RefreshAnswer>(Method::POST, &url, Some(&body)).await {
            Ok(_) => {
                let mut state = self.state.lock();
                let hk = HoldKey { key: held.key.clone(), kind: mode.name() };
                if let Some(hold) = state.holds.get_mut(&hk).filter(|h| h.local == held.local) {
                    // The server extends, never shortens: the later of the two stands, and
                    // the watcher (sleeping until the earlier one) need not start over.
                    hold.expires = hold.expires.max(Some(sent + ttl));
                }
                Ok(())
            }
            Err(Failure::Answer(Error::NotHeld | Error::NotOwner)) => Err(self.hold_gone(held, mode)),
            Err(failure) => Err(failure.into()),
        }
    }

    /// Releases, in the background, a grant that no guard will stand for: the answer of a
    /// request whose caller went away, or of one made in a session the owner no longer has.
    /// A grant that only repeated a level a guard already stands for (a retried request id)
    /// is left alone.
    pub(super) fn release_orphan(self: &Arc<Self>, answers: Vec<HoldAnswer>, mode: Mode) {
        let owner = self.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            for answer in answers {
                let repeated = {
                    let state = owner.state.lock();
                    let hk = HoldKey { key: answer.key.clone(), kind: mode.name() };
                    state.holds.get(&hk).is_some_and(|h| h.token == answer.fencing_token && h.count >= answer.count)
                };
                if repeated {
                    continue;
                }
                let body = ReleaseBody {
                    owner: owner.id.as_str(),
                    mode: mode.name(),
                    limit: mode.limit(),
                    fencing_token: answer.fencing_token,
                };
                let url = owner.http.lock_url(&answer.key, Some("release"));
                let _ = owner.http.call::<_, CountAnswer>(Method::POST, &url, Some(&body)).await;
            }
        });
    }

    /// Releases everything the owner holds and cancels its waits, then carries on in a new
    /// session. Returns how many holds ended.
    pub(super) async fn goodbye(self: &Arc<Self>) -> Result<usize> {
        let _switch = self.switching.write().await;
        if self.ended().is_some() {
            return Err(Error::SessionExpired);
        }
        let fresh = open_session(&self.http).await?;
        let (old_session, old_holds) = {
            let mut state = self.state.lock();
            if state.ended.is_some() {
                drop(state);
                close_in_background(&self.http, fresh.id);
                return Err(Error::SessionExpired);
            }
            let old_session = state.lease.replace(fresh).map(|l| l.id);
            let old_holds: Vec<(HoldKey, Hold)> = state.holds.drain().collect();
            // From here on, acquires of the old session give up and their grants are not
            // turned into guards; the guards of the old holds learn they are gone.
            self.bump(&mut state);
            for (_, hold) in &old_holds {
                self.forget_hold(hold, Some(LostReason::Goodbye));
            }
            (old_session, old_holds)
        };
        // Release explicitly first: a hold ended by the session's end counts as its owner's
        // death, which starts the namespace's lock-delay; a goodbye is a release.
        let releases =
            old_holds.iter().filter(|(_, h)| h.count > 0).map(|(hk, hold)| self.release_every_level(hk, hold));
        futures::future::join_all(releases).await;
        let ended = old_holds.iter().filter(|(_, h)| h.count > 0).count();
        // Ending the old session cancels its waits on the server and ends any hold the
        // releases missed (a grant still on its way to an abandoned request).
        match old_session {
            Some(id) => close_session(&self.http, &id).await.map(|()| ended),
            None => Ok(ended),
        }
    }

    async fn release_every_level(&self, hk: &HoldKey, hold: &Hold) {
        let body = ReleaseBody {
            owner: self.id.as_str(),
            mode: hold.mode.name(),
            limit: hold.mode.limit(),
            fencing_token: hold.token,
        };
        let url = self.http.lock_url(&hk.key, Some("release"));
        // Bounded: levels a concurrent re-entry adds meanwhile are ended with the session.
        for _ in 0..hold.count.saturating_add(8) {
            match self.http.call::<_, CountAnswer>(Method::POST, &url, Some(&body)).await {
                Ok(CountAnswer { count }) if count > 0 => continue,
                _ => return,
            }
        }
    }

    /// Ends the owner for `reason`: its guards are told, its acquires give up, its
    /// keep-alive stops. Returns the session to close on the server, unless the owner had
    /// already ended.
    fn end(&self, reason: LostReason, generation: Option<u64>) -> Option<String> {
        let (session, holds) = {
            let mut state = self.state.lock();
            if state.ended.is_some() || generation.is_some_and(|g| g != state.generation) {
                return None;
            }
            state.ended = Some(reason);
            self.bump(&mut state);
            let holds: Vec<Hold> = state.holds.drain().map(|(_, h)| h).collect();
            (state.lease.take().map(|l| l.id), holds)
        };
        for hold in &holds {
            self.forget_hold(hold, None);
        }
        self.signals.mark_all(reason);
        if let Some(task) = self.keepalive.lock().take() {
            task.abort();
        }
        session
    }

    /// The owner's handle is gone: ends it and closes its session in the background (when
    /// a runtime is at hand; otherwise the server ends it when its lease runs out).
    pub(super) fn end_in_background(&self) {
        if let Some(id) = self.end(LostReason::OwnerEnded, None) {
            close_in_background(&self.http, id);
        }
    }

    /// Ends the owner now and closes its session.
    pub(super) async fn close(&self) -> Result<()> {
        match self.end(LostReason::OwnerEnded, None) {
            Some(id) => close_session(&self.http, &id).await,
            None => Ok(()),
        }
    }

    /// The lease of `generation` was lost for `reason` (the server ended the session, or
    /// keep-alives failed until the lease ran out). A lease `goodbye` already replaced is
    /// no loss. Returns whether the owner ended.
    fn lose(&self, generation: u64, reason: LostReason) -> bool {
        match self.end(reason, Some(generation)) {
            Some(id) => {
                // Best effort: when the server is only unreachable, this frees the holds
                // before the lease runs out there.
                close_in_background(&self.http, id);
                true
            }
            None => self.ended().is_some(),
        }
    }

    fn lease(&self) -> Option<(Lease, u64)> {
        let state = self.state.lock();
        state.lease.clone().map(|l| (l, state.generation))
    }

    fn renewed(&self, generation: u64, id: &str, sent: Instant, ttl: Duration) {
        let mut state = self.state.lock();
        if state.generation != generation {
            return;
        }
        if let Some(lease) = state.lease.as_mut().filter(|l| l.id == id) {
            lease.renewed = lease.renewed.max(sent);
            lease.ttl = ttl;
        }
    }

    /// The local expiry and the token of the hold `local` of `hk`, if it still has both.
    fn expiry(&self, hk: &HoldKey, local: u64) -> Option<(Instant, u64)> {
        let state = self.state.lock();
        if state.ended.is_some() {
            return None;
        }
        state.holds.get(hk).filter(|h| h.local == local).and_then(|h| h.expires.map(|at| (at, h.token)))
    }

    fn set_expiry(&self, hk: &HoldKey, local: u64, expires: Option<Instant>) {
        let mut state = self.state.lock();
        if let Some(hold) = state.holds.get_mut(hk).filter(|h| h.local == local) {
            hold.expires = expires;
        }
    }

    /// The hold `local` of `hk` expired: forgets it and tells its guards.
    fn expired(&self, hk: &HoldKey, local: u64) {
        let mut state = self.state.lock();
        if state.holds.get(hk).is_some_and(|h| h.local == local) {
            let hold = state.holds.remove(hk).expect("BUG: the hold was just found");
            drop(state);
            // This task is the watcher: it need not be aborted.
            self.signals.mark(hold_id(hold.local), LostReason::Expired);
        }
    }

    /// Whether the server still has this owner's hold of `key` with `token`, and until when.
    async fn server_hold(&self, key: &str, token: u64) -> Result<ServerHold, Failure> {
        let url = self.http.lock_url(key, None);
        match self.http.call::<(), StatusAnswer>(Method::GET, &url, None).await {
            Ok(status) => {
                let mine = status.holders.iter().find(|h| h.owner == self.id.as_str() && h.fencing_token == token);
                Ok(match mine {
                    None => ServerHold::Gone,
                    Some(h) => match h.expires_at_ms {
                        None => ServerHold::NoTtl,
                        Some(at) => {
                            // Only a hint for when to look again: wall clocks may disagree.
                            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                            ServerHold::Expires(Duration::from_millis(at.saturating_sub(now)))
                        }
                    },
                })
            }
            Err(Failure::Answer(Error::NotHeld)) => Ok(ServerHold::Gone),
            Err(failure) => Err(failure),
        }
    }
}

/// What the server says of a hold whose local expiry passed.
enum ServerHold {
    Gone,
    NoTtl,
    Expires(Duration),
}

/// Why a hold the owner believed it had is gone: its TTL, its owner's end, or else a
/// release it did not ask for (an administrator's force release).
fn ended_reason(hold: &Hold, ended: Option<LostReason>) -> LostReason {
    if let Some(reason) = ended {
        return reason;
    }
    match hold.expires {
        Some(at) if Instant::now() >= at => LostReason::Expired,
        _ => LostReason::ForceReleased,
    }
}

/// Tells the guards of a TTL hold when it expires. The local expiry is conservative (it
/// runs from when the request was sent), so when it passes the server is asked, and the
/// hold is reported lost only once the server no longer has it: the lost signal never
/// fires while the hold lasts, and fires within a few milliseconds of its end.
async fn watch_expiry(owner: Weak<Owner>, hk: HoldKey, local: u64) {
    loop {
        let Some((at, _)) = owner.upgrade().and_then(|o| o.expiry(&hk, local)) else { return };
        tokio::time::sleep_until(at).await;
        let Some(o) = owner.upgrade() else { return };
        let Some((now_at, token)) = o.expiry(&hk, local) else { return };
        if now_at != at {
            // Extended (re-entry) or refreshed meanwhile.
            continue;
        }
        let next = match o.server_hold(&hk.key, token).await {
            Ok(ServerHold::Gone) => {
                o.expired(&hk, local);
                return;
            }
            Ok(ServerHold::NoTtl) => None,
            // The server's expiry is within a round trip of the local one, unless the hold
            // was extended elsewhere; the wall-clock hint is capped so that a clock skew
            // cannot delay the signal by more than that.
            Ok(ServerHold::Expires(left)) => Some(left.clamp(Duration::from_millis(2), Duration::from_millis(250))),
            Err(_) => Some(Duration::from_millis(50)),
        };
        let next = next.map(|left| Instant::now() + left);
        // Unless the hold changed meanwhile, look again then (or never, without a TTL).
        if o.expiry(&hk, local).is_some_and(|(current, _)| current == at) {
            o.set_expiry(&hk, local, next);
        }
        if next.is_none() {
            return;
        }
    }
}

/// Renews the owner's lease every third of its TTL. A keep-alive answered `410` (the
/// server ended the session) ends the owner with [`LostReason::SessionEnded`]; keep-alives
/// that fail until the locally computed end of the lease end it with
/// [`LostReason::ConnectionLost`]. Either way every guard of the owner is told.
async fn keep_alive(owner: Weak<Owner>) {
    let mut retry_at: Option<Instant> = None;
    loop {
        let Some((lease, generation)) = owner.upgrade().and_then(|o| o.lease()) else { return };
        let due = retry_at.unwrap_or(lease.renewed + lease.ttl / 3);
        tokio::time::sleep_until(due).await;
        let Some(o) = owner.upgrade() else { return };
        match o.lease() {
            Some((current, g)) if g == generation && current.id == lease.id && current.renewed == lease.renewed => {}
            Some(_) => {
                // goodbye moved the owner to a new session meanwhile.
                retry_at = None;
                continue;
            }
            None => return,
        }
        let until = lease.until();
        let sent = Instant::now();
        let url = o.http.keepalive_url(&lease.id);
        let answer = tokio::select! {
            answer = o.http.call::<(), SessionAnswer>(Method::POST, &url, None) => Some(answer),
            () = tokio::time::sleep_until(until) => None,
        };
        match answer {
            Some(Ok(answer)) => {
                o.renewed(generation, &lease.id, sent, Duration::from_millis(answer.ttl_ms));
                retry_at = None;
            }
            Some(Err(Failure::Answer(Error::SessionExpired))) => {
                if o.lose(generation, LostReason::SessionEnded) {
                    return;
                }
                retry_at = None;
            }
            Some(Err(_)) | None => {
                let now = Instant::now();
                if now >= until {
                    if o.lose(generation, LostReason::ConnectionLost) {
                        return;
                    }
                    retry_at = None;
                } else {
                    let pause = (lease.ttl / 10).max(Duration::from_millis(20));
                    retry_at = Some((now + pause).min(until));
                }
            }
        }
    }
}
