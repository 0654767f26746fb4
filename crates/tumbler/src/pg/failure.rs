//! What a failed statement means for a lock: a lock outcome (timeout, deadlock), a lost
//! connection, or a plain backend failure.

use tumbler_core::OwnerId;

use crate::error::Error;

/// A failed statement, classified.
pub(crate) enum Failure {
    /// The statement failed, the connection is fine.
    Statement(Error),
    /// The connection (and with it every session lock) is gone.
    ConnectionLost(Error),
}

impl Failure {
    pub(crate) fn into_error(self) -> Error {
        match self {
            Failure::Statement(e) | Failure::ConnectionLost(e) => e,
        }
    }
}

/// The owner id a PostgreSQL backend process stands for.
pub(crate) fn owner_of_pid(pid: i32) -> OwnerId {
    OwnerId::new(format!("pg-{pid}")).expect("BUG: pid owner ids are valid")
}

/// Classifies a sqlx error; `me` is the backend pid of the session, to put first in a
/// deadlock cycle.
pub(crate) fn classify(e: sqlx::Error, me: i32) -> Failure {
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            match code.as_str() {
                // lock_not_available: lock_timeout ran out.
                "55P03" => Failure::Statement(Error::Timeout),
                // deadlock_detected: PostgreSQL broke a cycle by failing this statement.
                "40P01" => {
                    let detail = db
                        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                        .and_then(|pg| pg.detail())
                        .unwrap_or_default();
                    Failure::Statement(Error::Deadlock { cycle: deadlock_cycle(detail, me) })
                }
                // admin_shutdown, crash_shutdown, cannot_connect_now; connection_exception.
                c if c.starts_with("57P") || c.starts_with("08") => Failure::ConnectionLost(backend(e)),
                _ => Failure::Statement(backend(e)),
            }
        }
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => {
            Failure::ConnectionLost(backend(e))
        }
        _ => Failure::Statement(backend(e)),
    }
}

/// Wraps a sqlx error as the library's backend error.
pub(crate) fn backend(e: sqlx::Error) -> Error {
    Error::Backend { backend: "pg", source: Box::new(e) }
}

/// The owners of a deadlock, read from PostgreSQL's detail message ("Process 12 waits for
/// ExclusiveLock on advisory lock [...]; blocked by process 34. ..."), starting with `me`.
pub(crate) fn deadlock_cycle(detail: &str, me: i32) -> Vec<OwnerId> {
    let mut pids = vec![me];
    // Only the numbers right after "process " are pids.
    let lower = detail.to_ascii_lowercase();
    let mut rest = lower.as_str();
    while let Some(at) = rest.find("process ") {
        rest = &rest[at + "process ".len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(pid) = digits.parse::<i32>() {
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
    }
    pids.into_iter().map(owner_of_pid).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlock_cycle_lists_the_pids_of_the_detail_starting_with_ours() {
        let detail = "Process 34 waits for ExclusiveLock on advisory lock [5,0,2,1]; blocked by process 12.\n\
                      Process 12 waits for ExclusiveLock on advisory lock [5,0,1,1]; blocked by process 34.";
        let cycle: Vec<String> = deadlock_cycle(detail, 12).iter().map(|o| o.to_string()).collect();
        assert_eq!(cycle, ["pg-12", "pg-34"]);
    }
}
