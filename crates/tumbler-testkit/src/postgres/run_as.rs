//! Running PostgreSQL's programs as an unprivileged user.
//!
//! `initdb`, `pg_ctl` and `postgres` refuse to run as root. When the tests run as root (a
//! CI container, say), the harness runs them as a dedicated unprivileged account instead:
//! `tumbler-test` if it exists, else `nobody`, else a `tumbler-test` system account it
//! creates with `useradd`. The switch is made with `runuser` (util-linux) or, failing that,
//! `su`.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use super::error::{CommandFailure, HarnessError};

/// The account the harness creates when running as root and no other one fits.
const DEDICATED_USER: &str = "tumbler-test";

/// How PostgreSQL's programs are run.
#[derive(Debug, Clone)]
pub(crate) enum RunAs {
    /// As the user running the tests (who is not root).
    CurrentUser,
    /// As `user`, through `runuser -u user --`.
    Runuser {
        /// The unprivileged account.
        user: Account,
    },
    /// As `user`, through `su -s /bin/sh user -c '…'`.
    Su {
        /// The unprivileged account.
        user: Account,
    },
}

/// An operating-system account.
#[derive(Debug, Clone)]
pub(crate) struct Account {
    /// Its name.
    pub(crate) name: String,
    /// Its user id.
    pub(crate) uid: u32,
    /// Its primary group id.
    pub(crate) gid: u32,
}

impl RunAs {
    /// Decides how to run PostgreSQL's programs for the current process, creating the
    /// dedicated account if the process is root and no suitable account exists.
    pub(crate) fn detect() -> Result<RunAs, HarnessError> {
        if effective_uid()? != 0 {
            return Ok(RunAs::CurrentUser);
        }
        let user = match account(DEDICATED_USER)?.or(account("nobody")?) {
            Some(user) => user,
            None => create_dedicated_account()?,
        };
        if on_path("runuser").is_some() {
            Ok(RunAs::Runuser { user })
        } else if on_path("su").is_some() {
            Ok(RunAs::Su { user })
        } else {
            Err(HarnessError::CannotDropRoot {
                reason: "neither `runuser` nor `su` is on PATH to switch to an unprivileged user".to_owned(),
            })
        }
    }

    /// The account the programs run as, when it is not the current one.
    pub(crate) fn account(&self) -> Option<&Account> {
        match self {
            RunAs::CurrentUser => None,
            RunAs::Runuser { user } | RunAs::Su { user } => Some(user),
        }
    }

    /// The full command line that runs `program args…` as this user.
    pub(crate) fn argv(&self, program: &Path, args: &[OsString]) -> Vec<OsString> {
        match self {
            RunAs::CurrentUser => std::iter::once(program.as_os_str().to_owned()).chain(args.iter().cloned()).collect(),
            RunAs::Runuser { user } => ["runuser", "-u", &user.name, "--"]
                .into_iter()
                .map(OsString::from)
                .chain(std::iter::once(program.as_os_str().to_owned()))
                .chain(args.iter().cloned())
                .collect(),
            RunAs::Su { user } => {
                let mut script = String::from("exec");
                for word in std::iter::once(program.as_os_str()).chain(args.iter().map(OsString::as_os_str)) {
                    script.push(' ');
                    script.push_str(&shell_quote(word));
                }
                ["su", "-s", "/bin/sh", &user.name, "-c", &script].into_iter().map(OsString::from).collect()
            }
        }
    }

    /// Runs `program args…` as this user in `cwd` and waits for it; a failure to start or
    /// a non-zero exit becomes a [`HarnessError::Command`] saying it was meant to `action`.
    pub(crate) fn run(
        &self,
        action: &str,
        program: &Path,
        args: &[OsString],
        cwd: &Path,
    ) -> Result<Output, HarnessError> {
        let argv = self.argv(program, args);
        run_argv(action, &argv, cwd)
    }
}

/// Runs the command line `argv` in `cwd` with no input and waits for it; see
/// [`RunAs::run`].
pub(crate) fn run_argv(action: &str, argv: &[OsString], cwd: &Path) -> Result<Output, HarnessError> {
    let failure = |outcome: String, stdout: &[u8], stderr: &[u8]| {
        HarnessError::Command(Box::new(CommandFailure {
            action: action.to_owned(),
            command: render(argv),
            outcome,
            stdout: String::from_utf8_lossy(stdout).into_owned(),
            stderr: String::from_utf8_lossy(stderr).into_owned(),
            server_log: None,
        }))
    };
    let output = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| failure(format!("could not be started: {error}"), b"", b""))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(failure(format!("exited with {}", output.status), &output.stdout, &output.stderr))
    }
}

/// A command line as a person would type it, for error messages.
pub(crate) fn render(argv: &[OsString]) -> String {
    argv.iter().map(|word| shell_quote(word)).collect::<Vec<_>>().join(" ")
}

/// `word` quoted for `sh` when it needs quoting.
pub(crate) fn shell_quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The path of `program` on PATH, if it is there.
pub(crate) fn on_path(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| is_executable(candidate))
}

/// Whether `path` is a file someone may execute.
pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// The effective user id of this process, from `id -u` (the workspace forbids `unsafe`,
/// which `libc::geteuid` would need).
fn effective_uid() -> Result<u32, HarnessError> {
    let output = run_argv("find out whether the tests run as root", &["id".into(), "-u".into()], Path::new("/"))?;
    parse_id("id -u", &output.stdout)
}

/// The account called `name`, or `None` when there is none.
fn account(name: &str) -> Result<Option<Account>, HarnessError> {
    let Ok(uid) = run_argv("look up a user", &["id".into(), "-u".into(), name.into()], Path::new("/")) else {
        return Ok(None);
    };
    let gid = run_argv("look up a user's group", &["id".into(), "-g".into(), name.into()], Path::new("/"))?;
    Ok(Some(Account {
        name: name.to_owned(),
        uid: parse_id(&format!("id -u {name}"), &uid.stdout)?,
        gid: parse_id(&format!("id -g {name}"), &gid.stdout)?,
    }))
}

/// Creates the dedicated system account (tolerating another test binary creating it at
/// the same moment) and returns it.
fn create_dedicated_account() -> Result<Account, HarnessError> {
    let argv: Vec<OsString> =
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", DEDICATED_USER]
            .into_iter()
            .map(OsString::from)
            .collect();
    let created =
        run_argv("create an unprivileged user to run PostgreSQL as (the tests run as root)", &argv, Path::new("/"));
    match (created, account(DEDICATED_USER)?) {
        (_, Some(user)) => Ok(user),
        (Err(error), None) => Err(error),
        (Ok(_), None) => {
            Err(HarnessError::io(format!("find the user {DEDICATED_USER} just created"), "`id` does not know it"))
        }
    }
}

/// The number `id` printed.
fn parse_id(command: &str, stdout: &[u8]) -> Result<u32, HarnessError> {
    let text = String::from_utf8_lossy(stdout);
    text.trim()
        .parse()
        .map_err(|_| HarnessError::io(format!("read the output of `{command}`"), format!("{text:?} is not a number")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_leaves_plain_words_alone_and_quotes_the_rest() {
        assert_eq!(shell_quote(OsStr::new("/usr/lib/postgresql/15/bin/pg_ctl")), "/usr/lib/postgresql/15/bin/pg_ctl");
        assert_eq!(shell_quote(OsStr::new("-p 5 -c a=b")), "'-p 5 -c a=b'");
        assert_eq!(shell_quote(OsStr::new("it's")), r"'it'\''s'");
        assert_eq!(shell_quote(OsStr::new("")), "''");
    }

    #[test]
    fn su_runs_the_program_through_a_quoted_script() {
        let user = Account { name: "nobody".into(), uid: 65534, gid: 65534 };
        let argv = RunAs::Su { user }.argv(Path::new("/bin/pg_ctl"), &["-o".into(), "-p 5".into()]);
        assert_eq!(render(&argv), "su -s /bin/sh nobody -c 'exec /bin/pg_ctl -o '\\''-p 5'\\'''");
    }
}
