//! `postmaster.pid`: what a running postmaster writes into its data
//! directory. Lines: pid, data directory, start time (epoch), port, socket
//! directory, listen address, shared memory key, status.

use std::fs;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// The fields of `postmaster.pid` this crate uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostmasterPid {
    pub pid: u32,
    pub data_dir: PathBuf,
    pub port: Option<u16>,
    /// `starting`, `ready`, `stopping` or `standby` (absent very early in startup).
    pub status: Option<String>,
}

/// Parses the text of `postmaster.pid`; `None` if it is not one.
pub fn parse(text: &str) -> Option<PostmasterPid> {
    let lines: Vec<&str> = text.lines().collect();
    let pid: u32 = lines.first()?.trim().parse().ok()?;
    if pid == 0 {
        return None;
    }
    let data_dir = PathBuf::from(lines.get(1)?.trim());
    let port = lines.get(3).and_then(|l| l.trim().parse().ok());
    let status = lines
        .get(7)
        .map(|l| l.trim().to_string())
        .filter(|s| !s.is_empty());
    Some(PostmasterPid {
        pid,
        data_dir,
        port,
        status,
    })
}

/// Reads `<pgdata>/postmaster.pid`; `None` if absent or unreadable.
pub fn read(pgdata: &Path) -> Option<PostmasterPid> {
    let text = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    parse(&text)
}

/// Whether `pid` is alive and is the postmaster of `pgdata`: the postmaster
/// runs with its data directory as working directory; where /proc does not
/// tell us that, its command line must at least name `postgres`.
pub fn is_postmaster_of(pid: u32, pgdata: &Path) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    match kill(Pid::from_raw(raw), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return false,
    }
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if let Ok(cwd) = fs::read_link(proc_dir.join("cwd")) {
        let want = fs::canonicalize(pgdata).unwrap_or_else(|_| pgdata.to_path_buf());
        return cwd == want;
    }
    match fs::read(proc_dir.join("cmdline")) {
        Ok(cmdline) => cmdline_is_postgres(&cmdline),
        // No /proc at all: the signal check is all we have.
        Err(_) => !Path::new("/proc/self").exists(),
    }
}

/// Whether a NUL-separated `/proc/<pid>/cmdline` is a postgres process.
pub fn cmdline_is_postgres(cmdline: &[u8]) -> bool {
    let first = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let text = String::from_utf8_lossy(first);
    let name = text.rsplit('/').next().unwrap_or_default();
    name == "postgres" || name == "postmaster" || text.starts_with("postgres:")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "12345\n/srv/pgfollow/white/pgdata\n1716200000\n54321\n/srv/pgfollow/white/run\n127.0.0.1\n  1234567    32768\nready   \n";

    #[test]
    fn parses_a_ready_postmaster() {
        let p = parse(SAMPLE).unwrap();
        assert_eq!(p.pid, 12345);
        assert_eq!(p.data_dir, PathBuf::from("/srv/pgfollow/white/pgdata"));
        assert_eq!(p.port, Some(54321));
        assert_eq!(p.status.as_deref(), Some("ready"));
    }

    #[test]
    fn parses_an_early_pid_file_without_status() {
        let p = parse("77\n/d\n").unwrap();
        assert_eq!((p.pid, p.port, p.status), (77, None, None));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse(""), None);
        assert_eq!(parse("abc\n/d\n"), None);
        assert_eq!(parse("0\n/d\n"), None);
        assert_eq!(parse("12\n"), None);
    }

    #[test]
    fn recognises_postgres_command_lines() {
        assert!(cmdline_is_postgres(
            b"/usr/lib/postgresql/15/bin/postgres\0-D\0/x\0"
        ));
        assert!(cmdline_is_postgres(b"postgres: checkpointer \0"));
        assert!(!cmdline_is_postgres(b"/bin/bash\0"));
        assert!(!cmdline_is_postgres(b""));
    }

    #[test]
    fn a_dead_pid_is_not_a_postmaster() {
        // pid_max is at most 2^22 on Linux.
        assert!(!is_postmaster_of(4_194_304 + 7, Path::new("/")));
    }
}
