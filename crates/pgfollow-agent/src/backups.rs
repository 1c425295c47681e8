//! Logical backups through the agent: `pg_dump` and `pg_restore` of the
//! right major version, run as the agent's OS user against a database
//! anywhere on the network. The control plane's embedded agent dumps every
//! database (remote ones over TCP), so the archives land in its own
//! `backups/` directory, on the control plane's host, and survive the loss
//! of the database's host.

use std::path::PathBuf;
use std::sync::Arc;

use pgfollow_postgres::dump::{self, Target};
use pgfollow_postgres::PgBinaries;
use pgfollow_types::backup::is_backup_file;

use crate::agent::{Agent, AgentError};

impl Agent {
    /// Where backups live: beside the clusters (`<data dir>/backups`).
    pub(crate) fn backups_dir(&self) -> PathBuf {
        self.endpoints_dir().with_file_name("backups")
    }

    /// `file` under the backups directory; anything else is refused.
    fn backup_path(&self, file: &str) -> Result<PathBuf, AgentError> {
        if !is_backup_file(file) {
            return Err(AgentError::InvalidId(file.to_string()));
        }
        Ok(self.backups_dir().join(file))
    }

    /// The programs to dump or restore a database of PostgreSQL `major`
    /// with: that major's, else the oldest newer one installed (pg_dump and
    /// pg_restore read older servers and archives, never newer ones).
    pub fn binaries_for_dump(&self, major: u32) -> Result<Arc<PgBinaries>, AgentError> {
        let missing = match self.binaries_of(major) {
            Ok(b) => return Ok(b),
            Err(e) => e,
        };
        self.binaries()
            .iter()
            .filter(|b| b.major > major)
            .min_by_key(|b| b.major)
            .cloned()
            .ok_or(missing)
    }

    /// `pg_dump -Fc` of `target` (PostgreSQL `major`) into the backups
    /// directory's `file`, mode 0600 (its directories 0700). Returns the
    /// archive's size in bytes.
    pub async fn dump(&self, major: u32, target: &Target, file: &str) -> Result<u64, AgentError> {
        let path = self.backup_path(file)?;
        let bin = self.binaries_for_dump(major)?;
        let mut dir = self.backups_dir();
        make_private_dir(&dir)?;
        for part in std::path::Path::new(file)
            .parent()
            .into_iter()
            .flat_map(|p| p.iter())
        {
            dir.push(part);
            make_private_dir(&dir)?;
        }
        Ok(dump::dump(&bin, &self.os_user(), target, &path).await?)
    }

    /// `pg_restore` of the backups directory's `file` into `target`, which
    /// runs PostgreSQL `major`; its progress is kept for
    /// [`Agent::restore_progress`].
    pub async fn restore(&self, major: u32, target: &Target, file: &str) -> Result<(), AgentError> {
        let path = self.backup_path(file)?;
        let bin = self.binaries_for_dump(major)?;
        let key = format!("restore:{file}");
        let result = dump::restore(&bin, &self.os_user(), target, &path, |done, total| {
            self.progress_map().insert(key.clone(), (done, total));
        })
        .await;
        self.progress_map().remove(&key);
        Ok(result?)
    }

    /// `(done, total)` bytes of `file` read by its running restore.
    pub fn restore_progress(&self, file: &str) -> Option<(u64, u64)> {
        self.progress_map().get(&format!("restore:{file}")).copied()
    }
}

/// Creates `dir` if missing and makes it mode 0700, for root alone.
pub(crate) fn make_private_dir(dir: &std::path::Path) -> Result<(), AgentError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| AgentError::Directory {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}
