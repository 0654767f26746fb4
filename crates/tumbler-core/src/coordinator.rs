//! The coordinator: what spans shards. Waiting requests and their deadlines (except waits
//! for one key with no session or request id, which live in their key's shard:
//! [`RequestId::home`]), sessions, per-namespace counts, deadlock detection, and every
//! operation that needs them.
//!
//! Its operations take every shard of the table (`shards`, indexed by
//! [`Layout::shard_of`]) together with the coordinator itself, so a caller that keeps
//! shards behind separate locks takes all of them (in index order) for these operations.
//! Only the hot single-shard paths of [`Shard`] run without it.

use std::collections::BTreeSet;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;

use crate::config::Config;
use crate::effects::{Effects, LostReason, Wake};
use crate::error::{Error, Holder, Result};
use crate::event::EventKind;
use crate::hash::Map;
use crate::index::UNFILED;
use crate::layout::Layout;
use crate::mode::Mode;
use crate::namespaces::KeyBudget;
use crate::owner::OwnerId;
use crate::request::{Acquire, Acquired, Grant, Granted, RequestId, Wait};
use crate::session::{SessionId, SessionInfo};
use crate::shard::{
    check_compatible_request, record, retried_granted, validate_request, Entry, GrantSpec, Hold, KeyState, LocalWait,
    Occupancy, RestoredHold, Shard, Shards, Timer,
};
use crate::time::Instant;

/// A queued request.
#[derive(Clone, Debug)]
struct Pending<K> {
    owner: OwnerId,
    keys: SmallVec<[K; 1]>,
    mode: Mode,
    ttl: Option<Duration>,
    session: Option<SessionId>,
    deadline: Option<Instant>,
    request_id: Option<Arc<str>>,
    lock_delay: Option<Duration>,
}

impl<K> Pending<K> {
    fn spec(&self) -> GrantSpec<'_> {
        GrantSpec {
            owner: &self.owner,
            mode: self.mode,
            ttl: self.ttl,
            session: self.session,
            request_id: self.request_id.as_ref(),
            lock_delay: self.lock_delay,
        }
    }
}

#[derive(Clone, Debug)]
struct Session {
    ttl: Duration,
    expires_at: Instant,
    holds: usize,
}

/// Who holds and waits for one key, as reported by [`Coordinator::status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyStatus {
    /// The current holds, one per (owner, mode).
    pub holders: Vec<HolderStatus>,
    /// How many requests wait in the key's queue.
    pub waiters: usize,
    /// Until when a lock-delay keeps the key unclaimable, if one is running.
    pub delayed_until: Option<Instant>,
}

/// One hold, as reported by [`Coordinator::status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderStatus {
    /// Owner, mode, count and token.
    pub holder: Holder,
    /// The session the hold belongs to.
    pub session: Option<SessionId>,
    /// When the hold expires, if it has a TTL.
    pub expires_at: Option<Instant>,
    /// The `request_id`s the hold remembers (oldest first), so that a store can keep them
    /// and a retry after a restart is still recognised.
    pub request_ids: Vec<Arc<str>>,
}

/// A queued request as the coordinator's algorithms see it, wherever it lives.
struct Queued<K> {
    owner: OwnerId,
    mode: Mode,
    keys: SmallVec<[K; 1]>,
}

/// What [`Coordinator::unqueue`] does with a key the request leaves idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IdleKeys {
    Drop,
    Keep,
}

/// The cross-shard half of a lock table. See the module documentation.
#[derive(Debug)]
pub struct Coordinator<K> {
    layout: Layout,
    config: Arc<Config<K>>,
    pending: Map<RequestId, Pending<K>>,
    waits_by_owner: Map<OwnerId, SmallVec<[RequestId; 2]>>,
    retries: Map<(OwnerId, Arc<str>), RequestId>,
    deadlines: BTreeSet<(Instant, RequestId)>,
    sessions: Map<SessionId, Session>,
    session_deadlines: BTreeSet<(Instant, SessionId)>,
    /// The per-namespace bound, shared with the shards.
    budget: Option<KeyBudget<K>>,
    /// How many requests live in shards ([`RequestId::home`]); the coordinator keeps the
    /// others in `pending`. Shards lower it when they grant one on their own, which only
    /// ever removes edges from the wait-for graph, so a stale read overstates the count.
    local_waits: Arc<AtomicUsize>,
    last_request: u64,
    last_session: u64,
    /// Owners whose last hold of a key ended while they wait for that key: their requests
    /// there now wait for earlier requests too, which can close a cycle ([`Coordinator::pump`]
    /// looks).
    demoted: Vec<(OwnerId, K)>,
}

impl<K: Hash + Eq + Clone> Coordinator<K> {
    /// A coordinator for a table configured by `config`; make its shards with
    /// [`Coordinator::new_shard`].
    pub fn new(config: Config<K>) -> Self {
        let layout = Layout::new(config.shards);
        Coordinator {
            layout,
            budget: KeyBudget::of(&config),
            local_waits: Arc::default(),
            config: Arc::new(config),
            pending: Map::default(),
            waits_by_owner: Map::default(),
            retries: Map::default(),
            deadlines: BTreeSet::new(),
            sessions: Map::default(),
            session_deadlines: BTreeSet::new(),
            last_request: 0,
            last_session: 0,
            demoted: Vec::new(),
        }
    }

    /// Makes one of the table's shards (call it `layout().shards()` times).
    pub fn new_shard(&self) -> Shard<K> {
        Shard::new(self.config.clone(), self.budget.clone(), self.local_waits.clone())
    }

    /// Which shard each key lives in.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The table's configuration.
    pub fn config(&self) -> &Config<K> {
        &self.config
    }

    fn shard<'s>(&self, shards: &'s mut dyn Shards<K>, key: &K) -> &'s mut Shard<K> {
        shards.get(self.layout.shard_of(key))
    }

    fn shard_mut<'s>(&self, shards: &'s mut dyn Shards<K>, key: &K) -> &'s mut Shard<K> {
        shards.get(self.layout.shard_of(key))
    }

    fn key_state<'s>(&self, shards: &'s mut dyn Shards<K>, key: &K) -> Option<&'s KeyState> {
        self.shard(shards, key).keys.get(key)
    }

    /// Acquires one key or several (all or nothing), queueing the request when it may wait.
    ///
    /// A request is granted at once when, on every key, it is compatible with the other
    /// owners' holds and with every earlier queued request of another owner (a holder's
    /// re-entry or mode conversion is checked against holds only). Otherwise a try fails
    /// with `busy`, and a waiting request is queued at the tail of every key's queue (a
    /// holder's conversion ahead of non-holders) — unless queueing would close a cycle of
    /// owners waiting on each other, in which case it fails with `deadlock`.
    ///
    /// # Errors
    /// `invalid_argument`, `busy`, `deadlock`, `session_expired`, `limit_exceeded`; on error
    /// nothing changed.
    pub fn acquire(
        &mut self,
        shards: &mut dyn Shards<K>,
        mut req: Acquire<K>,
        now: Instant,
        fx: &mut Effects<K>,
    ) -> Result<Acquired<K>> {
        validate_request(&req, &self.config)?;
        dedup(&mut req.keys);
        if let Some(session) = req.session {
            self.live_session(session, now)?;
        }
        if let Some(answer) = self.retry_answer(shards, &req)? {
            return Ok(answer);
        }
        let mut admitted = true;
        let mut first_blocked = None;
        for key in &req.keys {
            if let Some(ks) = self.key_state(shards, key) {
                check_compatible_request(ks, &req)?;
                if !ks.admits(&req.owner, req.mode, ks.queue.len(), now) {
                    admitted = false;
                    first_blocked.get_or_insert(key);
                }
            }
        }
        if admitted {
            self.check_grant_limits(shards, &req.keys, &req.owner, req.mode, req.session)?;
            if let Some(cycle) = self.cycle_if_granted(shards, &req.owner, req.mode, &req.keys) {
                return Err(Error::Deadlock { cycle });
            }
            // The last check: from here the grant cannot fail, so the places are used.
            self.reserve_new_keys(shards, &req.keys)?;
            let grant = self.grant_keys(shards, &req.keys, &GrantSpec::from(&req), now, fx);
            let waits_here = |ks: &KeyState| ks.queue.iter().any(|e| e.owner.same(&req.owner));
            if req.keys.iter().any(|k| self.key_state(shards, k).is_some_and(waits_here)) {
                // The owner may now hold a key it also waits for: its queued request there is
                // checked against holds only from now on, and may be grantable.
                self.pump(shards, req.keys.iter().cloned(), now, fx);
            }
            return Ok(Acquired::Granted(grant));
        }
        if req.wait == Wait::NoWait {
            let holders = first_blocked.and_then(|k| self.key_state(shards, k)).map(KeyState::holders);
            return Err(Error::Busy { holders: holders.unwrap_or_default() });
        }
        self.enqueue(shards, req, now, fx)
    }

    /// The answer to a retried request id, if this is one.
    fn retry_answer(&self, shards: &mut dyn Shards<K>, req: &Acquire<K>) -> Result<Option<Acquired<K>>> {
        let Some(id) = &req.request_id else { return Ok(None) };
        if let Some(&request) = self.retries.get(&(req.owner.clone(), id.clone())) {
            let pending = &self.pending[&request];
            if pending.mode != req.mode || pending.keys != req.keys {
                return Err(Error::invalid("request_id", "already used for a different request"));
            }
            return Ok(Some(Acquired::Waiting { request, deadline: pending.deadline }));
        }
        let mut holds = SmallVec::new();
        for key in &req.keys {
            match self.key_state(shards, key).and_then(|ks| retried_granted(ks, key, req, id)) {
                Some(granted) => holds.push(granted),
                None => return Ok(None),
            }
        }
        Ok(Some(Acquired::Granted(Grant {
            owner: req.owner.clone(),
            mode: req.mode,
            session: req.session,
            holds,
            retried: true,
        })))
    }

    fn enqueue(
        &mut self,
        shards: &mut dyn Shards<K>,
        req: Acquire<K>,
        now: Instant,
        fx: &mut Effects<K>,
    ) -> Result<Acquired<K>> {
        if let Some(max) = self.config.limits.max_waiters_per_key {
            if req.keys.iter().any(|k| self.key_state(shards, k).is_some_and(|ks| ks.queue.len() >= max)) {
                return Err(Error::limit("waiters_per_key", max));
            }
        }
        self.check_grant_limits(shards, &req.keys, &req.owner, req.mode, req.session)?;
        // The last check: the keys get state next (a deadlock found below drops it again,
        // giving the places back).
        self.reserve_new_keys(shards, &req.keys)?;
        let deadline = match req.wait {
            Wait::Timeout(d) => Some(now + d),
            _ => None,
        };
        // A wait for one key with no session or request id lives in that key's shard, which
        // can then hand the key to it alone; everything else the coordinator keeps.
        let local = req.keys.len() == 1 && req.session.is_none() && req.request_id.is_none();
        let home = local.then(|| self.layout.shard_of(&req.keys[0]));
        self.last_request += 1;
        let request = RequestId::new(self.last_request, home);
        for key in &req.keys {
            let shard = self.shard_mut(shards, key);
            let local =
                local.then_some(LocalWait { ttl: req.ttl, lock_delay: req.lock_delay, deadline, owner_slot: UNFILED });
            let mut entry = Entry { request, owner: req.owner.clone(), mode: req.mode, local };
            if local.is_some() {
                shard.local.enter(&mut shard.books, key, &mut entry);
            }
            let ks = shard.keys.entry(key.clone()).or_default();
            if ks.holds_of(&req.owner) {
                // A holder's conversion goes ahead of requests by non-holders: they wait for
                // its hold anyway, and queueing it behind them would deadlock it at once.
                let at = ks.queue.iter().take_while(|e| ks.holds_of(&e.owner)).count();
                ks.queue.insert(at, entry);
            } else {
                ks.queue.push_back(entry);
            }
        }
        let owner = req.owner.clone();
        let first_key = req.keys[0].clone();
        if !local {
            let pending = Pending {
                owner: req.owner,
                keys: req.keys,
                mode: req.mode,
                ttl: req.ttl,
                session: req.session,
                deadline,
                request_id: req.request_id,
                lock_delay: req.lock_delay,
            };
            self.waits_by_owner.entry(owner.clone()).or_default().push(request);
            self.pending.insert(request, pending);
        }
        // A new wait closes a cycle only if someone already waits for its owner.
        // (With a single wait there is no cycle either, and that is cheaper to see.)
        let cycle = match self.waiting() >= 2 && self.may_be_waited_for(shards, &owner) {
            true => self.find_cycle(shards, &owner),
            false => None,
        };
        if let Some(cycle) = cycle {
            self.unqueue(shards, request, Some(&first_key), IdleKeys::Drop);
            return Err(Error::Deadlock { cycle });
        }
        if let Some(pending) = self.pending.get(&request) {
            if let Some(id) = &pending.request_id {
                self.retries.insert((owner, id.clone()), request);
            }
        }
        if let Some(at) = deadline {
            if !local {
                self.deadlines.insert((at, request));
            }
            fx.deadline(at);
        }
        Ok(Acquired::Waiting { request, deadline })
    }

    /// Removes a queued request from the coordinator and from every queue it stands in,
    /// returning it and the keys whose queues it left. A key it leaves idle is dropped
    /// unless `idle` says to keep it (for a grant: the key keeps its place in its
    /// namespace rather than giving it back and taking it again).
    ///
    /// `key` is where the request waits, when the caller knows it; a request living in a
    /// shard is otherwise looked for among that shard's waits.
    fn unqueue(
        &mut self,
        shards: &mut dyn Shards<K>,
        request: RequestId,
        key: Option<&K>,
        idle: IdleKeys,
    ) -> Option<Pending<K>> {
        if let Some(home) = request.home() {
            if home >= shards.count() {
                return None;
            }
            let shard = shards.get(home);
            let (key, entry) = shard.take_local(request, key)?;
            if idle == IdleKeys::Drop {
                shard.drop_if_idle(&key);
            }
            let local = entry.local.expect("BUG: take_local answers local entries");
            return Some(Pending {
                owner: entry.owner,
                keys: SmallVec::from_buf([key]),
                mode: entry.mode,
                ttl: local.ttl,
                session: None,
                deadline: local.deadline,
                request_id: None,
                lock_delay: local.lock_delay,
            });
        }
        let pending = self.pending.remove(&request)?;
        for key in &pending.keys {
            let shard = self.shard_mut(shards, key);
            if let Some(ks) = shard.keys.get_mut(key) {
                ks.queue.retain(|e| e.request != request);
            }
            if idle == IdleKeys::Drop {
                shard.drop_if_idle(key);
            }
        }
        if let Some(list) = self.waits_by_owner.get_mut(&pending.owner) {
            list.retain(|r| *r != request);
            if list.is_empty() {
                self.waits_by_owner.remove(&pending.owner);
            }
        }
        if let Some(id) = &pending.request_id {
            self.retries.remove(&(pending.owner.clone(), id.clone()));
        }
        if let Some(at) = pending.deadline {
            self.deadlines.remove(&(at, request));
        }
        Some(pending)
    }

    /// Grants `keys` in the name of `spec`, counting new session holds.
    fn grant_keys(
        &mut self,
        shards: &mut dyn Shards<K>,
        keys: &[K],
        spec: &GrantSpec<'_>,
        now: Instant,
        fx: &mut Effects<K>,
    ) -> Grant<K> {
        let mut holds = SmallVec::new();
        for key in keys {
            let granted = self.shard_mut(shards, key).grant(key, spec, now, fx);
            if granted.count == 1 {
                if let Some(session) = spec.session.and_then(|s| self.sessions.get_mut(&s)) {
                    session.holds += 1;
                }
            }
            holds.push(granted);
        }
        Grant { owner: spec.owner.clone(), mode: spec.mode, session: spec.session, holds, retried: false }
    }

    fn check_grant_limits(
        &self,
        shards: &mut dyn Shards<K>,
        keys: &[K],
        owner: &OwnerId,
        mode: Mode,
        session: Option<SessionId>,
    ) -> Result<()> {
        let (Some(max), Some(session)) = (self.config.limits.max_holds_per_session, session) else {
            return Ok(());
        };
        let new = keys
            .iter()
            .filter(|k| self.key_state(shards, k).and_then(|ks| ks.hold_index(owner, mode)).is_none())
            .count();
        // Queued requests of the session add their holds when granted, past any check:
        // count them now, so that no grant from a queue takes the session past its bound.
        let mut queued = 0;
        for p in self.pending.values().filter(|p| p.session == Some(session)) {
            for k in &p.keys {
                if self.key_state(shards, k).and_then(|ks| ks.hold_index(&p.owner, p.mode)).is_none() {
                    queued += 1;
                }
            }
        }
        if self.sessions.get(&session).map_or(0, |s| s.holds) + queued + new > max {
            return Err(Error::limit("holds_per_session", max));
        }
        Ok(())
    }

    /// Takes a place in its namespace for each of `keys` that has no state yet, all or
    /// none (`limit_exceeded` when a namespace is full). Call it last before the keys get
    /// state: the places are given back only when that state is dropped.
    fn reserve_new_keys(&self, shards: &mut dyn Shards<K>, keys: &[K]) -> Result<()> {
        let Some(budget) = &self.budget else { return Ok(()) };
        let new: SmallVec<[&K; 4]> = keys.iter().filter(|k| self.key_state(shards, k).is_none()).collect();
        budget.reserve(new)
    }

    /// Grants every queued request of `keys` that may be granted now, and of any key those
    /// grants touch, until nothing more can be granted. This is what keeps the promise
    /// that no request stays queued while it could be granted.
    fn pump(
        &mut self,
        shards: &mut dyn Shards<K>,
        keys: impl IntoIterator<Item = K>,
        now: Instant,
        fx: &mut Effects<K>,
    ) {
        let mut work: SmallVec<[K; 4]> = keys.into_iter().collect();
        while let Some(key) = work.pop() {
            while let Some(ks) = self.key_state(shards, &key) {
                let candidates = admissible_entries(ks, now);
                let mut granted_any = false;
                // Whether the queue may hold a grantable request that this pass did not
                // consider: only when a candidate was passed over or failed.
                let mut look_again = false;
                for (i, request) in candidates.iter().copied().enumerate() {
                    // The first candidate of a single key was judged on this key as it still
                    // is; any other is judged afresh: grants earlier in this pass may have
                    // changed any key.
                    let Some(queued) = self.queued(shards, request, Some(&key)) else {
                        look_again = true;
                        continue;
                    };
                    let ready = (i == 0 && queued.keys.len() == 1)
                        || queued.keys.iter().all(|k| {
                            self.key_state(shards, k).is_some_and(|ks| {
                                let pos = ks.queue.iter().position(|e| e.request == request);
                                pos.is_some_and(|pos| ks.admits(&queued.owner, queued.mode, pos, now))
                            })
                        });
                    if ready {
                        let Queued { owner, keys, .. } = queued;
                        let others: SmallVec<[K; 4]> = keys.into_iter().filter(|k| *k != key).collect();
                        let granted = self.grant_pending(shards, request, Some(&key), now, fx);
                        // A later request of the same owner here was judged as a newcomer's;
                        // once the owner holds the key it is a re-entry, judged on the holds
                        // alone, and may be grantable. (Its other keys are pumped anyway.)
                        let waits_more = self
                            .key_state(shards, &key)
                            .is_some_and(|ks| ks.queue.iter().any(|e| e.owner.same(&owner)));
                        work.extend(others);
                        granted_any = true;
                        look_again |= !granted || waits_more;
                    } else {
                        look_again = true;
                    }
                }
                if !granted_any || !look_again {
                    break;
                }
            }
            self.shard_mut(shards, &key).drop_if_idle(&key);
        }
        // An owner that stopped holding a key it waits for now waits for the earlier requests
        // there too. If that closed a cycle, its requests on that key closed it: they fail.
        while let Some((owner, key)) = self.demoted.pop() {
            let Some(cycle) = self.find_cycle(shards, &owner) else { continue };
            let requests: SmallVec<[RequestId; 2]> = self
                .key_state(shards, &key)
                .map(|ks| ks.queue.iter().filter(|e| e.owner.same(&owner)).map(|e| e.request).collect())
                .unwrap_or_default();
            for request in requests {
                let error = Some(Error::Deadlock { cycle: cycle.clone() });
                self.fail_pending(shards, request, Some(&key), error, now, fx);
            }
        }
    }

    /// Drops those of `keys` that are idle.
    fn drop_idle(&self, shards: &mut dyn Shards<K>, keys: &[K]) {
        for key in keys {
            self.shard_mut(shards, key).drop_if_idle(key);
        }
    }

    /// Grants a queued request, or fails it when granting it now would break a rule.
    /// Returns whether it was granted.
    fn grant_pending(
        &mut self,
        shards: &mut dyn Shards<K>,
        request: RequestId,
        key: Option<&K>,
        now: Instant,
        fx: &mut Effects<K>,
    ) -> bool {
        let pending =
            self.unqueue(shards, request, key, IdleKeys::Keep).expect("BUG: granting a request that is not queued");
        // The owner may have come to hold a key in this mode under another session while
        // the request waited; as for an immediate grant, its level may not join that hold
        // (it would live and die with the wrong session).
        let other_session = pending.keys.iter().any(|k| {
            self.key_state(shards, k)
                .and_then(|ks| ks.hold_index(&pending.owner, pending.mode).map(|i| ks.holds[i].session))
                .is_some_and(|session| session != pending.session)
        });
        let refusal = if other_session {
            Some(Error::invalid("session", "the owner holds this key under another session"))
        } else {
            // A holder's conversion is granted past the requests queued before it, which
            // then wait for it: if that closes a cycle, this request closed it.
            self.cycle_if_granted(shards, &pending.owner, pending.mode, &pending.keys)
                .map(|cycle| Error::Deadlock { cycle })
        };
        if let Some(error) = refusal {
            self.record_cancelled(&pending, fx);
            self.drop_idle(shards, &pending.keys);
            fx.wakes.push(Wake { request, outcome: Err(error) });
            return false;
        }
        let grant = self.grant_keys(shards, &pending.keys, &pending.spec(), now, fx);
        fx.wakes.push(Wake { request, outcome: Ok(grant) });
        true
    }

    /// Records that `pending` left its queues without a grant.
    fn record_cancelled(&self, pending: &Pending<K>, fx: &mut Effects<K>) {
        for key in &pending.keys {
            record(&self.config, fx, EventKind::Cancelled, key, &pending.owner, pending.mode, 0, 0);
        }
    }

    /// Withdraws a queued request (its waiter gave up or went away). Requests behind it are
    /// reconsidered. Returns whether it was still queued: `false` means it was already
    /// granted or failed, and its [`Wake`] is on its way.
    pub fn cancel(
        &mut self,
        shards: &mut dyn Shards<K>,
        request: RequestId,
        now: Instant,
        fx: &mut Effects<K>,
    ) -> bool {
        self.fail_pending(shards, request, None, None, now, fx)
    }

    /// [`Coordinator::cancel`], told the key the request waits on: a request living in its
    /// shard ([`RequestId::home`]) is then taken from that key's queue without searching
    /// the shard's other waits. A key the request does not wait on costs only that search.
    pub fn cancel_on(
        &mut self,
        shards: &mut dyn Shards<K>,
        request: RequestId,
        key: &K,
        now: Instant,
        fx: &mut Effects<K>,
    ) -> bool {
        self.fail_pending(shards, request, Some(key), None, now, fx)
    }

    /// Withdraws a queued request (waiting on `key`, when the caller knows where) and
    /// reconsiders the queues it leaves; with an `error`, its waiter is told.
    fn fail_pending(
        &mut self,
        shards: &mut dyn Shards<K>,
        request: RequestId,
        key: Option<&K>,
        error: Option<Error>,
        now: Instant,
        fx: &mut Effects<K>,
    ) -> bool {
        let Some(keys) = self.withdraw(shards, request, key, error, fx) else { return false };
        self.pump(shards, keys, now, fx);
        true
    }

    /// [`Coordinator::fail_pending`] without reconsidering the queues it leaves: returns
    /// their keys, for the caller to pump (`None` when the request was not queued).
    fn withdraw(
        &mut self,
        shards: &mut dyn Shards<K>,
        request: RequestId,
        key: Option<&K>,
        error: Option<Error>,
        fx: &mut Effects<K>,
    ) -> Option<SmallVec<[K; 1]>> {
        let pending = self.unqueue(shards, request, key, IdleKeys::Drop)?;
        self.record_cancelled(&pending, fx);
        if let Some(error) = error {
            fx.wakes.push(Wake { request, outcome: Err(error) });
        }
        Some(pending.keys)
    }

    /// Releases one level of `owner`'s hold of `key` in `mode` (its only mode when `None`).
    /// With a fencing `token`, only the hold carrying that token is released (a guard of a
    /// hold that already ended must not release a newer one). Returns the count left; at
    /// zero the hold ends and the key's queue is reconsidered.
    ///
    /// # Errors
    /// `not_held` when nobody holds the key (or the token's hold is gone), `not_owner` when
    /// others hold it, `invalid_argument` when `mode` is needed; nothing changes then.
    #[allow(clippy::too_many_arguments)]
    pub fn release(
        &mut self,
        shards: &mut dyn Shards<K>,
        key: &K,
        owner: &OwnerId,
        mode: Option<Mode>,
        token: Option<u64>,
        now: Instant,
        fx: &mut Effects<K>,
    ) -> Result<u32> {
        let shard = self.shard_mut(shards, key);
        let idx = shard.find_hold(key, owner, mode, token)?;
        let hold = &shard.keys[key].holds[idx];
        if hold.count > 1 {
            return Ok(shard.release_level(key, idx, fx));
        }
        self.end_hold(shards, key, idx, None, now, fx);
        self.pump(shards, [key.clone()], now, fx);
        Ok(0)
    }

    /// Ends a hold entirely (all levels), keeping session counts right.
    fn end_hold(
        &mut self,
        shards: &mut dyn Shards<K>,
        key: &K,
        idx: usize,
        reason: Option<LostReason>,
        now: Instant,
        fx: &mut Effects<K>,
    ) {
        let hold = self.shard_mut(shards, key).end_hold(key, idx, reason.map(|r| (r, now)), fx);
        if let Some(session) = hold.session.and_then(|s| self.sessions.get_mut(&s)) {
            session.holds = session.holds.saturating_sub(1);
        }
        let ks = self.key_state(shards, key).expect("BUG: the key of a hold just ended");
        if !ks.holds_of(&hold.owner) && ks.queue.iter().any(|e| e.owner.same(&hold.owner)) {
            self.demoted.push((hold.owner, key.clone()));
        }
    }

    /// Extends the expiry of `owner`'s TTL hold of `key` to `now + ttl`, and answers the
    /// expiry it has then. Never shortens it (like re-entry, which keeps the later of two
    /// expiries): a hold whose expiry is already later keeps it.
    ///
    /// # Errors
    /// As [`Coordinator::release`]; `invalid_argument` for a zero TTL, and for a hold with
    /// no TTL (it lasts until it is released or its owner or session ends: there is no
    /// expiry to extend). Nothing changes on error.
    #[allow(clippy::too_many_arguments)]
    pub fn refresh(
        &mut self,
        shards: &mut dyn Shards<K>,
        key: &K,
        owner: &OwnerId,
        mode: Option<Mode>,
        ttl: Duration,
        now: Instant,
        fx: &mut Effects<K>,
    ) -> Result<Instant> {
        if ttl.is_zero() {
            return Err(Error::invalid("ttl", "must be greater than zero"));
        }
        let shard = self.shard_mut(shards, key);
        let idx = shard.find_hold(key, owner, mode, None)?;
        let hold = &shard.keys[key].holds[idx];
        let (mode, Some((current, _))) = (hold.mode, hold.expiry) else {
            return Err(Error::invalid("ttl", "the hold has no TTL to extend: it lasts until it is released"));
        };
        let at = now + ttl;
        if at <= current {
            return Ok(current);
        }
        shard.move_expiry(key, owner, mode, at, fx);
        Ok(at)
    }

    /// Hands `from`'s hold of `key` in `mode` to `to`, with all its levels, its session and
    /// its expiry. `to` gets a new fencing token (unless it already held the key in that
    /// mode: then the levels join its hold); `from`'s guards are told the hold is lost.
    /// Requests queued on the key keep waiting.
    ///
    /// # Errors
    /// As [`Coordinator::release`]; `invalid_argument` when `from` and `to` are the same
    /// or `from` also holds the key in another mode; `deadlock` when the hand-over would
    /// close a cycle of owners waiting on each other (`to` waits, transitively, for a
    /// request that would then wait for `to`). Nothing changes on error.
    #[allow(clippy::too_many_arguments)]
    pub fn transfer(
        &mut self,
        shards: &mut dyn Shards<K>,
        key: &K,
        from: &OwnerId,
        mode: Option<Mode>,
        to: &OwnerId,
        now: Instant,
        fx: &mut Effects<K>,
    ) -> Result<Granted<K>> {
        if from.same(to) {
            return Err(Error::invalid("owner", "a hold cannot be transferred to its own owner"));
        }
        let shard = self.shard(shards, key);
        let idx = shard.find_hold(key, from, mode, None)?;
        let ks = &shard.keys[key];
        if ks.holds.iter().filter(|h| h.owner.same(from)).count() > 1 {
            // One owner's holds of a key in two modes conflict across owners: handing one
            // to `to` would leave `to` and `from` holding incompatible modes together.
            return Err(Error::invalid("mode", "the owner also holds this key in another mode"));
        }
        // Look for a cycle the hand-over would close, in the wait-for graph as it would be
        // with `to` holding the hold (then `to`'s own requests on the key wait for holds only,
        // and `from`'s for earlier requests too): a new cycle runs through `to` or `from`.
        let ks = self.shard_mut(shards, key).keys.get_mut(key).expect("BUG: found a hold");
        let owner = std::mem::replace(&mut ks.holds[idx].owner, to.clone());
        let cycle = self.find_cycle(shards, to).or_else(|| self.find_cycle(shards, from));
        self.shard_mut(shards, key).keys.get_mut(key).expect("BUG: found a hold").holds[idx].owner = owner;
        if let Some(cycle) = cycle {
            return Err(Error::Deadlock { cycle });
        }
        let hold = self.shard(shards, key).keys[key].holds[idx].clone();
        self.end_hold(shards, key, idx, Some(LostReason::Transferred), now, fx);
        let spec = GrantSpec {
            owner: to,
            mode: hold.mode,
            ttl: None,
            session: hold.session,
            request_id: None,
            lock_delay: hold.lock_delay,
        };
        let mut granted = self.grant_keys(shards, std::slice::from_ref(key), &spec, now, fx).holds.remove(0);
        let shard = self.shard_mut(shards, key);
        let ks = shard.keys.get_mut(key).expect("BUG: just granted");
        let new_idx = ks.hold_index(to, hold.mode).expect("BUG: just granted");
        let new_hold = &mut ks.holds[new_idx];
        new_hold.count = new_hold.count.checked_add(hold.count - 1).expect("lock count overflow");
        new_hold.request_ids.extend(hold.request_ids);
        let excess = new_hold.request_ids.len().saturating_sub(crate::shard::REMEMBERED_REQUEST_IDS);
        new_hold.request_ids.drain(..excess);
        granted.count = new_hold.count;
        let later = match (new_hold.expiry.map(|(at, _)| at), hold.expiry.map(|(at, _)| at)) {
            (None, theirs) => theirs,
            (Some(mine), Some(theirs)) if theirs > mine => Some(theirs),
            _ => None,
        };
        if let Some(at) = later {
            shard.move_expiry(key, to, hold.mode, at, fx);
            granted.expires_at = Some(at);
        }
        self.pump(shards, [key.clone()], now, fx);
        Ok(granted)
    }

    /// Ends every hold of `key` (administrative force release); their guards are told.
    /// Returns how many holds ended.
    pub fn force_release(&mut self, shards: &mut dyn Shards<K>, key: &K, now: Instant, fx: &mut Effects<K>) -> usize {
        let mut ended = 0;
        while self.key_state(shards, key).is_some_and(|ks| !ks.holds.is_empty()) {
            self.end_hold(shards, key, 0, Some(LostReason::ForceReleased), now, fx);
            ended += 1;
        }
        self.pump(shards, [key.clone()], now, fx);
        ended
    }

    /// Ends everything `owner` holds and cancels everything it waits for (its waiters get
    /// `session_expired`). `voluntary` is Elixir's `goodbye`, a release: no lock-delay
    /// starts. Otherwise the owner died, and the lock-delays of its holds start. Either
    /// way its guards are told their holds are gone. Returns how many holds ended.
    pub fn end_owner(
        &mut self,
        shards: &mut dyn Shards<K>,
        owner: &OwnerId,
        voluntary: bool,
        now: Instant,
        fx: &mut Effects<K>,
    ) -> usize {
        for (request, key) in self.waits_of(shards, owner) {
            self.fail_pending(shards, request, key.as_ref(), Some(Error::SessionExpired), now, fx);
        }
        let reason = if voluntary { LostReason::Goodbye } else { LostReason::OwnerEnded };
        let mut touched = Vec::new();
        for i in 0..shards.count() {
            let held = shards.get(i).books.holds_of(owner).to_vec();
            for (key, mode) in held {
                let idx = shards.get(i).keys[&key].hold_index(owner, mode).expect("BUG: owner index out of date");
                self.end_hold(shards, &key, idx, Some(reason), now, fx);
                touched.push(key);
            }
        }
        let ended = touched.len();
        self.pump(shards, touched, now, fx);
        ended
    }

    /// Opens a session with a lease of `ttl`.
    ///
    /// # Errors
    /// `invalid_argument` for a zero TTL; `limit_exceeded` past the session bound.
    pub fn open_session(&mut self, ttl: Duration, now: Instant, fx: &mut Effects<K>) -> Result<SessionInfo> {
        if ttl.is_zero() {
            return Err(Error::invalid("ttl", "must be greater than zero"));
        }
        if let Some(max) = self.config.limits.max_sessions {
            if self.sessions.len() >= max {
                return Err(Error::limit("sessions", max));
            }
        }
        self.last_session += 1;
        let id = SessionId(self.last_session);
        self.restore_session(id, ttl, now, fx);
        Ok(self.session_info(id).expect("BUG: just opened"))
    }

    /// Makes every later session id greater than `floor`: a restarted server passes the
    /// highest id it ever gave out, so that an id that ended before the restart is never
    /// given to someone else.
    pub fn raise_session_floor(&mut self, floor: u64) {
        self.last_session = self.last_session.max(floor);
    }

    /// Re-creates a session under a known id with a fresh lease (after a restart); later
    /// sessions get greater ids.
    pub fn restore_session(&mut self, id: SessionId, ttl: Duration, now: Instant, fx: &mut Effects<K>) {
        self.last_session = self.last_session.max(id.0);
        let expires_at = now + ttl;
        if let Some(old) = self.sessions.insert(id, Session { ttl, expires_at, holds: 0 }) {
            self.session_deadlines.remove(&(old.expires_at, id));
            self.sessions.get_mut(&id).expect("BUG: just inserted").holds = old.holds;
        }
        self.session_deadlines.insert((expires_at, id));
        fx.deadline(expires_at);
    }

    /// Renews a session's lease to `now + ttl`.
    ///
    /// # Errors
    /// `session_expired` when it is unknown, closed or already expired.
    pub fn keepalive(&mut self, id: SessionId, now: Instant, fx: &mut Effects<K>) -> Result<SessionInfo> {
        let session = self.live_session(id, now)?;
        let (old, ttl) = (session.expires_at, session.ttl);
        self.session_deadlines.remove(&(old, id));
        let expires_at = now + ttl;
        self.sessions.get_mut(&id).expect("BUG: checked live").expires_at = expires_at;
        self.session_deadlines.insert((expires_at, id));
        fx.deadline(expires_at);
        Ok(self.session_info(id).expect("BUG: checked live"))
    }

    fn live_session(&self, id: SessionId, now: Instant) -> Result<&Session> {
        self.sessions.get(&id).filter(|s| s.expires_at > now).ok_or(Error::SessionExpired)
    }

    /// A session's lease and hold count, if it is open.
    pub fn session_info(&self, id: SessionId) -> Option<SessionInfo> {
        self.sessions.get(&id).map(|s| SessionInfo { id, ttl: s.ttl, expires_at: s.expires_at, holds: s.holds })
    }

    /// Closes a session: releases all its holds and cancels all its waits at once.
    ///
    /// # Errors
    /// `session_expired` when it is unknown or already ended.
    pub fn end_session(
        &mut self,
        shards: &mut dyn Shards<K>,
        id: SessionId,
        now: Instant,
        fx: &mut Effects<K>,
    ) -> Result<()> {
        if !self.sessions.contains_key(&id) {
            return Err(Error::SessionExpired);
        }
        self.finish_session(shards, id, LostReason::SessionEnded, now, fx);
        Ok(())
    }

    fn finish_session(
        &mut self,
        shards: &mut dyn Shards<K>,
        id: SessionId,
        reason: LostReason,
        now: Instant,
        fx: &mut Effects<K>,
    ) {
        if let Some(session) = self.sessions.remove(&id) {
            self.session_deadlines.remove(&(session.expires_at, id));
        }
        // All waits go before any queue is reconsidered: reconsidering after each could grant
        // a later wait of this same session just before ending it.
        let waits: Vec<RequestId> =
            self.pending.iter().filter(|(_, p)| p.session == Some(id)).map(|(r, _)| *r).collect();
        let mut touched = Vec::new();
        for request in waits {
            touched.extend(self.withdraw(shards, request, None, Some(Error::SessionExpired), fx).into_iter().flatten());
        }
        for i in 0..shards.count() {
            let held = shards.get(i).books.sessions.get(&id).to_vec();
            for (key, owner, mode) in held {
                let idx = shards.get(i).keys[&key].hold_index(&owner, mode).expect("BUG: session index out of date");
                self.end_hold(shards, &key, idx, Some(reason), now, fx);
                touched.push(key);
            }
        }
        self.pump(shards, touched, now, fx);
    }

    /// Carries out everything due at `now`: TTL expiries, lock-delays that end, wait
    /// bounds that run out (`timeout`), session leases that run out.
    ///
    /// Deadlines are carried out one at a time, earliest first, so that a late tick decides
    /// as timely ones would have: a session that ended, or a wait that ran out, before a
    /// hold expired is not granted that hold's key. On a tie, sessions end first, then
    /// shard timers fire, then waits run out.
    pub fn tick(&mut self, shards: &mut dyn Shards<K>, now: Instant, fx: &mut Effects<K>) {
        loop {
            let session = self.session_deadlines.first().copied().filter(|(at, _)| *at <= now);
            let timer = (0..shards.count()).filter_map(|i| Some((shards.get(i).next_timer()?, i))).min();
            let timer = timer.filter(|(at, _)| *at <= now);
            // Waits the coordinator keeps and waits living in shards run out together, in the
            // order of their deadlines (then of their arrival).
            let local_wait = (0..shards.count()).filter_map(|i| shards.get(i).next_wait_end()).min();
            let wait = self.deadlines.first().copied().into_iter().chain(local_wait).min();
            let wait = wait.filter(|(at, _)| *at <= now);
            let earliest = [session.map(|s| s.0), timer.map(|t| t.0), wait.map(|w| w.0)].into_iter().flatten().min();
            let Some(at) = earliest else { break };
            if let Some((_, id)) = session.filter(|s| s.0 == at) {
                self.finish_session(shards, id, LostReason::Expired, now, fx);
            } else if let Some((_, i)) = timer.filter(|t| t.0 == at) {
                let entry = shards.get(i).books.timers.first_entry().expect("BUG: a due timer vanished");
                match entry.remove() {
                    Timer::Expiry { key, owner, mode } => {
                        let idx =
                            shards.get(i).keys[&key].hold_index(&owner, mode).expect("BUG: timer of an absent hold");
                        shards.get(i).keys.get_mut(&key).expect("BUG: checked").holds[idx].expiry = None;
                        self.end_hold(shards, &key, idx, Some(LostReason::Expired), now, fx);
                        self.pump(shards, [key], now, fx);
                    }
                    Timer::DelayEnd { key } => {
                        if let Some(ks) = shards.get(i).keys.get_mut(&key) {
                            ks.delay = None;
                        }
                        self.pump(shards, [key], now, fx);
                    }
                }
            } else if let Some((at, request)) = wait {
                let key = request.home().and_then(|i| shards.get(i).local.ends.get(&(at, request)).cloned());
                self.fail_pending(shards, request, key.as_ref(), Some(Error::Timeout), now, fx);
            }
        }
    }

    /// The earliest instant at which [`Coordinator::tick`] has something to do.
    pub fn next_deadline(&self, shards: &mut dyn Shards<K>) -> Option<Instant> {
        let shard_next = (0..shards.count()).filter_map(|i| shards.get(i).next_deadline()).min();
        let waits = self.deadlines.first().map(|(at, _)| *at);
        let sessions = self.session_deadlines.first().map(|(at, _)| *at);
        [shard_next, waits, sessions].into_iter().flatten().min()
    }

    /// Who holds and waits for `key`, or `None` when it is free and nobody waits.
    pub fn status(&self, shards: &mut dyn Shards<K>, key: &K) -> Option<KeyStatus> {
        let ks = self.key_state(shards, key)?;
        Some(KeyStatus {
            holders: ks
                .holds
                .iter()
                .map(|h| HolderStatus {
                    holder: Holder { owner: h.owner.clone(), mode: h.mode, count: h.count, fencing_token: h.token },
                    session: h.session,
                    expires_at: h.expiry.map(|(at, _)| at),
                    request_ids: h.request_ids.clone(),
                })
                .collect(),
            waiters: ks.queue.len(),
            delayed_until: ks.delay.map(|(at, _)| at),
        })
    }

    /// Puts back a hold recorded before a restart (see [`RestoredHold`]), on a table
    /// whose sessions were restored first. Fencing tokens handed out later on its shard
    /// are greater than the hold's.
    ///
    /// # Errors
    /// `session_expired` when its session is not open; `invalid_argument` when it clashes
    /// with a hold already restored (the owner's own in that mode, or an incompatible one).
    pub fn restore_hold(
        &mut self,
        shards: &mut dyn Shards<K>,
        key: &K,
        hold: &RestoredHold,
        fx: &mut Effects<K>,
    ) -> Result<()> {
        hold.mode.validate()?;
        if let Some(session) = hold.session {
            if !self.sessions.contains_key(&session) {
                return Err(Error::SessionExpired);
            }
        }
        let created = !self.shard(shards, key).keys.contains_key(key);
        if !self.shard_mut(shards, key).restore(key, hold, fx) {
            return Err(Error::invalid("holds", "a restored hold clashes with another restored hold"));
        }
        if let Some(budget) = self.budget.as_ref().filter(|_| created) {
            // Within the bound when it was written; counted whatever the bound is now.
            budget.force(key);
        }
        if let Some(session) = hold.session.and_then(|s| self.sessions.get_mut(&s)) {
            session.holds += 1;
        }
        Ok(())
    }

    /// The keys that have at least one hold and satisfy `filter`, in no particular order.
    /// It visits every shard: meant for listings, not for hot paths.
    pub fn held_keys(&self, shards: &mut dyn Shards<K>, mut filter: impl FnMut(&K) -> bool) -> Vec<K> {
        let mut out = Vec::new();
        for i in 0..shards.count() {
            out.extend(
                shards.get(i).keys.iter().filter(|(k, ks)| !ks.holds.is_empty() && filter(k)).map(|(k, _)| k.clone()),
            );
        }
        out
    }

    /// How many holds (one per key, owner and mode) the table has. Visits every shard.
    pub fn holds(&self, shards: &mut dyn Shards<K>) -> usize {
        (0..shards.count()).map(|i| shards.get(i).keys.values().map(|ks| ks.holds.len()).sum::<usize>()).sum()
    }

    /// How many sessions are open.
    pub fn sessions_open(&self) -> usize {
        self.sessions.len()
    }

    /// The highest fencing token handed out by any shard.
    pub fn fencing_high_water(&self, shards: &mut dyn Shards<K>) -> u64 {
        (0..shards.count()).map(|i| shards.get(i).fencing_high_water()).max().unwrap_or(0)
    }

    /// Makes every later fencing token of every shard greater than `floor` (after a
    /// restart, with the high-water mark a store recorded).
    pub fn raise_fencing_floor(&mut self, shards: &mut dyn Shards<K>, floor: u64) {
        for i in 0..shards.count() {
            shards.get(i).raise_fencing_floor(floor);
        }
    }

    /// How many requests are queued in all.
    ///
    /// Requests living in shards are counted as of the last time each shard changed, so
    /// while shards work beside the caller the count may include a request a shard has
    /// just granted.
    pub fn waiting(&self) -> usize {
        self.pending.len() + self.local_waits.load(Ordering::Relaxed)
    }

    /// The cycle of owners waiting on each other that granting `keys` to `owner` in `mode`
    /// would close, if any: a new hold (a holder's conversion, say) blocks requests queued
    /// on its key, and its owner may wait, transitively, for them. Looked for with the new
    /// holds in place for a moment.
    fn cycle_if_granted(
        &self,
        shards: &mut dyn Shards<K>,
        owner: &OwnerId,
        mode: Mode,
        keys: &[K],
    ) -> Option<Vec<OwnerId>> {
        if self.waiting() == 0 {
            return None;
        }
        let mut placed: SmallVec<[&K; 4]> = SmallVec::new();
        for key in keys {
            let Some(ks) = self.shard_mut(shards, key).keys.get_mut(key) else { continue };
            if ks.queue.is_empty() || ks.hold_index(owner, mode).is_some() {
                continue;
            }
            ks.holds.push(Hold {
                owner: owner.clone(),
                // Placed for the search alone, never filed.
                owner_slot: UNFILED,
                mode,
                count: 1,
                token: 0,
                session: None,
                expiry: None,
                request_ids: Vec::new(),
                lock_delay: None,
            });
            placed.push(key);
        }
        // A new hold closes a cycle only if its owner waits, too.
        let cycle = match placed.is_empty() || !self.waits_anywhere(shards, owner) {
            true => None,
            false => self.find_cycle(shards, owner),
        };
        for key in placed {
            self.shard_mut(shards, key).keys.get_mut(key).expect("BUG: placed above").holds.pop();
        }
        cycle
    }

    /// Looks for a cycle of owners waiting on each other through `start`, following the
    /// wait-for graph: an owner waits for the owners whose holds, or whose earlier queued
    /// requests, keep one of its queued requests from being granted. The cycle starts with
    /// `start`; each owner waits for the next and the last for `start`.
    fn find_cycle(&self, shards: &mut dyn Shards<K>, start: &OwnerId) -> Option<Vec<OwnerId>> {
        // Every owner of a cycle waits for the next one, so a cycle needs two owners with
        // queued requests (an owner's own holds never block it).
        if self.waiting() < 2 {
            return None;
        }
        // Shards may grant requests living in them while the coordinator works, which only
        // removes edges from the graph; taking every shard first makes the search read one
        // graph, not edges from different moments that never formed a cycle together.
        shards.take_all();
        let mut path = self.path_to_any(shards, start, std::slice::from_ref(start))?;
        path.pop();
        Some(path)
    }

    /// Whether any edge of the wait-for graph may end at `owner`. None can when it holds
    /// nothing and each of its queued requests is the last entry of its queues, since an
    /// owner is waited for only through its holds and its earlier queue entries. (Holds are
    /// read from the shards' owner indexes, so callers that place hypothetical holds
    /// without indexing them must not rely on this.) That is
    /// the case of every plain wait on a hot key, so this turns what would be a search
    /// through the whole queue, per arrival, into one look at each queue's tail and at each
    /// shard's owner index.
    fn may_be_waited_for(&self, shards: &mut dyn Shards<K>, owner: &OwnerId) -> bool {
        for (request, queued) in self.waits_with_keys(shards, owner) {
            for key in &queued.keys {
                let ks = self.key_state(shards, key).expect("BUG: queued on an absent key");
                if ks.queue.back().is_none_or(|e| e.request != request) {
                    return true;
                }
            }
        }
        (0..shards.count()).any(|i| !shards.get(i).books.holds_of(owner).is_empty())
    }

    /// Whether `owner` has a queued request, wherever it lives.
    fn waits_anywhere(&self, shards: &mut dyn Shards<K>, owner: &OwnerId) -> bool {
        self.waits_by_owner.contains_key(owner)
            || (self.local_waits.load(Ordering::Relaxed) > 0
                && (0..shards.count()).any(|i| !shards.get(i).books.waits_of(owner).is_empty()))
    }

    /// The queued requests of `owner`: those the coordinator keeps (without a key), then
    /// those living in shards (with theirs).
    fn waits_of(&self, shards: &mut dyn Shards<K>, owner: &OwnerId) -> Vec<(RequestId, Option<K>)> {
        let mut out: Vec<(RequestId, Option<K>)> =
            self.waits_by_owner.get(owner).into_iter().flatten().map(|r| (*r, None)).collect();
        if self.local_waits.load(Ordering::Relaxed) > 0 {
            for i in 0..shards.count() {
                let waits = shards.get(i).books.waits_of(owner).iter();
                out.extend(waits.map(|(k, r)| (*r, Some(k.clone()))));
            }
        }
        out
    }

    /// The queued requests of `owner` with their modes and keys, wherever they live.
    fn waits_with_keys(&self, shards: &mut dyn Shards<K>, owner: &OwnerId) -> Vec<(RequestId, Queued<K>)> {
        let waits = self.waits_of(shards, owner);
        let queued = waits.into_iter().map(|(request, key)| (request, self.queued(shards, request, key.as_ref())));
        queued.map(|(request, queued)| (request, queued.expect("BUG: an indexed wait is not queued"))).collect()
    }

    /// Who asks for what in queued request `request`, wherever it lives (a request living
    /// in a shard is found in the queue of `key`); `None` when it is not queued (there).
    fn queued(&self, shards: &mut dyn Shards<K>, request: RequestId, key: Option<&K>) -> Option<Queued<K>> {
        if request.home().is_none() {
            let pending = self.pending.get(&request)?;
            return Some(Queued { owner: pending.owner.clone(), mode: pending.mode, keys: pending.keys.clone() });
        }
        let key = key?;
        let entry = self.key_state(shards, key)?.queue.iter().find(|e| e.request == request)?;
        Some(Queued { owner: entry.owner.clone(), mode: entry.mode, keys: SmallVec::from_buf([key.clone()]) })
    }

    /// A path `from -> ... -> t` in the wait-for graph ending at the first owner `t` of
    /// `targets` it reaches (both ends included), or `None` when no target is reachable.
    fn path_to_any(&self, shards: &mut dyn Shards<K>, from: &OwnerId, targets: &[OwnerId]) -> Option<Vec<OwnerId>> {
        if targets.is_empty() {
            return None;
        }
        let first = self.blockers_of(shards, from);
        // The common case, a plain wait behind holders that wait for nothing: no path.
        if !first.iter().any(|b| targets.iter().any(|t| t.same(b)) || self.waits_anywhere(shards, b)) {
            return None;
        }
        let mut visited: crate::hash::Set<OwnerId> = crate::hash::Set::default();
        visited.insert(from.clone());
        // Depth-first, keeping the path: (owner, its blockers, next blocker to follow).
        let mut stack: Vec<(OwnerId, Vec<OwnerId>, usize)> = vec![(from.clone(), first, 0)];
        while let Some((_, blockers, next)) = stack.last_mut() {
            let Some(blocker) = blockers.get(*next).cloned() else {
                stack.pop();
                continue;
            };
            *next += 1;
            if targets.iter().any(|t| t.same(&blocker)) {
                let mut path: Vec<OwnerId> = stack.into_iter().map(|(o, _, _)| o).collect();
                path.push(blocker);
                return Some(path);
            }
            if !visited.insert(blocker.clone()) {
                continue;
            }
            let further = self.blockers_of(shards, &blocker);
            stack.push((blocker, further, 0));
        }
        None
    }

    fn blockers_of(&self, shards: &mut dyn Shards<K>, owner: &OwnerId) -> Vec<OwnerId> {
        let mut out = Vec::new();
        for (request, queued) in self.waits_with_keys(shards, owner) {
            for key in &queued.keys {
                let ks = self.key_state(shards, key).expect("BUG: queued on an absent key");
                let pos = ks.queue.iter().position(|e| e.request == request).expect("BUG: not in its queue");
                ks.blockers(owner, queued.mode, pos, &mut out);
            }
        }
        out
    }
}

/// The queued requests of a key that may be granted on this key now, in queue order (each
/// judged as if the earlier ones stayed queued, which for later entries is the same as if
/// they were granted). One pass, constant work per entry beyond the holder check.
fn admissible_entries(ks: &KeyState, now: Instant) -> SmallVec<[RequestId; 4]> {
    let mut held = Occupancy::default();
    for hold in &ks.holds {
        held.add(&hold.owner, hold.mode);
    }
    let mut seen = held.clone();
    let delayed = ks.delayed(now);
    let mut out = SmallVec::new();
    for entry in &ks.queue {
        let ok = if ks.holds_of(&entry.owner) {
            held.admits(&entry.owner, entry.mode)
        } else {
            !delayed && seen.admits(&entry.owner, entry.mode)
        };
        if ok {
            out.push(entry.request);
        }
        seen.add(&entry.owner, entry.mode);
    }
    out
}

/// Removes repeated keys, keeping first occurrences in order.
fn dedup<K: Eq>(keys: &mut SmallVec<[K; 1]>) {
    let mut i = 0;
    while i < keys.len() {
        if keys[..i].contains(&keys[i]) {
            keys.remove(i);
        } else {
            i += 1;
        }
    }
}
