//! Integration tests of one cluster's lifecycle against real PostgreSQL.
//! Each test has its own temp directory and port; a guard stops postgres
//! (immediate) and removes the directory even when the test fails.

// A failed unwrap fails the test, which is what it should do; clippy's
// test exemption does not reach helpers outside `#[test]` functions.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgfollow_postgres::{Cluster, PgBinaries, PgError, StopMode};
use pgfollow_types::agent::{ClusterSpec, RoleSecret};
use tempfile::TempDir;

/// A cluster in its own temp dir; dropping it stops postgres at once and
/// removes the dir.
struct TestCluster {
    cluster: Cluster,
    spec: ClusterSpec,
    // Dropped after `Drop::drop` has stopped postgres.
    dir: TempDir,
}

impl TestCluster {
    fn new() -> Self {
        let dir = temp_dir();
        let cluster = Cluster::new(dir.path().join("c"), binaries(), os_user());
        Self {
            cluster,
            spec: spec(free_port()),
            dir,
        }
    }

    /// initialize + start (on another free port if this one got taken
    /// meanwhile by a parallel test) + bootstrap.
    async fn up(&mut self) {
        self.cluster.initialize(&self.spec).await.unwrap();
        start_on_free_port(&self.cluster, &mut self.spec).await;
        self.cluster.bootstrap(&self.spec).await.unwrap();
    }

    async fn login(
        &self,
        user: &str,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        login(self.spec.port, &self.spec.database, user, password).await
    }

    async fn owner(&self) -> tokio_postgres::Client {
        self.login(&self.spec.owner.name, &self.spec.owner.password)
            .await
            .expect("owner login")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        stop_immediately(&self.cluster);
        let _ = &self.dir;
    }
}

/// Whether `pid` is a live (not zombie) process.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

#[tokio::test]
async fn discovery_finds_a_complete_installation() {
    let bin = binaries();
    for tool in ["initdb", "pg_ctl", "postgres", "pg_basebackup"] {
        assert!(
            bin.tool(tool).is_file(),
            "{tool} in {}",
            bin.bindir.display()
        );
    }
    assert!(bin.major >= 10, "{bin:?}");
    assert!(
        bin.version.starts_with(&format!("{}.", bin.major)),
        "{bin:?}"
    );
    let again = PgBinaries::discover(Some(&bin.bindir)).unwrap();
    assert_eq!(again, *bin);
}

#[tokio::test]
async fn owner_logs_in_and_a_new_password_replaces_the_old() {
    let mut t = TestCluster::new();
    t.up().await;
    // Bootstrap twice: idempotent.
    t.cluster.bootstrap(&t.spec).await.unwrap();

    let st = t.cluster.status("t1");
    assert!(st.initialized && st.running && st.pid.is_some(), "{st:?}");

    let c = t.owner().await;
    let who: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "app_owner");
    assert!(
        t.login("app_owner", "wrong").await.is_err(),
        "wrong password must fail"
    );
    assert!(t.login("postgres", "").await.is_err(), "no trust over TCP");

    let new = RoleSecret {
        name: "app_owner".into(),
        password: "n3w-secret".into(),
    };
    t.cluster.set_password(&new).await.unwrap();
    assert!(
        t.login("app_owner", OWNER_PW).await.is_err(),
        "old password must fail"
    );
    t.login("app_owner", "n3w-secret")
        .await
        .expect("new password works");
    // The session opened before the change stays usable.
    c.simple_query("SELECT 1").await.unwrap();

    let unknown = RoleSecret {
        name: "nobody".into(),
        password: "x".into(),
    };
    assert!(matches!(
        t.cluster.set_password(&unknown).await,
        Err(PgError::NoSuchRole(_))
    ));
}

#[tokio::test]
async fn stats_report_version_connections_size_and_tables() {
    let mut t = TestCluster::new();
    t.up().await;
    let before = t.cluster.stats("appdb").await.unwrap();
    assert_eq!(before.server_version, t.cluster.binaries().version);
    assert_eq!(before.tables, 0);
    assert_eq!(before.connections_used, 0);
    assert!(before.data_size_bytes > 0);
    assert!(!before.in_recovery);

    let c = t.owner().await;
    c.batch_execute("CREATE TABLE t (id int); CREATE TABLE u (id int)")
        .await
        .unwrap();
    let after = t.cluster.stats("appdb").await.unwrap();
    assert_eq!(after.tables, 2);
    assert_eq!(after.connections_used, 1);
}

#[tokio::test]
async fn backends_can_be_listed_cancelled_and_terminated() {
    let mut t = TestCluster::new();
    t.up().await;
    let idle = t.owner().await;
    let sleeper = Arc::new(t.owner().await);
    let s = sleeper.clone();
    let sleeping = tokio::spawn(async move { s.simple_query("SELECT pg_sleep(30)").await });

    let mut found = None;
    for _ in 0..200 {
        let listed = t.cluster.backends("appdb").await.unwrap();
        found = listed.into_iter().find(|b| b.query.contains("pg_sleep"));
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = found.expect("the sleeping query shows in backends within 10 s");
    assert_eq!(b.user, "app_owner");
    assert_eq!(b.state, "active");
    assert_eq!(b.client_addr.as_deref(), Some("127.0.0.1"));
    // The idle connection is not listed.
    assert_eq!(t.cluster.backends("appdb").await.unwrap().len(), 1);

    // Cancel: the query fails, the connection survives.
    assert!(t.cluster.kill("appdb", b.pid, false).await.unwrap());
    let res = tokio::time::timeout(Duration::from_secs(10), sleeping)
        .await
        .unwrap()
        .unwrap();
    assert!(res.is_err(), "cancelled query returns an error");
    sleeper.simple_query("SELECT 1").await.unwrap();

    // Terminate: the connection is gone.
    assert!(t.cluster.kill("appdb", b.pid, true).await.unwrap());
    let closed = eventually(Duration::from_secs(10), || async {
        sleeper.simple_query("SELECT 1").await.is_err()
    })
    .await;
    assert!(closed, "terminated connection is closed");

    // A pid that is not a client backend of this database.
    match t.cluster.kill("appdb", 1, false).await {
        Err(PgError::NoSuchBackend(1)) => {}
        other => panic!("expected NoSuchBackend, got {other:?}"),
    }

    // kill_all: the idle one and a new busy one.
    let busy = Arc::new(t.owner().await);
    let b2 = busy.clone();
    let busy_task = tokio::spawn(async move { b2.simple_query("SELECT pg_sleep(30)").await });
    let listed = eventually(Duration::from_secs(10), || async {
        t.cluster.backends("appdb").await.unwrap().len() == 1
    })
    .await;
    assert!(listed);
    let idle_pid: i32 = idle
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let killed = t.cluster.kill_all("appdb").await.unwrap();
    assert_eq!(killed.len(), 2, "{killed:?}");
    assert!(killed.contains(&idle_pid), "{killed:?}");
    let res = tokio::time::timeout(Duration::from_secs(10), busy_task)
        .await
        .unwrap()
        .unwrap();
    assert!(res.is_err());
    let gone = eventually(Duration::from_secs(10), || async {
        t.cluster.stats("appdb").await.unwrap().connections_used == 0
    })
    .await;
    assert!(gone, "no client backends left");
}

#[tokio::test]
async fn stop_and_start_are_idempotent_and_a_new_process_reattaches() {
    let mut t = TestCluster::new();
    t.up().await;
    t.cluster.start().await.unwrap();

    // What a restarted agent sees: a fresh Cluster value on the same root.
    let again = Cluster::new(t.cluster.root().to_path_buf(), binaries(), os_user());
    let st = again.status("t1");
    assert!(st.running, "{st:?}");
    let c = again.connect("appdb").await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();

    t.cluster.stop(StopMode::Fast).await.unwrap();
    let st = again.status("t1");
    assert!(st.initialized && !st.running && st.pid.is_none(), "{st:?}");
    t.cluster.stop(StopMode::Fast).await.unwrap();
    t.cluster.stop(StopMode::Immediate).await.unwrap();
    assert!(matches!(
        again.connect("appdb").await,
        Err(PgError::NotRunning { .. })
    ));

    again.start().await.unwrap();
    assert!(t.cluster.status("t1").running);
    t.cluster.stop(StopMode::Immediate).await.unwrap();
    assert!(!t.cluster.status("t1").running);
    // Crash recovery after an immediate stop.
    t.cluster.start().await.unwrap();
    t.owner().await.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn reinitializing_keeps_the_data() {
    let mut t = TestCluster::new();
    t.up().await;
    t.owner()
        .await
        .batch_execute("CREATE TABLE keep (v text); INSERT INTO keep VALUES ('still here')")
        .await
        .unwrap();

    // While running, and while stopped.
    t.cluster.initialize(&t.spec).await.unwrap();
    t.cluster.stop(StopMode::Fast).await.unwrap();
    t.cluster.initialize(&t.spec).await.unwrap();
    t.cluster.start().await.unwrap();
    t.cluster.bootstrap(&t.spec).await.unwrap();

    let v: String = t
        .owner()
        .await
        .query_one("SELECT v FROM keep", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "still here");
}

#[tokio::test]
async fn a_leftover_init_dir_is_not_a_cluster_and_is_cleaned_up() {
    let t = TestCluster::new();
    let root = t.cluster.root().to_path_buf();
    let leftover = root.join("pgdata.init");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("PG_VERSION"), "15\n").unwrap();
    std::fs::write(leftover.join("junk"), "half an initdb").unwrap();
    assert!(!t.cluster.status("t1").initialized);

    t.cluster.initialize(&t.spec).await.unwrap();
    assert!(!leftover.exists(), "pgdata.init removed");
    assert!(t.cluster.status("t1").initialized);
    assert!(!t.cluster.pgdata().join("junk").exists());
    let mode = std::fs::metadata(t.cluster.pgdata())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
    for f in ["pgfollow.conf", "pg_hba.conf", "postgresql.conf"] {
        let mode = std::fs::metadata(t.cluster.pgdata().join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
}

#[tokio::test]
async fn a_taken_port_is_reported_as_port_in_use() {
    let mut t = TestCluster::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    t.spec.port = port;
    t.cluster.initialize(&t.spec).await.unwrap();
    match t.cluster.start().await {
        Err(PgError::PortInUse { port: p }) => assert_eq!(p, port),
        other => panic!("expected PortInUse, got {other:?}"),
    }
    assert!(!t.cluster.status("t1").running);
    drop(listener);
    // The caller's remedy: another port.
    t.spec.port = free_port();
    t.cluster.write_config(&t.spec).unwrap();
    t.up().await;
}

#[tokio::test]
async fn destroy_removes_everything() {
    let mut t = TestCluster::new();
    t.up().await;
    let pid = t.cluster.status("t1").pid.unwrap();
    t.cluster.destroy().await.unwrap();
    assert!(!t.cluster.root().exists());
    // The pid file goes a moment before the process itself.
    let gone = eventually(Duration::from_secs(5), || async { !process_alive(pid) }).await;
    assert!(gone, "postmaster {pid} gone");
    let st = t.cluster.status("t1");
    assert!(!st.initialized && !st.running, "{st:?}");
    t.cluster.destroy().await.unwrap();
}

#[tokio::test]
async fn a_root_the_os_user_cannot_reach_is_refused() {
    let user = os_user();
    if !user.needs_switch() {
        return; // Only meaningful when root runs postgres as another user.
    }
    let dir = tempfile::Builder::new().prefix("pgf").tempdir().unwrap();
    // Owned by root; mode 0700 like many private temp dirs.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(!user.can_reach(dir.path()));
    let cluster = Cluster::new(dir.path().join("c"), binaries(), user.clone());
    match cluster.initialize(&spec(free_port())).await {
        Err(e @ PgError::Unreachable { .. }) => assert!(e.to_string().contains("postgres"), "{e}"),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    assert!(user.can_reach(dir.path()));
}

#[tokio::test]
async fn a_socket_path_that_is_too_long_is_refused() {
    let t = TestCluster::new();
    let deep: PathBuf = t.cluster.root().join("x".repeat(100));
    let cluster = Cluster::new(deep, binaries(), os_user());
    match cluster.initialize(&t.spec).await {
        Err(PgError::SocketPathTooLong { .. }) => {}
        other => panic!("expected SocketPathTooLong, got {other:?}"),
    }
}
