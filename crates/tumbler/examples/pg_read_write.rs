//! Readers and a writer on one key: shared locks for reading, exclusive for writing.
//!
//! Four readers, each on a session of its own, read a document in a loop under shared
//! locks, overlapping so that at every moment someone is reading. A writer then asks for
//! an exclusive lock. Readers run together; the writer is not starved by them: PostgreSQL
//! queues its request, and readers that come after it queue behind it (a try fails, a
//! wait joins the queue), so it gets the lock as soon as the reads in progress end.
//!
//! That holds with the default `WaitStrategy::Block`, where the writer waits in
//! PostgreSQL's queue. With `WaitStrategy::Poll` it never enters the queue, and a steady
//! stream of readers could keep it out for ever.
//!
//! Run it with `cargo run -p tumbler --features postgres --example pg_read_write`; it uses
//! `DATABASE_URL` when set, otherwise a throw-away PostgreSQL cluster.

mod pg_support;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_support::BoxError;
use tokio::task::JoinSet;
use tumbler::pg::{PgKey, PgLocks};
use tumbler::{AcquireOptions, LockGuard, Locker};

const READERS: usize = 4;
const READ_TAKES: Duration = Duration::from_millis(40);
const WRITES: u64 = 3;
const WRITE_TAKES: Duration = Duration::from_millis(20);
/// Far more than a writer that is not starved needs.
const WRITER_PATIENCE: Duration = Duration::from_secs(2);

/// The protected document: two halves a writer updates one after the other, so a read
/// that overlapped a write would see them differ.
#[derive(Default)]
struct Document {
    first_half: AtomicU64,
    second_half: AtomicU64,
    readers_inside: AtomicUsize,
    most_readers_inside: AtomicUsize,
    writer_inside: AtomicBool,
    reads: AtomicUsize,
    stop: AtomicBool,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let pool = pg_support::database("pg_read_write", READERS as u32 + 6).await?;
    let locks = PgLocks::new(pool);
    let key = PgKey::hashed("tumbler-example:document");
    let doc = Arc::new(Document::default());
    let start = Instant::now();

    let mut readers = JoinSet::new();
    for reader in 0..READERS {
        let session = locks.owner().await?;
        let doc = doc.clone();
        readers.spawn(async move {
            // Staggered, so the reads overlap and the lock is never free of readers.
            tokio::time::sleep(READ_TAKES * reader as u32 / READERS as u32).await;
            while !doc.stop.load(Ordering::SeqCst) {
                let guard = session.acquire(key, AcquireOptions::shared().forever()).await?;
                let inside = doc.readers_inside.fetch_add(1, Ordering::SeqCst) + 1;
                doc.most_readers_inside.fetch_max(inside, Ordering::SeqCst);
                assert!(!doc.writer_inside.load(Ordering::SeqCst), "a reader got in while the writer wrote");
                let first = doc.first_half.load(Ordering::SeqCst);
                tokio::time::sleep(READ_TAKES).await;
                let second = doc.second_half.load(Ordering::SeqCst);
                assert_eq!(first, second, "a read saw a half-written document");
                doc.reads.fetch_add(1, Ordering::SeqCst);
                doc.readers_inside.fetch_sub(1, Ordering::SeqCst);
                guard.release().await?;
            }
            Ok::<_, BoxError>(())
        });
    }

    // The writer comes when the readers are in full swing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let writer = locks.owner().await?;
    let mut longest_wait = Duration::ZERO;
    for version in 1..=WRITES {
        let readers_then = doc.readers_inside.load(Ordering::SeqCst);
        let asked = Instant::now();
        let guard = writer.acquire(key, AcquireOptions::exclusive().timeout(WRITER_PATIENCE)).await?;
        let waited = asked.elapsed();
        longest_wait = longest_wait.max(waited);
        doc.writer_inside.store(true, Ordering::SeqCst);
        assert_eq!(doc.readers_inside.load(Ordering::SeqCst), 0, "the writer got in while readers read");
        println!(
            "{:>4} ms  writer asks while {readers_then} reader(s) read; gets the lock {} ms later, writes version {version}",
            (asked - start).as_millis(),
            waited.as_millis()
        );
        doc.first_half.store(version, Ordering::SeqCst);
        tokio::time::sleep(WRITE_TAKES).await;
        doc.second_half.store(version, Ordering::SeqCst);
        doc.writer_inside.store(false, Ordering::SeqCst);
        guard.release().await?;
        // Let the readers have the document for a while.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    doc.stop.store(true, Ordering::SeqCst);
    while let Some(done) = readers.join_next().await {
        done??;
    }

    let most_readers = doc.most_readers_inside.load(Ordering::SeqCst);
    let reads = doc.reads.load(Ordering::SeqCst);
    // The invariants: readers read together, every write got in within about one read's
    // time (not starved), and no read overlapped a write (asserted as they ran).
    assert!(most_readers >= 2, "readers never read together");
    assert!(longest_wait < READ_TAKES * 4, "the writer waited {longest_wait:?}: starved by readers");
    println!(
        "ok: {reads} reads with up to {most_readers} readers at once; {WRITES} writes, the longest wait {} ms \
         (one read takes {} ms); no read overlapped a write",
        longest_wait.as_millis(),
        READ_TAKES.as_millis()
    );
    Ok(())
}
