//! File-system helpers for a cluster's directory: directories and files
//! owned by the cluster's OS user with tight modes, atomic rewrites, and
//! reading the end of the server log.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{chown, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::PgError;
use crate::user::OsUser;

/// Creates `dir` if missing, then gives it to `user` with `mode`.
pub fn ensure_dir(dir: &Path, mode: u32, user: &OsUser) -> Result<(), PgError> {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(PgError::io("creating directory", dir, e)),
    }
    give_to(dir, user)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(|e| PgError::io("setting the mode of", dir, e))
}

/// Makes `user` the owner of `path` (when the agent is root).
pub fn give_to(path: &Path, user: &OsUser) -> Result<(), PgError> {
    if user.needs_switch() {
        chown(path, Some(user.uid), Some(user.gid))
            .map_err(|e| PgError::io("changing the owner of", path, e))?;
    }
    Ok(())
}

/// Replaces `path` with `contents` atomically (temp file + rename), mode
/// 0600, owned by `user`.
pub fn write_private(path: &Path, contents: &str, user: &OsUser) -> Result<(), PgError> {
    write_private_with(path, contents, user, true)
}

/// [`write_private`] without flushing the file before the rename (still
/// atomic: a reader sees the old contents or the new), for a file written
/// while something waits on it; [`sync_file`] flushes it afterwards.
pub fn write_private_unsynced(path: &Path, contents: &str, user: &OsUser) -> Result<(), PgError> {
    write_private_with(path, contents, user, false)
}

/// Flushes `path` to disk.
pub fn sync_file(path: &Path) -> Result<(), PgError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| PgError::io("syncing", path, e))
}

fn write_private_with(
    path: &Path,
    contents: &str,
    user: &OsUser,
    sync: bool,
) -> Result<(), PgError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.pgfollow-tmp"));
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(contents.as_bytes())?;
        match sync {
            true => f.sync_all(),
            false => Ok(()),
        }
    };
    write().map_err(|e| PgError::io("writing", &tmp, e))?;
    give_to(&tmp, user)?;
    fs::rename(&tmp, path).map_err(|e| PgError::io("renaming into place", path, e))
}

/// Flushes a directory so that a rename inside it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), PgError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| PgError::io("syncing directory", dir, e))
}

/// The size of `path`, 0 if it does not exist.
pub fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// What was appended to `path` after byte `offset`, at most the last 64 KiB.
pub fn read_from(path: &Path, offset: u64) -> String {
    const MAX: u64 = 64 * 1024;
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = if len < offset {
        0
    } else {
        offset.max(len.saturating_sub(MAX))
    };
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.take(MAX).read_to_end(&mut buf).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last `n` non-empty lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether a startup log says the TCP port was taken.
pub fn is_port_conflict(log: &str) -> bool {
    log.contains("could not bind") || log.contains("Address already in use")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail_lines("a\nb\n\nc\nd\n", 2), "c\nd");
        assert_eq!(tail_lines("a\n", 5), "a");
        assert_eq!(tail_lines("", 5), "");
    }

    #[test]
    fn port_conflict_is_recognised() {
        let log = "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use\n\
                   FATAL:  could not create any TCP/IP sockets";
        assert!(is_port_conflict(log));
        assert!(!is_port_conflict(
            "FATAL:  data directory has invalid permissions"
        ));
    }

    #[test]
    fn reads_only_what_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        fs::write(&p, "old\n").unwrap();
        let off = file_len(&p);
        fs::write(&p, "old\nnew\n").unwrap();
        assert_eq!(read_from(&p, off), "new\n");
        // A rotated (shorter) file is read from the start.
        fs::write(&p, "x\n").unwrap();
        assert_eq!(read_from(&p, off + 10), "x\n");
        assert_eq!(read_from(&dir.path().join("missing"), 0), "");
    }
}
