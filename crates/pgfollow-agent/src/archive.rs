//! Continuous protection and major-version upgrades through the agent: pgBackRest run as the agent's
//! OS user for the clusters on this host (configuration and
//! `archive_command`, base backups, sealing the archive, point-in-time
//! restore into a new cluster). The repository is named by the control
//! plane in each call's [`ArchiveSpec`].

use std::path::PathBuf;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use pgfollow_postgres::archive::{find_pgbackrest, newest_supported_major, PGFOLLOW_PGBACKREST};
use pgfollow_postgres::PgError;
use pgfollow_types::agent::ClusterSpec;
use pgfollow_types::archive::{ArchiveInfo, ArchiveSpec};

use crate::agent::{Agent, AgentError};

/// pgBackRest's path and `(major, minor)` version, looked up once.
fn installed() -> Option<&'static (PathBuf, (u32, u32))> {
    static FOUND: OnceLock<Option<(PathBuf, (u32, u32))>> = OnceLock::new();
    FOUND.get_or_init(find_pgbackrest).as_ref()
}

impl Agent {
    /// pgBackRest, if it can protect a cluster of PostgreSQL `major`.
    fn pgbackrest_for(&self, major: u32) -> Result<PathBuf, AgentError> {
        let refuse = |why: String| AgentError::Postgres(PgError::Protection(why));
        let Some((path, version)) = installed() else {
            return Err(refuse(format!(
                "pgBackRest is not installed on host {}: install Debian's `pgbackrest` package there (scripts/install-deps does) and restart its agent",
                self.name()
            )));
        };
        let newest = newest_supported_major(*version);
        if major > newest {
            return Err(refuse(format!(
                "pgBackRest {}.{} on host {} supports PostgreSQL up to {newest}, not {major}: install pgBackRest 2.56 or newer there as {PGFOLLOW_PGBACKREST} (see the README's Versions and backups) and restart its agent",
                version.0,
                version.1,
                self.name()
            )));
        }
        Ok(path.clone())
    }

    fn major_of(&self, id: &str) -> Result<u32, AgentError> {
        Ok(self.cluster(id)?.binaries().major)
    }

    pub async fn archive_configure(
        &self,
        id: &str,
        archive: &ArchiveSpec,
    ) -> Result<(), AgentError> {
        let program = self.pgbackrest_for(self.major_of(id)?)?;
        Ok(self
            .cluster(id)?
            .configure_archive(archive, &program)
            .await?)
    }

    pub async fn archive_backup(
        &self,
        id: &str,
        archive: &ArchiveSpec,
    ) -> Result<ArchiveInfo, AgentError> {
        let program = self.pgbackrest_for(self.major_of(id)?)?;
        Ok(self.cluster(id)?.archive_backup(archive, &program).await?)
    }

    pub async fn archive_seal(&self, id: &str, archive: &ArchiveSpec) -> Result<(), AgentError> {
        let program = self.pgbackrest_for(self.major_of(id)?)?;
        Ok(self.cluster(id)?.archive_seal(archive, &program).await?)
    }

    pub async fn archive_restore(
        &self,
        spec: &ClusterSpec,
        archive: &ArchiveSpec,
        target: DateTime<Utc>,
    ) -> Result<(), AgentError> {
        let cluster = self.cluster_for(spec)?;
        let program = self.pgbackrest_for(cluster.binaries().major)?;
        Ok(cluster
            .restore_from_archive(spec, archive, target, &program)
            .await?)
    }
}

impl Agent {
    /// `pg_upgrade` of cluster `id` (its major from `PG_VERSION`) to
    /// `major`, in place; the milliseconds it took.
    pub async fn upgrade(&self, id: &str, major: u32) -> Result<u64, AgentError> {
        let new = self.binaries_of(major)?;
        let took = self.cluster(id)?.upgrade(&new).await?;
        Ok(took.as_millis() as u64)
    }

    /// The same on a throwaway copy.
    pub async fn upgrade_dry_run(
        &self,
        id: &str,
        major: u32,
        host: &str,
        replication: &pgfollow_types::agent::RoleSecret,
    ) -> Result<pgfollow_types::agent::UpgradeReport, AgentError> {
        let new = self.binaries_of(major)?;
        let r = self
            .cluster(id)?
            .upgrade_dry_run(&new, host, replication)
            .await?;
        Ok(pgfollow_types::agent::UpgradeReport {
            copy_ms: r.copy.as_millis() as u64,
            upgrade_ms: r.upgrade.as_millis() as u64,
        })
    }
}
