//! `pg_rewind`: an old primary that came back after a failover is wound
//! back to where it left its successor's history, then started as that
//! successor's standby. It needs `wal_log_hints` (always on here) and, on
//! the source, a role that may read its files: the replication role gets
//! those grants at bootstrap.

use std::time::Duration;

use pgfollow_types::agent::ClusterSpec;

use crate::basebackup::passfile_line;
use crate::cluster::{Cluster, StopMode};
use crate::error::PgError;
use crate::{files, process};

/// How long a rewind may take.
const REWIND_TIMEOUT: Duration = Duration::from_secs(600);
const STANDBY_SIGNAL: &str = "standby.signal";
const PASSFILE: &str = ".rewind-passfile";

/// What the source must let the replication role run for `pg_rewind`.
pub const REWIND_GRANTS: &[&str] = &[
    "pg_catalog.pg_ls_dir(text, boolean, boolean)",
    "pg_catalog.pg_stat_file(text, boolean)",
    "pg_catalog.pg_read_binary_file(text)",
    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
];

impl Cluster {
    /// Makes this (stopped or crashed) old primary a standby of
    /// `spec.upstream`: stop it if it runs, `pg_rewind` from the upstream
    /// (which finishes crash recovery first when needed), write
    /// `standby.signal` and this cluster's own configuration. On failure the
    /// data directory may be unusable: the caller copies it afresh.
    pub async fn rewind(&self, spec: &ClusterSpec) -> Result<(), PgError> {
        let up = spec.upstream.as_ref().ok_or_else(|| {
            PgError::InvalidSpec(format!(
                "cluster {} has no upstream to rewind from",
                spec.id
            ))
        })?;
        if !self.is_initialized() {
            return Err(PgError::NotInitialized {
                root: self.root().to_path_buf(),
            });
        }
        if self.postmaster().is_some() {
            self.stop(StopMode::Fast).await?;
        }
        let passfile = self.root().join(PASSFILE);
        files::write_private(
            &passfile,
            &passfile_line(&up.user, &up.password),
            self.user(),
        )?;
        let source = format!(
            "host={} port={} user={} dbname=postgres connect_timeout=10",
            up.host, up.port, up.user
        );
        let mut cmd = process::command(self.binaries(), self.user(), "pg_rewind", self.root());
        cmd.env("PGPASSFILE", &passfile)
            .arg("--target-pgdata")
            .arg(self.pgdata())
            .arg("--source-server")
            .arg(&source)
            .arg("--no-sync");
        let result = process::run(cmd, "pg_rewind", REWIND_TIMEOUT).await;
        let _ = std::fs::remove_file(&passfile);
        result?;
        files::write_private(&self.pgdata().join(STANDBY_SIGNAL), "", self.user())?;
        self.write_config(spec)?;
        tracing::info!(root = %self.root().display(), "rewound as a standby of {}:{}", up.host, up.port);
        Ok(())
    }
}
