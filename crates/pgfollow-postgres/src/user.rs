//! The OS user PostgreSQL runs as: `postgres` (or --os-user) when the agent
//! runs as root, otherwise the agent's own user.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{geteuid, getgroups, Uid, User};

use crate::error::PgError;

/// The OS user PostgreSQL runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl OsUser {
    /// As root: the user `name` (an error if it does not exist).
    /// Not root: the current user (`name` is ignored).
    pub fn resolve(name: &str) -> Result<Self, PgError> {
        let euid = geteuid();
        if euid.is_root() {
            let user = User::from_name(name)
                .map_err(|source| PgError::UserLookup {
                    name: name.to_string(),
                    source,
                })?
                .ok_or_else(|| PgError::NoSuchOsUser {
                    name: name.to_string(),
                })?;
            if user.uid.is_root() {
                return Err(PgError::InvalidSpec(format!(
                    "OS user `{name}` has uid 0; PostgreSQL refuses to run as root: pass --os-user <unprivileged user>"
                )));
            }
            return Ok(Self::from_user(user));
        }
        match User::from_uid(euid) {
            Ok(Some(user)) => Ok(Self::from_user(user)),
            // A uid without a passwd entry (common in containers) still works.
            _ => Ok(Self {
                name: euid.to_string(),
                uid: euid.as_raw(),
                gid: nix::unistd::getegid().as_raw(),
                home: std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("/")),
            }),
        }
    }

    fn from_user(user: User) -> Self {
        Self {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        }
    }

    /// Whether PostgreSQL's programs must switch to this user (the agent is
    /// root) rather than run as the agent itself.
    pub fn needs_switch(&self) -> bool {
        geteuid().is_root() && self.uid != 0
    }

    /// Whether this user can traverse `dir` and every parent of it (false if
    /// `dir` does not exist). Checks owner/group/other `x` bits; ACLs are not
    /// consulted. When root switches user, supplementary groups are dropped,
    /// so only the primary group counts.
    pub fn can_reach(&self, dir: &Path) -> bool {
        let Ok(canonical) = fs::canonicalize(dir) else {
            return false;
        };
        if self.uid == 0 {
            return true;
        }
        let groups: Vec<u32> = if Uid::from_raw(self.uid) == geteuid() {
            getgroups()
                .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        canonical.ancestors().all(|p| match fs::metadata(p) {
            Ok(m) => may_traverse(self.uid, self.gid, &groups, m.uid(), m.gid(), m.mode()),
            Err(_) => false,
        })
    }
}

/// Whether a user may search a directory with the given owner, group and mode.
pub fn may_traverse(uid: u32, gid: u32, groups: &[u32], owner: u32, group: u32, mode: u32) -> bool {
    if uid == 0 {
        return true;
    }
    if uid == owner {
        mode & 0o100 != 0
    } else if gid == group || groups.contains(&group) {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_bits_decide_for_owner_even_if_others_may() {
        assert!(may_traverse(101, 104, &[], 101, 0, 0o700));
        assert!(!may_traverse(101, 104, &[], 101, 0, 0o077));
    }

    #[test]
    fn group_and_other_bits() {
        assert!(may_traverse(101, 104, &[], 0, 104, 0o750));
        assert!(!may_traverse(101, 104, &[], 0, 104, 0o701));
        assert!(may_traverse(101, 104, &[7], 0, 7, 0o710));
        assert!(may_traverse(101, 104, &[], 0, 0, 0o711));
        assert!(!may_traverse(101, 104, &[], 0, 0, 0o700));
    }

    #[test]
    fn current_user_reaches_its_cwd_and_nothing_missing() {
        let me = OsUser::resolve("postgres").unwrap();
        if !me.needs_switch() {
            assert!(me.can_reach(&std::env::current_dir().unwrap()));
        }
        assert!(!me.can_reach(Path::new("/nonexistent/dir")));
    }
}
