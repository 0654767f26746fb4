//! What every PostgreSQL example shares: a database to run against.

use std::error::Error;

use sqlx::postgres::{PgPool, PgPoolOptions};

/// The error of the examples' `main`: anything, with its message.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// A pool of at most `max_connections` on the database the example runs against:
/// `DATABASE_URL` when it is set, otherwise a database of its own (named after `name`) on
/// a throw-away PostgreSQL cluster that is started now and removed when the example ends.
///
/// # Errors
/// When PostgreSQL cannot be started or reached.
pub async fn database(name: &str, max_connections: u32) -> Result<PgPool, BoxError> {
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => {
            println!("database: DATABASE_URL");
            url
        }
        _ => {
            let cluster = tumbler_testkit::postgres::test_database().await?;
            let url = cluster.fresh_database(name).await?;
            println!("database: a throw-away cluster ({url})");
            url
        }
    };
    Ok(PgPoolOptions::new().max_connections(max_connections).connect(&url).await?)
}
