//! Helpers for the integration tests: real PostgreSQL clusters (through
//! pgfollow-postgres) and real PgBouncer endpoints in one temp dir per
//! test, free ports, logins through an endpoint, and a guard whose `Drop`
//! kills every process it started even when the test fails.

// Each test uses a different part of this module.
#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use pgfollow_pgbouncer::{BouncerBinary, BouncerError, Endpoint, EndpointSpec, Target};
use pgfollow_postgres::{Cluster, OsUser, PgBinaries, PgError};
use pgfollow_types::agent::{ClusterSpec, PgSettings, RoleSecret};
use tempfile::TempDir;

/// The app's role and password, the same on every cluster (as after a
/// promotion); quotes and a backslash exercise the userlist's quoting.
pub const APP_USER: &str = "app_owner";
pub const APP_PW: &str = "own'er\\pw \"1\"";
/// A `-` exercises quoting in admin commands.
pub const DB: &str = "app-db";

pub fn pg_binaries() -> Arc<PgBinaries> {
    Arc::new(PgBinaries::discover(None).expect("PostgreSQL must be installed for these tests"))
}

pub fn bouncer_binary() -> Arc<BouncerBinary> {
    Arc::new(
        BouncerBinary::discover(None)
            .expect("pgbouncer must be installed (apt-get install pgbouncer)"),
    )
}

pub fn os_user() -> Arc<OsUser> {
    Arc::new(OsUser::resolve("postgres").expect("OS user postgres must exist"))
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    l.local_addr().expect("local address").port()
}

fn cluster_spec(id: &str, port: u16) -> ClusterSpec {
    ClusterSpec {
        id: id.into(),
        port,
        listen_address: "127.0.0.1".into(),
        settings: PgSettings {
            max_connections: 20,
            shared_buffers_mb: 16,
            work_mem_mb: 4,
            maintenance_work_mem_mb: 16,
            effective_cache_size_mb: 64,
            max_slot_wal_keep_mb: 256,
        },
        database: DB.into(),
        owner: RoleSecret {
            name: APP_USER.into(),
            password: APP_PW.into(),
        },
        replication: RoleSecret {
            name: "app_repl".into(),
            password: "repl-pw".into(),
        },
        upstream: None,
        synchronous_standby: None,
        pg_major: None,
    }
}

pub fn endpoint_spec(port: u16, target: Option<Target>) -> EndpointSpec {
    EndpointSpec {
        id: "app".into(),
        listen_addr: "127.0.0.1".into(),
        port,
        dbname: DB.into(),
        target,
        user: APP_USER.into(),
        password: APP_PW.into(),
        pool_size: 4,
        max_client_conn: 50,
        pool_mode: pgfollow_pgbouncer::PoolMode::Transaction,
        so_reuseport: false,
    }
}

/// Everything one test starts, in one temp dir (0711, so the OS user can
/// traverse it). Dropping it kills the endpoints and stops the clusters.
pub struct World {
    pub clusters: Vec<(Cluster, ClusterSpec)>,
    pub endpoints: Vec<Endpoint>,
    // Dropped after `Drop::drop` has stopped everything.
    dir: TempDir,
}

impl World {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pgb")
            .tempdir()
            .expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod temp dir");
        Self {
            clusters: Vec::new(),
            endpoints: Vec::new(),
            dir,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A bootstrapped cluster with `marker(v)` = `marker` and an empty
    /// `writes(n)`; returns its index in `clusters`.
    pub async fn cluster(&mut self, id: &str, marker: &str) -> usize {
        let cluster = Cluster::new(self.path(id), pg_binaries(), os_user());
        let mut spec = cluster_spec(id, free_port());
        self.clusters.push((cluster.clone(), spec.clone()));
        let idx = self.clusters.len() - 1;
        cluster.initialize(&spec).await.expect("initialize");
        for attempt in 0.. {
            match cluster.start().await {
                Ok(()) => break,
                Err(PgError::PortInUse { .. }) if attempt < 3 => {
                    spec.port = free_port();
                    cluster.write_config(&spec).expect("write_config");
                }
                Err(e) => panic!("starting postgres failed: {e}"),
            }
        }
        self.clusters[idx].1 = spec.clone();
        cluster.bootstrap(&spec).await.expect("bootstrap");
        let owner = connect("127.0.0.1", spec.port)
            .await
            .expect("owner login to postgres");
        owner
            .simple_query(&format!(
                "CREATE TABLE marker(v text); INSERT INTO marker VALUES ('{marker}');
                 CREATE TABLE writes(n int PRIMARY KEY)"
            ))
            .await
            .expect("creating test tables");
        idx
    }

    pub fn target(&self, idx: usize) -> Target {
        Target {
            host: "127.0.0.1".into(),
            port: self.clusters[idx].1.port,
            dbname: DB.into(),
        }
    }

    /// An endpoint under the temp dir, configured for `target` and started
    /// (on another free port if a parallel test took this one meanwhile).
    pub async fn endpoint(
        &mut self,
        name: &str,
        target: Option<Target>,
    ) -> (Endpoint, EndpointSpec) {
        let endpoint = Endpoint::new(self.path(name), bouncer_binary(), os_user());
        self.endpoints.push(endpoint.clone());
        let mut spec = endpoint_spec(free_port(), target);
        for attempt in 0.. {
            endpoint.write_config(&spec).expect("write_config");
            match endpoint.start().await {
                Ok(()) => break,
                Err(BouncerError::PortInUse { .. }) if attempt < 3 => spec.port = free_port(),
                Err(e) => panic!("starting pgbouncer failed: {e}"),
            }
        }
        (endpoint, spec)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for e in &self.endpoints {
            if let Some(pid) = e.pid() {
                let _ = pgfollow_pgbouncer::process::signal(pid, Signal::SIGKILL);
            }
        }
        for (cluster, _) in &self.clusters {
            stop_immediately(cluster);
        }
    }
}

/// Synchronous `pg_ctl stop -m immediate`, for use in `Drop`.
fn stop_immediately(cluster: &Cluster) {
    let pgdata = cluster.pgdata();
    if !pgdata.join("postmaster.pid").exists() {
        return;
    }
    let user = cluster.user();
    let mut cmd = std::process::Command::new(cluster.binaries().tool("pg_ctl"));
    cmd.args(["stop", "-m", "immediate", "-w", "-t", "30", "-s", "-D"])
        .arg(&pgdata)
        .current_dir("/");
    if user.needs_switch() {
        cmd.uid(user.uid).gid(user.gid);
    }
    let _ = cmd.status();
}

/// The app's password login over TCP (to PostgreSQL or to an endpoint),
/// bounded.
pub async fn connect(host: &str, port: u16) -> Result<tokio_postgres::Client, String> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(host)
        .port(port)
        .user(APP_USER)
        .password(APP_PW)
        .dbname(DB)
        .connect_timeout(Duration::from_secs(5));
    let (client, conn) =
        tokio::time::timeout(Duration::from_secs(10), cfg.connect(tokio_postgres::NoTls))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| pgfollow_pgbouncer::error::pg_detail(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// `SELECT v FROM marker` over the simple protocol.
pub async fn marker(client: &tokio_postgres::Client) -> String {
    let rows = client
        .simple_query("SELECT v FROM marker")
        .await
        .expect("reading the marker");
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .expect("a marker row")
}
