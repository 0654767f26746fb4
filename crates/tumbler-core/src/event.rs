//! Events: every change to who holds or waits, numbered for watchers.

use std::collections::VecDeque;

use crate::mode::Mode;
use crate::owner::OwnerId;

/// What changed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A hold was granted or re-entered.
    Acquired,
    /// A hold was released one level, or entirely (by its owner, by force, by transfer, or
    /// because its owner or session was closed).
    Released,
    /// A hold ended because its TTL or its session's lease ran out.
    Expired,
    /// A waiting request left its queue without a grant (gave up, timed out, deadlock,
    /// owner or session ended).
    Cancelled,
}

impl EventKind {
    /// The stable wire name of the kind.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Acquired => "acquired",
            EventKind::Released => "released",
            EventKind::Expired => "expired",
            EventKind::Cancelled => "cancelled",
        }
    }
}

/// One change to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event<K> {
    /// Position in the event stream; 0 until an [`EventLog`] stamps it.
    pub revision: u64,
    /// What happened.
    pub kind: EventKind,
    /// To which key.
    pub key: K,
    /// Whose hold or request.
    pub owner: OwnerId,
    /// In which mode.
    pub mode: Mode,
    /// The hold's count after the change (0 when it ended or never began).
    pub count: u32,
    /// The fencing token of the hold (0 for a cancelled request).
    pub fencing_token: u64,
}

/// The numbered, bounded history of events that watchers read and resume from.
///
/// Revisions start at 1 and increase by exactly one per appended event. The log keeps the
/// newest `capacity` events; a watcher resuming from an older revision is told how far
/// back the log reaches ([`TooOld`]) so it can re-read current state instead.
#[derive(Debug)]
pub struct EventLog<K> {
    events: VecDeque<Event<K>>,
    capacity: usize,
    last: u64,
}

/// A resume point older than the log's replay buffer.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("revision {requested} is no longer in the replay buffer, which starts at {oldest}")]
pub struct TooOld {
    /// The revision asked for.
    pub requested: u64,
    /// The oldest revision still kept.
    pub oldest: u64,
}

impl<K: Clone> EventLog<K> {
    /// An empty log keeping at most `capacity` events (at least one).
    pub fn new(capacity: usize) -> Self {
        EventLog { events: VecDeque::new(), capacity: capacity.max(1), last: 0 }
    }

    /// An empty log that continues after `last_revision` (for restarts).
    pub fn starting_after(capacity: usize, last_revision: u64) -> Self {
        EventLog { last: last_revision, ..EventLog::new(capacity) }
    }

    /// Stamps the next revision on `event`, keeps it, and returns the stamped copy.
    pub fn append(&mut self, mut event: Event<K>) -> Event<K> {
        self.last += 1;
        event.revision = self.last;
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(event.clone());
        event
    }

    /// The revision of the newest event, 0 before any.
    pub fn last_revision(&self) -> u64 {
        self.last
    }

    /// The kept events with a revision greater than `after`.
    ///
    /// # Errors
    /// [`TooOld`] when events after `after` were already dropped from the buffer.
    pub fn since(&self, after: u64) -> Result<impl Iterator<Item = &Event<K>>, TooOld> {
        let oldest = self.events.front().map_or(self.last + 1, |e| e.revision);
        if after + 1 < oldest && after < self.last {
            return Err(TooOld { requested: after, oldest });
        }
        let skip = (after + 1).saturating_sub(oldest) as usize;
        Ok(self.events.iter().skip(skip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(key: u32) -> Event<u32> {
        Event {
            revision: 0,
            kind: EventKind::Acquired,
            key,
            owner: OwnerId::new("o").unwrap(),
            mode: Mode::Exclusive,
            count: 1,
            fencing_token: 1,
        }
    }

    #[test]
    fn revisions_increase_by_one_and_resume_after_a_revision() {
        let mut log = EventLog::new(3);
        for k in 0..5 {
            log.append(ev(k));
        }
        assert_eq!(log.last_revision(), 5);
        let revs: Vec<u64> = log.since(3).unwrap().map(|e| e.revision).collect();
        assert_eq!(revs, vec![4, 5]);
        assert_eq!(log.since(5).unwrap().count(), 0);
        assert_eq!(log.since(2).unwrap().count(), 3);
        assert_eq!(log.since(1).err(), Some(TooOld { requested: 1, oldest: 3 }));
    }

    #[test]
    fn a_restarted_log_continues_numbering() {
        let mut log = EventLog::starting_after(8, 41);
        assert_eq!(log.append(ev(1)).revision, 42);
        assert_eq!(log.since(41).unwrap().count(), 1);
        assert!(log.since(10).is_err());
    }
}
