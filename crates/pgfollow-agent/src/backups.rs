//! Logical backups through the agent: `pg_dump` and `pg_restore` of the
//! right major version, run as the agent's OS user against a database
//! anywhere on the network (the control plane's embedded agent dumps every
//! database, remote ones over TCP, so the archive lands on the control
//! plane's host and survives the loss of the database's host).

use std::path::Path;
use std::sync::Arc;

use pgfollow_postgres::dump::{self, Target};
use pgfollow_postgres::PgBinaries;

use crate::agent::{Agent, AgentError};

impl Agent {
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

    /// `pg_dump -Fc` of `target` (PostgreSQL `major`) into `out`, mode 0600.
    /// Returns the archive's size in bytes.
    pub async fn dump(&self, major: u32, target: &Target, out: &Path) -> Result<u64, AgentError> {
        let bin = self.binaries_for_dump(major)?;
        Ok(dump::dump(&bin, &self.os_user(), target, out).await?)
    }

    /// `pg_restore` of the archive `file` into `target`, which runs
    /// PostgreSQL `major`; `progress(done, total)` in bytes read.
    pub async fn restore(
        &self,
        major: u32,
        target: &Target,
        file: &Path,
        progress: impl Fn(u64, u64) + Send + Sync,
    ) -> Result<(), AgentError> {
        let bin = self.binaries_for_dump(major)?;
        Ok(dump::restore(&bin, &self.os_user(), target, file, progress).await?)
    }
}
