//! The baseline: a standby made by hand the way the PostgreSQL manual
//! describes, with plain `pg_basebackup -R` of the same leader (streaming
//! its WAL, fast checkpoint, over TCP on loopback with a password, as
//! pgfollow's followers connect), its own port and socket directory, then
//! `pg_ctl start`, counted as ready once it streams and has replayed
//! everything the leader had flushed. No slot, no `hot_standby_feedback`:
//! what a person gets from the manual's recipe.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use pgfollow_types::Lsn;
use tokio_postgres::Client;

use crate::leader::{connect_socket, flush_lsn, ClusterDir};
use crate::tools::{pg_command, pg_os_user, run};

/// The role the baseline replicates as, created by the benchmark.
pub const REPLICATION_ROLE: &str = "bench_repl";

/// How long a base backup, a start or catching up may take.
const STEP_LIMIT: Duration = Duration::from_secs(600);
/// How often readiness is polled (as `pg:wait --interval-ms 100`).
const POLL: Duration = Duration::from_millis(100);

/// A running (or stopped) hand-made standby; stopped and removed on drop.
pub struct HandMadeStandby {
    dir: tempfile::TempDir,
    port: u16,
    running: bool,
}

impl HandMadeStandby {
    /// Makes a standby of `leader` as `REPLICATION_ROLE` with `password`,
    /// and returns it with the time from the start of `pg_basebackup` until
    /// it streams and has caught up.
    pub async fn create(
        leader: &ClusterDir,
        leader_sql: &Client,
        password: &str,
    ) -> anyhow::Result<(Self, Duration)> {
        let dir = tempfile::Builder::new()
            .prefix("pgfollow-bench-standby-")
            .tempdir_in("/tmp")
            .context("creating the standby's directory")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        std::fs::create_dir(dir.path().join("run"))?;
        if let Some((uid, gid)) = pg_os_user()? {
            for p in [dir.path().to_path_buf(), dir.path().join("run")] {
                nix::unistd::chown(&p, Some(uid.into()), Some(gid.into()))
                    .with_context(|| format!("chown {}", p.display()))?;
            }
        }
        let mut standby = Self {
            port: free_port()?,
            dir,
            running: false,
        };
        let started = Instant::now();
        let mut backup = pg_command("pg_basebackup", standby.dir.path())?;
        backup
            .env("PGPASSWORD", password)
            .env("PGAPPNAME", "bench_standby")
            .args(["-h", "127.0.0.1", "-p", &leader.port.to_string()])
            .args(["-U", REPLICATION_ROLE, "-D"])
            .arg(standby.pgdata())
            .args(["-X", "stream", "-R", "--checkpoint=fast", "--no-password"]);
        run(backup, "pg_basebackup -R", STEP_LIMIT).await?;
        standby.configure()?;
        standby.start().await?;
        standby.wait_caught_up(leader_sql).await?;
        Ok((standby, started.elapsed()))
    }

    fn pgdata(&self) -> PathBuf {
        self.dir.path().join("pgdata")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// Its own port and socket directory: the copied configuration has
    /// the leader's, and `postgresql.auto.conf` is read last.
    fn configure(&self) -> anyhow::Result<()> {
        let path = self.pgdata().join("postgresql.auto.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(
            f,
            "port = {}\nunix_socket_directories = '{}'\ncluster_name = 'bench_standby'",
            self.port,
            self.socket_dir().display()
        )
        .with_context(|| format!("writing {}", path.display()))
    }

    async fn start(&mut self) -> anyhow::Result<()> {
        let mut cmd = pg_command("pg_ctl", self.dir.path())?;
        cmd.arg("-D")
            .arg(self.pgdata())
            .arg("-l")
            .arg(self.dir.path().join("postgres.log"))
            .args(["-w", "-t", "600", "start"]);
        self.running = true;
        run(cmd, "pg_ctl start (hand-made standby)", STEP_LIMIT).await?;
        Ok(())
    }

    /// Polls until it streams and has replayed the leader's flush position.
    async fn wait_caught_up(&self, leader_sql: &Client) -> anyhow::Result<()> {
        let me = connect_socket(&self.socket_dir(), self.port).await?;
        let deadline = Instant::now() + STEP_LIMIT;
        loop {
            let target = flush_lsn(leader_sql).await?;
            let row = me
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'), \
                     pg_last_wal_replay_lsn()::text",
                    &[],
                )
                .await
                .context("reading the hand-made standby's replay position")?;
            let streaming: bool = row.try_get(0)?;
            let replayed: Option<String> = row.try_get(1)?;
            let replayed: Option<Lsn> = replayed.map(|t| t.parse()).transpose()?;
            if streaming && replayed.is_some_and(|r| r >= target) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the hand-made standby did not catch up within {STEP_LIMIT:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops it (fast shutdown), keeping nothing running.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if !self.running {
            return Ok(());
        }
        let mut cmd = pg_command("pg_ctl", self.dir.path())?;
        cmd.arg("-D")
            .arg(self.pgdata())
            .args(["-w", "-t", "120", "-m", "fast", "stop"]);
        run(cmd, "pg_ctl stop (hand-made standby)", STEP_LIMIT).await?;
        self.running = false;
        Ok(())
    }
}

impl Drop for HandMadeStandby {
    fn drop(&mut self) {
        if self.running {
            stop_now(self.dir.path(), &self.pgdata());
        }
    }
}

/// Immediate shutdown, synchronously (from `Drop`).
fn stop_now(cwd: &Path, pgdata: &Path) {
    let Ok(cmd) = pg_command("pg_ctl", cwd) else {
        return;
    };
    let mut cmd = cmd.into_std();
    let _ = cmd
        .arg("-D")
        .arg(pgdata)
        .args(["-w", "-t", "30", "-m", "immediate", "stop"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// A loopback port nobody listens on now.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}
