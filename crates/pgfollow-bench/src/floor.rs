//! The hand-made floor of the changeover benchmark: plain PostgreSQL
//! streaming replication behind a plain PgBouncer (transaction pooling),
//! with no control plane, switched over by hand the way the issue
//! describes it: `PAUSE`, wait until the standby has replayed the leader's
//! flushed WAL, `SELECT pg_promote()` (which waits, polling every 100 ms),
//! point PgBouncer at the standby (new ini, `RELOAD`), `RESUME`.
//!
//! The clusters and the PgBouncer are run with pgfollow-postgres and
//! pgfollow-pgbouncer, the crates the agent itself uses to run them, so
//! the floor's PostgreSQL and PgBouncer are configured exactly like
//! pgfollow's (same settings, same pool mode and pool size), but nothing of
//! pgfollow decides or waits: the steps are the ones above, in order.
//! Everything lives in one temporary directory; dropping [`Floor`] kills
//! PgBouncer and stops every postmaster (immediate), also on Ctrl-C.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use pgfollow_pgbouncer::{BouncerBinary, Endpoint, EndpointSpec, Target};
use pgfollow_postgres::{Cluster, OsUser, PgBinaries, StopMode};
use pgfollow_types::agent::{ClusterSpec, PgSettings, RoleSecret, Upstream};
use tokio_postgres::SimpleQueryMessage;

use crate::writers;

const DB: &str = "floordb";
const OWNER: &str = "floor_owner";
const REPLICATION: &str = "floor_repl";
/// As pgfollow's endpoint for a standard-0 database (connection limit 120).
const POOL_SIZE: u32 = 100;
/// How long the standby may take to replay the leader's flushed WAL.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(10);
/// How long a new standby may take to stream.
const STREAM_LIMIT: Duration = Duration::from_secs(60);

/// A leader, the standby being switched to, and the PgBouncer in front.
pub struct Floor {
    bin: Arc<PgBinaries>,
    user: Arc<OsUser>,
    owner_password: String,
    /// Every cluster made so far (the current leader is `leader`).
    clusters: Vec<(Cluster, ClusterSpec)>,
    leader: usize,
    endpoint: Endpoint,
    espec: EndpointSpec,
    // Last: removed after `Drop::drop` stopped everything in it.
    dir: tempfile::TempDir,
}

/// What one hand-made switch took, step by step.
#[derive(Debug)]
pub struct Switch {
    pub pause: Duration,
    pub catch_up: Duration,
    pub promote: Duration,
    pub retarget: Duration,
    pub resume: Duration,
}

impl Switch {
    /// From sending PAUSE to RESUME returning.
    pub fn held(&self) -> Duration {
        self.pause + self.catch_up + self.promote + self.retarget + self.resume
    }
}

impl Floor {
    /// A leader with the writers' table, and a PgBouncer routing to it.
    pub async fn new() -> anyhow::Result<Self> {
        let bin = Arc::new(PgBinaries::discover(None).context("finding PostgreSQL")?);
        let user = Arc::new(OsUser::resolve("postgres").context("the postgres OS user")?);
        let bouncer = Arc::new(BouncerBinary::discover(None).context("finding pgbouncer")?);
        let dir = tempfile::Builder::new()
            .prefix("pgfollow-floor-")
            .tempdir_in("/tmp")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
        let owner_password = hex(16);
        let endpoint = Endpoint::new(dir.path().join("pgbouncer"), bouncer, user.clone());
        let espec = EndpointSpec {
            id: "floor".into(),
            listen_addr: "127.0.0.1".into(),
            port: free_port()?,
            dbname: DB.into(),
            target: None,
            user: OWNER.into(),
            password: owner_password.clone(),
            pool_size: POOL_SIZE,
            max_client_conn: 1000,
            pool_mode: pgfollow_pgbouncer::PoolMode::Transaction,
            so_reuseport: false,
        };
        let mut floor = Self {
            bin,
            user,
            owner_password,
            clusters: Vec::new(),
            leader: 0,
            endpoint,
            espec,
            dir,
        };
        let spec = floor.cluster_spec("leader-0", None)?;
        let cluster = floor.new_cluster(&spec);
        cluster.initialize(&spec).await?;
        cluster.start().await?;
        cluster.bootstrap(&spec).await?;
        floor.clusters.push((cluster, spec));
        floor.espec.target = Some(floor.target(0));
        floor.endpoint.write_config(&floor.espec)?;
        floor.endpoint.start().await.context("starting pgbouncer")?;
        writers::create_table(&floor.direct_url(0)).await?;
        Ok(floor)
    }

    fn cluster_spec(&self, id: &str, upstream: Option<Upstream>) -> anyhow::Result<ClusterSpec> {
        Ok(ClusterSpec {
            id: id.into(),
            port: free_port()?,
            listen_address: "127.0.0.1".into(),
            settings: PgSettings {
                max_connections: 120,
                shared_buffers_mb: 128,
                work_mem_mb: 4,
                maintenance_work_mem_mb: 64,
                effective_cache_size_mb: 512,
                max_slot_wal_keep_mb: 1024,
            },
            database: DB.into(),
            owner: RoleSecret {
                name: OWNER.into(),
                password: self.owner_password.clone(),
            },
            replication: RoleSecret {
                name: REPLICATION.into(),
                password: "floor-replication".into(),
            },
            upstream,
            synchronous_standby: None,
            pg_major: None,
        })
    }

    fn new_cluster(&self, spec: &ClusterSpec) -> Cluster {
        Cluster::new(
            self.dir.path().join(&spec.id),
            self.bin.clone(),
            self.user.clone(),
        )
    }

    fn target(&self, idx: usize) -> Target {
        Target {
            host: "127.0.0.1".into(),
            port: self.clusters[idx].1.port,
            dbname: DB.into(),
        }
    }

    /// The app's login straight to cluster `idx`.
    pub fn direct_url(&self, idx: usize) -> String {
        let port = self.clusters[idx].1.port;
        format!(
            "postgres://{OWNER}:{}@127.0.0.1:{port}/{DB}",
            self.owner_password
        )
    }

    /// The app's login through PgBouncer (its `DATABASE_URL`).
    pub fn endpoint_url(&self) -> String {
        format!(
            "postgres://{OWNER}:{}@127.0.0.1:{}/{DB}",
            self.owner_password, self.espec.port
        )
    }

    /// A standby of the current leader (slot, `pg_basebackup`, start), once
    /// it streams; returns its index.
    pub async fn add_standby(&mut self) -> anyhow::Result<usize> {
        let n = self.clusters.len();
        let (leader, lspec) = &self.clusters[self.leader];
        let slot = format!("standby_{n}");
        leader.create_slot(&slot).await?;
        let id = format!("standby-{n}");
        let upstream = Upstream {
            host: "127.0.0.1".into(),
            port: lspec.port,
            user: REPLICATION.into(),
            password: lspec.replication.password.clone(),
            slot,
            application_name: id.clone(),
        };
        let spec = self.cluster_spec(&id, Some(upstream))?;
        let cluster = self.new_cluster(&spec);
        self.clusters.push((cluster.clone(), spec.clone()));
        cluster
            .basebackup(&spec, |_, _| {})
            .await
            .context("pg_basebackup")?;
        cluster.start().await?;
        let deadline = Instant::now() + STREAM_LIMIT;
        while !cluster.replay_status().await?.streaming {
            if Instant::now() >= deadline {
                bail!("the standby does not stream after {STREAM_LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(n)
    }

    /// The hand-made switch to standby `to`; then stops the old leader.
    pub async fn switch_to(&mut self, to: usize) -> anyhow::Result<Switch> {
        let leader_sql = self.clusters[self.leader].0.connect("postgres").await?;
        let standby_sql = self.clusters[to].0.connect("postgres").await?;
        let admin = self.endpoint.admin().await?;
        let t0 = Instant::now();
        admin.pause(DB).await?;
        let t1 = Instant::now();
        let flushed = text(&leader_sql, "SELECT pg_current_wal_flush_lsn()::text").await?;
        let caught_up = format!("SELECT pg_last_wal_replay_lsn() >= '{flushed}'::pg_lsn");
        while text(&standby_sql, &caught_up).await? != "t" {
            if t1.elapsed() >= CATCH_UP_LIMIT {
                admin.resume(DB).await?;
                bail!("the standby did not replay up to {flushed} within {CATCH_UP_LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let t2 = Instant::now();
        text(&standby_sql, "SELECT pg_promote()").await?;
        let t3 = Instant::now();
        self.espec.target = Some(self.target(to));
        self.endpoint.write_config(&self.espec)?;
        admin.reload().await?;
        let t4 = Instant::now();
        admin.resume(DB).await?;
        let t5 = Instant::now();
        let old = std::mem::replace(&mut self.leader, to);
        self.clusters[old].0.stop(StopMode::Immediate).await?;
        Ok(Switch {
            pause: t1 - t0,
            catch_up: t2 - t1,
            promote: t3 - t2,
            retarget: t4 - t3,
            resume: t5 - t4,
        })
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        if let Some(pid) = self.endpoint.pid() {
            let _ = pgfollow_pgbouncer::process::signal(pid, Signal::SIGKILL);
        }
        for (cluster, _) in &self.clusters {
            stop_immediately(cluster);
        }
    }
}

/// Synchronous `pg_ctl stop -m immediate`, for `Drop`.
fn stop_immediately(cluster: &Cluster) {
    let pgdata = cluster.pgdata();
    if !pgdata.join("postmaster.pid").exists() {
        return;
    }
    let user = cluster.user();
    let mut cmd = std::process::Command::new(cluster.binaries().tool("pg_ctl"));
    cmd.args(["stop", "-m", "immediate", "-w", "-t", "30", "-s", "-D"])
        .arg(&pgdata)
        .current_dir("/")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if user.needs_switch() {
        cmd.uid(user.uid).gid(user.gid);
    }
    let _ = cmd.status();
}

/// The first column of the first row, as text.
async fn text(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<String> {
    let rows = client
        .simple_query(sql)
        .await
        .with_context(|| sql.to_string())?;
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .with_context(|| format!("{sql}: no row"))
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// `bytes` random bytes as hex.
fn hex(bytes: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect()
}
