//! One endpoint's files and lifecycle: rendering the configuration, start
//! (daemonized, so PgBouncer outlives the agent like PostgreSQL does),
//! stop, status from the pidfile, retargeting, and destroy.
//!
//! Layout under the endpoint's root directory (0700, owned by the OS user):
//! `pgbouncer.ini`, `userlist.txt` and `admin.password` (0600), `run/`
//! (0700: the Unix socket and `pgbouncer.pid`) and `log/pgbouncer.log`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pgfollow_postgres::{files, OsUser};
use rand::RngCore;

use crate::admin::AdminSession;
use crate::binary::{immediate_shutdown_signal, BouncerBinary};
use crate::config::{self, EndpointSpec, Layout, PoolMode};
use crate::error::BouncerError;
use crate::process;

/// How long `pgbouncer -d` itself may take.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a started PgBouncer may take to answer on its admin console.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long PgBouncer may take to exit after its shutdown signal, and then SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on PAUSE (in-flight transactions must finish within it).
const DEFAULT_PAUSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of the log carried by a start failure.
const LOG_TAIL_LINES: usize = 20;
const POLL: Duration = Duration::from_millis(50);

pub use pgfollow_types::agent::EndpointStatus;

/// One endpoint's files, and the program and OS user that run it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    root: PathBuf,
    layout: Layout,
    bin: Arc<BouncerBinary>,
    user: Arc<OsUser>,
    pause_timeout: Duration,
}

impl Endpoint {
    /// `root` must be an absolute path (PgBouncer changes directory to `/`
    /// when it daemonizes and re-reads its files from there on RELOAD).
    pub fn new(root: PathBuf, bin: Arc<BouncerBinary>, user: Arc<OsUser>) -> Self {
        let layout = Layout::new(&root);
        Self {
            root,
            layout,
            bin,
            user,
            pause_timeout: DEFAULT_PAUSE_TIMEOUT,
        }
    }

    /// How long [`Endpoint::pause`] (and so [`Endpoint::retarget`]) waits
    /// for in-flight transactions before giving up (default 10 s).
    pub fn with_pause_timeout(mut self, limit: Duration) -> Self {
        self.pause_timeout = limit;
        self
    }

    pub fn pause_timeout(&self) -> Duration {
        self.pause_timeout
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn user(&self) -> &OsUser {
        &self.user
    }

    pub fn log_file(&self) -> &Path {
        &self.layout.logfile
    }

    /// The port in the configuration written last.
    pub fn port(&self) -> Result<u16, BouncerError> {
        self.setting("listen_port")?
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| {
                BouncerError::InvalidSpec(format!(
                    "no valid listen_port in {}",
                    self.layout.ini.display()
                ))
            })
    }

    /// The pool mode in the configuration written last (transaction when
    /// it names none).
    pub fn pool_mode(&self) -> Result<PoolMode, BouncerError> {
        match self.setting("pool_mode")? {
            None => Ok(PoolMode::Transaction),
            Some(text) => text.parse::<PoolMode>().map_err(|_| {
                BouncerError::InvalidSpec(format!(
                    "pool_mode {text:?} in {} is neither transaction nor session",
                    self.layout.ini.display()
                ))
            }),
        }
    }

    fn setting(&self, key: &str) -> Result<Option<String>, BouncerError> {
        let ini = &self.layout.ini;
        match fs::read_to_string(ini) {
            Ok(text) => Ok(config::read_setting(&text, key)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BouncerError::NotConfigured {
                root: self.root.clone(),
            }),
            Err(e) => Err(BouncerError::io("reading", ini, e)),
        }
    }

    /// The admin console's password (created by [`Endpoint::write_config`]).
    pub fn admin_password(&self) -> Result<String, BouncerError> {
        let path = &self.layout.admin_password;
        match fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
            Ok(_) => Err(BouncerError::NotConfigured {
                root: self.root.clone(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BouncerError::NotConfigured {
                root: self.root.clone(),
            }),
            Err(e) => Err(BouncerError::io("reading", path, e)),
        }
    }

    /// Renders `pgbouncer.ini` and `userlist.txt` from `spec` (and, once, a
    /// random admin password). A running PgBouncer takes them at the next
    /// [`Endpoint::reload`], except `listen_addr`/`port`, which need a
    /// restart.
    pub fn write_config(&self, spec: &EndpointSpec) -> Result<(), BouncerError> {
        config::validate(spec)?;
        self.layout.socket_path(spec.port)?;
        self.prepare_dirs()?;
        let admin_password = self.ensure_admin_password()?;
        files::write_private(
            &self.layout.userlist,
            &config::render_userlist(spec, &admin_password),
            &self.user,
        )?;
        files::write_private(
            &self.layout.ini,
            &config::render_ini(spec, &self.layout),
            &self.user,
        )?;
        Ok(())
    }

    /// [`Endpoint::write_config`] for a retarget while the endpoint is
    /// paused: a file whose contents are the same is left alone, and the
    /// others are renamed into place without being flushed first (a reader
    /// still sees old or new, never part); [`Endpoint::sync_config`]
    /// flushes them once writes flow again.
    pub fn write_config_unsynced(&self, spec: &EndpointSpec) -> Result<(), BouncerError> {
        config::validate(spec)?;
        self.layout.socket_path(spec.port)?;
        self.prepare_dirs()?;
        let admin_password = self.ensure_admin_password()?;
        for (path, contents) in [
            (
                &self.layout.userlist,
                config::render_userlist(spec, &admin_password),
            ),
            (&self.layout.ini, config::render_ini(spec, &self.layout)),
        ] {
            if fs::read_to_string(path).ok().as_deref() != Some(contents.as_str()) {
                files::write_private_unsynced(path, &contents, &self.user)?;
            }
        }
        Ok(())
    }

    /// Flushes the configuration files and their directory to disk.
    pub fn sync_config(&self) -> Result<(), BouncerError> {
        for path in [&self.layout.userlist, &self.layout.ini] {
            files::sync_file(path)?;
            if let Some(dir) = path.parent() {
                files::sync_dir(dir)?;
            }
        }
        Ok(())
    }

    fn prepare_dirs(&self) -> Result<(), BouncerError> {
        let parent = self
            .root
            .parent()
            .filter(|p| self.root.is_absolute() && !p.as_os_str().is_empty())
            .ok_or_else(|| {
                BouncerError::InvalidSpec(format!(
                    "endpoint root `{}` must be an absolute path below some directory",
                    self.root.display()
                ))
            })?;
        fs::create_dir_all(parent)
            .map_err(|e| BouncerError::io("creating directory", parent, e))?;
        if !self.user.can_reach(parent) {
            return Err(BouncerError::Unreachable {
                user: self.user.name.clone(),
                dir: parent.to_path_buf(),
            });
        }
        files::ensure_dir(&self.root, 0o700, &self.user)?;
        files::ensure_dir(&self.layout.run_dir, 0o700, &self.user)?;
        files::ensure_dir(&self.layout.log_dir, 0o700, &self.user)?;
        Ok(())
    }

    fn ensure_admin_password(&self) -> Result<String, BouncerError> {
        match self.admin_password() {
            Ok(p) => return Ok(p),
            Err(BouncerError::NotConfigured { .. }) => {}
            Err(e) => return Err(e),
        }
        let mut bytes = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let password = hex::encode(bytes);
        files::write_private(&self.layout.admin_password, &password, &self.user)?;
        Ok(password)
    }

    /// The pid of this endpoint's live PgBouncer, from its pidfile.
    pub fn pid(&self) -> Option<u32> {
        process::read_pidfile(&self.layout.pidfile)
            .filter(|pid| process::is_pgbouncer_of(*pid, &self.layout.ini))
    }

    /// Cheap, no connection.
    pub fn status(&self) -> EndpointStatus {
        let pid = self.pid();
        EndpointStatus {
            configured: self.layout.ini.is_file(),
            running: pid.is_some(),
            pid,
        }
    }

    /// Idempotent: starts PgBouncer daemonized (`pgbouncer -d`, as the OS
    /// user) and waits until its admin console answers. Ok at once if it is
    /// already running. A taken port is [`BouncerError::PortInUse`] (the
    /// half-started PgBouncer is stopped again).
    pub async fn start(&self) -> Result<(), BouncerError> {
        if self.pid().is_some() {
            return self.wait_ready(files::file_len(&self.layout.logfile)).await;
        }
        let port = self.port()?;
        self.layout.socket_path(port)?;
        self.admin_password()?;
        files::ensure_dir(&self.layout.run_dir, 0o700, &self.user)?;
        files::ensure_dir(&self.layout.log_dir, 0o700, &self.user)?;
        remove_file(&self.layout.pidfile)?;

        let offset = files::file_len(&self.layout.logfile);
        let mut cmd = process::command(&self.bin, &self.user, &self.root);
        cmd.arg("-d").arg(&self.layout.ini).kill_on_drop(false);
        tracing::info!(root = %self.root.display(), port, "starting pgbouncer");
        let out = process::run(cmd, SPAWN_TIMEOUT).await?;
        if !out.status.success() {
            let text = format!(
                "{}\n{}",
                pgfollow_postgres::process::output_text(&out),
                files::read_from(&self.layout.logfile, offset)
            );
            if is_port_conflict(&text, port) {
                return Err(BouncerError::PortInUse { port });
            }
            return Err(BouncerError::StartFailed {
                detail: format!("`pgbouncer -d` exited with {}: {}", out.status, tail(&text)),
            });
        }
        self.wait_ready(offset).await
    }

    /// Waits (bounded) until the admin console answers, watching the log
    /// (from byte `offset`) for listen failures.
    async fn wait_ready(&self, offset: u64) -> Result<(), BouncerError> {
        let port = self.port()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let log = files::read_from(&self.layout.logfile, offset);
            if let Some(line) = listen_failure(&log, port) {
                self.stop().await?;
                return Err(if line.contains("Address already in use") {
                    BouncerError::PortInUse { port }
                } else {
                    BouncerError::StartFailed {
                        detail: line.to_string(),
                    }
                });
            }
            if self.pid().is_some() && self.command_ok("SHOW VERSION").await {
                // Listening happens before the console answers: a TCP
                // failure is in the log by now.
                let log = files::read_from(&self.layout.logfile, offset);
                if listen_failure(&log, port).is_none() {
                    return Ok(());
                }
                continue;
            }
            if Instant::now() >= deadline {
                let detail = match self.pid() {
                    Some(pid) => format!(
                        "pgbouncer (pid {pid}) did not answer within {} s; its log:\n{}",
                        READY_TIMEOUT.as_secs(),
                        tail(&log)
                    ),
                    None => format!("pgbouncer is not running; its log:\n{}", tail(&log)),
                };
                return Err(BouncerError::StartFailed { detail });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn command_ok(&self, command: &str) -> bool {
        match self.admin().await {
            Ok(admin) => admin
                .command(command, crate::admin::COMMAND_TIMEOUT)
                .await
                .is_ok(),
            Err(_) => false,
        }
    }

    /// Idempotent: PgBouncer's immediate shutdown (connected clients are
    /// cut off; [`immediate_shutdown_signal`]), then SIGKILL if it does not
    /// exit in time.
    pub async fn stop(&self) -> Result<(), BouncerError> {
        let Some(pid) = self.pid() else {
            return remove_file(&self.layout.pidfile);
        };
        tracing::info!(root = %self.root.display(), pid, "stopping pgbouncer");
        let signal = immediate_shutdown_signal(&self.bin.version);
        process::signal(pid, signal)?;
        if !self.wait_gone(pid, STOP_TIMEOUT).await {
            tracing::warn!(pid, "pgbouncer ignored {signal}; sending SIGKILL");
            process::signal(pid, Signal::SIGKILL)?;
            if !self.wait_gone(pid, KILL_TIMEOUT).await {
                return Err(BouncerError::StopTimeout {
                    pid,
                    secs: (STOP_TIMEOUT + KILL_TIMEOUT).as_secs(),
                });
            }
        }
        remove_file(&self.layout.pidfile)
    }

    async fn wait_gone(&self, pid: u32, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            // A zombie has an empty command line: not ours any more.
            if !process::is_pgbouncer_of(pid, &self.layout.ini) {
                return true;
            }
            tokio::time::sleep(POLL).await;
        }
        false
    }

    /// Points the endpoint at `spec.target` without dropping clients:
    /// PAUSE (in-flight transactions finish, new ones wait; in session
    /// pooling it ends the sessions, see [`AdminSession::pause`]), rewrite
    /// the configuration, RELOAD, check that PgBouncer took it, RESUME. A
    /// change of pool mode ends the sessions too (KILL instead of PAUSE).
    /// Returns how long clients were held. From "no target" there is
    /// nothing to pause; to "no target" the database disappears and its
    /// waiting clients get an error. `listen_addr`/`port` cannot change
    /// here (that needs a restart). On failure after PAUSE the database is
    /// resumed before the error is returned.
    pub async fn retarget(&self, spec: &EndpointSpec) -> Result<Duration, BouncerError> {
        config::validate(spec)?;
        let listen = (self.setting("listen_addr")?, self.setting("listen_port")?);
        if listen != (Some(spec.listen_addr.clone()), Some(spec.port.to_string())) {
            return Err(BouncerError::InvalidSpec(format!(
                "retarget cannot change where the endpoint listens (now {}:{}): \
                 write the configuration, then stop and start it",
                listen.0.unwrap_or_default(),
                listen.1.unwrap_or_default()
            )));
        }
        let mode = self.pool_mode()?;
        let admin = self.admin().await?;
        let had_db = admin.database(&spec.dbname).await?.is_some();
        let started = Instant::now();
        if had_db && mode != spec.pool_mode {
            // Sessions made under the old mode end; their clients reconnect
            // (and wait until RESUME) into the new one.
            admin.kill_clients(&spec.dbname).await?;
        } else if had_db {
            admin.pause(&spec.dbname).await?;
        }
        let paused = started.elapsed();
        let result = self.apply_and_check(&admin, spec).await;
        let resumed = if spec.target.is_some() || result.is_err() {
            admin.resume(&spec.dbname).await
        } else {
            Ok(())
        };
        let held = started.elapsed();
        result?;
        resumed?;
        tracing::info!(
            root = %self.root.display(),
            dbname = %spec.dbname,
            pause_ms = paused.as_millis() as u64,
            held_ms = held.as_millis() as u64,
            "endpoint retargeted"
        );
        Ok(held)
    }

    async fn apply_and_check(
        &self,
        admin: &AdminSession<'_>,
        spec: &EndpointSpec,
    ) -> Result<(), BouncerError> {
        self.write_config(spec)?;
        admin.reload().await?;
        let seen = admin.database(&spec.dbname).await?;
        match (&spec.target, seen) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(BouncerError::NotApplied {
                detail: format!("{:?} is still configured", spec.dbname),
            }),
            (Some(_), None) => Err(BouncerError::NotApplied {
                detail: format!("{:?} is missing", spec.dbname),
            }),
            (Some(t), Some(db)) => {
                if db.host.as_deref() == Some(t.host.as_str())
                    && db.port == Some(t.port)
                    && db.database == t.dbname
                {
                    Ok(())
                } else {
                    Err(BouncerError::NotApplied {
                        detail: format!(
                            "{:?} points at {:?}:{:?}/{} instead of {}:{}/{}",
                            spec.dbname, db.host, db.port, db.database, t.host, t.port, t.dbname
                        ),
                    })
                }
            }
        }
    }

    /// Stops PgBouncer and removes the whole root directory. Idempotent.
    pub async fn destroy(&self) -> Result<(), BouncerError> {
        self.stop().await?;
        tracing::info!(root = %self.root.display(), "destroying endpoint");
        match fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BouncerError::io("removing", &self.root, e)),
        }
    }
}

/// The log line saying PgBouncer could not listen on its TCP `port`
/// (it keeps running on the Unix socket alone, so this is the only sign).
pub fn listen_failure(log: &str, port: u16) -> Option<&str> {
    let needle = format!(":{port}: ");
    log.lines()
        .find(|l| l.contains("cannot listen on") && l.contains(&needle))
}

/// Whether `pgbouncer`'s output or log says the port was taken.
pub fn is_port_conflict(text: &str, port: u16) -> bool {
    listen_failure(text, port).is_some_and(|l| l.contains("Address already in use"))
}

fn tail(text: &str) -> String {
    let t = files::tail_lines(text, LOG_TAIL_LINES);
    if t.is_empty() {
        "(nothing logged)".to_string()
    } else {
        t
    }
}

fn remove_file(path: &Path) -> Result<(), BouncerError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BouncerError::io("removing", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-11-25 09:12:53.985 UTC [5271] WARNING cannot listen on 127.0.0.1:16434: bind(): Address already in use\n\
                       2026-11-25 09:12:53.985 UTC [5271] LOG listening on unix:/tmp/pgbx/run/.s.PGSQL.16434\n";

    #[test]
    fn finds_a_port_conflict_for_our_port_only() {
        assert!(is_port_conflict(LOG, 16434));
        assert!(!is_port_conflict(LOG, 1643));
        assert!(!is_port_conflict(
            "LOG listening on 127.0.0.1:16434\n",
            16434
        ));
    }

    #[test]
    fn other_listen_failures_are_not_port_conflicts() {
        let log =
            "WARNING cannot listen on 10.9.9.9:6500: bind(): Cannot assign requested address\n";
        assert!(listen_failure(log, 6500).is_some());
        assert!(!is_port_conflict(log, 6500));
    }
}
