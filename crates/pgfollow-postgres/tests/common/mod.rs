//! Helpers shared by the integration tests: binaries, the OS user, free
//! ports, a spec, temp dirs the OS user can reach, starting on a free port,
//! logging in over TCP, stopping postgres from `Drop`, and bounded polling.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfollow_postgres::{Cluster, OsUser, PgBinaries, PgError};
use pgfollow_types::agent::{ClusterSpec, PgSettings, RoleSecret};
use tempfile::TempDir;

pub const OWNER_PW: &str = "own'er\\pw \"1\"";

pub fn binaries() -> Arc<PgBinaries> {
    Arc::new(PgBinaries::discover(None).expect("PostgreSQL must be installed for these tests"))
}

pub fn os_user() -> Arc<OsUser> {
    Arc::new(OsUser::resolve("postgres").expect("OS user postgres must exist"))
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn spec(port: u16) -> ClusterSpec {
    ClusterSpec {
        id: "t1".into(),
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
        database: "appdb".into(),
        owner: RoleSecret {
            name: "app_owner".into(),
            password: OWNER_PW.into(),
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

/// Synchronous `pg_ctl stop -m immediate`, for use in `Drop`.
pub fn stop_immediately(cluster: &Cluster) {
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

/// Polls `check` every 50 ms for at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A temp dir (mode 0711, so the OS user can traverse it) whose guard
/// removes it.
pub fn temp_dir() -> TempDir {
    let dir = tempfile::Builder::new().prefix("pgf").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

/// Starts `cluster`, moving it to another free port (and rewriting its
/// configuration) if a parallel test took this one meanwhile.
pub async fn start_on_free_port(cluster: &Cluster, spec: &mut ClusterSpec) {
    for attempt in 0.. {
        match cluster.start().await {
            Ok(()) => return,
            Err(PgError::PortInUse { .. }) if attempt < 3 => {
                spec.port = free_port();
                cluster.write_config(spec).unwrap();
            }
            Err(e) => panic!("start failed: {e}"),
        }
    }
}

/// A password login over TCP on 127.0.0.1.
pub async fn login(
    port: u16,
    dbname: &str,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname(dbname)
        .connect_timeout(Duration::from_secs(5));
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}
