//! One cluster's files and lifecycle: `initdb`, configuration, start, stop,
//! re-attaching to a postmaster an earlier agent started, and destroy.
//!
//! Layout under the cluster's root directory (mode 0700, owned by the OS user):
//! `pgdata/` (the data directory), `pgdata.init/` (an `initdb` or a base
//! backup in progress; renamed to `pgdata` only when complete), `run/` (the
//! Unix socket, 0700) and `log/postgresql.log`.
//!
//! A follower's data directory comes from [`Cluster::basebackup`] (in
//! `replication.rs`) instead of `initdb`; after that, both kinds are
//! configured, started and stopped the same way.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfollow_types::agent::{ClusterSpec, ClusterStatus};

use crate::binaries::PgBinaries;
use crate::conf;
use crate::error::PgError;
use crate::files;
use crate::pidfile::{self, PostmasterPid};
use crate::process;
use crate::user::OsUser;

/// The WAL segment size of new clusters, in MB (PostgreSQL's default is
/// 16). A promotion copies and flushes the whole segment its old timeline
/// ends in: in the changeover benchmark on a quiet machine PostgreSQL 15's
/// promotion took 21-25 ms with 16 MB segments and 7-14 ms with 1 MB, the
/// median write pause 49.6 ms against 34.3 ms. The cost is sixteen times as
/// many WAL files, each archived by its own `archive-push` (about 16 ms a
/// segment to a repository on the same machine). `pg:upgrade` gives the
/// new cluster the old one's size.
pub const WAL_SEGMENT_MB: u32 = 1;

/// How long `pg_ctl` may wait for the server to start or stop.
const PG_CTL_WAIT_SECS: u64 = 60;
/// How long `initdb` may take.
const INITDB_TIMEOUT: Duration = Duration::from_secs(300);
/// Lines of the server log carried by a start failure.
const LOG_TAIL_LINES: usize = 20;

/// How to stop a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnect clients, checkpoint, shut down cleanly.
    Fast,
    /// Stop at once; the next start does crash recovery.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// One cluster's files, and the binaries and OS user that run it.
#[derive(Debug, Clone)]
pub struct Cluster {
    root: PathBuf,
    bin: Arc<PgBinaries>,
    user: Arc<OsUser>,
}

impl Cluster {
    pub fn new(root: PathBuf, bin: Arc<PgBinaries>, user: Arc<OsUser>) -> Self {
        Self { root, bin, user }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn binaries(&self) -> &PgBinaries {
        &self.bin
    }

    pub fn user(&self) -> &OsUser {
        &self.user
    }

    /// The data directory.
    pub fn pgdata(&self) -> PathBuf {
        self.root.join("pgdata")
    }

    /// Where a data directory is built before it becomes `pgdata`.
    pub fn pgdata_init(&self) -> PathBuf {
        self.root.join("pgdata.init")
    }

    /// The Unix socket directory.
    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    pub fn log_file(&self) -> PathBuf {
        self.root.join("log").join("postgresql.log")
    }

    /// Whether `pgdata` is a complete data directory. Data directories are
    /// built in `pgdata.init` and renamed, so a half-done one never counts.
    pub fn is_initialized(&self) -> bool {
        let pgdata = self.pgdata();
        pgdata.join("PG_VERSION").is_file() && pgdata.join("global").join("pg_control").is_file()
    }

    /// The live postmaster of this cluster, if there is one.
    pub fn postmaster(&self) -> Option<PostmasterPid> {
        let pgdata = self.pgdata();
        pidfile::read(&pgdata).filter(|pm| pidfile::is_postmaster_of(pm.pid, &pgdata))
    }

    /// Cheap, no connection: is the data directory complete, and is its
    /// postmaster alive.
    pub fn status(&self, id: &str) -> ClusterStatus {
        let pm = self.postmaster();
        ClusterStatus {
            id: id.to_string(),
            initialized: self.is_initialized(),
            running: pm.is_some(),
            pid: pm.map(|p| p.pid),
        }
    }

    /// The port the cluster listens on: from the running postmaster, else
    /// from the configuration pgfollow wrote.
    pub fn port(&self) -> Result<u16, PgError> {
        if let Some(port) = self.postmaster().and_then(|pm| pm.port) {
            return Ok(port);
        }
        self.configured_port()
    }

    fn configured_port(&self) -> Result<u16, PgError> {
        let path = self.pgdata().join(conf::CONF_FILE);
        let text = fs::read_to_string(&path).map_err(|e| PgError::io("reading", &path, e))?;
        conf::read_setting(&text, "port")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| PgError::InvalidSpec(format!("no valid `port` in {}", path.display())))
    }

    /// Idempotent: creates the directories, runs `initdb` if the data
    /// directory is not complete yet, then writes the configuration.
    ///
    /// A follower (`spec.upstream` set) gets its data directory from
    /// [`Cluster::basebackup`]; `initialize` only rewrites its configuration
    /// and refuses to `initdb` one, which would silently become a new,
    /// unrelated leader.
    pub async fn initialize(&self, spec: &ClusterSpec) -> Result<(), PgError> {
        conf::validate(spec)?;
        conf::socket_path(&self.socket_dir(), spec.port)?;
        self.prepare_dirs()?;
        if !self.is_initialized() {
            if spec.upstream.is_some() {
                return Err(PgError::InvalidSpec(format!(
                    "cluster {} is a follower without a data directory: \
                     create it with a base backup, not initdb",
                    spec.id
                )));
            }
            self.initdb().await?;
        }
        self.write_config(spec)
    }

    /// Creates root, run and log directories owned by the OS user, after
    /// checking that the OS user can reach the root's parent.
    pub(crate) fn prepare_dirs(&self) -> Result<(), PgError> {
        let parent = self
            .root
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| {
                PgError::InvalidSpec(format!(
                    "cluster root `{}` must be an absolute path below some directory",
                    self.root.display()
                ))
            })?;
        fs::create_dir_all(parent).map_err(|e| PgError::io("creating directory", parent, e))?;
        if !self.user.can_reach(parent) {
            return Err(PgError::Unreachable {
                user: self.user.name.clone(),
                dir: parent.to_path_buf(),
            });
        }
        files::ensure_dir(&self.root, 0o700, &self.user)?;
        files::ensure_dir(&self.socket_dir(), 0o700, &self.user)?;
        files::ensure_dir(&self.root.join("log"), 0o700, &self.user)
    }

    /// `initdb` into `pgdata.init` (WAL segments of [`WAL_SEGMENT_MB`]),
    /// then rename it to `pgdata`.
    async fn initdb(&self) -> Result<(), PgError> {
        self.clear_leftovers()?;
        let pgdata = self.pgdata();
        let init = self.pgdata_init();
        let locale = format!("--locale={}", process::locale());
        let mut cmd = process::command(&self.bin, &self.user, "initdb", &self.root);
        cmd.arg("-D")
            .arg(&init)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .args(["-E", "UTF8", &locale, "--no-instructions"])
            .arg(format!("--wal-segsize={WAL_SEGMENT_MB}"));
        tracing::info!(root = %self.root.display(), "initdb");
        if let Err(e) = process::run(cmd, "initdb", INITDB_TIMEOUT).await {
            let _ = remove_tree(&init);
            return Err(e);
        }
        fs::rename(&init, &pgdata)
            .map_err(|e| PgError::io("renaming data directory to", &pgdata, e))?;
        files::sync_dir(&self.root)
    }

    /// Before building a data directory: removes an empty `pgdata` (a
    /// non-empty incomplete one is refused, never deleted) and whatever an
    /// interrupted build left in `pgdata.init`.
    pub(crate) fn clear_leftovers(&self) -> Result<(), PgError> {
        let pgdata = self.pgdata();
        if pgdata.exists() && fs::remove_dir(&pgdata).is_err() {
            return Err(PgError::IncompleteDataDir { path: pgdata });
        }
        remove_tree(&self.pgdata_init())
    }

    /// Renders `pgfollow.conf` and `pg_hba.conf` from `spec` into the data
    /// directory and makes `postgresql.conf` include `pgfollow.conf`. Takes
    /// effect at the next start (or [`Cluster::reload`] for reloadable settings).
    pub fn write_config(&self, spec: &ClusterSpec) -> Result<(), PgError> {
        conf::validate(spec)?;
        let socket_dir = self.socket_dir();
        conf::socket_path(&socket_dir, spec.port)?;
        if !self.is_initialized() {
            return Err(PgError::NotInitialized {
                root: self.root.clone(),
            });
        }
        let pgdata = self.pgdata();
        let passfile = self.root.join(conf::UPSTREAM_PASSFILE);
        if let Some(up) = &spec.upstream {
            files::write_private(
                &passfile,
                &crate::basebackup::passfile_line(&up.user, &up.password),
                &self.user,
            )?;
        } else if passfile.exists() {
            fs::remove_file(&passfile).map_err(|e| PgError::io("removing", &passfile, e))?;
        }
        files::write_private(
            &pgdata.join(conf::CONF_FILE),
            &conf::render_conf(spec, &socket_dir, &passfile),
            &self.user,
        )?;
        files::write_private(
            &pgdata.join("pg_hba.conf"),
            &conf::render_hba(spec),
            &self.user,
        )?;
        let main = pgdata.join("postgresql.conf");
        let text = fs::read_to_string(&main).map_err(|e| PgError::io("reading", &main, e))?;
        if let Some(new) = conf::with_include(&text) {
            files::write_private(&main, &new, &self.user)?;
        }
        Ok(())
    }

    /// Idempotent: starts the server with `pg_ctl start -w` and waits until
    /// it accepts connections; Ok at once if it is already running.
    pub async fn start(&self) -> Result<(), PgError> {
        if self.postmaster().is_some() {
            return self.wait_ready(Duration::from_secs(PG_CTL_WAIT_SECS)).await;
        }
        if !self.is_initialized() {
            return Err(PgError::NotInitialized {
                root: self.root.clone(),
            });
        }
        let port = self.configured_port()?;
        conf::socket_path(&self.socket_dir(), port)?;
        files::ensure_dir(&self.socket_dir(), 0o700, &self.user)?;
        files::ensure_dir(&self.root.join("log"), 0o700, &self.user)?;
        self.remove_stale_pid_file()?;

        let log = self.log_file();
        let offset = files::file_len(&log);
        let mut cmd = process::command(&self.bin, &self.user, "pg_ctl", &self.root);
        cmd.arg("start")
            .arg("-D")
            .arg(self.pgdata())
            .args(["-w", "-t", &PG_CTL_WAIT_SECS.to_string(), "-s", "-l"])
            .arg(&log)
            // pg_ctl daemonizes the postmaster (setsid); it must outlive the agent.
            .kill_on_drop(false);
        tracing::info!(root = %self.root.display(), port, "starting postgres");
        let timeout = Duration::from_secs(PG_CTL_WAIT_SECS + 30);
        match process::run(cmd, "pg_ctl start", timeout).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let appended = files::read_from(&log, offset);
                if files::is_port_conflict(&appended) {
                    return Err(PgError::PortInUse { port });
                }
                let mut log_tail = files::tail_lines(&appended, LOG_TAIL_LINES);
                if log_tail.is_empty() {
                    log_tail = format!("(nothing in {})", log.display());
                }
                Err(PgError::StartFailed {
                    log_tail: format!("{log_tail}\n({e})"),
                })
            }
        }
    }

    /// Waits (bounded) until the running postmaster says it is ready (or a
    /// hot standby ready for reads).
    async fn wait_ready(&self, limit: Duration) -> Result<(), PgError> {
        let deadline = Instant::now() + limit;
        loop {
            let Some(pm) = self.postmaster() else {
                return Err(PgError::StartFailed {
                    log_tail: files::tail_lines(
                        &files::read_from(&self.log_file(), 0),
                        LOG_TAIL_LINES,
                    ),
                });
            };
            if matches!(pm.status.as_deref(), Some("ready" | "standby")) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(PgError::StartFailed {
                    log_tail: format!(
                        "postmaster {} still {:?} after {} s",
                        pm.pid,
                        pm.status.as_deref().unwrap_or("starting"),
                        limit.as_secs()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A `postmaster.pid` whose process is gone (or is not this cluster's
    /// postmaster any more) would stop a new postmaster from starting.
    fn remove_stale_pid_file(&self) -> Result<(), PgError> {
        // The socket's lock file names the old postmaster too; a killed one
        // may linger as a zombie for a while, which PostgreSQL takes for a
        // live owner. No postmaster of this cluster runs (checked by the
        // caller), so the lock is stale.
        if let Ok(entries) = fs::read_dir(self.socket_dir()) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(".s.PGSQL.") && name.ends_with(".lock") {
                    let _ = fs::remove_file(entry.path());
                    tracing::info!(path = %entry.path().display(), "removed stale socket lock file");
                }
            }
        }
        let path = self.pgdata().join("postmaster.pid");
        match fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed stale postmaster.pid");
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PgError::io("removing stale", &path, e)),
        }
    }

    /// Idempotent: `pg_ctl stop -w` in `mode`; Ok if not running.
    pub async fn stop(&self, mode: StopMode) -> Result<(), PgError> {
        if self.postmaster().is_none() {
            return Ok(());
        }
        let mut cmd = process::command(&self.bin, &self.user, "pg_ctl", &self.root);
        cmd.arg("stop").arg("-D").arg(self.pgdata()).args([
            "-m",
            mode.as_arg(),
            "-w",
            "-t",
            &PG_CTL_WAIT_SECS.to_string(),
            "-s",
        ]);
        tracing::info!(root = %self.root.display(), mode = mode.as_arg(), "stopping postgres");
        let timeout = Duration::from_secs(PG_CTL_WAIT_SECS + 30);
        match process::run(cmd, "pg_ctl stop", timeout).await {
            Ok(_) => Ok(()),
            // It may have stopped by itself meanwhile.
            Err(_) if self.postmaster().is_none() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `pg_ctl reload`: re-reads the configuration files (for settings that
    /// do not need a restart, and `pg_hba.conf`).
    pub async fn reload(&self) -> Result<(), PgError> {
        if self.postmaster().is_none() {
            return Err(PgError::NotRunning {
                root: self.root.clone(),
            });
        }
        let mut cmd = process::command(&self.bin, &self.user, "pg_ctl", &self.root);
        cmd.arg("reload").arg("-D").arg(self.pgdata()).arg("-s");
        process::run(cmd, "pg_ctl reload", Duration::from_secs(30))
            .await
            .map(|_| ())
    }

    /// Stops (immediate) and removes the whole root directory. Idempotent.
    pub async fn destroy(&self) -> Result<(), PgError> {
        if self.pgdata().exists() {
            self.stop(StopMode::Immediate).await?;
        }
        tracing::info!(root = %self.root.display(), "destroying cluster");
        remove_tree(&self.root)
    }
}

/// Removes a directory tree; Ok if it does not exist.
pub(crate) fn remove_tree(path: &Path) -> Result<(), PgError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PgError::io("removing", path, e)),
    }
}
