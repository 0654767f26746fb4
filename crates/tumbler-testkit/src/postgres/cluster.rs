//! Starting a throw-away PostgreSQL cluster: find the binaries, make a directory, `initdb`,
//! pick a free loopback port, `pg_ctl start`.

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::error::HarnessError;
use super::run_as::{is_executable, on_path, shell_quote, RunAs};
use super::watchdog;

/// Where Debian and Ubuntu install each PostgreSQL major version (`<dir>/<version>/bin`).
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// How many ports to try when another process takes the chosen one before the server binds it.
const PORT_ATTEMPTS: usize = 3;

/// A running cluster this process started, removed by its watchdog when the process ends.
#[derive(Debug)]
pub(crate) struct LocalCluster {
    /// The TCP port it listens on, on 127.0.0.1.
    pub(crate) port: u16,
    /// The directory holding its data (`data/`), socket and log (`server.log`).
    pub(crate) dir: PathBuf,
}

/// Starts a new cluster, accepting `postgres` without a password on 127.0.0.1.
pub(crate) fn start() -> Result<LocalCluster, HarnessError> {
    let bin = find_bin_dir()?;
    let initdb = bin.join("initdb");
    let pg_ctl = bin.join("pg_ctl");
    let run_as = RunAs::detect()?;

    let dir = make_dir(&run_as)?;
    let data = dir.join("data");
    let log = dir.join("server.log");
    // The watchdog comes first, so that even a start that fails halfway leaves nothing behind.
    let stop = run_as.argv(
        &pg_ctl,
        &args(["-D".as_ref(), data.as_os_str(), "-m".as_ref(), "immediate".as_ref(), "-w".as_ref(), "stop".as_ref()]),
    );
    watchdog::spawn(&dir, &stop)?;

    run_as.run(
        "initialise the cluster",
        &initdb,
        &args([
            "-D".as_ref(),
            data.as_os_str(),
            "--auth=trust".as_ref(),
            "--username=postgres".as_ref(),
            "-E".as_ref(),
            "UTF8".as_ref(),
            "--locale=C".as_ref(),
            "--no-sync".as_ref(),
        ]),
        &dir,
    )?;

    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = free_port()?;
        // pg_ctl hands these to the server through `sh`, hence the quoting.
        let socket_dir = shell_quote(dir.as_os_str());
        let options =
            format!("-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200");
        let started = run_as.run(
            "start the server",
            &pg_ctl,
            &args([
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "start".as_ref(),
            ]),
            &dir,
        );
        match started {
            Ok(_) => return Ok(LocalCluster { port, dir }),
            Err(HarnessError::Command(mut failure)) => {
                let server_log = log_tail(&log);
                let port_taken = server_log.contains("could not bind") || server_log.contains("Address already in use");
                if !(port_taken && attempt < PORT_ATTEMPTS) {
                    failure.server_log = Some(server_log);
                    return Err(HarnessError::Command(failure));
                }
            }
            Err(other) => return Err(other),
        }
    }
}

/// The directory holding `initdb` and `pg_ctl`: from PATH if both are there, else the
/// highest version under `/usr/lib/postgresql/*/bin`.
fn find_bin_dir() -> Result<PathBuf, HarnessError> {
    if let (Some(initdb), Some(_)) = (on_path("initdb"), on_path("pg_ctl")) {
        // Resolve symlinks (/usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb) so
        // that both programs come from the same installation.
        let initdb = initdb.canonicalize().unwrap_or(initdb);
        if let Some(dir) = initdb.parent().filter(|dir| is_executable(&dir.join("pg_ctl"))) {
            return Ok(dir.to_owned());
        }
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(DEBIAN_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = version_key(&entry.file_name().to_string_lossy())?;
            let bin = entry.path().join("bin");
            (is_executable(&bin.join("initdb")) && is_executable(&bin.join("pg_ctl"))).then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => Ok(bin),
        None => Err(HarnessError::BinariesNotFound {
            searched: std::env::var("PATH").map(|path| format!("{path}:{DEBIAN_ROOT}/*/bin")).unwrap_or_default(),
        }),
    }
}

/// `"15"` → `[15]`, `"9.6"` → `[9, 6]`; `None` for a name that is not a version.
fn version_key(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// Creates the cluster's directory under the system's temporary directory, private to the
/// user PostgreSQL runs as.
fn make_dir(run_as: &RunAs) -> Result<PathBuf, HarnessError> {
    use std::os::unix::fs::PermissionsExt;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("tumbler-pg-{}-{:x}", std::process::id(), nanos & 0xffff_ffff));
    std::fs::create_dir(&dir).map_err(|e| HarnessError::io(format!("create {}", dir.display()), e))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| HarnessError::io(format!("restrict the permissions of {}", dir.display()), e))?;
    if let Some(user) = run_as.account() {
        std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid))
            .map_err(|e| HarnessError::io(format!("give {} to the user {}", dir.display(), user.name), e))?;
    }
    Ok(dir)
}

/// A loopback port nobody listens on right now.
fn free_port() -> Result<u16, HarnessError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| HarnessError::io("find a free port on 127.0.0.1", e))?;
    listener.local_addr().map(|addr| addr.port()).map_err(|e| HarnessError::io("find a free port on 127.0.0.1", e))
}

/// The last lines of the server's log, or why it could not be read.
fn log_tail(log: &Path) -> String {
    match std::fs::read_to_string(log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        }
        Err(error) => format!("({} could not be read: {error})", log.display()),
    }
}

/// Owned arguments.
fn args<const N: usize>(words: [&std::ffi::OsStr; N]) -> Vec<OsString> {
    words.into_iter().map(ToOwned::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically() {
        let mut keys = vec![version_key("9.6"), version_key("15"), version_key("10")];
        keys.sort();
        assert_eq!(keys, vec![Some(vec![9, 6]), Some(vec![10]), Some(vec![15])]);
        assert_eq!(version_key("common"), None);
    }
}
