//! Removing the cluster when the test binary ends.
//!
//! The shared cluster lives in a `static`, and statics are never dropped, so no destructor
//! can stop it. Instead, before anything is put in the cluster's directory, the harness
//! starts a watchdog: a small `sh` loop, in a process group of its own (so a Ctrl-C to the
//! test run or a test runner killing the test's group does not take it down first), with
//! no standard streams (so it never holds a test runner's output pipe open). It polls
//! `kill -0 <test pid>` every 0.2 s; once the test process is gone — exited, panicked or
//! killed with SIGKILL alike — it stops the server with `pg_ctl -m immediate stop`
//! (killing the postmaster outright should that fail) and removes the directory.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::error::{CommandFailure, HarnessError};
use super::run_as::render;

/// The watchdog's script. Arguments: the pid to watch, the cluster's directory, then the
/// command line that stops the server.
const SCRIPT: &str = r#"
pid=$1; dir=$2; shift 2
while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
if [ -f "$dir/data/postmaster.pid" ]; then
  if ! "$@" >/dev/null 2>&1; then
    postmaster=$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null)
    [ -n "$postmaster" ] && kill -KILL "$postmaster" 2>/dev/null
    sleep 1
  fi
fi
rm -rf "$dir"
"#;

/// Starts the watchdog that, once this process has ended, runs `stop` (the command line
/// stopping the server whose data directory is `dir/data`) and removes `dir`.
pub(crate) fn spawn(dir: &Path, stop: &[OsString]) -> Result<(), HarnessError> {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(SCRIPT)
        .arg("tumbler-pg-watchdog")
        .arg(std::process::id().to_string())
        .arg(dir)
        .args(stop)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    // The child is deliberately neither waited for nor killed: it must outlive us. It does
    // not become a zombie of ours, since it exits only after we have.
    command.spawn().map(drop).map_err(|error| {
        HarnessError::Command(Box::new(CommandFailure {
            action: "start the watchdog that removes the cluster when the tests end".to_owned(),
            command: format!(
                "sh -c <watchdog script> tumbler-pg-watchdog {} {} {}",
                std::process::id(),
                dir.display(),
                render(stop)
            ),
            outcome: format!("could not be started: {error}"),
            stdout: String::new(),
            stderr: String::new(),
            server_log: None,
        }))
    })
}
