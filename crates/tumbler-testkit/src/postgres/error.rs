//! The one error type of the harness: it says what was tried and what went wrong, in
//! enough detail (the command line, its exit status, its output, the server log) that a
//! failing CI run explains itself.

use std::fmt;

/// Why the PostgreSQL test harness could not give a test its database.
///
/// Tests are meant to `.expect(...)` it: a machine that cannot run PostgreSQL fails the
/// run with this message instead of skipping tests. It is `Clone` because the outcome of
/// the one start attempt per test binary is shared by every test of that binary. Its
/// `Debug` form is its message, so that `.expect(...)` prints the message readably.
#[derive(Clone, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// `initdb` and `pg_ctl` were found nowhere the harness looks.
    #[error(
        "PostgreSQL test harness: `initdb` and `pg_ctl` were found neither on PATH nor under \
         /usr/lib/postgresql/*/bin (searched: {searched}); install PostgreSQL (e.g. `apt-get \
         install postgresql`) or point TUMBLER_TEST_DATABASE_URL at a server"
    )]
    BinariesNotFound {
        /// The directories that were searched, `:`-separated.
        searched: String,
    },

    /// A command the harness ran exited unsuccessfully (or could not be started at all).
    #[error("PostgreSQL test harness: {0}")]
    Command(Box<CommandFailure>),

    /// The tests run as root, which PostgreSQL refuses, and the harness could not switch
    /// to an unprivileged user.
    #[error("PostgreSQL test harness: the tests run as root, which PostgreSQL refuses, and {reason}")]
    CannotDropRoot {
        /// Why switching users is impossible.
        reason: String,
    },

    /// A file-system operation failed.
    #[error("PostgreSQL test harness: could not {action}: {message}")]
    Io {
        /// What was being done, naming the path.
        action: String,
        /// The operating system's error.
        message: String,
    },

    /// `TUMBLER_TEST_DATABASE_URL` (or a URL derived from it) is not a PostgreSQL URL.
    #[error("PostgreSQL test harness: {url:?} is not a usable PostgreSQL URL: {message}")]
    InvalidUrl {
        /// The URL, as given.
        url: String,
        /// What is wrong with it.
        message: String,
    },

    /// Connecting to the test server failed.
    #[error("PostgreSQL test harness: could not connect to {url}: {message}")]
    Connect {
        /// The URL connected to.
        url: String,
        /// The driver's error.
        message: String,
    },

    /// A statement the harness ran failed.
    #[error("PostgreSQL test harness: `{statement}` failed: {message}")]
    Sql {
        /// The statement.
        statement: String,
        /// The server's or driver's error.
        message: String,
    },

    /// Starting the cluster panicked (a bug in the harness).
    #[error("PostgreSQL test harness: starting the cluster panicked: {message}")]
    Panicked {
        /// The panic's message.
        message: String,
    },
}

/// A command of the harness that failed: what it was for, how it ended and what it said.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CommandFailure {
    /// What the command was for, e.g. "initialise the cluster".
    pub action: String,
    /// The command line, as run.
    pub command: String,
    /// How it ended: "exited with exit status: 1", "could not be started: …".
    pub outcome: String,
    /// What it wrote to stdout.
    pub stdout: String,
    /// What it wrote to stderr.
    pub stderr: String,
    /// The end of the server's log, when the command was starting the server.
    pub server_log: Option<String>,
}

impl fmt::Display for CommandFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not {}: `{}` {}", self.action, self.command, self.outcome)?;
        let server_log = self.server_log.as_deref().unwrap_or("");
        for (label, text) in [("stderr", &*self.stderr), ("stdout", &*self.stdout), ("server log (end)", server_log)] {
            let text = text.trim_end();
            if !text.is_empty() {
                write!(f, "\n--- {label} ---\n{text}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl HarnessError {
    /// An [`HarnessError::Io`] for `action` failing with `error`.
    pub(crate) fn io(action: impl Into<String>, error: impl fmt::Display) -> Self {
        HarnessError::Io { action: action.into(), message: error.to_string() }
    }
}
