//! The throw-away PostgreSQL harness itself: it starts (or fails the run saying why), it is
//! shared by every test of the binary whatever runtime they run on, its fresh databases are
//! isolated, and advisory locks work on it.

use sqlx::Row;
use tumbler_testkit::postgres::{test_database, test_database_blocking};

#[tokio::test]
async fn connects_and_runs_a_query() {
    let db = test_database().await.expect("PostgreSQL for tests");
    let pool = db.pool().await.expect("connect");
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await.expect("SELECT 1");
    assert_eq!(one, 1);
    let user: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(&pool).await.expect("current_user");
    if db.is_throwaway() {
        assert_eq!(user, "postgres");
        assert!(db.url().starts_with("postgres://postgres@127.0.0.1:"), "{}", db.url());
        assert!(db.server_log().is_some_and(|log| log.is_file()), "{:?}", db.server_log());
    }
}

#[tokio::test]
async fn every_call_returns_the_same_cluster() {
    let first = test_database().await.expect("PostgreSQL for tests");
    let second = test_database().await.expect("PostgreSQL for tests");
    assert!(std::ptr::eq(first, second));
    assert_eq!(first.url(), second.url());

    // From another runtime, and from code that is not async, too.
    let (from_thread, from_blocking) = std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let url = runtime.block_on(test_database()).expect("PostgreSQL for tests").url().to_owned();
        (url, test_database_blocking().expect("PostgreSQL for tests").url().to_owned())
    })
    .join()
    .expect("thread");
    assert_eq!(from_thread, first.url());
    assert_eq!(from_blocking, first.url());
}

#[test]
fn concurrent_first_calls_from_many_runtimes_share_one_cluster() {
    let urls: Vec<String> = (0..8)
        .map(|_| {
            std::thread::spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                runtime.block_on(async {
                    let db = test_database().await.expect("PostgreSQL for tests");
                    let pool = db.pool().await.expect("connect");
                    sqlx::query("SELECT 1").execute(&pool).await.expect("SELECT 1");
                    db.url().to_owned()
                })
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|thread| thread.join().expect("thread"))
        .collect();
    assert!(urls.iter().all(|url| *url == urls[0]), "{urls:?}");
}

#[tokio::test]
async fn fresh_database_is_isolated() {
    let db = test_database().await.expect("PostgreSQL for tests");
    let url_a = db.fresh_database("isolated A!").await.expect("fresh database");
    let (url_b, b) = db.fresh_pool("isolated A!").await.expect("fresh database");
    assert_ne!(url_a, url_b);
    let a = sqlx::PgPool::connect(&url_a).await.expect("connect to a");

    let name_a: String = sqlx::query_scalar("SELECT current_database()::text").fetch_one(&a).await.expect("name");
    let name_b: String = sqlx::query_scalar("SELECT current_database()::text").fetch_one(&b).await.expect("name");
    assert_ne!(name_a, name_b);
    assert!(name_a.starts_with("t_isolated_a__"), "{name_a}");

    sqlx::query("CREATE TABLE only_in_a (x int)").execute(&a).await.expect("create table");
    let seen_in_b: bool = sqlx::query_scalar("SELECT to_regclass('only_in_a') IS NOT NULL")
        .fetch_one(&b)
        .await
        .expect("look for the table");
    assert!(!seen_in_b, "a table of one fresh database is visible in another");
}

#[tokio::test]
async fn advisory_lock_round_trip() {
    let db = test_database().await.expect("PostgreSQL for tests");
    let (_, pool) = db.fresh_pool("advisory").await.expect("fresh database");
    let mut holder = pool.acquire().await.expect("connection");
    let mut other = pool.acquire().await.expect("connection");

    sqlx::query("SELECT pg_advisory_lock(1)").execute(&mut *holder).await.expect("lock");
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(1)").fetch_one(&mut *other).await.expect("try");
    assert!(!got, "a second session got an exclusive advisory lock that is held");

    let row = sqlx::query("SELECT pg_advisory_unlock(1) AS released").fetch_one(&mut *holder).await.expect("unlock");
    assert!(row.get::<bool, _>("released"));
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(1)").fetch_one(&mut *other).await.expect("try");
    assert!(got, "the lock was not free after its release");
    let released: bool =
        sqlx::query_scalar("SELECT pg_advisory_unlock(1)").fetch_one(&mut *other).await.expect("unlock");
    assert!(released);
}
