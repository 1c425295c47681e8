//! The leader under test, seen from the host as an operator sees it: its
//! cluster directory under the server's data directory (found by its port,
//! as the API shows no cluster ids), superuser SQL over the agent's own Unix
//! socket (`local all all trust`; the socket directory is the postgres
//! user's, which root may enter), and the one temporary `pg_hba.conf` line
//! the hand-made standby needs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgfollow_types::Lsn;
use tokio_postgres::{Client, NoTls};

/// A database pgfollow runs, located on disk.
#[derive(Debug, Clone)]
pub struct ClusterDir {
    pub root: PathBuf,
    pub port: u16,
}

impl ClusterDir {
    /// The cluster under `data_dir/clusters` whose `pgfollow.conf` says
    /// `port = PORT`.
    pub fn find(data_dir: &Path, port: u16) -> anyhow::Result<Self> {
        let clusters = data_dir.join("clusters");
        let want = format!("port = {port}");
        let entries = std::fs::read_dir(&clusters)
            .with_context(|| format!("reading {}", clusters.display()))?;
        for entry in entries.flatten() {
            let conf = std::fs::read_to_string(entry.path().join("pgdata/pgfollow.conf"))
                .unwrap_or_default();
            if conf.lines().any(|l| l.trim() == want) {
                return Ok(Self {
                    root: entry.path(),
                    port,
                });
            }
        }
        bail!(
            "no cluster under {} listens on port {port}",
            clusters.display()
        )
    }

    pub fn pgdata(&self) -> PathBuf {
        self.root.join("pgdata")
    }

    /// The directory of its Unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// The postmaster's pid, from `postmaster.pid`.
    pub fn postmaster_pid(&self) -> anyhow::Result<i32> {
        let path = self.pgdata().join("postmaster.pid");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("{} has no pid", path.display()))
    }

    /// A superuser connection over its Unix socket.
    pub async fn superuser(&self) -> anyhow::Result<Client> {
        connect_socket(&self.socket_dir(), self.port).await
    }
}

/// Connects as `postgres` to the cluster whose socket is in `socket_dir`.
pub async fn connect_socket(socket_dir: &Path, port: u16) -> anyhow::Result<Client> {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(socket_dir)
        .port(port)
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(10));
    let (client, connection) = config
        .connect(NoTls)
        .await
        .with_context(|| format!("connecting as postgres over {}", socket_dir.display()))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// One text value of a one-row query.
pub async fn query_text(client: &Client, sql: &str) -> anyhow::Result<Option<String>> {
    let row = client
        .query_one(sql, &[])
        .await
        .with_context(|| format!("running {sql}"))?;
    row.try_get(0).with_context(|| format!("reading {sql}"))
}

/// The leader's WAL flush position.
pub async fn flush_lsn(leader: &Client) -> anyhow::Result<Lsn> {
    let text = query_text(leader, "SELECT pg_current_wal_flush_lsn()::text")
        .await?
        .context("no flush LSN")?;
    text.parse().context("parsing the flush LSN")
}

/// Replication slots and walsenders still on the leader.
pub async fn replication_leftovers(leader: &Client) -> anyhow::Result<(i64, i64)> {
    let row = leader
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots), \
             (SELECT count(*) FROM pg_stat_replication)",
            &[],
        )
        .await
        .context("counting slots and walsenders")?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// A line appended to the leader's `pg_hba.conf` for as long as this lives
/// (it is removed, and the leader reloaded, on drop). pgfollow re-renders
/// the file when it reconfigures the leader, so [`HbaLine::ensure`] puts it
/// back when it is gone.
pub struct HbaLine {
    cluster: ClusterDir,
    line: String,
}

impl HbaLine {
    pub fn new(cluster: ClusterDir, line: &str) -> Self {
        Self {
            cluster,
            line: line.to_string(),
        }
    }

    fn path(&self) -> PathBuf {
        self.cluster.pgdata().join("pg_hba.conf")
    }

    /// Appends the line unless it is there, and reloads the leader. True
    /// when it had to be (re)added.
    pub async fn ensure(&self) -> anyhow::Result<bool> {
        let path = self.path();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if text.lines().any(|l| l == self.line) {
            return Ok(false);
        }
        let mut new = text;
        if !new.ends_with('\n') {
            new.push('\n');
        }
        new.push_str(&self.line);
        new.push('\n');
        std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
        self.reload()?;
        // The postmaster rereads pg_hba.conf as it handles SIGHUP.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(true)
    }

    fn reload(&self) -> anyhow::Result<()> {
        let pid = self.cluster.postmaster_pid()?;
        kill(Pid::from_raw(pid), Signal::SIGHUP).context("reloading the leader")
    }
}

impl Drop for HbaLine {
    fn drop(&mut self) {
        let path = self.path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        if !text.lines().any(|l| l == self.line) {
            return;
        }
        let kept: String = text
            .lines()
            .filter(|l| *l != self.line)
            .map(|l| format!("{l}\n"))
            .collect();
        if std::fs::write(&path, kept).is_ok() {
            let _ = self.reload();
        }
    }
}
