//! One shard of the lock table: the keys that hash to it, their holds and queues, the
//! per-shard indexes by owner and session, the shard's timers, the waits that live in it
//! ([`RequestId::home`]) and its fencing counter.
//!
//! A shard decides alone whatever concerns only its keys and needs no other queue: an
//! immediate grant, a try that fails, a release that leaves no waiter to wake, and the
//! hand-off of a key from its only holder to a first waiter that lives here. Those are the
//! hot paths, and [`Shard::try_acquire`] / [`Shard::try_release`] run them with only this
//! shard borrowed. Everything else answers [`Escalate`], and the caller retries through
//! the coordinator with every shard borrowed ([`crate::Coordinator`]).

use std::collections::{BTreeMap, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;

use crate::config::Config;
use crate::effects::{Effects, Lost, LostReason, Wake};
use crate::error::{Error, Holder, Result};
use crate::event::{Event, EventKind};
use crate::handoff::{HandOff, Released};
use crate::hash::Map;
use crate::index::{remove_first, Index, Items, Slot, UNFILED};
use crate::mode::Mode;
use crate::namespaces::KeyBudget;
use crate::owner::OwnerId;
use crate::request::{Acquire, Acquired, Grant, Granted, RequestId, Wait};
use crate::session::SessionId;
use crate::time::Instant;

/// The operation needs more than one shard (a queue, a session, a cross-shard bound):
/// nothing was changed; retry it through the coordinator.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Escalate;

/// How many request ids a hold remembers for retries: a retry arrives soon after its
/// original, so the most recent ones are the ones that matter.
pub const REMEMBERED_REQUEST_IDS: usize = 64;

/// The shards of one table, as a coordinator operation reaches them.
///
/// An operation asks for a shard only when it needs it, so a caller that keeps shards
/// behind separate locks can lock each on first request and hold it until the operation
/// ends. That is free of lock-order deadlocks as long as every such operation also holds
/// one common lock (the coordinator's) and single-shard paths never wait for a second
/// lock while holding a shard.
pub trait Shards<K> {
    /// How many shards the table has.
    fn count(&self) -> usize;
    /// Shard `index` (less than [`Shards::count`]).
    fn get(&mut self, index: usize) -> &mut Shard<K>;

    /// Asks for every shard at once, for a step that must read all of them as of one
    /// moment (a caller locking shards on first request locks them all here).
    fn take_all(&mut self) {
        for i in 0..self.count() {
            self.get(i);
        }
    }
}

impl<K> Shards<K> for Vec<Shard<K>> {
    fn count(&self) -> usize {
        self.len()
    }

    fn get(&mut self, index: usize) -> &mut Shard<K> {
        &mut self[index]
    }
}

/// One owner's hold of a key in one mode.
#[derive(Clone, Debug)]
pub(crate) struct Hold {
    pub owner: OwnerId,
    /// Where the owner's items sit in [`Books::owners`], once the hold is entered there
    /// ([`Books::enter`]).
    pub owner_slot: Slot,
    pub mode: Mode,
    pub count: u32,
    pub token: u64,
    pub session: Option<SessionId>,
    /// The expiry and the id of its timer in [`Books::timers`].
    pub expiry: Option<(Instant, u64)>,
    /// Request ids that entered this hold, oldest first, at most [`REMEMBERED_REQUEST_IDS`]
    /// (for retry de-duplication). They stay for the hold's life: releases name no level,
    /// so forgetting one on release could forget the wrong one and let its retry count
    /// again.
    pub request_ids: Vec<Arc<str>>,
    pub lock_delay: Option<Duration>,
}

/// A waiting request's place in one key's queue.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub request: RequestId,
    pub owner: OwnerId,
    pub mode: Mode,
    /// For a request that lives in this shard ([`RequestId::home`]): the rest of what
    /// granting it takes. `None` for a request the coordinator keeps.
    pub local: Option<LocalWait>,
}

/// What a request living in its shard asks for beyond its key, owner and mode: it has no
/// session or request id, so this is all a grant needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LocalWait {
    pub ttl: Option<Duration>,
    pub lock_delay: Option<Duration>,
    /// When the wait runs out (also in [`LocalWaits::ends`]).
    pub deadline: Option<Instant>,
    /// Where the owner's items sit in [`Books::owners`], once the wait is entered there
    /// ([`LocalWaits::enter`]).
    pub owner_slot: Slot,
}

/// Everything about one key with holds, waiters, or a running lock-delay.
#[derive(Debug, Default)]
pub(crate) struct KeyState {
    pub holds: SmallVec<[Hold; 1]>,
    pub queue: VecDeque<Entry>,
    /// A lock-delay in force until this instant (and its timer id).
    pub delay: Option<(Instant, u64)>,
}

impl KeyState {
    pub fn is_idle(&self) -> bool {
        self.holds.is_empty() && self.queue.is_empty() && self.delay.is_none()
    }

    pub fn holds_of(&self, owner: &OwnerId) -> bool {
        self.holds.iter().any(|h| h.owner.same(owner))
    }

    #[inline]
    pub fn hold_index(&self, owner: &OwnerId, mode: Mode) -> Option<usize> {
        self.holds.iter().position(|h| h.owner.same(owner) && h.mode.same_kind(mode))
    }

    /// The index of the hold `owner` has in `mode` (or of its only hold when `mode` is
    /// `None`), checking the fencing token when one is given.
    pub fn find_hold(&self, owner: &OwnerId, mode: Option<Mode>, token: Option<u64>) -> Result<usize> {
        self.locate(owner, mode, token).map_err(Missing::error)
    }

    /// [`KeyState::find_hold`], answering why there is no such hold in a word, so that the
    /// release of a hot key, which finds its hold, builds and moves no [`Error`].
    #[inline]
    pub fn locate(&self, owner: &OwnerId, mode: Option<Mode>, token: Option<u64>) -> Result<usize, Missing> {
        if self.holds.is_empty() {
            return Err(Missing::NotHeld);
        }
        let idx = match mode {
            Some(mode) => self.hold_index(owner, mode),
            None => {
                let mut own = self.holds.iter().enumerate().filter(|(_, h)| h.owner.same(owner));
                match (own.next(), own.next()) {
                    (Some((i, _)), None) => Some(i),
                    (Some(_), Some(_)) => return Err(Missing::ModeAmbiguous),
                    (None, _) => None,
                }
            }
        };
        let idx = idx.ok_or(Missing::NotOwner)?;
        if token.is_some_and(|t| self.holds[idx].token != t) {
            // A guard from an earlier hold of the same owner: that hold is gone.
            return Err(Missing::NotHeld);
        }
        Ok(idx)
    }

    pub fn holders(&self) -> Vec<Holder> {
        self.holds
            .iter()
            .map(|h| Holder { owner: h.owner.clone(), mode: h.mode, count: h.count, fencing_token: h.token })
            .collect()
    }

    pub fn delayed(&self, now: Instant) -> bool {
        self.delay.is_some_and(|(until, _)| until > now)
    }

    /// The semaphore limit the key is in use with, if any hold or waiter is a semaphore.
    pub fn semaphore_limit(&self) -> Option<u32> {
        self.holds.iter().map(|h| h.mode).chain(self.queue.iter().map(|e| e.mode)).find_map(Mode::limit)
    }

    /// Whether a request by `owner` in `mode`, standing behind the first `earlier` queue
    /// entries, may be granted now.
    ///
    /// This is the fairness rule, in one place: a request by a current holder of the key
    /// (a re-entry or a conversion between modes) is checked against the other owners'
    /// holds only; any other request against the other owners' holds *and* every earlier
    /// queued request of another owner, so nobody overtakes an incompatible waiter.
    pub fn admits(&self, owner: &OwnerId, mode: Mode, earlier: usize, now: Instant) -> bool {
        let mut seen = Occupancy::default();
        for hold in &self.holds {
            seen.add(&hold.owner, hold.mode);
        }
        if self.holds_of(owner) {
            return seen.admits(owner, mode);
        }
        if self.delayed(now) {
            return false;
        }
        for entry in self.queue.iter().take(earlier) {
            seen.add(&entry.owner, entry.mode);
        }
        seen.admits(owner, mode)
    }

    /// The owners whose holds or earlier queue entries keep the entry at `position` (or a
    /// new request at the tail, `position == queue.len()`) by `owner` in `mode` from being
    /// granted: the edges of the wait-for graph.
    pub fn blockers(&self, owner: &OwnerId, mode: Mode, position: usize, out: &mut Vec<OwnerId>) {
        let mut push = |o: &OwnerId| {
            if !o.same(owner) && !out.iter().any(|x| x.same(o)) {
                out.push(o.clone());
            }
        };
        let is_holder = self.holds_of(owner);
        let mut parties: Vec<(&OwnerId, Mode)> = self.holds.iter().map(|h| (&h.owner, h.mode)).collect();
        if !is_holder {
            parties.extend(self.queue.iter().take(position).map(|e| (&e.owner, e.mode)));
        }
        let semaphore_full = match mode {
            Mode::Semaphore { limit } => {
                let mut others: Vec<&OwnerId> = Vec::new();
                for (o, m) in &parties {
                    if matches!(m, Mode::Semaphore { .. }) && !o.same(owner) && !others.iter().any(|x| x.same(o)) {
                        others.push(o);
                    }
                }
                others.len() >= limit as usize
            }
            _ => false,
        };
        for (o, m) in parties {
            if m.conflicts_with(mode) || (semaphore_full && matches!(m, Mode::Semaphore { .. })) {
                push(o);
            }
        }
    }
}

/// Why a release, refresh or transfer found no hold to act on ([`KeyState::locate`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Missing {
    /// Nobody holds the key, or the hold the fencing token names is gone.
    NotHeld,
    /// Others hold the key, not this owner (in that mode).
    NotOwner,
    /// The owner holds the key in several modes and named none.
    ModeAmbiguous,
}

impl Missing {
    /// The error the caller answers.
    pub fn error(self) -> Error {
        match self {
            Missing::NotHeld => Error::NotHeld,
            Missing::NotOwner => Error::NotOwner,
            Missing::ModeAmbiguous => Error::invalid("mode", "the owner holds this key in several modes; name one"),
        }
    }
}

/// The parties (other than the asking owner) seen on a key so far, summarised so that a
/// queue scan checks each entry in constant time instead of against every earlier one.
#[derive(Clone, Default)]
pub(crate) struct Occupancy<'a> {
    exclusive: Parties<'a>,
    shared: Parties<'a>,
    /// Distinct semaphore owners, kept only up to the point where the count decides.
    semaphore: SmallVec<[&'a OwnerId; 4]>,
    semaphore_overflow: bool,
}

#[derive(Clone, Default)]
struct Parties<'a> {
    first: Option<&'a OwnerId>,
    several: bool,
}

impl<'a> Parties<'a> {
    fn add(&mut self, owner: &'a OwnerId) {
        match self.first {
            None => self.first = Some(owner),
            Some(first) if !first.same(owner) => self.several = true,
            Some(_) => {}
        }
    }

    fn any_besides(&self, owner: &OwnerId) -> bool {
        self.several || self.first.is_some_and(|f| !f.same(owner))
    }
}

/// Semaphore owners are counted exactly up to this many; beyond it every semaphore is full.
const SEMAPHORE_COUNT_CAP: usize = 1 << 16;

impl<'a> Occupancy<'a> {
    pub fn add(&mut self, owner: &'a OwnerId, mode: Mode) {
        match mode {
            Mode::Exclusive => self.exclusive.add(owner),
            Mode::Shared => self.shared.add(owner),
            Mode::Semaphore { .. } => {
                if self.semaphore.iter().any(|o| o.same(owner)) {
                    return;
                }
                if self.semaphore.len() < SEMAPHORE_COUNT_CAP {
                    self.semaphore.push(owner);
                } else {
                    self.semaphore_overflow = true;
                }
            }
        }
    }

    pub fn admits(&self, owner: &OwnerId, mode: Mode) -> bool {
        let semaphore_others = || {
            if self.semaphore_overflow {
                return usize::MAX;
            }
            self.semaphore.len() - usize::from(self.semaphore.iter().any(|o| o.same(owner)))
        };
        let exclusive = self.exclusive.any_besides(owner);
        match mode {
            Mode::Exclusive => !exclusive && !self.shared.any_besides(owner) && semaphore_others() == 0,
            Mode::Shared => !exclusive && semaphore_others() == 0,
            Mode::Semaphore { limit } => {
                !exclusive && !self.shared.any_besides(owner) && semaphore_others() < limit as usize
            }
        }
    }
}

/// A hold as a store recorded it, to be put back with [`crate::Coordinator::restore_hold`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoredHold {
    /// Its owner.
    pub owner: OwnerId,
    /// Its mode.
    pub mode: Mode,
    /// Its re-entry count (at least 1).
    pub count: u32,
    /// Its fencing token.
    pub fencing_token: u64,
    /// The session it belongs to (which must be restored first).
    pub session: Option<SessionId>,
    /// When it expires, on the table's clock.
    pub expires_at: Option<Instant>,
    /// The lock-delay to start if it ends without a release.
    pub lock_delay: Option<Duration>,
    /// The `request_id`s it remembers, oldest first (beyond the last
    /// [`REMEMBERED_REQUEST_IDS`], the oldest are dropped).
    pub request_ids: Vec<Arc<str>>,
}

/// A hold as listed in the per-session index: key, owner, mode.
pub(crate) type SessionHold<K> = (K, OwnerId, Mode);

/// A timer of a shard.
#[derive(Clone, Debug)]
pub(crate) enum Timer<K> {
    /// A TTL hold expires.
    Expiry { key: K, owner: OwnerId, mode: Mode },
    /// A lock-delay ends.
    DelayEnd { key: K },
}

/// One shard of a lock table. See the module documentation.
#[derive(Debug)]
pub struct Shard<K> {
    pub(crate) keys: Map<K, KeyState>,
    pub(crate) books: Books<K>,
    pub(crate) local: LocalWaits<K>,
    pub(crate) config: Arc<Config<K>>,
    /// The table's per-namespace bound, shared with the coordinator and the other shards.
    pub(crate) budget: Option<KeyBudget<K>>,
}

/// A shard's records of its holds beside the keys' own state: who holds what, which session
/// holds what, the timers and the fencing counter. Apart from the keys so that a key's
/// state and the records can be changed together after one lookup.
#[derive(Debug)]
pub(crate) struct Books<K> {
    /// What each owner has in this shard: its holds, and its waits living here. One entry
    /// for both, so that a hand-off, which ends the new holder's wait and starts its hold,
    /// looks that owner up once.
    pub owners: Index<OwnerId, OwnerItems<K>>,
    pub sessions: Index<SessionId, SmallVec<[SessionHold<K>; 2]>>,
    pub timers: BTreeMap<(Instant, u64), Timer<K>>,
    next_timer: u64,
    /// The last fencing token handed out by this shard. Every key lives in exactly one
    /// shard, so one increasing counter per shard makes tokens strictly increase per key
    /// without remembering anything about keys that are free.
    last_token: u64,
}

/// What one owner has in a shard.
#[derive(Debug)]
pub(crate) struct OwnerItems<K> {
    /// Its holds: key and mode.
    pub holds: SmallVec<[(K, Mode); 2]>,
    /// Its requests living in this shard ([`RequestId::home`]), with their keys: what the
    /// coordinator's wait-for graph and an owner's end need to find them.
    pub waits: SmallVec<[(K, RequestId); 1]>,
}

impl<K> Default for OwnerItems<K> {
    fn default() -> Self {
        OwnerItems { holds: SmallVec::new(), waits: SmallVec::new() }
    }
}

impl<K> Items for OwnerItems<K> {
    fn is_empty(&self) -> bool {
        self.holds.is_empty() && self.waits.is_empty()
    }
}

impl<K: PartialEq> OwnerItems<K> {
    #[inline]
    fn forget_hold(&mut self, key: &K, mode: Mode) {
        remove_first(&mut self.holds, |(k, m)| k == key && *m == mode);
    }

    #[inline]
    fn forget_wait(&mut self, request: RequestId) {
        remove_first(&mut self.waits, |(_, r)| *r == request);
    }
}

impl<K: Hash + Eq + Clone> Books<K> {
    /// Starts `hold`, a new hold of `key` (count 1; its token and expiry are set here): the
    /// shard's next fencing token, an expiry timer when it `expires_at`, its owner and
    /// session entries, and its event.
    fn open(&mut self, key: &K, hold: &mut Hold, expires_at: Option<Instant>, config: &Config<K>, fx: &mut Effects<K>) {
        self.start(key, hold, expires_at, config, fx);
        self.enter(key, hold);
    }

    /// [`Books::open`] but for the owner and session entries, which the caller makes.
    // Always inlined, as `leave`: both run in every hand-off, where a call's prologue and
    // epilogue cost more than their bodies (measured).
    #[inline(always)]
    fn start(
        &mut self,
        key: &K,
        hold: &mut Hold,
        expires_at: Option<Instant>,
        config: &Config<K>,
        fx: &mut Effects<K>,
    ) {
        self.last_token += 1;
        hold.token = self.last_token;
        hold.expiry = expires_at.map(|at| self.expiry_timer(key, hold, at, fx));
        record(config, fx, EventKind::Acquired, key, &hold.owner, hold.mode, 1, hold.token);
    }

    /// Ends `hold` of `key`: forgets it and records its event (`Released` or `Expired`).
    #[inline]
    fn close(&mut self, key: &K, hold: &Hold, kind: EventKind, config: &Config<K>, fx: &mut Effects<K>) {
        self.leave(key, hold);
        record(config, fx, kind, key, &hold.owner, hold.mode, 0, hold.token);
    }

    /// Records a hold that starts: under its owner (keeping its slot) and its session.
    fn enter(&mut self, key: &K, hold: &mut Hold) {
        hold.owner_slot = self.owners.add(&hold.owner, |items| items.holds.push((key.clone(), hold.mode)));
        if let Some(session) = hold.session {
            self.sessions.push(&session, (key.clone(), hold.owner.clone(), hold.mode));
        }
    }

    /// The holds `owner` has in this shard.
    pub fn holds_of(&self, owner: &OwnerId) -> &[(K, Mode)] {
        self.owners.entry(owner).map_or(&[], |items| &items.holds)
    }

    /// The requests of `owner` living in this shard, with their keys.
    pub fn waits_of(&self, owner: &OwnerId) -> &[(K, RequestId)] {
        self.owners.entry(owner).map_or(&[], |items| &items.waits)
    }

    /// Every request living in this shard, with its key.
    pub fn waits(&self) -> impl Iterator<Item = &(K, RequestId)> {
        self.owners.entries().flat_map(|items| &items.waits)
    }

    /// Forgets a hold that ended: its expiry timer and its owner and session entries.
    #[inline(always)]
    fn leave(&mut self, key: &K, hold: &Hold) {
        if hold.expiry.is_some() || hold.session.is_some() {
            self.leave_timer_and_session(key, hold);
        }
        self.owners.change_at(hold.owner_slot, |items| items.forget_hold(key, hold.mode));
    }

    /// The part of [`Books::leave`] for a hold with an expiry or a session.
    #[inline(never)]
    fn leave_timer_and_session(&mut self, key: &K, hold: &Hold) {
        if let Some(timer) = hold.expiry {
            self.timers.remove(&timer);
        }
        if let Some(session) = hold.session {
            self.sessions.remove(&session, |(k, o, m)| k == key && o.same(&hold.owner) && *m == hold.mode);
        }
    }

    /// A new timer for `hold` of `key` to expire at `at`: its expiry as a hold keeps it.
    #[inline(never)]
    fn expiry_timer(&mut self, key: &K, hold: &Hold, at: Instant, fx: &mut Effects<K>) -> (Instant, u64) {
        let timer = Timer::Expiry { key: key.clone(), owner: hold.owner.clone(), mode: hold.mode };
        (at, self.add_timer(at, timer, fx))
    }

    fn add_timer(&mut self, at: Instant, timer: Timer<K>, fx: &mut Effects<K>) -> u64 {
        self.next_timer += 1;
        self.timers.insert((at, self.next_timer), timer);
        fx.deadline(at);
        self.next_timer
    }

    /// Moves the expiry of `hold` (of `key`) to `at`.
    fn reschedule(&mut self, key: &K, hold: &mut Hold, at: Instant, fx: &mut Effects<K>) {
        if let Some(old) = hold.expiry {
            self.timers.remove(&old);
        }
        hold.expiry = Some(self.expiry_timer(key, hold, at, fx));
    }
}

/// The requests living in a shard ([`RequestId::home`]), beside their queue entries.
#[derive(Debug)]
pub(crate) struct LocalWaits<K> {
    /// When those with a time bound run out, with their keys. Apart from the books' timers:
    /// on a tie, holds expire and lock-delays end before waits run out
    /// ([`crate::Coordinator::tick`]).
    pub ends: BTreeMap<(Instant, RequestId), K>,
    /// How many requests live in shards, counted across all of them (shared with the
    /// coordinator, which reads it to skip deadlock searches when fewer than two wait).
    pub count: Arc<AtomicUsize>,
}

impl<K: Hash + Eq + Clone> LocalWaits<K> {
    /// Records a request living here that starts to wait on `key`, with its owner in
    /// `books` (keeping its slot).
    pub fn enter(&mut self, books: &mut Books<K>, key: &K, entry: &mut Entry) {
        let local = entry.local.as_mut().expect("BUG: entering a wait that does not live in its shard");
        local.owner_slot = books.owners.add(&entry.owner, |items| items.waits.push((key.clone(), entry.request)));
        if let Some(at) = local.deadline {
            self.ends.insert((at, entry.request), key.clone());
        }
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets a request taken out of its queue, and its owner's entry for it in `books`.
    fn leave(&mut self, books: &mut Books<K>, entry: &Entry) {
        let local = entry.local.expect("BUG: a wait that does not live in its shard leaves");
        books.owners.change_at(local.owner_slot, |items| items.forget_wait(entry.request));
        self.end(entry);
    }

    /// [`LocalWaits::leave`] but for the owner's entry, which the caller forgets.
    #[inline]
    fn end(&mut self, entry: &Entry) {
        if let Some(at) = entry.local.and_then(|local| local.deadline) {
            self.ends.remove(&(at, entry.request));
        }
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Appends an event to `fx` when the table records events.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record<K: Clone>(
    config: &Config<K>,
    fx: &mut Effects<K>,
    kind: EventKind,
    key: &K,
    owner: &OwnerId,
    mode: Mode,
    count: u32,
    token: u64,
) {
    if config.record_events {
        fx.events.push(Event {
            revision: 0,
            kind,
            key: key.clone(),
            owner: owner.clone(),
            mode,
            count,
            fencing_token: token,
        });
    }
}

/// What to say about a hold being granted.
pub(crate) struct GrantSpec<'r> {
    pub owner: &'r OwnerId,
    pub mode: Mode,
    pub ttl: Option<Duration>,
    pub session: Option<SessionId>,
    pub request_id: Option<&'r Arc<str>>,
    pub lock_delay: Option<Duration>,
}

impl<'r, K> From<&'r Acquire<K>> for GrantSpec<'r> {
    fn from(req: &'r Acquire<K>) -> Self {
        GrantSpec {
            owner: &req.owner,
            mode: req.mode,
            ttl: req.ttl,
            session: req.session,
            request_id: req.request_id.as_ref(),
            lock_delay: req.lock_delay,
        }
    }
}

impl<K: Hash + Eq + Clone> Shard<K> {
    pub(crate) fn new(config: Arc<Config<K>>, budget: Option<KeyBudget<K>>, local_waits: Arc<AtomicUsize>) -> Self {
        Shard {
            budget,
            keys: Map::default(),
            books: Books {
                owners: Index::default(),
                sessions: Index::default(),
                timers: BTreeMap::new(),
                next_timer: 0,
                last_token: 0,
            },
            local: LocalWaits { ends: BTreeMap::new(), count: local_waits },
            config,
        }
    }

    /// The highest fencing token this shard has handed out.
    pub fn fencing_high_water(&self) -> u64 {
        self.books.last_token
    }

    /// Makes every later token of this shard greater than `floor` (after a restart).
    pub fn raise_fencing_floor(&mut self, floor: u64) {
        self.books.last_token = self.books.last_token.max(floor);
    }

    /// The earliest deadline of this shard: a hold's expiry, a lock-delay's end, or a
    /// wait of a request living here running out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_timer().into_iter().chain(self.next_wait_end().map(|(at, _)| at)).min()
    }

    /// The earliest expiry or lock-delay end.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        self.books.timers.keys().next().map(|(at, _)| *at)
    }

    /// The earliest time bound of a request living here, with the request.
    pub(crate) fn next_wait_end(&self) -> Option<(Instant, RequestId)> {
        self.local.ends.keys().next().copied()
    }

    /// Acquires a single key without a session when that can be decided in this shard
    /// alone: granted at once, or a try that fails. A new key takes its place in its
    /// namespace here (the count is shared by every shard). Anything that would have to
    /// queue, or involves a session, answers [`Escalate`] and changes nothing.
    ///
    /// The key must belong to this shard ([`crate::Layout::shard_of`]).
    pub fn try_acquire(
        &mut self,
        req: &Acquire<K>,
        now: Instant,
        fx: &mut Effects<K>,
    ) -> Result<Result<Acquired<K>>, Escalate> {
        if req.keys.len() != 1 || req.session.is_some() {
            return Err(Escalate);
        }
        if let Err(e) = validate_request(req, &self.config) {
            return Ok(Err(e));
        }
        let key = &req.keys[0];
        if let Some(ks) = self.keys.get(key) {
            if let Err(e) = check_compatible_request(ks, req) {
                return Ok(Err(e));
            }
            if let Some(grant) = retried_grant(ks, key, req) {
                return Ok(Ok(Acquired::Granted(grant)));
            }
            if req.request_id.is_some() && !ks.queue.is_empty() {
                // The id may name a queued request, which only the coordinator knows.
                return Err(Escalate);
            }
            if !ks.admits(&req.owner, req.mode, ks.queue.len(), now) {
                return match req.wait {
                    Wait::NoWait => Ok(Err(Error::Busy { holders: ks.holders() })),
                    _ => Err(Escalate),
                };
            }
            if !ks.queue.is_empty() && ks.hold_index(&req.owner, req.mode).is_none() {
                // A new hold on a key with waiters may close a cycle of owners waiting on each
                // other, or make the owner's own queued request grantable: only the
                // coordinator sees those. (A re-entry changes neither.)
                return Err(Escalate);
            }
        } else if let Some(budget) = &self.budget {
            if let Err(e) = budget.reserve([key]) {
                return Ok(Err(e));
            }
        }
        let granted = self.grant(key, &GrantSpec::from(req), now, fx);
        Ok(Ok(Acquired::Granted(Grant {
            owner: req.owner.clone(),
            mode: req.mode,
            session: None,
            holds: SmallVec::from_buf([granted]),
            retried: false,
        })))
    }

    /// Releases one level of a hold without a session, when this shard can decide alone
    /// what follows. That is the case when the level is not the last, or nobody waits on the
    /// key, or the key passes from its only holder to the first waiter, a request living in
    /// this shard ([`RequestId::home`]), and to nobody else (the conditions are in
    /// `hands_off`). The waiter is then granted exactly as the coordinator would have
    /// granted it, and [`Released::handed`] names it: its wake is left to the caller, and
    /// is not in `fx`. Otherwise answers [`Escalate`] and changes nothing.
    ///
    /// `now` is called only when the release needs the time, to start a hold with a TTL
    /// for the waiter it hands the key to: most releases read no clock.
    pub fn try_release(
        &mut self,
        key: &K,
        owner: &OwnerId,
        mode: Option<Mode>,
        token: Option<u64>,
        now: impl FnOnce() -> Instant,
        fx: &mut Effects<K>,
    ) -> Result<Result<Released>, Escalate> {
        let Shard { keys, books, local, config, .. } = self;
        let found = keys.get_mut(key).ok_or(Missing::NotHeld).and_then(|ks| Ok((ks.locate(owner, mode, token)?, ks)));
        let (idx, ks) = match found {
            Ok(found) => found,
            Err(missing) => return Ok(Err(missing.error())),
        };
        let hold = &ks.holds[idx];
        if hold.session.is_some() {
            return Err(Escalate);
        }
        if hold.count > 1 || ks.queue.is_empty() {
            let left = self.release_level(key, idx, fx);
            if left == 0 {
                self.drop_if_idle(key);
            }
            return Ok(Ok(Released { left, handed: None }));
        }
        if !hands_off(ks) {
            return Err(Escalate);
        }
        let handed = hand_over(key, ks, books, local, config, now, fx);
        Ok(Ok(Released { left: 0, handed: Some(handed) }))
    }

    /// The wake of a waiter that [`Shard::try_release`] handed `key` to, with the grant the
    /// coordinator would have made: for a caller that delivers outcomes as [`Wake`]s, or
    /// that must release the hold of a waiter that has gone. `None` when that hold has
    /// ended since.
    pub fn wake_of(&self, key: &K, handed: HandOff) -> Option<Wake<K>> {
        let hold = self.keys.get(key)?.holds.iter().find(|h| h.token == handed.fencing_token)?;
        Some(Wake { request: handed.request, outcome: Ok(handed.grant(key.clone(), hold.owner.clone(), hold.mode)) })
    }

    /// Removes request `request`, living in this shard, from the queue of `key` and from
    /// the index; answers its key and entry. Without `key`, or when the request is not in
    /// that key's queue, it is looked for among every wait living here.
    pub(crate) fn take_local(&mut self, request: RequestId, key: Option<&K>) -> Option<(K, Entry)> {
        if let Some(found) = key.and_then(|key| self.take_local_from(key, request)) {
            return Some(found);
        }
        let key = self.books.waits().find(|(_, r)| *r == request).map(|(k, _)| k.clone())?;
        self.take_local_from(&key, request)
    }

    fn take_local_from(&mut self, key: &K, request: RequestId) -> Option<(K, Entry)> {
        let ks = self.keys.get_mut(key)?;
        let pos = ks.queue.iter().position(|e| e.request == request && e.local.is_some())?;
        let entry = ks.queue.remove(pos).expect("BUG: position just found");
        self.local.leave(&mut self.books, &entry);
        Some((key.clone(), entry))
    }

    /// Finds the hold `owner` has on `key` in `mode` (or its only hold when `mode` is
    /// `None`), checking the fencing token when one is given.
    pub(crate) fn find_hold(&self, key: &K, owner: &OwnerId, mode: Option<Mode>, token: Option<u64>) -> Result<usize> {
        self.keys.get(key).ok_or(Error::NotHeld)?.find_hold(owner, mode, token)
    }

    /// Grants one level of `key` as described by `spec`: re-enters the owner's hold in that
    /// mode if there is one (keeping its token, extending its expiry to the later of the
    /// two), or starts a new hold with the next fencing token.
    pub(crate) fn grant(&mut self, key: &K, spec: &GrantSpec<'_>, now: Instant, fx: &mut Effects<K>) -> Granted<K> {
        let expires_at = spec.ttl.map(|ttl| now + ttl);
        let Shard { keys, books, config, .. } = self;
        let ks = keys.entry(key.clone()).or_default();
        if let Some(idx) = ks.hold_index(spec.owner, spec.mode) {
            let hold = &mut ks.holds[idx];
            hold.count = hold.count.checked_add(1).expect("lock count overflow");
            if let Some(id) = spec.request_id {
                if hold.request_ids.len() == REMEMBERED_REQUEST_IDS {
                    hold.request_ids.remove(0);
                }
                hold.request_ids.push(id.clone());
            }
            if spec.lock_delay.is_some() {
                hold.lock_delay = spec.lock_delay;
            }
            let old = hold.expiry.map(|(at, _)| at);
            match (old, expires_at) {
                (Some(old_at), Some(new_at)) if new_at > old_at => books.reschedule(key, hold, new_at, fx),
                _ => {}
            }
            let expires_at = hold.expiry.map(|(at, _)| at);
            record(config, fx, EventKind::Acquired, key, spec.owner, spec.mode, hold.count, hold.token);
            return Granted { key: key.clone(), count: hold.count, fencing_token: hold.token, expires_at };
        }
        let mut hold = Hold {
            owner: spec.owner.clone(),
            owner_slot: UNFILED,
            mode: spec.mode,
            count: 1,
            token: 0,
            session: spec.session,
            expiry: None,
            request_ids: spec.request_id.into_iter().cloned().collect(),
            lock_delay: spec.lock_delay,
        };
        books.open(key, &mut hold, expires_at, config, fx);
        let granted = Granted { key: key.clone(), count: 1, fencing_token: hold.token, expires_at };
        ks.holds.push(hold);
        granted
    }

    /// Puts back a hold exactly as it was recorded (after a restart): its owner, mode,
    /// count, token, session and expiry. Later tokens of this shard are greater than its
    /// token. Returns whether the hold was placed: `false` when the owner already holds
    /// the key in that mode, or another owner's hold is incompatible with it.
    pub(crate) fn restore(&mut self, key: &K, hold: &RestoredHold, fx: &mut Effects<K>) -> bool {
        if let Some(ks) = self.keys.get(key) {
            let mut seen = Occupancy::default();
            for h in &ks.holds {
                seen.add(&h.owner, h.mode);
            }
            if ks.hold_index(&hold.owner, hold.mode).is_some() || !seen.admits(&hold.owner, hold.mode) {
                return false;
            }
        }
        self.books.last_token = self.books.last_token.max(hold.fencing_token);
        let mut restored = Hold {
            owner: hold.owner.clone(),
            owner_slot: UNFILED,
            mode: hold.mode,
            count: hold.count.max(1),
            token: hold.fencing_token,
            session: hold.session,
            expiry: None,
            request_ids: hold.request_ids[hold.request_ids.len().saturating_sub(REMEMBERED_REQUEST_IDS)..].to_vec(),
            lock_delay: hold.lock_delay,
        };
        restored.expiry = hold.expires_at.map(|at| self.books.expiry_timer(key, &restored, at, fx));
        self.books.enter(key, &mut restored);
        self.keys.entry(key.clone()).or_default().holds.push(restored);
        true
    }

    /// Releases one level of hold `idx` of `key`; at zero the hold ends. Returns the count
    /// left. The key state stays even if idle (callers pump its queue, then drop it).
    pub(crate) fn release_level(&mut self, key: &K, idx: usize, fx: &mut Effects<K>) -> u32 {
        let ks = self.keys.get_mut(key).expect("BUG: releasing a hold of an absent key");
        let hold = &mut ks.holds[idx];
        if hold.count > 1 {
            hold.count -= 1;
            record(&self.config, fx, EventKind::Released, key, &hold.owner, hold.mode, hold.count, hold.token);
            return hold.count;
        }
        self.end_hold(key, idx, None, fx);
        0
    }

    /// Ends hold `idx` of `key` entirely. When it is `lost` (for a reason, at an instant)
    /// the owner did not ask for it: its guards are told, and a lock-delay it carries starts
    /// then.
    pub(crate) fn end_hold(
        &mut self,
        key: &K,
        idx: usize,
        lost: Option<(LostReason, Instant)>,
        fx: &mut Effects<K>,
    ) -> Hold {
        let ks = self.keys.get_mut(key).expect("BUG: ending a hold of an absent key");
        let hold = ks.holds.swap_remove(idx);
        let kind = match lost {
            Some((LostReason::Expired, _)) => EventKind::Expired,
            _ => EventKind::Released,
        };
        self.books.close(key, &hold, kind, &self.config, fx);
        if let Some((reason, now)) = lost {
            fx.lost.push(Lost {
                key: key.clone(),
                owner: hold.owner.clone(),
                mode: hold.mode,
                fencing_token: hold.token,
                reason,
            });
            let delays = matches!(reason, LostReason::Expired | LostReason::SessionEnded | LostReason::OwnerEnded);
            if let (true, Some(delay)) = (delays, hold.lock_delay) {
                self.start_delay(key, now + delay, fx);
            }
        }
        hold
    }

    fn start_delay(&mut self, key: &K, until: Instant, fx: &mut Effects<K>) {
        let previous = self.keys.get(key).and_then(|ks| ks.delay);
        if previous.is_some_and(|(at, _)| at >= until) {
            return;
        }
        if let Some(old) = previous {
            self.books.timers.remove(&old);
        }
        let id = self.books.add_timer(until, Timer::DelayEnd { key: key.clone() }, fx);
        self.keys.get_mut(key).expect("BUG: delaying an absent key").delay = Some((until, id));
    }

    /// Moves the expiry timer of a hold to `at`.
    pub(crate) fn move_expiry(&mut self, key: &K, owner: &OwnerId, mode: Mode, at: Instant, fx: &mut Effects<K>) {
        let ks = self.keys.get_mut(key).expect("BUG: moving the expiry of an absent key");
        let idx = ks.hold_index(owner, mode).expect("BUG: moving the expiry of an absent hold");
        self.books.reschedule(key, &mut ks.holds[idx], at, fx);
    }

    /// Forgets a key with no holds, no waiters and no lock-delay, giving back its place in
    /// its namespace. Returns whether it did.
    pub(crate) fn drop_if_idle(&mut self, key: &K) -> bool {
        if self.keys.get(key).is_some_and(KeyState::is_idle) {
            self.keys.remove(key);
            if let Some(budget) = &self.budget {
                budget.release(key);
            }
            return true;
        }
        false
    }
}

/// Ends the only hold of `key` (whose state is `ks`) and gives the key to its first waiter,
/// a request living in this shard: what ending the hold and then granting the waiter do
/// elsewhere, in one visit of the key's state (the hot key's hand-off).
#[inline]
fn hand_over<K: Hash + Eq + Clone>(
    key: &K,
    ks: &mut KeyState,
    books: &mut Books<K>,
    local: &mut LocalWaits<K>,
    config: &Config<K>,
    now: impl FnOnce() -> Instant,
    fx: &mut Effects<K>,
) -> HandOff {
    debug_assert!(ks.holds.len() == 1 && ks.delay.is_none(), "BUG: handing over a key that is not free to take");
    let entry = ks.queue.pop_front().expect("BUG: hands_off checked the queue");
    local.end(&entry);
    let wait = entry.local.expect("BUG: hands_off checked that the head lives here");
    let hold = &mut ks.holds[0];
    debug_assert!(hold.session.is_none(), "BUG: try_release leaves holds of sessions to the coordinator");
    books.close(key, hold, EventKind::Released, config, fx);
    let expires_at = wait.ttl.map(|ttl| now() + ttl);
    // The waiter's new hold takes the old one's place, as `Shard::grant` would start it: a
    // hold of count 1 without a session (`start` gives it its token and expiry).
    hold.owner = entry.owner;
    hold.mode = entry.mode;
    hold.count = 1;
    hold.request_ids.clear();
    hold.lock_delay = wait.lock_delay;
    books.start(key, hold, expires_at, config, fx);
    // The new holder's wait ends as its hold starts, in the slot the wait kept.
    hold.owner_slot = wait.owner_slot;
    books.owners.change_kept(hold.owner_slot, |items| {
        items.forget_wait(entry.request);
        items.holds.push((key.clone(), hold.mode));
    });
    HandOff { request: entry.request, fencing_token: hold.token, expires_at }
}

/// Whether ending the last level of the only hold of a key hands it to the first waiter and
/// to nobody else, so that its shard may do it alone ([`Shard::try_release`]): the first
/// waiter lives in the shard (one key, no session or request id); nothing else
/// is granted after it (it is alone, or it takes the key exclusively and no other request
/// of its owner waits here, which would become a re-entry); the releasing owner does not
/// wait here itself (its requests would now wait for earlier ones, which the coordinator
/// must check for cycles); and the key has no lock-delay (not even one that has run out
/// but whose end the table has not carried out yet: that needs no clock to see). With no
/// hold left and no delay, the fairness rule admits the first waiter, whatever its mode.
#[inline]
fn hands_off(ks: &KeyState) -> bool {
    let ([hold], Some(head)) = (ks.holds.as_slice(), ks.queue.front()) else { return false };
    if head.local.is_none() || ks.delay.is_some() {
        return false;
    }
    if ks.queue.len() == 1 {
        // The hot key's usual queue: one waiter, which is not the holder. Checked without
        // iterating the queue: the general rule below says the same, at about 80 more
        // instructions per hand-off (a deque's iterator walks two slices).
        return !head.owner.same(&hold.owner);
    }
    if ks.queue.iter().any(|e| e.owner.same(&hold.owner)) {
        return false;
    }
    head.mode == Mode::Exclusive && !ks.queue.iter().skip(1).any(|e| e.owner.same(&head.owner))
}

/// Checks the shape of a request: mode, keys, TTL.
pub(crate) fn validate_request<K>(req: &Acquire<K>, config: &Config<K>) -> Result<()> {
    req.mode.validate()?;
    if req.keys.is_empty() {
        return Err(Error::invalid("keys", "at least one key is required"));
    }
    if req.keys.len() > config.limits.max_keys_per_request {
        return Err(Error::limit("keys_per_request", config.limits.max_keys_per_request));
    }
    if req.ttl == Some(Duration::ZERO) {
        return Err(Error::invalid("ttl", "must be greater than zero"));
    }
    if let Wait::Timeout(d) = req.wait {
        if d.is_zero() {
            return Err(Error::invalid("wait", "a zero timeout is a try: use no wait"));
        }
    }
    if req.request_id.as_deref().is_some_and(str::is_empty) {
        return Err(Error::invalid("request_id", "must not be empty"));
    }
    Ok(())
}

/// Checks that a request fits what the key is already used for: the same semaphore limit,
/// and the same session as the owner's existing hold in that mode.
pub(crate) fn check_compatible_request<K>(ks: &KeyState, req: &Acquire<K>) -> Result<()> {
    if let (Some(want), Some(have)) = (req.mode.limit(), ks.semaphore_limit()) {
        if want != have {
            return Err(Error::invalid("limit", format!("the key is a semaphore with limit {have}, not {want}")));
        }
    }
    if let Some(idx) = ks.hold_index(&req.owner, req.mode) {
        if ks.holds[idx].session != req.session {
            return Err(Error::invalid("session", "the owner holds this key under another session"));
        }
    }
    Ok(())
}

/// If `req` repeats a request id whose level `owner` still holds on `key`, the answer to
/// give again (nothing is counted).
pub(crate) fn retried_grant<K: Clone>(ks: &KeyState, key: &K, req: &Acquire<K>) -> Option<Grant<K>> {
    let id = req.request_id.as_ref()?;
    let granted = retried_granted(ks, key, req, id)?;
    Some(Grant {
        owner: req.owner.clone(),
        mode: req.mode,
        session: req.session,
        holds: SmallVec::from_buf([granted]),
        retried: true,
    })
}

pub(crate) fn retried_granted<K: Clone>(ks: &KeyState, key: &K, req: &Acquire<K>, id: &Arc<str>) -> Option<Granted<K>> {
    let hold = &ks.holds[ks.hold_index(&req.owner, req.mode)?];
    hold.request_ids.iter().any(|r| r == id).then(|| Granted {
        key: key.clone(),
        count: hold.count,
        fencing_token: hold.token,
        expires_at: hold.expiry.map(|(at, _)| at),
    })
}
