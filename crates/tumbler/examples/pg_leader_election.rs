//! Leader election on a PostgreSQL session lock.
//!
//! Three candidates queue for one exclusive lock, each on a session of its own; the one
//! holding it leads and beats a heartbeat, the others wait inside PostgreSQL (woken the
//! moment the lock is free, in arrival order). The leader races its work against
//! `guard.lost()` with `tokio::select!`, so it stops leading as soon as it learns that its
//! connection — and with it the lock — is gone.
//!
//! The run: the first leader steps down (releases), the second takes over; then an
//! administrator kills the second leader's connection (`pg_terminate_backend`), PostgreSQL
//! frees the lock at once and the third takes over, while the second finds out through
//! `lost()` within the session's health-check interval and runs again on a new session (a
//! session that held locks is never silently reconnected). When the third steps down, the
//! second leads again.
//!
//! PostgreSQL has no fencing tokens, so between those two moments the old leader still
//! believes it leads. Each leader therefore takes a *term* from a table when elected, and
//! its heartbeats are written only while that term is current: the old leader's late
//! writes are refused by the database. That is the fencing token you build yourself.
//!
//! Run it with `cargo run -p tumbler --features postgres --example pg_leader_election`;
//! it uses `DATABASE_URL` when set, otherwise a throw-away PostgreSQL cluster.

mod pg_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pg_support::BoxError;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tumbler::pg::{PgConfig, PgKey, PgLocks};
use tumbler::{LockGuard, LockerExt, LostReason};

const CANDIDATES: [&str; 3] = ["alpha", "bravo", "charlie"];
const BEAT: Duration = Duration::from_millis(50);
/// Beats each leader gives before the next act of the story.
const BEATS_PER_TERM: usize = 3;

/// What the candidates report, each with when it happened.
type Report = (Instant, Event);

/// What happened to a candidate.
#[derive(Debug)]
enum Event {
    Elected { who: &'static str, term: i64, pid: i32 },
    Beat { who: &'static str, term: i64, accepted: bool },
    SteppedDown { who: &'static str },
    Lost { who: &'static str, reason: LostReason },
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let pool = pg_support::database("pg_leader_election", 12).await?;
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS tumbler_example_election, tumbler_example_heartbeats;
         CREATE TABLE tumbler_example_election (id int PRIMARY KEY, term bigint NOT NULL);
         INSERT INTO tumbler_example_election VALUES (1, 0);
         CREATE TABLE tumbler_example_heartbeats (id bigserial PRIMARY KEY, term bigint NOT NULL, who text NOT NULL)",
    )
    .execute(&pool)
    .await?;

    // How soon a leader learns that its connection died (the default is 5 s). Kept longer
    // than a heartbeat here, to show what the term check is for.
    let config = PgConfig { health_check: Some(Duration::from_millis(300)), ..PgConfig::default() };
    let locks = PgLocks::with_config(pool.clone(), config);
    let mut story = Story { start: Instant::now(), seen: Vec::new() };
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (shutdown_tx, shutdown) = watch::channel(false);
    let mut step_down = BTreeMap::new();
    let mut candidates = JoinSet::new();
    for who in CANDIDATES {
        let (tx, rx) = mpsc::unbounded_channel();
        step_down.insert(who, tx);
        let run = candidate(who, locks.clone(), pool.clone(), events_tx.clone(), rx, shutdown.clone());
        candidates.spawn(run);
        // Queue in a known order.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(events_tx);

    // Act 1: the first leader steps down after a few beats.
    let (first, _) = story.elected(&mut events, 1).await?;
    story.beats(&mut events, 1, BEATS_PER_TERM).await?;
    story.say(format!("{first} is asked to step down"));
    step_down[first].send(())?;
    // Act 2: another takes over; then its connection is killed.
    let (second, pid) = story.elected(&mut events, 2).await?;
    assert_ne!(second, first);
    story.beats(&mut events, 2, BEATS_PER_TERM).await?;
    story.say(format!("an administrator kills {second}'s connection (pg_terminate_backend({pid}))"));
    let killed_at = Instant::now();
    sqlx::query("SELECT pg_terminate_backend($1)").bind(pid).execute(&pool).await?;
    // Act 3: a third takes over; the second learns that it lost the lock.
    let (third, _) = story.elected(&mut events, 3).await?;
    assert_ne!(third, second);
    story.until(&mut events, |e| matches!(e, Event::Lost { who, .. } if *who == second)).await?;
    let noticed_after = killed_at.elapsed();
    story.beats(&mut events, 3, BEATS_PER_TERM).await?;
    // Act 4: the third steps down; the second, back on a new session, leads again.
    story.say(format!("{third} is asked to step down"));
    step_down[third].send(())?;
    let (fourth, _) = story.elected(&mut events, 4).await?;
    assert_eq!(fourth, second);
    story.beats(&mut events, 4, BEATS_PER_TERM).await?;
    story.say("shutting down".to_owned());
    shutdown_tx.send(true)?;
    while let Some(done) = candidates.join_next().await {
        done??;
    }
    while let Some((at, event)) = events.recv().await {
        story.record(at, event);
    }

    // The invariants. Terms went to different candidates in turn; the killed leader was
    // told its lock was lost because its connection was.
    for who in [first, third] {
        assert!(story.seen.iter().any(|e| matches!(e, Event::SteppedDown { who: w } if *w == who)));
    }
    assert!(story
        .seen
        .iter()
        .any(|e| matches!(e, Event::Lost { who, reason: LostReason::ConnectionLost } if *who == second)));
    // Heartbeats in the order the database took them: their terms never go back, and each
    // term's beats all come from its one leader — no two leaders were ever accepted at once.
    let beats: Vec<(i64, String)> =
        sqlx::query_as("SELECT term, who FROM tumbler_example_heartbeats ORDER BY id").fetch_all(&pool).await?;
    assert!(beats.windows(2).all(|w| w[0].0 <= w[1].0), "terms went back: {beats:?}");
    let leaders = [(1, first), (2, second), (3, third), (4, second)];
    for (term, who) in &beats {
        assert!(leaders.contains(&(*term, who.as_str())), "term {term} beat by {who}");
    }
    let refused =
        story.seen.iter().filter(|e| matches!(e, Event::Beat { who, accepted: false, .. } if *who == second)).count();
    println!(
        "{second} learned of the loss {} ms after its connection died; {refused} late heartbeat(s) of its refused",
        noticed_after.as_millis()
    );
    println!(
        "ok: 4 terms ({first}, {second}, {third}, {second}); the {} heartbeats accepted each came from its term's leader",
        beats.len()
    );

    sqlx::raw_sql("DROP TABLE tumbler_example_election, tumbler_example_heartbeats").execute(&pool).await?;
    Ok(())
}

/// One candidate: queue for the lock, lead until told to step down or until the lock is
/// lost, and after a loss run again on a new session.
async fn candidate(
    who: &'static str,
    locks: PgLocks,
    pool: PgPool,
    events: mpsc::UnboundedSender<Report>,
    mut step_down: mpsc::UnboundedReceiver<()>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), BoxError> {
    let leader = PgKey::hashed("tumbler-example:leader");
    loop {
        // A new session for each candidacy: one whose connection died stays dead.
        let session = locks.owner().await?;
        let guard = tokio::select! {
            biased;
            // Dropping the waiting acquire withdraws it from PostgreSQL's queue.
            _ = shutdown.changed() => return Ok(()),
            guard = session.lock(leader) => guard?,
        };
        let term = take_term(&pool).await?;
        events.send((Instant::now(), Event::Elected { who, term, pid: session.backend_pid() }))?;

        let mut beat = tokio::time::interval(BEAT);
        loop {
            tokio::select! {
                biased;
                reason = guard.lost() => {
                    // Stop leading at once: whatever we do now is unprotected.
                    events.send((Instant::now(), Event::Lost { who, reason }))?;
                    break;
                }
                _ = step_down.recv() => {
                    guard.release().await?;
                    events.send((Instant::now(), Event::SteppedDown { who }))?;
                    return Ok(());
                }
                _ = shutdown.changed() => {
                    guard.release().await?;
                    return Ok(());
                }
                _ = beat.tick() => {
                    let accepted = heartbeat(&pool, term, who).await?;
                    events.send((Instant::now(), Event::Beat { who, term, accepted }))?;
                }
            }
        }
    }
}

/// The next term, taken by a new leader under the lock: the fencing token PostgreSQL
/// does not give.
async fn take_term(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("UPDATE tumbler_example_election SET term = term + 1 WHERE id = 1 RETURNING term")
        .fetch_one(pool)
        .await
}

/// The leader's work: a heartbeat, written only while `term` is the current one. The
/// `FOR SHARE` row lock orders it against a new leader's `take_term`.
async fn heartbeat(pool: &PgPool, term: i64, who: &str) -> Result<bool, sqlx::Error> {
    let written = sqlx::query(
        "WITH current AS (SELECT term FROM tumbler_example_election WHERE id = 1 AND term = $1 FOR SHARE)
         INSERT INTO tumbler_example_heartbeats (term, who) SELECT term, $2 FROM current",
    )
    .bind(term)
    .bind(who)
    .execute(pool)
    .await?;
    Ok(written.rows_affected() == 1)
}

/// The account of the run, printed as it happens.
struct Story {
    start: Instant,
    seen: Vec<Event>,
}

impl Story {
    fn say(&self, what: String) {
        self.say_at(Instant::now(), what);
    }

    fn say_at(&self, at: Instant, what: String) {
        println!("{:>5} ms  {what}", (at - self.start).as_millis());
    }

    fn record(&mut self, at: Instant, event: Event) {
        match &event {
            Event::Elected { who, term, pid } => self.say_at(at, format!("{who} leads (term {term}, backend {pid})")),
            Event::Beat { who, term, accepted: false } => {
                self.say_at(at, format!("{who}'s heartbeat for term {term} refused: a newer term exists"))
            }
            Event::Beat { .. } => {}
            Event::SteppedDown { who } => self.say_at(at, format!("{who} stepped down and left")),
            Event::Lost { who, reason } => {
                self.say_at(at, format!("{who} lost the lock ({}), stops leading and runs again", reason.name()))
            }
        }
        self.seen.push(event);
    }

    /// Records events until one satisfies `done`.
    async fn until(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Report>,
        done: impl Fn(&Event) -> bool,
    ) -> Result<(), BoxError> {
        loop {
            let (at, event) = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await?
                .ok_or("every candidate has stopped")?;
            let matched = done(&event);
            self.record(at, event);
            if matched {
                return Ok(());
            }
        }
    }

    /// Waits for the election of `term`; answers who and its backend pid.
    async fn elected(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Report>,
        term: i64,
    ) -> Result<(&'static str, i32), BoxError> {
        self.until(events, |e| matches!(e, Event::Elected { term: t, .. } if *t == term)).await?;
        match self.seen.last() {
            Some(Event::Elected { who, pid, .. }) => Ok((who, *pid)),
            _ => unreachable!("until returns after the matching event"),
        }
    }

    /// Waits for `n` accepted heartbeats of `term`.
    async fn beats(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Report>,
        term: i64,
        n: usize,
    ) -> Result<(), BoxError> {
        let accepted = |seen: &[Event]| {
            seen.iter().filter(|e| matches!(e, Event::Beat { term: t, accepted: true, .. } if *t == term)).count()
        };
        while accepted(&self.seen) < n {
            self.until(events, |_| true).await?;
        }
        Ok(())
    }
}
