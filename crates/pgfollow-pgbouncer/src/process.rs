//! Running `pgbouncer` as the endpoint's OS user (PgBouncer refuses root,
//! like PostgreSQL), and telling whether a pid from the pidfile is still
//! this endpoint's PgBouncer.
//!
//! `pgfollow_postgres::process::command` is tied to PostgreSQL's bin
//! directory, so this is its small equivalent for one program.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::Command;

use crate::binary::BouncerBinary;
use crate::error::BouncerError;
use pgfollow_postgres::OsUser;

/// `pgbouncer <args>` as `user` in `cwd`, with a clean environment and
/// `kill_on_drop` set (callers that daemonize turn it off).
pub fn command(bin: &BouncerBinary, user: &OsUser, cwd: &Path) -> Command {
    let mut cmd = Command::new(&bin.path);
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("LC_ALL", pgfollow_postgres::process::locale())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if user.needs_switch() {
        // std calls setgroups(0) before setuid when root.
        cmd.uid(user.uid).gid(user.gid);
    }
    cmd
}

/// Runs `cmd` to completion within `timeout`; the output whatever the exit
/// status (the caller decides what a failure means).
pub async fn run(mut cmd: Command, timeout: Duration) -> Result<Output, BouncerError> {
    let program = PathBuf::from(cmd.as_std().get_program());
    let child = cmd.spawn().map_err(|source| BouncerError::Spawn {
        program: program.clone(),
        source,
    })?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(source)) => Err(BouncerError::Spawn { program, source }),
        Err(_) => Err(BouncerError::StartFailed {
            detail: format!(
                "`{} -d` did not return within {} s",
                program.display(),
                timeout.as_secs()
            ),
        }),
    }
}

/// The pid in a PgBouncer pidfile; None if absent or not a pid.
pub fn read_pidfile(path: &Path) -> Option<u32> {
    let text = fs::read_to_string(path).ok()?;
    text.trim().parse().ok().filter(|p| *p > 0)
}

/// Whether `pid` is alive.
pub fn is_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    matches!(kill(Pid::from_raw(raw), None), Ok(()) | Err(Errno::EPERM))
}

/// Whether `pid` is alive and is a PgBouncer started with `ini`. Where
/// /proc does not exist, being alive is all we can check.
pub fn is_pgbouncer_of(pid: u32, ini: &Path) -> bool {
    if !is_alive(pid) {
        return false;
    }
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => cmdline_runs(&cmdline, ini),
        Err(_) => !Path::new("/proc/self").exists(),
    }
}

/// Whether a NUL-separated command line is `.../pgbouncer ... <ini>`.
pub fn cmdline_runs(cmdline: &[u8], ini: &Path) -> bool {
    let mut args = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty());
    let Some(program) = args.next() else {
        return false;
    };
    let program = String::from_utf8_lossy(program);
    if program.rsplit('/').next() != Some("pgbouncer") {
        return false;
    }
    let ini = ini.as_os_str().as_encoded_bytes();
    args.any(|a| a == ini)
}

/// Sends `signal` to `pid`; Ok if it is already gone.
pub fn signal(pid: u32, signal: Signal) -> Result<(), BouncerError> {
    let raw = i32::try_from(pid).map_err(|_| BouncerError::Signal {
        pid,
        source: Errno::EINVAL,
    })?;
    match kill(Pid::from_raw(raw), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(source) => Err(BouncerError::Signal { pid, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_our_pgbouncer() {
        let ini = Path::new("/srv/e/app/pgbouncer.ini");
        assert!(cmdline_runs(
            b"/usr/sbin/pgbouncer\0-d\0/srv/e/app/pgbouncer.ini\0",
            ini
        ));
        assert!(!cmdline_runs(
            b"/usr/sbin/pgbouncer\0-d\0/srv/e/other/pgbouncer.ini\0",
            ini
        ));
        assert!(!cmdline_runs(b"/bin/bash\0/srv/e/app/pgbouncer.ini\0", ini));
        assert!(!cmdline_runs(b"", ini));
    }

    #[test]
    fn a_dead_pid_is_not_ours() {
        assert!(!is_pgbouncer_of(4_194_304 + 7, Path::new("/x.ini")));
        assert!(!is_alive(4_194_304 + 7));
    }

    #[test]
    fn reads_pidfiles() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pid");
        assert_eq!(read_pidfile(&p), None);
        fs::write(&p, "1234\n").unwrap();
        assert_eq!(read_pidfile(&p), Some(1234));
        fs::write(&p, "x\n").unwrap();
        assert_eq!(read_pidfile(&p), None);
    }
}
