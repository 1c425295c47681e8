//! Running PostgreSQL's programs as the cluster's OS user: a clean
//! environment, the right uid/gid when the agent is root, stderr captured
//! for error messages, and a bound on how long each may take.

use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::process::Command;

use crate::binaries::PgBinaries;
use crate::error::PgError;
use crate::user::OsUser;

/// A command for PostgreSQL's program `tool`, run as `user` in `cwd`, with
/// a clean environment (no PG* variables from the agent leak in) and
/// `kill_on_drop` set. Callers that must let the program outlive the agent
/// (`pg_ctl start`) turn `kill_on_drop` off again.
pub fn command(bin: &PgBinaries, user: &OsUser, tool: &str, cwd: &Path) -> Command {
    command_of(&bin.tool(tool), bin, user, cwd)
}

/// [`command`] for a program outside PostgreSQL's own directory (pgBackRest),
/// with `bin`'s directory first in `PATH`.
pub fn command_of(program: &Path, bin: &PgBinaries, user: &OsUser, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", bin.bindir.display());
    cmd.env_clear()
        .env("PATH", path)
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("LC_ALL", locale())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if user.needs_switch() {
        // std (under tokio) calls setgroups(0) before setuid when root,
        // so no supplementary group of root's leaks into PostgreSQL.
        cmd.uid(user.uid).gid(user.gid);
    }
    cmd
}

/// Runs `cmd` to completion within `timeout`; a non-zero exit is a
/// [`PgError::Tool`] carrying stderr (or stdout if stderr is empty).
pub async fn run(mut cmd: Command, what: &str, timeout: Duration) -> Result<Output, PgError> {
    let program = Path::new(cmd.as_std().get_program()).to_path_buf();
    tracing::debug!(program = %program.display(), "running {what}");
    let child = cmd.spawn().map_err(|source| PgError::Spawn {
        program: program.clone(),
        source,
    })?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(source)) => return Err(PgError::Spawn { program, source }),
        Err(_) => {
            return Err(PgError::Timeout {
                program,
                secs: timeout.as_secs(),
            })
        }
    };
    if out.status.success() {
        Ok(out)
    } else {
        Err(PgError::Tool {
            what: what.to_string(),
            status: out.status.to_string(),
            stderr: output_text(&out),
        })
    }
}

/// Kills (SIGKILL) what an agent that died in the middle of a step left
/// running: processes whose program's name is one of `programs` and whose
/// command line mentions `under`. An agent killed with SIGKILL cannot take
/// its children along, and a step that is started again must not race
/// them. Returns how many it killed.
pub fn kill_leftovers(programs: &[&str], under: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let under = under.display().to_string();
    let mut killed = 0;
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if is_leftover(&args, programs, &under) {
            let target = nix::unistd::Pid::from_raw(pid);
            if nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL).is_ok() {
                tracing::warn!("killed {} (pid {pid}), left by an earlier agent", args[0]);
                killed += 1;
            }
        }
    }
    killed
}

/// Whether command line `args` is one of `programs` working under `under`.
fn is_leftover(args: &[String], programs: &[&str], under: &str) -> bool {
    let Some(program) = args.first().map(|a| a.rsplit('/').next().unwrap_or(a)) else {
        return false;
    };
    programs.contains(&program) && args[1..].iter().any(|a| a.contains(under))
}

/// stderr, or stdout when stderr is empty, trimmed.
pub fn output_text(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    let text = if err.trim().is_empty() {
        String::from_utf8_lossy(&out.stdout)
    } else {
        err
    };
    text.trim().to_string()
}

/// `C.UTF-8` if the system has it, else `C`. Asked once per process.
pub fn locale() -> &'static str {
    static LOCALE: OnceLock<&'static str> = OnceLock::new();
    LOCALE.get_or_init(|| {
        let listed = std::process::Command::new("locale")
            .arg("-a")
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if has_c_utf8(&listed) || Path::new("/usr/lib/locale/C.utf8").is_dir() {
            "C.UTF-8"
        } else {
            "C"
        }
    })
}

/// Whether `locale -a` output lists C.UTF-8 (spelled `C.utf8` or `C.UTF-8`).
pub fn has_c_utf8(locale_a: &str) -> bool {
    locale_a
        .lines()
        .any(|l| matches!(l.trim().to_ascii_lowercase().as_str(), "c.utf8" | "c.utf-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_the_named_programs_working_under_the_directory() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let root = "/d/clusters/db-1";
        let yes = args("/usr/bin/pgbackrest --config=/d/clusters/db-1/restore.pgbackrest.conf --stanza=s restore");
        assert!(is_leftover(&yes, &["pgbackrest"], root));
        let built = args("/opt/pgfollow/pgbackrest/bin/pgbackrest --config=/d/clusters/db-1/restore.pgbackrest.conf --stanza=s restore");
        assert!(is_leftover(&built, &["pgbackrest"], root));
        let other =
            args("/usr/bin/pgbackrest --config=/d/clusters/db-2/pgbackrest.conf archive-push x");
        assert!(!is_leftover(&other, &["pgbackrest"], root));
        let not_named = args("/usr/bin/psql -h /d/clusters/db-1/run");
        assert!(!is_leftover(&not_named, &["pgbackrest"], root));
        assert!(!is_leftover(&[], &["pgbackrest"], root));
    }

    #[test]
    fn finds_c_utf8_in_either_spelling() {
        assert!(has_c_utf8("C\nC.utf8\nPOSIX\n"));
        assert!(has_c_utf8("C\nC.UTF-8\n"));
        assert!(!has_c_utf8("C\nPOSIX\nen_US.utf8\n"));
        assert!(!has_c_utf8(""));
    }
}
