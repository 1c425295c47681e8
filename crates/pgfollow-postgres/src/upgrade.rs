//! Major-version upgrades with `pg_upgrade`, run as the OS user with both
//! majors' binaries, in copy mode (the old data directory is untouched
//! until the new one is complete, so an interrupted upgrade starts over).
//!
//! In place ([`Cluster::upgrade`]): stop, `initdb` of the new major into
//! `pgdata.upgrade`, `pg_upgrade --copy`, then `pgdata` → `pgdata.old` →
//! removed and `pgdata.upgrade` → `pgdata`. A dry run
//! ([`Cluster::upgrade_dry_run`]) does the same on a throwaway copy made
//! with `pg_basebackup` (started once on a private socket with archiving
//! off, so it never writes into the database's archive) and reports how
//! long each part took; the database itself keeps running.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgfollow_types::agent::RoleSecret;

use crate::binaries::PgBinaries;
use crate::cluster::{remove_tree, Cluster, StopMode};
use crate::conf;
use crate::error::PgError;
use crate::files;
use crate::process;

/// How long `pg_upgrade` (or the dry run's copy) may take.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// The new data directory while `pg_upgrade` builds it.
const UPGRADE_DIR: &str = "pgdata.upgrade";
/// The old data directory between the swap and its removal.
const OLD_DIR: &str = "pgdata.old";
/// `pg_upgrade`'s working directory (its logs, and its servers' sockets).
const WORK_DIR: &str = "upgrade";
/// A dry run's throwaway copy.
const DRY_DIR: &str = "upgrade-dry-run";

/// How long a dry run's parts took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DryRun {
    pub copy: Duration,
    pub upgrade: Duration,
}

fn major_of(pgdata: &Path) -> Option<u32> {
    fs::read_to_string(pgdata.join("PG_VERSION"))
        .ok()
        .and_then(|v| v.trim().parse().ok())
}

impl Cluster {
    /// `initdb` of `new` into `dir`, like the cluster's own, with the WAL
    /// segment size of `old_dir` (pg_upgrade needs both alike; clusters
    /// made before [`crate::cluster::WAL_SEGMENT_MB`] have 16 MB).
    async fn initdb_into(
        &self,
        new: &PgBinaries,
        dir: &Path,
        old_dir: &Path,
    ) -> Result<(), PgError> {
        let segment_mb = self.wal_segment_mb(old_dir).await?;
        remove_tree(dir)?;
        let locale = format!("--locale={}", process::locale());
        let mut cmd = process::command(new, self.user(), "initdb", self.root());
        cmd.arg("-D")
            .arg(dir)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .args(["-E", "UTF8", &locale, "--no-instructions"])
            .arg(format!("--wal-segsize={segment_mb}"));
        // pg_upgrade needs both sides alike: clusters before 18 were made
        // without data checksums, which PostgreSQL 18's initdb turns on.
        if new.major >= 18 && self.binaries().major < 18 {
            cmd.arg("--no-data-checksums");
        }
        process::run(cmd, "initdb (for pg_upgrade)", Duration::from_secs(300))
            .await
            .map(|_| ())
    }

    /// The WAL segment size of the (stopped) data directory `pgdata`, in
    /// MB, as `pg_controldata` reads it from its control file.
    async fn wal_segment_mb(&self, pgdata: &Path) -> Result<u32, PgError> {
        let mut cmd = process::command(self.binaries(), self.user(), "pg_controldata", self.root());
        cmd.arg("-D").arg(pgdata).env("LC_ALL", "C");
        let out = process::run(cmd, "pg_controldata", Duration::from_secs(60)).await?;
        let text = String::from_utf8_lossy(&out.stdout);
        segment_mb_of(&text).ok_or_else(|| {
            PgError::Unexpected(format!(
                "pg_controldata of {} names no WAL segment size",
                pgdata.display()
            ))
        })
    }

    /// `pg_upgrade --copy` from `old_dir` (stopped cleanly, binaries of
    /// this cluster) into `new_dir` (fresh `initdb` of `new`). Its servers
    /// listen only on a socket in `work`, on the cluster's port.
    async fn pg_upgrade(
        &self,
        new: &PgBinaries,
        old_dir: &Path,
        new_dir: &Path,
        work: &Path,
        port: u16,
    ) -> Result<Duration, PgError> {
        remove_tree(work)?;
        files::ensure_dir(work, 0o700, self.user())?;
        conf::socket_path(work, port)?;
        let mut cmd = process::command(new, self.user(), "pg_upgrade", work);
        cmd.arg("-b")
            .arg(&self.binaries().bindir)
            .arg("-B")
            .arg(&new.bindir)
            .arg("-d")
            .arg(old_dir)
            .arg("-D")
            .arg(new_dir)
            .arg("-s")
            .arg(work)
            .args(["-p", &port.to_string(), "-P", &port.to_string()])
            .args(["-U", "postgres", "--copy"]);
        let started = Instant::now();
        let result = process::run(cmd, "pg_upgrade", UPGRADE_TIMEOUT).await;
        if let Err(e) = result {
            // pg_upgrade's own logs say more than its stderr.
            let logs = pg_upgrade_log_tail(new_dir, work);
            return Err(match e {
                PgError::Tool {
                    what,
                    status,
                    stderr,
                } => PgError::Tool {
                    what,
                    status,
                    stderr: format!("{stderr}\n{logs}"),
                },
                other => other,
            });
        }
        Ok(started.elapsed())
    }

    /// Idempotent: upgrades this stopped-or-running cluster to `new`'s
    /// major in place. Answers how long `pg_upgrade` took (zero when it was
    /// already done). The cluster is left stopped, its configuration to be
    /// rendered again for the new major.
    pub async fn upgrade(&self, new: &PgBinaries) -> Result<Duration, PgError> {
        let pgdata = self.pgdata();
        let staged = self.root().join(UPGRADE_DIR);
        let old = self.root().join(OLD_DIR);
        if major_of(&pgdata) == Some(new.major) {
            remove_tree(&old)?;
            return Ok(Duration::ZERO);
        }
        if !pgdata.exists() && major_of(&staged) == Some(new.major) && old.exists() {
            // Interrupted between the two renames.
            fs::rename(&staged, &pgdata).map_err(|e| PgError::io("renaming", &staged, e))?;
            remove_tree(&old)?;
            return Ok(Duration::ZERO);
        }
        let port = self.port()?;
        // What an earlier agent's pg_upgrade left running goes first: the
        // tool itself, then the servers it started (the old one is this
        // cluster's postmaster, which `stop` ends).
        process::kill_leftovers(&["pg_upgrade", "initdb"], self.root());
        process::kill_leftovers(&["postgres", "pg_ctl"], &staged);
        // The column stamps go over the cluster's own socket. A postmaster
        // that does not answer there is the old server an interrupted
        // pg_upgrade started on a socket of its own: it is stopped and the
        // cluster started as itself.
        if self.postmaster().is_none()
            || strip_column_stamps(&self.socket_dir(), port).await.is_err()
        {
            self.stop(StopMode::Fast).await?;
            self.start().await?;
            strip_column_stamps(&self.socket_dir(), port).await?;
        }
        self.stop(StopMode::Fast).await?;
        // No archiving while pg_upgrade runs the old server: the upgraded
        // database is a new lineage with a stanza of its own.
        let archive = self.root().join(conf::ARCHIVE_CONF);
        if archive.exists() {
            fs::remove_file(&archive).map_err(|e| PgError::io("removing", &archive, e))?;
        }
        self.initdb_into(new, &staged, &pgdata).await?;
        let took = self
            .pg_upgrade(new, &pgdata, &staged, &self.root().join(WORK_DIR), port)
            .await?;
        fs::rename(&pgdata, &old).map_err(|e| PgError::io("renaming", &pgdata, e))?;
        fs::rename(&staged, &pgdata).map_err(|e| PgError::io("renaming", &staged, e))?;
        files::sync_dir(self.root())?;
        remove_tree(&old)?;
        remove_tree(&self.root().join(WORK_DIR))?;
        tracing::info!(
            root = %self.root().display(),
            ms = took.as_millis() as u64,
            "upgraded to PostgreSQL {}",
            new.major
        );
        Ok(took)
    }

    /// A dry run of [`Cluster::upgrade`] on a throwaway copy: the running
    /// cluster is copied with `pg_basebackup` as `replication` over TCP at
    /// `host:port`, the copy is started once (archiving off, no TCP) so it
    /// is shut down cleanly, then upgraded and removed.
    pub async fn upgrade_dry_run(
        &self,
        new: &PgBinaries,
        host: &str,
        replication: &RoleSecret,
    ) -> Result<DryRun, PgError> {
        let dir = self.root().join(DRY_DIR);
        let result = self.dry_run_in(new, host, replication, &dir).await;
        if let Err(e) = remove_tree(&dir) {
            tracing::warn!("could not remove the dry run's copy {}: {e}", dir.display());
        }
        result
    }

    async fn dry_run_in(
        &self,
        new: &PgBinaries,
        host: &str,
        replication: &RoleSecret,
        dir: &Path,
    ) -> Result<DryRun, PgError> {
        let port = self.port()?;
        // What an interrupted dry run left running goes first.
        process::kill_leftovers(&["pg_upgrade", "pg_basebackup", "initdb", "pg_ctl"], dir);
        let old_copy = dir.join("old");
        if self.postmaster_of(&old_copy).is_some() {
            self.ctl(&old_copy, &["stop", "-m", "immediate"]).await?;
        }
        process::kill_leftovers(&["postgres"], dir);
        remove_tree(dir)?;
        files::ensure_dir(dir, 0o700, self.user())?;
        let started = Instant::now();
        let mut cmd = process::command(self.binaries(), self.user(), "pg_basebackup", dir);
        cmd.env("PGPASSWORD", &replication.password)
            .env("PGCONNECT_TIMEOUT", "10")
            .args(["-h", host, "-p", &port.to_string(), "-U", &replication.name])
            .arg("-D")
            .arg(&old_copy)
            .args(["-X", "stream", "-c", "fast", "--no-password"]);
        process::run(cmd, "pg_basebackup (dry run copy)", UPGRADE_TIMEOUT).await?;
        for signal in ["standby.signal", "recovery.signal"] {
            let _ = fs::remove_file(old_copy.join(signal));
        }
        // Once up and down again, on a private socket and without
        // archiving, so pg_upgrade finds it shut down cleanly.
        let socket = dir.to_path_buf();
        conf::socket_path(&socket, port)?;
        let options = format!(
            "-c port={port} -c listen_addresses='' -c unix_socket_directories='{}' \
             -c archive_mode=off -c archive_command=/bin/true -c primary_conninfo='' \
             -c synchronous_standby_names=''",
            socket.display()
        );
        self.ctl(
            &old_copy,
            &[
                "start", "-w", "-t", "300", "-s", "-l", "copy.log", "-o", &options,
            ],
        )
        .await?;
        strip_column_stamps(&socket, port).await?;
        self.ctl(&old_copy, &["stop", "-m", "fast", "-w", "-t", "300", "-s"])
            .await?;
        let copy = started.elapsed();
        let new_dir = dir.join("new");
        self.initdb_into(new, &new_dir, &old_copy).await?;
        let upgrade = self
            .pg_upgrade(new, &old_copy, &new_dir, &dir.join("work"), port)
            .await?;
        Ok(DryRun { copy, upgrade })
    }

    fn postmaster_of(&self, pgdata: &Path) -> Option<u32> {
        crate::pidfile::read(pgdata)
            .filter(|pm| crate::pidfile::is_postmaster_of(pm.pid, pgdata))
            .map(|pm| pm.pid)
    }

    async fn ctl(&self, pgdata: &Path, args: &[&str]) -> Result<(), PgError> {
        let cwd = pgdata.parent().unwrap_or(self.root()).to_path_buf();
        let mut cmd = process::command(self.binaries(), self.user(), "pg_ctl", &cwd);
        cmd.arg(args[0]).arg("-D").arg(pgdata).args(&args[1..]);
        if args[0] == "start" {
            cmd.kill_on_drop(false);
        }
        process::run(cmd, "pg_ctl (dry run copy)", Duration::from_secs(400))
            .await
            .map(|_| ())
    }
}

/// Removes the attribute option `pg_attver` that PostgreSQL 15.20 puts on
/// every column from the user tables' columns (not the catalogs') of each
/// database of the old cluster running at `socket_dir`/`port`, which is
/// about to be replaced: pg_upgrade's schema dump would carry the stamps
/// and the new major (18.6) refuses them, failing the upgrade. `ALTER
/// TABLE ... RESET (pg_attver)` leaves them, so the catalog is updated
/// directly, as the superuser.
async fn strip_column_stamps(socket_dir: &Path, port: u16) -> Result<(), PgError> {
    let databases: Vec<String> = crate::sql::connect_socket(socket_dir, port, "postgres")
        .await?
        .query("SELECT datname FROM pg_database WHERE datallowconn", &[])
        .await
        .map_err(PgError::sql("listing the databases"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for db in databases {
        let stripped = crate::sql::connect_socket(socket_dir, port, &db)
            .await?
            .execute(
                "UPDATE pg_catalog.pg_attribute \
                 SET attoptions = NULLIF(ARRAY(SELECT o FROM unnest(attoptions) o \
                                               WHERE o NOT LIKE 'pg\\_attver=%'), '{}') \
                 WHERE attrelid >= 16384 \
                   AND EXISTS (SELECT 1 FROM unnest(attoptions) o WHERE o LIKE 'pg\\_attver=%')",
                &[],
            )
            .await
            .map_err(PgError::sql("removing the column stamps before pg_upgrade"))?;
        if stripped > 0 {
            tracing::info!("{db}: removed pg_attver from {stripped} column(s) before pg_upgrade");
        }
    }
    Ok(())
}

/// The last lines of pg_upgrade's logs (in the new data directory's
/// `pg_upgrade_output.d`, or the working directory).
fn pg_upgrade_log_tail(new_dir: &Path, work: &Path) -> String {
    let mut logs: Vec<PathBuf> = Vec::new();
    let mut walk = vec![new_dir.join("pg_upgrade_output.d"), work.to_path_buf()];
    while let Some(d) = walk.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk.push(p);
            } else if p.extension().is_some_and(|x| x == "log" || x == "txt") {
                logs.push(p);
            }
        }
    }
    logs.iter()
        .map(|p| {
            format!(
                "{}: {}",
                p.display(),
                files::tail_lines(&files::read_from(p, 0), 8)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `Bytes per WAL segment:  16777216` of `pg_controldata`'s output, in MB.
fn segment_mb_of(controldata: &str) -> Option<u32> {
    let bytes: u64 = controldata
        .lines()
        .find_map(|l| l.strip_prefix("Bytes per WAL segment:"))?
        .trim()
        .parse()
        .ok()?;
    u32::try_from(bytes / (1024 * 1024))
        .ok()
        .filter(|mb| *mb > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_segment_size_is_read_from_pg_controldata() {
        let out = "pg_control version number:            1300\n\
                   Bytes per WAL segment:                16777216\n\
                   Maximum data alignment:               8\n";
        assert_eq!(segment_mb_of(out), Some(16));
        assert_eq!(
            segment_mb_of("Bytes per WAL segment:                1048576\n"),
            Some(1)
        );
        assert_eq!(segment_mb_of("Maximum data alignment: 8\n"), None);
        assert_eq!(segment_mb_of("Bytes per WAL segment: many\n"), None);
    }
}
